"""``persona llm check``: try the configured model endpoint the way a persona will use it."""

from __future__ import annotations

from typing import Annotated

import typer

from persona.cli.output import AsJson

app = typer.Typer(rich_markup_mode=None, help="The model endpoint: check it before a persona uses it.",
                  no_args_is_help=True)  # fmt: skip


@app.command("check")
def check(
    persona: Annotated[
        str,
        typer.Option("--persona", "-p", help="Check the model this persona uses (its model, temperature)."),
    ] = "finance",
    as_json: AsJson = False,
) -> None:
    """List models, make tool calls (plain, streamed, parallel), send a result back; exit 1 if a persona
    could not work with this endpoint."""
    import asyncio

    from persona.cli.output import emit_list
    from persona.cli.state import STATE
    from persona.llm.check import run_checks
    from persona.models import model_for

    settings = STATE.settings()
    settings.chat_persona(persona, doing="check")
    name = settings.persona(persona).model.model or settings.llm.model or ""
    make = lambda stream: model_for(settings, persona, stream=stream)  # noqa: E731
    shown, rows = asyncio.run(run_checks(make, name, streams=settings.llm.stream))
    table = [(r.check, "ok" if r.ok else ("FAILED" if r.needed else "no"), r.detail) for r in rows]
    emit_list(f"{shown} · model {name}", ("check", "result", "detail"), table,
              [{"check": r.check, "ok": r.ok, "needed": r.needed, "detail": r.detail, "fix": r.fix} for r in rows],
              as_json=as_json)  # fmt: skip
    failed = [r for r in rows if not r.ok and r.needed]
    if as_json:
        raise typer.Exit(1 if failed else 0)
    from rich.console import Console

    err = Console(stderr=True, highlight=False)
    for row in rows:
        if not row.ok and row.fix:
            err.print(f"{'error' if row.needed else 'note'}: {row.check}: fix: {row.fix}", markup=False)
    if failed:
        err.print(f"error: a persona cannot use this endpoint: {', '.join(r.check for r in failed)} failed")
        raise typer.Exit(1)
    Console(highlight=False).print("a persona can use this endpoint")
