"""Tool schemas: tokens (tiktoken ``o200k_base``) of the 13 tool definitions as sent to the model.

Counted on the compact JSON of the ``tools`` array of a request (what our loop sends), in total and
per tool. "No information lost" is checked against the local validation schema the registry derives
from the same declaration: every constraint it enforces that the model's schema does not show is
listed (the model cannot respect a limit it is not told).

tiktoken downloads ``o200k_base`` from the network on first use. Here it is read from the
``bpe-openai`` package's copy of the same file (a bench dependency), placed in a private tiktoken
cache; tiktoken checks it against its pinned SHA-256, so the count is tiktoken's own.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from bench.report import Table, verdict

O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
TARGET_TOKENS = 2000
"""Raised from 1,500 when each description came to say what it returns and when to use it instead of its
neighbours (a model choosing between fee plans and their details, or an invoice and its operation)."""
_STRUCTURE = {"type", "properties", "required", "additionalProperties", "items", "anyOf", "title", "default",
              "x-expected"}  # fmt: skip
"""Not constraints: structure, and ``x-expected`` (the registry's wording of a pattern for error messages;
the pattern itself is sent)."""


def encoding(cache: Path) -> Any:
    """tiktoken's o200k_base without the network (the bpe-openai wheel ships the file)."""
    import tiktoken

    cache.mkdir(parents=True, exist_ok=True)
    target = cache / hashlib.sha1(O200K_URL.encode()).hexdigest()
    if not target.exists():
        data = (resources.files("bpe_openai.data") / "o200k_base.tiktoken.gz").read_bytes()
        target.write_bytes(gzip.decompress(data))
    previous = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        return tiktoken.get_encoding("o200k_base")  # verifies the pinned hash
    finally:
        if previous is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = previous


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def hidden_constraints(local: Any, sent: Any, path: str = "") -> list[str]:
    """Keywords (with their values) the local validation schema has and the model's schema lacks."""
    out: list[str] = []
    if isinstance(local, dict):
        sent_d = sent if isinstance(sent, dict) else {}
        for key, value in local.items():
            if key == "properties" and isinstance(value, dict):
                for name, spec in value.items():
                    out += hidden_constraints(
                        spec, (sent_d.get("properties") or {}).get(name), f"{path}.{name}"
                    )
            elif key in ("items", "anyOf"):
                out += hidden_constraints(value, sent_d.get(key), f"{path}[{key}]")
            elif key not in _STRUCTURE and key not in sent_d:
                out.append(f"{path.lstrip('.') or '(root)'} {key}={compact(value)}")
    elif isinstance(local, list):
        sent_l = sent if isinstance(sent, list) else []
        for i, item in enumerate(local):
            out += hidden_constraints(item, sent_l[i] if i < len(sent_l) else None, path)
    return out


def run(*, quick: bool, workdir: Path) -> Table:
    from tools.plisio.tools import plisio_registry

    registry = plisio_registry()
    tools = list(registry)
    sent = registry.openai_tools()
    enc = encoding(workdir / "tiktoken")
    total = len(enc.encode(compact(sent)))
    spaced = len(enc.encode(json.dumps(sent)))
    t = Table(
        section="schemas",
        title=f"Tool schemas ({len(sent)} tools, tiktoken o200k_base)",
        columns=["tool", "tokens", "JSON chars", "constraints not shown to the model"],
    )
    lost_total = 0
    per_tool: dict[str, Any] = {}
    for tool, definition in zip(tools, sent, strict=True):
        text = compact(definition)
        lost = hidden_constraints(tool.validation_schema, tool.parameters)
        lost_total += len(lost)
        per_tool[tool.name] = {"tokens": len(enc.encode(text)), "chars": len(text), "hidden": lost}
        t.rows.append(
            [f"`{tool.name}`", str(per_tool[tool.name]["tokens"]), str(len(text)), "; ".join(lost) or "none"]
        )
    t.rows.append(
        ["**all 13, as one `tools` array**", f"**{total}**", str(len(compact(sent))), f"{lost_total} in all"]
    )
    t.notes = [
        f"Target: ≤ {TARGET_TOKENS:,} tokens for the 13 definitions — {verdict(total <= TARGET_TOKENS)} "
        f"({total:,}); with no information lost — {verdict(lost_total == 0)}"
        + (
            ""
            if lost_total == 0
            else f" ({lost_total} constraints enforced locally are not shown to the model)"
        )
        + ".",
        f"Counted on compact JSON (`separators=(',', ':')`); with json.dumps's default spacing: {spaced:,} tokens. "
        "Providers render tool definitions into the prompt in their own format, so billed prompt tokens differ "
        "somewhat; the comparison between versions of our schemas is what this tracks.",
        "Counts, not timings: the same on every run, so counted once (`--repeats` does not apply).",
    ]
    t.data = {"total_tokens": total, "spaced_tokens": spaced, "tools": per_tool}
    return t
