"""CLI start-up: wall time of ``persona --help`` and ``persona tools list``, each a fresh process.

One untimed run first (page cache, bytecode), then N timed runs of the installed ``persona`` script.
The notes name the slowest imports of each command (``python -X importtime``), which is where a
start-up budget goes.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.orchestration import child_env
from bench.report import Table, verdict
from bench.servers import ROOT

COMMANDS = (
    (("--help",), 0.150, "Usage"),
    (("tools", "list"), 0.400, "13 Plisio tools"),
)


def _persona() -> str:
    script = Path(sys.executable).parent / "persona"
    return str(script) if script.exists() else "persona"


def _time(argv: list[str], expect: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=child_env(), capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or expect not in done.stdout:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({done.returncode}): {(done.stderr or done.stdout)[-300:]}"
        )
    return elapsed


def slowest_imports(args: tuple[str, ...], top: int = 6) -> list[tuple[str, float]]:
    """Top-level packages by cumulative import time (``-X importtime``) for one CLI command."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "persona", *args],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    totals: dict[str, float] = {}
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not match or len(match.group(3)) != 1:  # only imports made directly by the command's code path
            continue
        package = match.group(4).split(".")[0]
        totals[package] = totals.get(package, 0.0) + int(match.group(2)) / 1e6
    return sorted(totals.items(), key=lambda kv: -kv[1])[:top]


def run(*, quick: bool, workdir: Path) -> Table:
    runs = 5 if quick else 20
    persona = _persona()
    t = Table(
        section="cli",
        title="CLI start-up (wall time of a fresh process)",
        columns=["command", "min ms", "p50 ms", "max ms", "target", "verdict"],
    )
    data: dict[str, object] = {}
    for args, target, expect in COMMANDS:
        argv = [persona, *args]
        _time(argv, expect)  # untimed: page cache, bytecode
        walls = sorted(_time(argv, expect) for _ in range(runs))
        p50 = statistics.median(walls)
        name = "persona " + " ".join(args)
        t.rows.append(
            [
                f"`{name}`",
                f"{walls[0] * 1000:.0f}",
                f"{p50 * 1000:.0f}",
                f"{walls[-1] * 1000:.0f}",
                f"≤ {target * 1000:.0f} ms",
                verdict(p50 <= target),
            ]
        )
        imports = slowest_imports(args)
        t.notes.append(
            f"`{name}` imports (cumulative, top level): "
            + ", ".join(f"{pkg} {secs * 1000:.0f} ms" for pkg, secs in imports)
        )
        data[name] = {"walls_s": walls, "p50_s": p50, "target_s": target, "imports": imports}
    t.notes.append(
        f"{runs} timed runs of `{Path(persona).name}` (the installed console script) after one untimed run; "
        "the verdict is on the median. `python -X importtime -m persona ...` gives the import breakdown. "
        "`--repeats` does not apply: the runs above already give min, median and max, and no peer is timed "
        "beside it."
    )
    t.data = data
    return t
