"""``persona drafts``: the review queue. Nothing reaches a customer until a person approves it here."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    rich_markup_mode=None, help="Drafted customer messages waiting for review.", no_args_is_help=True
)

By = Annotated[str, typer.Option("--by", help="Who decides (recorded in the audit log).")]
Note = Annotated[str | None, typer.Option("--note", help="Why.")]


@app.command("list")
def list_drafts(
    status: Annotated[
        str,
        typer.Option(
            "--status", help="pending_review, approved, sent, send_failed, rejected, obsolete or all."
        ),
    ] = "pending_review",
) -> None:
    """List drafts (those waiting for review by default)."""
    from rich.console import Console
    from rich.table import Table

    from persona.app import Runtime
    from persona.cli.runtime import with_runtime
    from persona.drafts import DraftStore

    async def work(rt: Runtime) -> None:
        rows = DraftStore(rt.store).find(None if status == "all" else status)
        table = Table(title=f"{len(rows)} draft(s) · {status}", title_justify="left")
        for col in ("id", "status", "invoice", "customer", "link", "by", "created (UTC)"):
            table.add_column(col, no_wrap=True)
        table.add_column("subject")
        for d in rows:
            table.add_row(
                d.id, d.status, d.txn_id, d.customer_email or "", "yes" if d.payment_link else "",
                d.drafted_by, d.created_at.strftime("%Y-%m-%d %H:%M"), d.subject,
            )  # fmt: skip
        Console().print(table)

    with_runtime(work)


@app.command("show")
def show(draft_id: str) -> None:
    """Show a draft in full: the message, the facts it was written from, its delivery."""
    from rich.console import Console
    from rich.panel import Panel

    from persona.app import Runtime
    from persona.cli.runtime import with_runtime
    from persona.drafts import DraftStore

    console = Console(highlight=False)

    async def work(rt: Runtime) -> None:
        d = DraftStore(rt.store).get(draft_id)
        console.print(f"[bold]draft {d.id}[/] · {d.status} · invoice {d.txn_id} ({d.context.get('status')}) · "
                      f"drafted by {d.drafted_by} · conversation {d.conversation_id or '-'}")  # fmt: skip
        console.print(f"To: {d.customer_email or '(no email on the invoice)'}", markup=False)
        console.print(f"Subject: {d.subject}", markup=False)
        console.print(Panel(d.body, expand=False))
        if d.payment_link:
            console.print(f"Payment link: {d.payment_link} (new invoice {d.new_txn_id})", markup=False)
        if d.decided_by:
            console.print(f"Decided by {d.decided_by} at {d.decided_at:%Y-%m-%d %H:%M} UTC: {d.note or ''}")
        if d.delivery:
            for attempt in d.delivery.get("attempts", []):
                console.print(f"Delivery {attempt}", markup=False)

    with_runtime(work)


@app.command("approve")
def approve(draft_id: str, by: By, note: Note = None) -> None:
    """Approve a draft and hand it to the outbound channel."""
    _decide(draft_id, by, note, approve=True)


@app.command("reject")
def reject(draft_id: str, by: By, note: Note = None) -> None:
    """Reject a draft; it is never sent."""
    _decide(draft_id, by, note, approve=False)


@app.command("send")
def send(draft_id: str, by: By) -> None:
    """Deliver an approved draft again (after a failed delivery)."""
    from rich.console import Console

    from persona.app import Runtime
    from persona.cli.runtime import with_runtime

    async def work(rt: Runtime) -> str:
        return (await rt.reviews().send(draft_id, by=by)).status

    status = with_runtime(work)
    Console().print(f"draft {draft_id}: {status}")
    if status != "sent":
        raise typer.Exit(1)


def _decide(draft_id: str, by: str, note: str | None, *, approve: bool) -> None:
    from rich.console import Console

    from persona.app import Runtime
    from persona.cli.runtime import with_runtime
    from persona.drafts import Draft

    async def work(rt: Runtime) -> Draft:
        queue = rt.reviews()
        if approve:
            return await queue.approve(draft_id, by=by, note=note)
        return await queue.reject(draft_id, by=by, note=note)

    draft = with_runtime(work)
    last = (draft.delivery or {}).get("attempts", [{}])[-1]
    detail = f" (HTTP {last.get('status_code')})" if last.get("status_code") else ""
    if last.get("error"):
        detail = f" ({last['error']})"
    Console(highlight=False).print(f"draft {draft.id}: {draft.status} by {by}{detail}")
    if approve and draft.status != "sent":
        raise typer.Exit(1)
