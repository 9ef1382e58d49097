"""``persona effects``: the side-effects ledger: list, show one, resolve the ones whose answer was lost."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

import typer

from persona.cli.output import AsJson, AsJsonl

if TYPE_CHECKING:
    from persona.app import Runtime
    from persona.effects.ledger import Effect

app = typer.Typer(
    rich_markup_mode=None,
    help="Side effects (invoices) the service made or tried: one row each, with its outcome.",
    no_args_is_help=True,
)

STATES = ("held", "claimed", "applied", "failed", "unknown", "rejected")


def _resolve(rt: Runtime, given: str) -> str:
    from persona.cli.options import resolve_id

    return resolve_id(given, rt.dispatcher.effects.ledger.ids_starting, "effect")


def _document(e: Effect) -> dict[str, Any]:
    """An effect as JSON: every column, and its key as one text."""
    from persona.jsonutil import jsonable as plain

    document: dict[str, Any] = plain(e)
    document["key"] = str(e.key)
    return document


@app.command("list")
def list_effects(
    state: Annotated[
        str, typer.Option("--state", help=f"{', '.join(STATES)}, unresolved (claimed + unknown) or all.")
    ] = "all",
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    as_json: AsJson = False,
    as_jsonl: AsJsonl = False,
) -> None:
    """List effects, newest first (`effects show ID` has the tool, arguments, times and outcome)."""
    from persona.cli.options import choice
    from persona.cli.output import emit_list
    from persona.cli.runtime import with_runtime
    from persona.effects.ledger import UNRESOLVED, State

    choice(state, (*STATES, "unresolved", "all"), "--state")
    states = None if state == "all" else UNRESOLVED if state == "unresolved" else (State(state),)

    async def work(rt: Runtime) -> None:
        found = rt.dispatcher.effects.ledger.find(states, limit=limit)
        rows = [
            (e.id, e.state.value, e.persona,
             "" if e.amount is None else f"{e.amount.quantize(Decimal('0.01'))} {e.currency or ''}",
             e.order_number, str(e.key))
            for e in found
        ]  # fmt: skip
        emit_list(
            f"{len(found)} effect(s) · {state}",
            ("id", "state", "persona", "amount", "order number", "key"),
            rows,
            [_document(e) for e in found],
            as_json=as_json,
            as_jsonl=as_jsonl,
        )

    with_runtime(work)


@app.command("show")
def show(
    effect_id: Annotated[str, typer.Argument(help="The effect's id, or its first characters.")],
    as_json: AsJson = False,
) -> None:
    """One effect in full: key, arguments, outcome, approval."""
    import json

    from rich.console import Console

    from persona.cli.output import print_json
    from persona.cli.runtime import with_runtime
    from persona.jsonutil import rfc3339

    async def work(rt: Runtime) -> None:
        e = rt.dispatcher.effects.ledger.get(_resolve(rt, effect_id))
        if as_json:
            print_json(_document(e))
            return
        console = Console(highlight=False, soft_wrap=True)
        console.print(f"effect {e.id}: {e.state.value}", markup=False)
        for label, value in (
            ("key", str(e.key)), ("tool", e.tool), ("persona", e.persona), ("asked by", e.user_id),
            ("conversation", e.conversation_id), ("source", e.source), ("order number", e.order_number),
            ("amount", "" if e.amount is None else f"{e.amount} {e.currency or ''} (day {e.day})"),
            ("attempts", str(e.attempts)), ("reason", e.reason or ""),
            ("approval", f"decided by {e.decided_by}" if e.decided_by else "held" if e.needs_approval else "-"),
            ("updated", rfc3339(e.updated_at, precise=False)),
        ):  # fmt: skip
            console.print(f"  {label:<13} {value}", markup=False)
        console.print(f"  arguments     {json.dumps(e.arguments, ensure_ascii=False)}", markup=False)
        if e.result:
            console.print(f"  result        {e.result}", markup=False)

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

    from persona.cli.runtime import with_runtime
    from persona.events import Source
    from persona.operations import resolve_effect

    async def work(rt: Runtime) -> None:
        executor = rt.dispatcher.effects
        console = Console(highlight=False)
        if effect_id is None:
            done = await executor.sweep(source=Source.CLI)
            console.print(f"{len(done)} effect(s) due (older than {executor.resolve_after_s:g}s) looked up")
        else:
            done = [await resolve_effect(rt.operator, _resolve(rt, effect_id), source=Source.CLI)]
        for e in done:
            console.print(f"  {e.id}  {e.state.value:<8} {e.order_number}  {e.reason or ''}")

    with_runtime(work)
