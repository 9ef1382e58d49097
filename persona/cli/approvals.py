"""``persona approvals``: list held calls, approve (executes once) or reject them."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

import typer

app = typer.Typer(rich_markup_mode=None, help="Calls held for a person's approval.", no_args_is_help=True)

By = Annotated[str, typer.Option("--by", help="Who decides (recorded in the audit log).")]
Note = Annotated[str | None, typer.Option("--note", help="Why.")]


@app.command("list")
def list_approvals(
    status: Annotated[
        str, typer.Option("--status", help="pending, approved, executed, failed, unknown, rejected or all.")
    ] = "pending",
) -> None:
    """List approvals (pending ones by default)."""
    from rich.console import Console
    from rich.table import Table

    from persona.app import Runtime
    from persona.cli.runtime import with_runtime

    async def work(rt: Runtime) -> None:
        rows = rt.approvals.find(None if status == "all" else status)
        table = Table(title=f"{len(rows)} approval(s) · {status}", title_justify="left")
        for col in ("id", "status", "persona", "asked by", "tool", "amount", "created (UTC)"):
            table.add_column(col, no_wrap=True)
        table.add_column("reason")
        for a in rows:
            amount = "" if a.amount is None else f"{a.amount.quantize(Decimal('0.01'))}"
            table.add_row(
                a.id, a.status, a.persona, a.user_id, a.tool.removeprefix("plisio_"), amount,
                a.created_at.strftime("%Y-%m-%d %H:%M"), a.reason,
            )  # fmt: skip
        Console().print(table)

    with_runtime(work)


@app.command("approve")
def approve(approval_id: str, by: By, note: Note = None) -> None:
    """Approve a held call; it executes once, with exactly the arguments that were held."""
    from rich.console import Console

    from persona.app import Runtime
    from persona.cli.runtime import with_runtime

    async def work(rt: Runtime) -> None:
        approval, done = await rt.dispatcher.approve(approval_id, by=by, note=note)
        Console(highlight=False).print(
            f"approval {approval.id}: {approval.status} by {by}; {done.tool} {done.outcome.value}\n{done.content}"
        )
        if done.outcome.value not in {"succeeded", "replayed"}:
            raise typer.Exit(1)

    with_runtime(work)


@app.command("reject")
def reject(approval_id: str, by: By, note: Note = None) -> None:
    """Reject a held call; it never executes."""
    from rich.console import Console

    from persona.app import Runtime
    from persona.cli.runtime import with_runtime

    async def work(rt: Runtime) -> None:
        approval = await rt.dispatcher.reject(approval_id, by=by, note=note)
        Console(highlight=False).print(f"approval {approval.id}: rejected by {by}")

    with_runtime(work)
