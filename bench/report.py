"""Tables, machine facts and the results files.

A section returns a :class:`Table`; :func:`render` turns the list of tables into one Markdown
document headed by the machine (cores, CPU model, memory), the Python and package versions and the
exact command, which :func:`write` saves as ``bench/results/latest.md`` plus a timestamped copy.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

# Shown first in the versions line: what the comparison is about.
KEY_PACKAGES = (
    "plisio-persona",
    "openai",
    "httpx",
    "httpx2",
    "pydantic",
    "openai-agents",
    "pydantic-ai-slim",
    "langgraph",
    "langchain-core",
    "langchain-openai",
    "SQLAlchemy",
    "starlette",
    "fastapi",
    "uvicorn",
    "tiktoken",
)


@dataclass
class Table:
    """One section's result: a Markdown table plus notes (targets, caveats, failures)."""

    section: str
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    """Raw figures, saved in ``latest.json`` for later comparison."""

    def markdown(self) -> str:
        lines = [f"## {self.title}", ""]
        if self.rows:
            lines.append("| " + " | ".join(self.columns) + " |")
            lines.append("|" + "|".join("---" for _ in self.columns) + "|")
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in self.rows]
            lines.append("")
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "cpu_model": cpu_model(),
        "memory_gib": round(memory_gib() or 0.0, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }


def versions() -> dict[str, str]:
    """Every installed distribution in this environment, name -> version."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[name] = dist.version
    return dict(sorted(found.items(), key=lambda kv: kv[0].lower()))


def command_line() -> str:
    argv = [Path(sys.executable).name, "-m", "bench.run", *sys.argv[1:]]
    return " ".join(shlex.quote(a) for a in argv)


def tree() -> str:
    """The commit measured, and which product files differed from it (read-only git)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "persona", "tools"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.splitlines()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    if not dirty:
        return f"commit {head}, clean"
    files = ", ".join(line[3:] for line in dirty[:12]) + (" …" if len(dirty) > 12 else "")
    return f"commit {head} + uncommitted changes in {len(dirty)} product file(s): {files}"


def header(started: datetime, command: str, tree_at_start: str | None = None) -> str:
    m = machine()
    pkgs = versions()
    lowered = {k.lower(): (k, v) for k, v in pkgs.items()}
    key = [f"{lowered[p.lower()][0]} {lowered[p.lower()][1]}" for p in KEY_PACKAGES if p.lower() in lowered]
    rest = ", ".join(f"{k} {v}" for k, v in pkgs.items())
    return "\n".join(
        [
            "# Benchmarks",
            "",
            f"- Run: {started.strftime('%Y-%m-%d %H:%M UTC')}",
            f"- Command: `{command}`",
            _tree_line(tree_at_start),
            f"- Machine: {m['cores']} cores ({m['usable_cores']} usable), {m['cpu_model']}, "
            f"{m['memory_gib']} GiB, {m['os']}",
            f"- Python: {m['python']}",
            f"- Key packages: {', '.join(key)}",
            "",
            "<details><summary>Every installed package</summary>",
            "",
            rest,
            "",
            "</details>",
            "",
        ]
    )


def _tree_line(at_start: str | None) -> str:
    at_end = tree()
    if at_start is None or at_start == at_end:
        return f"- Tree: {at_end}"
    return f"- Tree: **changed during the run**: at the start {at_start}; at the end {at_end}"


def render(tables: list[Table], started: datetime, command: str, tree_at_start: str | None = None) -> str:
    return header(started, command, tree_at_start) + "\n" + "\n".join(t.markdown() for t in tables)


def write(
    tables: list[Table],
    started: datetime,
    command: str,
    *,
    latest: bool = True,
    tree_at_start: str | None = None,
) -> Path:
    """Write a timestamped copy and, for a complete run, latest.md/latest.json; return the copy's path.

    A partial run (one section, some adapters) never replaces ``latest``: the README links it as the
    full picture.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = render(tables, started, command, tree_at_start)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    stamped = RESULTS / f"{stamp}{'' if latest else '-partial'}.md"
    stamped.write_text(text)
    if not latest:
        return stamped
    (RESULTS / "latest.md").write_text(text)
    raw = {
        "started": started.isoformat(),
        "command": command,
        "tree_at_start": tree_at_start,
        "tree_at_end": tree(),
        "machine": machine(),
        "versions": versions(),
        "sections": {t.section: {"title": t.title, "data": t.data, "notes": t.notes} for t in tables},
    }
    (RESULTS / "latest.json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    return stamped


def now() -> datetime:
    return datetime.now(UTC)


def ms(seconds: float | None, digits: int = 1) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.{digits}f}"


def ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base <= 0:
        return ""
    return f" ({value / base:.2f}×)"


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("met" if ok else "**not met**")
