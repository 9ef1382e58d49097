"""Where an adapter's client CPU goes: ``python -m bench.profile ADAPTER [--stream] [-n N]``.

Runs the orchestration scenario (same servers, same config) in a child process under py-spy
(``--gil``: samples of the thread holding the GIL, i.e. Python CPU, every thread included, so the
audit writer and the SQLite thread pool count) and prints two breakdowns: inclusive share by
component (a sample counts for every component on its stack) and self share by package. Written to
``bench/results/profile-ADAPTER-MODE.md`` too. Needs py-spy (``pip install py-spy``); not part of
``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

# (label, substrings of a frame's file): first match names the component of a frame.
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("openai: request transform (_utils/_transform)", ("openai/_utils/_transform.py",)),
    ("openai: response models (_models, construct/validate)", ("openai/_models.py",)),
    ("openai: streaming (SSE decode)", ("openai/_streaming.py",)),
    ("openai: client, other", ("openai/",)),
    ("httpx2 + httpcore2 (openai's transport)", ("httpx2/", "httpcore2/")),
    ("httpx + httpcore (Plisio client, raw loop)", ("httpx/", "httpcore/")),
    ("persona: audit (prepare, hash, commit)", ("persona/audit.py", "persona/store/audit_tables.py")),
    ("SQLAlchemy + sqlite3", ("sqlalchemy/", "sqlite3/")),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    ("jsonschema (tool argument validation)", ("jsonschema/", "referencing/")),
    ("jinja2 (system prompt)", ("jinja2/",)),
    ("structlog", ("structlog/",)),
    ("tools.redaction (scrub)", ("tools/redaction.py",)),
    ("tools.plisio client + views", ("tools/plisio/",)),
    ("tools.registry", ("tools/registry.py",)),
    ("persona: dispatcher", ("persona/dispatcher.py",)),
    ("persona: policy", ("persona/policy.py",)),
    ("persona: loop", ("persona/loop.py",)),
    ("persona: llm (OpenAIChatModel)", ("persona/llm.py",)),
    ("json (stdlib)", ("json/",)),
    ("asyncio + threads (event loop, to_thread)", ("asyncio/", "concurrent/", "threading.py")),
)


def component(frame: str) -> str | None:
    for label, needles in COMPONENTS:
        if any(n in frame for n in needles):
            return label
    return None


def package(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> the file's first path part (``openai``, ``asyncio``, ...)."""
    start, end = frame.rfind("("), frame.rfind(":")
    path = frame[start + 1 : end] if 0 <= start < end else frame
    for marker in ("site-packages/", "lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "lib/python3.":
                path = path.split("/", 1)[-1]
    return path.split("/", 1)[0].removesuffix(".py")


def _function(frame: str) -> str:
    """``func (path/file.py:12)`` -> ``func (path/file.py)``: one entry per function, not per line."""
    head, _, tail = frame.rpartition(":")
    return f"{head})" if tail.endswith(")") and tail[:-1].isdigit() else frame


def analyse(raw: str) -> tuple[int, Counter[str], Counter[str], Counter[str], Counter[str]]:
    total = 0
    ours: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    selfpkg: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack.strip() or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        for label in {c for c in map(component, frames) if c is not None}:
            inclusive[label] += n
        selfpkg[package(frames[-1])] += n
        leaves[frames[-1]] += n
        for name in {_function(f) for f in frames if "persona/" in f or "tools/" in f or "bench/" in f}:
            ours[name] += n
    return total, inclusive, selfpkg, leaves, ours


async def _child(adapter: str, config: str, n: int) -> None:
    """Build, warm up, say ``ready``, wait for ``go`` (py-spy attaches meanwhile), run ``n``, exit."""
    cfg = json.loads(Path(config).read_text())
    module = importlib.import_module(f"bench.adapters.{adapter}")
    conv = await module.build(cfg)

    async def once() -> None:
        text = await conv.run()
        if text.strip() != cfg["final_text"].strip():
            raise SystemExit(f"unexpected answer: {text[:200]!r}")

    for _ in range(cfg["warmup"]):
        await once()
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    for _ in range(n):
        await once()
    await conv.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("adapter")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("-n", type=int, default=200, help="conversations profiled (after 5 warm-up)")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--child", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        asyncio.run(_child(args.adapter, args.child, args.n))
        return 0

    from bench import orchestration
    from bench.report import RESULTS
    from bench.servers import ROOT, ServerProcess

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    work = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    prompt, tools = orchestration.system_prompt()
    openai, sandbox = ServerProcess("openai"), ServerProcess("sandbox")
    try:
        cfg: dict[str, Any] = {
            **orchestration.base_config(openai, sandbox, prompt, tools),
            "stream": args.stream,
            "warmup": 5,
        }
        if args.adapter.startswith("persona_loop"):
            cfg["persona_config"] = str(
                orchestration.persona_config(
                    work,
                    stream=args.stream,
                    openai_url=cfg["openai_base_url"],
                    sandbox_url=cfg["sandbox_base_url"],
                )
            )
        config = work / "config.json"
        config.write_text(json.dumps(cfg))
        out = work / "profile.txt"
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.profile", args.adapter, "--child", str(config), "-n", str(args.n)],
            cwd=ROOT, env=orchestration.child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert child.stdin is not None
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise SystemExit(f"the profiled adapter failed (exit {child.wait()})")
        recorder = subprocess.Popen(
            [
                spy,
                "record",
                "--gil",
                "--rate",
                "1000",
                "--format",
                "raw",
                "-o",
                str(out),
                "--pid",
                str(child.pid),
            ],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # let py-spy attach before the measured conversations start
        child.stdin.write("go\n")
        child.stdin.flush()
        child.wait()
        recorder.wait()
        raw = out.read_text()
        if os.environ.get("BENCH_PROFILE_RAW"):
            shutil.copy(out, os.environ["BENCH_PROFILE_RAW"])
    finally:
        openai.stop()
        sandbox.stop()
        shutil.rmtree(work, ignore_errors=True)
    total, inclusive, selfpkg, leaves, ours = analyse(raw)
    mode = "stream" if args.stream else "plain"
    lines = [
        f"# Profile: {args.adapter} ({mode}), {args.n} conversations (py-spy --gil, 1 kHz)",
        "",
        f"{total} samples, taken only while the {args.n} conversations ran (after build and warm-up).",
        "",
        "| component (inclusive) | share |",
        "|---|---|",
        *[f"| {label} | {n / total:.1%} |" for label, n in inclusive.most_common()],
        "",
        "| package (self) | share |",
        "|---|---|",
        *[f"| {name} | {n / total:.1%} |" for name, n in selfpkg.most_common(args.top)],
        "",
        "| our function (inclusive: persona/, tools/, bench/) | share |",
        "|---|---|",
        *[f"| `{name}` | {n / total:.1%} |" for name, n in ours.most_common(args.top + 10)],
        "",
        "| function (self) | share |",
        "|---|---|",
        *[f"| `{name}` | {n / total:.1%} |" for name, n in leaves.most_common(args.top)],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"profile-{args.adapter}-{mode}.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
