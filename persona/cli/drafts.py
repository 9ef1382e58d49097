"""``persona drafts``: the review queue. Nothing reaches a customer until a person approves it here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from persona.cli.output import AsJson, AsJsonl

if TYPE_CHECKING:
    from persona.app import Runtime

app = typer.Typer(
    rich_markup_mode=None, help="Drafted customer messages waiting for review.", no_args_is_help=True
)


By = Annotated[str, typer.Option("--by", help="Who decides: a user's email (recorded in the audit log).")]
Note = Annotated[str | None, typer.Option("--note", help="Why.")]
DraftId = Annotated[str, typer.Argument(help="The draft's id, or its first characters.")]


def _resolve(rt: Runtime, given: str) -> str:
    from persona.cli.options import resolve_id
    from persona.drafts import DraftStore

    return resolve_id(given, DraftStore(rt.store).ids_starting, "draft")


@app.command("list")
def list_drafts(
    status: Annotated[
        str,
        typer.Option(
            "--status", help="pending_review, approved, sent, send_failed, rejected, obsolete or all."
        ),
    ] = "pending_review",
    as_json: AsJson = False,
    as_jsonl: AsJsonl = False,
) -> None:
    """List drafts (those waiting for review by default)."""
    from persona.cli.options import choice
    from persona.cli.output import emit_list
    from persona.cli.runtime import with_runtime
    from persona.drafts import DRAFT_STATUSES, DraftStore

    choice(status, (*DRAFT_STATUSES, "all"), "--status")

    async def work(rt: Runtime) -> None:
        found = DraftStore(rt.store).find(None if status == "all" else status)
        rows = [
            (d.id, d.status, d.txn_id, d.customer_email, "yes" if d.payment_link else "", d.drafted_by,
             d.created_at, d.subject)
            for d in found
        ]  # fmt: skip
        emit_list(
            f"{len(found)} draft(s) · {status}",
            ("id", "status", "invoice", "customer", "link", "by", "created", "subject"),
            rows,
            found,
            as_json=as_json,
            as_jsonl=as_jsonl,
        )

    with_runtime(work)


@app.command("show")
def show(draft_id: DraftId, as_json: AsJson = False) -> None:
    """Show a draft in full: the message, the facts it was written from, its delivery."""
    import sys

    from rich.console import Console
    from rich.panel import Panel
    from rich.text import Text

    from persona.cli.output import print_json
    from persona.cli.runtime import with_runtime
    from persona.draft_links import link_of, original_terms
    from persona.drafts import DraftStore
    from persona.effects.ledger import EffectLedger
    from persona.jsonutil import rfc3339

    console = Console(highlight=False, soft_wrap=True)

    async def work(rt: Runtime) -> None:
        d = DraftStore(rt.store).get(_resolve(rt, draft_id))
        if as_json:
            print_json(d)
            return
        console.print(
            Text.assemble(
                (f"draft {d.id}", "bold"),
                f" · {d.status} · invoice {d.txn_id} ({d.context.get('status')}) · drafted by {d.drafted_by}"
                f" · conversation {d.conversation_id or '-'}",
            )
        )
        console.print(f"To: {d.customer_email or '(no email on the invoice)'}", markup=False)
        console.print(f"Subject: {d.subject}", markup=False)
        if sys.stdout.isatty():
            console.print(Panel(Text(d.body), expand=False), soft_wrap=False)
        else:
            console.print(d.body, markup=False)
        owed = original_terms(d)
        console.print(
            f"Failed invoice: {d.context.get('price') or d.context.get('amount_due')} "
            f"{d.context.get('price_currency') or d.context.get('psys_cid')} · {d.context.get('status')} · "
            f"{d.customer_email or 'no email'} · owed {owed.amount} {owed.currency}",
            markup=False,
        )
        if d.payment_link:
            link = link_of(EffectLedger(rt.store, rt.now), d)
            console.print(
                f"Payment link: {d.payment_link} (new invoice {d.new_txn_id}) · {link.terms.amount} "
                f"{link.terms.currency} · {link.terms.email or 'no email'}",
                markup=False,
            )
            for warning in link.warnings:
                console.print(f"! {warning}", markup=False)
        if d.decided_by:
            at = rfc3339(d.decided_at, precise=False) if d.decided_at else "-"
            console.print(f"Decided by {d.decided_by} at {at}: {d.note or ''}", markup=False)
        if d.delivery:
            for attempt in d.delivery.get("attempts", []):
                console.print(f"Delivery {attempt}", markup=False)

    with_runtime(work)


@app.command("approve")
def approve(draft_id: DraftId, by: By, note: Note = None) -> None:
    """Approve a draft and hand it to the outbound channel."""
    _decide(draft_id, by, note, approve=True)


@app.command("reject")
def reject(draft_id: DraftId, by: By, note: Note = None) -> None:
    """Reject a draft; it is never sent."""
    _decide(draft_id, by, note, approve=False)


@app.command("send")
def send(draft_id: DraftId, by: By) -> None:
    """Deliver an approved draft again (after a failed delivery)."""
    from rich.console import Console

    from persona.cli.identity import resolve_actor
    from persona.cli.runtime import with_runtime

    async def work(rt: Runtime) -> tuple[str, str]:
        actor = resolve_actor(rt, by)
        resolved = _resolve(rt, draft_id)
        return resolved, (await rt.reviews.send(resolved, by=actor)).status

    resolved, status = with_runtime(work)
    Console(highlight=False).print(f"draft {resolved}: {status}", markup=False)
    if status != "sent":
        raise typer.Exit(1)


@app.command("mark-sent")
def mark_sent(draft_id: DraftId, by: By, note: Note = None) -> None:
    """Record that you sent the message yourself (no outbound channel, or another one); a draft still waiting
    for review is approved by you first."""
    from persona.cli.identity import resolve_actor
    from persona.cli.runtime import with_runtime

    async def work(rt: Runtime) -> tuple[str, str, str]:
        actor = resolve_actor(rt, by)
        resolved = _resolve(rt, draft_id)
        return resolved, (await rt.reviews.mark_sent(resolved, by=actor, note=note)).status, actor

    resolved, status, actor = with_runtime(work)
    typer.echo(f"draft {resolved}: {status} (by hand, {actor})")


def _decide(draft_id: str, by: str, note: str | None, *, approve: bool) -> None:
    from rich.console import Console

    from persona.cli.identity import resolve_actor
    from persona.cli.runtime import with_runtime
    from persona.drafts import Draft

    async def work(rt: Runtime) -> tuple[Draft, str]:
        actor = resolve_actor(rt, by)
        resolved = _resolve(rt, draft_id)
        queue = rt.reviews
        if approve:
            return await queue.approve(resolved, by=actor, note=note), actor
        return await queue.reject(resolved, by=actor, note=note), actor

    draft, by = with_runtime(work)
    last = (draft.delivery or {}).get("attempts", [{}])[-1]
    detail = f" (HTTP {last.get('status_code')})" if last.get("status_code") else ""
    if last.get("error"):
        detail = f" ({last['error']})"
    Console(highlight=False).print(f"draft {draft.id}: {draft.status} by {by}{detail}")
    if approve and draft.status != "sent":
        raise typer.Exit(1)
