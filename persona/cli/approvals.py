"""``persona approvals``: list held calls, approve (executes once) or reject them."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Annotated

import typer

from persona.cli.output import AsJson, AsJsonl

if TYPE_CHECKING:
    from persona.app import Runtime

app = typer.Typer(rich_markup_mode=None, help="Calls held for a person's approval.", no_args_is_help=True)

By = Annotated[str, typer.Option("--by", help="Who decides: a user's email (recorded in the audit log).")]
Note = Annotated[str | None, typer.Option("--note", help="Why.")]
ApprovalId = Annotated[str, typer.Argument(help="The approval's id, or its first characters.")]


def _resolve(rt: Runtime, given: str) -> str:
    from persona.cli.options import resolve_id

    return resolve_id(given, rt.approvals.ids_starting, "approval")


@app.command("list")
def list_approvals(
    status: Annotated[
        str, typer.Option("--status", help="pending, approved, executed, failed, unknown, rejected or all.")
    ] = "pending",
    as_json: AsJson = False,
    as_jsonl: AsJsonl = False,
) -> None:
    """List approvals (pending ones by default)."""
    from persona.approvals import STATUSES
    from persona.cli.options import choice
    from persona.cli.output import emit_list
    from persona.cli.runtime import with_runtime

    choice(status, (*STATUSES, "all"), "--status")

    async def work(rt: Runtime) -> None:
        found = rt.approvals.find(None if status == "all" else status)
        rows = [
            (a.id, a.status if a.seal in (None, "intact") else f"{a.status}, seal {a.seal}", a.persona, a.user_id, a.tool.removeprefix("plisio_"),
             "" if a.amount is None else f"{a.amount.quantize(Decimal('0.01'))}", a.created_at, a.reason)
            for a in found
        ]  # fmt: skip
        emit_list(
            f"{len(found)} approval(s) · {status}",
            ("id", "status", "persona", "asked by", "tool", "amount", "created", "reason"),
            rows,
            found,
            as_json=as_json,
            as_jsonl=as_jsonl,
        )

    with_runtime(work)


@app.command("approve")
def approve(approval_id: ApprovalId, by: By, note: Note = None) -> None:
    """Approve a held call; it executes once, with exactly the arguments that were held."""
    from rich.console import Console

    from persona.cli.identity import resolve_actor
    from persona.cli.runtime import with_runtime

    async def work(rt: Runtime) -> None:
        actor = resolve_actor(rt, by)
        approval, done = await rt.dispatcher.approve(_resolve(rt, approval_id), by=actor, note=note)
        Console(highlight=False).print(
            f"approval {approval.id}: {approval.status} by {actor}; {done.tool} {done.outcome.value}\n{done.content}"
        )
        if done.outcome.value not in {"succeeded", "replayed"}:
            raise typer.Exit(1)

    with_runtime(work)


@app.command("reject")
def reject(approval_id: ApprovalId, by: By, note: Note = None) -> None:
    """Reject a held call; it never executes."""
    from rich.console import Console

    from persona.cli.identity import resolve_actor
    from persona.cli.runtime import with_runtime

    async def work(rt: Runtime) -> None:
        actor = resolve_actor(rt, by)
        approval = await rt.dispatcher.reject(_resolve(rt, approval_id), by=actor, note=note)
        Console(highlight=False).print(f"approval {approval.id}: rejected by {actor}")

    with_runtime(work)
