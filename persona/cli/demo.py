"""``persona demo``: the failed-payment story in one screen (what ``make demo`` runs)."""

from __future__ import annotations

from pathlib import Path


def demo() -> None:
    """Run the failed-payment story on loopback: sandbox Plisio, persona serve, scripted model."""
    from rich.console import Console

    from persona.cli.state import STATE
    from persona.demo import SCENARIO, run_story
    from persona.errors import PersonaError

    console = Console(highlight=False)
    settings = STATE.settings()
    root = Path(settings.base_dir)
    console.print("[bold]plisio-persona demo[/]: no keys, no network. Plisio is the local sandbox;")
    console.print(f"the model is the scripted scenario {SCENARIO}.")
    import asyncio

    story = asyncio.run(run_story(settings, root=root, workdir=root / "var", say=console.print))
    if story.report is None or not story.report.ok:
        raise PersonaError("the audit chain did not verify")
    console.print(
        f'[green]Done in {story.seconds:.1f}s.[/] The same flow with a real model: README, "Chat with a real model".'
    )
