"""``persona replay``: run scenario files and say, per scenario, whether the persona still behaves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def replay(
    paths: Annotated[list[Path], typer.Argument(help="Scenario files or directories (scenarios/).")],
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also list passing scenarios' details.")
    ] = False,
) -> None:
    """Replay scripted conversations through the real loop, policy, audit log and sandbox."""
    from rich.console import Console
    from rich.table import Table

    from persona.cli.state import STATE
    from persona.errors import ScenarioError
    from persona.replay.runner import Result, run_scenario
    from persona.replay.scenario import discover, load

    settings = STATE.settings()
    files = discover(paths)
    if not files:
        raise ScenarioError("no scenario files found: pass .yaml files or a directory such as scenarios/")
    scenarios = [load(f) for f in files]  # all validated before anything runs

    async def run_all() -> list[Result]:
        return [await run_scenario(s, settings) for s in scenarios]

    import asyncio

    results = asyncio.run(run_all())
    console = Console(highlight=False)
    table = Table(title=f"replay · {len(results)} scenario(s)", title_justify="left")
    for col in ("scenario", "steps", "tool calls", "verdict", "time"):
        table.add_column(col, justify="right" if col in {"steps", "tool calls", "time"} else "left")
    for r in results:
        verdict = "[green]pass[/]" if r.ok else "[red]FAIL[/]"
        table.add_row(r.name, str(r.steps), str(r.tool_calls), verdict, f"{r.seconds * 1000:.0f} ms")
    console.print(table)
    failed = [r for r in results if not r.ok]
    for r in failed:
        console.print(f"[red]✗ {r.name}[/] ({r.path})")
        for failure in r.failures:
            console.print(f"    - {failure}", markup=False)
    if verbose:
        for r in results:
            if r.ok:
                console.print(f"[green]✓ {r.name}[/] ({r.path})")
    if failed:
        raise typer.Exit(1)
