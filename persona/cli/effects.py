"""``persona effects``: the side-effects ledger: list, show one, resolve the ones whose answer was lost."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

import typer

app = typer.Typer(
    rich_markup_mode=None,
    help="Side effects (invoices) the service made or tried: one row each, with its outcome.",
    no_args_is_help=True,
)

STATES = ("held", "claimed", "applied", "failed", "unknown", "rejected")


@app.command("list")
def list_effects(
    state: Annotated[
        str, typer.Option("--state", help=f"{', '.join(STATES)}, unresolved (claimed + unknown) or all.")
    ] = "all",
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
) -> None:
    """List effects, newest first (`effects show ID` has the tool, arguments, times and outcome)."""
    from rich.console import Console
    from rich.table import Table

    from persona.app import Runtime
    from persona.cli.runtime import with_runtime
    from persona.effects.ledger import UNRESOLVED, State
    from persona.errors import NotFound

    if state not in (*STATES, "unresolved", "all"):
        raise NotFound(f"no effect state {state!r}; use one of: {', '.join(STATES)}, unresolved, all")
    states = None if state == "all" else UNRESOLVED if state == "unresolved" else (State(state),)

    async def work(rt: Runtime) -> None:
        rows = rt.dispatcher.effects.ledger.find(states, limit=limit)
        table = Table(title=f"{len(rows)} effect(s) · {state}", title_justify="left")
        for col in ("id", "state", "persona", "amount", "order number"):
            table.add_column(col, no_wrap=True)
        table.add_column("key", overflow="fold")
        for e in rows:
            amount = "" if e.amount is None else f"{e.amount.quantize(Decimal('0.01'))} {e.currency or ''}"
            table.add_row(e.id, e.state.value, e.persona, amount, e.order_number, str(e.key))
        Console().print(table)

    with_runtime(work)


@app.command("show")
def show(effect_id: str) -> None:
    """One effect in full: key, arguments, outcome, approval."""
    import json

    from rich.console import Console

    from persona.app import Runtime
    from persona.cli.runtime import with_runtime

    async def work(rt: Runtime) -> None:
        e = rt.dispatcher.effects.ledger.get(effect_id)
        console = Console(highlight=False)
        console.print(f"effect {e.id}: {e.state.value}")
        for label, value in (
            ("key", str(e.key)), ("tool", e.tool), ("persona", e.persona), ("asked by", e.user_id),
            ("conversation", e.conversation_id), ("source", e.source), ("order number", e.order_number),
            ("amount", "" if e.amount is None else f"{e.amount} {e.currency or ''} (day {e.day})"),
            ("attempts", str(e.attempts)), ("reason", e.reason or ""),
            ("approval", f"decided by {e.decided_by}" if e.decided_by else "held" if e.needs_approval else "-"),
            ("updated", e.updated_at.isoformat()),
        ):  # fmt: skip
            console.print(f"  {label:<13} {value}")
        console.print(f"  arguments     {json.dumps(e.arguments, ensure_ascii=False)}")
        if e.result:
            console.print(f"  result        {e.result}")

    with_runtime(work)


@app.command("resolve")
def resolve(
    effect_id: Annotated[str | None, typer.Argument(help="One effect; all due ones when left out.")] = None,
) -> None:
    """Look up at Plisio, by order number, the effects whose outcome is not known.

    Without an id: every effect ``claimed`` or ``unknown`` for longer than ``effects.resolve_after_s``
    (the worker runs this on a schedule); one Plisio has not heard of is then ``failed`` and its amount
    released. With an id: that effect now; not found leaves it as it is until it is due."""
    from rich.console import Console

    from persona.app import Runtime
    from persona.cli.runtime import with_runtime
    from persona.effects.ledger import UNRESOLVED
    from persona.errors import Conflict
    from persona.events import Source

    async def work(rt: Runtime) -> None:
        executor = rt.dispatcher.effects
        console = Console(highlight=False)
        if effect_id is None:
            done = await executor.sweep(source=Source.CLI)
            console.print(f"{len(done)} effect(s) due (older than {executor.resolve_after_s:g}s) looked up")
        else:
            effect = executor.ledger.get(effect_id)
            if effect.state not in UNRESOLVED:
                raise Conflict(f"effect {effect_id} is {effect.state.value}: there is nothing to resolve")
            done = [await executor.resolve(effect, final=False, source=Source.CLI)]
        for e in done:
            console.print(f"  {e.id}  {e.state.value:<8} {e.order_number}  {e.reason or ''}")

    with_runtime(work)
