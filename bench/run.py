"""``python -m bench.run [--quick] [--repeats N] [--only SECTION ...]``: run the benchmarks, save the tables.

Sections: orchestration, cli, webhooks, audit, schemas. ``--quick`` runs every section at a fraction
of its size (for development; the figures are noisier). ``--repeats N`` (default 3; 1 under ``--quick``
unless given) runs the sections that compare rows side by side (orchestration, webhooks) N times, each
round in a rotated order, and reports median [min–max] per figure. Tables go to ``bench/results/latest.md``
(+ a timestamped copy and ``latest.json``). Scratch files (SQLite stores, the 1M-record audit log,
child logs) go to a temporary directory outside the tree, removed at the end.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import repeats, report
from bench.report import Table

SECTIONS = ("orchestration", "cli", "webhooks", "audit", "schemas")
REPEATED = ("orchestration", "webhooks")
"""The sections given ``--repeats``: the others are already many timed runs (cli), one long fill (audit)
or a count (schemas)."""


def positive_int(text: str) -> int:
    """argparse type for ``--repeats``: a median needs at least one round, and a typo must not run zero."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of rounds (1 or more), not {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (rounds of each comparison), not {value}")
    return value


def _section(name: str) -> Callable[..., Table]:
    if name == "orchestration":
        from bench import orchestration

        return orchestration.run
    if name == "cli":
        from bench import cli_startup

        return cli_startup.run
    if name == "webhooks":
        from bench import webhooks

        return webhooks.run
    if name == "audit":
        from bench import audit

        return audit.run
    if name == "schemas":
        from bench import schemas

        return schemas.run
    raise ValueError(name)


def arguments() -> argparse.ArgumentParser:
    """The command line, apart from :func:`main` so it can be checked without running a section."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs, for development")
    parser.add_argument(
        "--repeats", type=positive_int, default=None, metavar="N",
        help=f"rounds of orchestration and webhooks, each in a rotated order; figures as median [min–max] "
        f"(default {repeats.DEFAULT}; {repeats.QUICK} with --quick unless given)",
    )  # fmt: skip
    parser.add_argument(
        "--only", action="append", choices=SECTIONS, metavar="SECTION",
        help=f"run only this section (repeatable): {', '.join(SECTIONS)}",
    )  # fmt: skip
    parser.add_argument(
        "--adapter", action="append", metavar="NAME",
        help="orchestration: only this adapter (repeatable; the openai hand loop always runs as the baseline)",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    rounds = repeats.rounds_for(quick=args.quick, given=args.repeats)
    started = report.now()
    command = report.command_line()
    tree_at_start = report.tree()
    chosen = args.only or list(SECTIONS)
    work = Path(tempfile.mkdtemp(prefix="persona-bench-"))
    from persona import log

    log.configure("warning")  # the bench opens stores and runtimes too: no debug lines from them
    tables: list[Table] = []
    failed = False
    try:
        for name in SECTIONS:
            if name not in chosen:
                continue
            print(f"== {name}", flush=True)
            t0 = time.perf_counter()
            try:
                kwargs: dict[str, object] = {"quick": args.quick, "workdir": work}
                if name == "orchestration":
                    kwargs["only"] = args.adapter
                if name in REPEATED:
                    kwargs["repeats"] = rounds
                table = _section(name)(**kwargs)
            except Exception as exc:  # one broken section must not hide the others
                failed = True
                traceback.print_exc()
                table = Table(
                    name,
                    f"{name}: the section failed",
                    [],
                    notes=[f"**failed**: {type(exc).__name__}: {exc}"],
                )
            print(f"   ({time.perf_counter() - t0:.0f}s)", flush=True)
            print(table.markdown(), flush=True)
            tables.append(table)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    complete = not args.only and not args.adapter
    path = report.write(tables, started, command, latest=complete, tree_at_start=tree_at_start)
    print(
        f"written: {path}"
        + (f" and {report.RESULTS / 'latest.md'}" if complete else " (partial run: latest.md kept)")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
