"""The console's pages (GET): the review queue, approvals, refunds, churn, the inbox, the audit log.

Each reads through the same store the API's route of the same noun reads; filters are checked
against the same lists of values, and a bad one is a 400 page that names the valid values.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from persona.audit import AuditFilter
from persona.draft_links import link_of, original_terms
from persona.drafts import DRAFT_STATUSES, DraftStore
from persona.effects.ledger import EffectLedger
from persona.errors import NotFound, PersonaError
from persona.events import Source
from persona.http_auth import ADMIN, READERS, STAFF
from persona.inbox import STATES, Inbox
from persona.web.console import Console
from persona.web.sessions import Session

APPROVAL_STATUSES = ("pending", "approved", "rejected", "executed", "failed", "unknown", "all")
DONE = {
    "approved": "Approved.",
    "rejected": "Rejected: it will not go out.",
    "marked_sent": "Recorded as sent by hand.",
    "sent": "Sent again.",
    "send_failed": "Decided, but the delivery failed (see Delivery): send it again, or mark it sent by hand.",
    "retried": "Queued again; the worker takes it on its next poll.",
    "executed": "Approved and executed once.",
    "refused": "Rejected: the call will never execute.",
    "triaged": "Triaged by the written policy.",
}
"""Messages shown after an action (``?done=KEY``): fixed texts, so nothing from the URL is echoed."""


def choice(value: str | None, allowed: tuple[str, ...], name: str) -> str | None:
    if value is None or value == "":
        return None
    if value not in allowed:
        raise PersonaError(f"{name}: unknown value {value!r} (fix: use one of {', '.join(allowed)})")
    return value


def router(console: Console) -> APIRouter:
    web = APIRouter(include_in_schema=False)
    ops, flows = console.deps.operator, console.deps.flows
    operator = Depends(console.gate(STAFF, "work the review queue, refunds and inbox"))
    approver = Depends(console.gate(ADMIN, "decide approvals"))
    reader = Depends(console.gate(READERS, "read the audit log"))
    ledger = EffectLedger(ops.store, ops.now)

    def page(request: Request, session: Session, name: str, **values: Any) -> Response:
        done = DONE.get(request.query_params.get("done") or "")
        return console.page(request, session, name, done=done, **values)

    def bad(request: Request, session: Session, exc: Exception) -> Response:
        from persona.api.errors import status_of

        status, _ = status_of(exc)
        title = "Not found" if status == 404 else "Cannot show this"
        return console.refusal(request, session, status, title, str(exc))

    @web.get("/drafts")
    async def drafts(request: Request, status: str | None = None, session: Session = operator) -> Response:
        try:
            wanted = choice(status, (*DRAFT_STATUSES, "all"), "status")
        except PersonaError as exc:
            return bad(request, session, exc)
        store = DraftStore(ops.store)
        found = await asyncio.to_thread(store.find, None if wanted in (None, "all") else wanted)
        links = await asyncio.to_thread(lambda: {d.id: link_of(ledger, d) for d in found})  # one thread hop
        return page(request, session, "drafts.html.j2", drafts=found, links=links, status=wanted or "all",
                    statuses=(*DRAFT_STATUSES, "all"))  # fmt: skip

    @web.get("/drafts/{draft_id}")
    async def draft(request: Request, draft_id: str, session: Session = operator) -> Response:
        try:
            found = await asyncio.to_thread(DraftStore(ops.store).get, draft_id)
        except NotFound as exc:
            return bad(request, session, exc)
        link = await asyncio.to_thread(link_of, ledger, found)
        return page(request, session, "draft.html.j2", draft=found, link=link, owed=original_terms(found))

    @web.get("/approvals")
    async def approvals(request: Request, status: str | None = None, session: Session = approver) -> Response:
        try:
            wanted = choice(status, APPROVAL_STATUSES, "status") or "pending"
        except PersonaError as exc:
            return bad(request, session, exc)
        found = await asyncio.to_thread(ops.dispatcher.approvals.find, None if wanted == "all" else wanted)
        return page(request, session, "approvals.html.j2", approvals=found, status=wanted,
                    statuses=APPROVAL_STATUSES, same_user=ops.settings.approvals.require_different_user,
                    currencies={a.persona: _policy_currency(console, a.persona) for a in found})  # fmt: skip

    @web.get("/refunds")
    async def refunds(request: Request, session: Session = operator) -> Response:
        from persona.flows.refunds import list_decisions

        found = await asyncio.to_thread(list_decisions, flows, 100)
        return page(request, session, "refunds.html.j2", decisions=found)

    @web.get("/refunds/{decision_id}")
    async def refund(request: Request, decision_id: str, session: Session = operator) -> Response:
        from persona.flows.refunds import get_decision

        try:
            found = await asyncio.to_thread(get_decision, flows, decision_id)
        except NotFound as exc:
            return bad(request, session, exc)
        return page(request, session, "refund.html.j2", decision=found)

    @web.get("/churn")
    async def churn(request: Request, session: Session = operator) -> Response:
        from persona.flows.churn import list_reports

        found = await asyncio.to_thread(list_reports, flows, 50)
        return page(request, session, "churn.html.j2", reports=found)

    @web.get("/churn/{report_id}")
    async def churn_report(request: Request, report_id: str, session: Session = operator) -> Response:
        from persona.flows.churn import get_report

        try:
            found = await asyncio.to_thread(get_report, flows, report_id)
        except NotFound as exc:
            return bad(request, session, exc)
        return page(request, session, "churn_report.html.j2", report=found)

    @web.get("/inbox")
    async def inbox(request: Request, state: str | None = None, session: Session = operator) -> Response:
        try:
            wanted = choice(state, (*STATES, "all"), "state") or "all"
        except PersonaError as exc:
            return bad(request, session, exc)
        box = Inbox(ops.store)
        rows = await asyncio.to_thread(box.list, wanted, limit=200)
        counts = await asyncio.to_thread(box.counts)
        return page(request, session, "inbox.html.j2", rows=rows, state=wanted, states=(*STATES, "all"),
                    counts=counts)  # fmt: skip

    @web.get("/audit")
    async def audit(request: Request, session: Session = reader) -> Response:
        q = request.query_params
        try:
            flt = AuditFilter(
                user=q.get("user") or None, persona=q.get("persona") or None, event=q.get("event") or None,
                conversation_id=q.get("conversation") or None, tool=q.get("tool") or None,
                source=choice(q.get("source"), tuple(s.value for s in Source), "source"),
                since=_moment(q.get("since"), "since"), until=_moment(q.get("until"), "until"),
                limit=_limit(q.get("limit")), newest=True,
            )  # fmt: skip
        except PersonaError as exc:
            return bad(request, session, exc)
        records = await asyncio.to_thread(ops.audit.query, flt)
        return page(request, session, "audit.html.j2", records=list(reversed(records)), q=q,
                    sources=[s.value for s in Source])  # fmt: skip

    @web.get("/audit/verify")
    async def verify(request: Request, session: Session = reader) -> Response:
        from persona.operations import verify_audit

        findings = await asyncio.to_thread(verify_audit, ops)
        return page(request, session, "verify.html.j2", findings=findings,
                    ok=all(f.level != "bad" for f in findings))  # fmt: skip

    @web.get("/audit/records/{seq}")
    async def record(request: Request, seq: int, session: Session = reader) -> Response:
        found = await asyncio.to_thread(ops.audit.get, seq) if 0 <= seq < 2**63 else None
        if found is None:
            return bad(request, session, NotFound(f"no audit record #{seq}"))
        return page(request, session, "record.html.j2", record=found)

    @web.get("/audit/conversations/{conversation_id}")
    async def conversation(request: Request, conversation_id: str, session: Session = reader) -> Response:
        from persona.transcript import entries

        records = await asyncio.to_thread(ops.audit.conversation, conversation_id)
        if not records:
            return bad(request, session, NotFound(f"no audit records for conversation {conversation_id!r}"))
        return page(request, session, "conversation.html.j2", conversation_id=conversation_id,
                    entries=entries(records), first=records[0], last=records[-1])  # fmt: skip

    return web


def _policy_currency(console: Console, persona: str) -> str | None:
    settings = console.deps.operator.settings.personas.get(persona)
    policy = None if settings is None else settings.invoice_policy
    return None if policy is None else policy.currency


def _moment(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise PersonaError(
            f"{name}: {value!r} is not a date or time (fix: use 2026-12-01 or 2026-12-01T09:30)"
        ) from None


def _limit(value: str | None) -> int:
    if not value:
        return 100
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= 1000:
        raise PersonaError(f"limit: {value!r} is not a number from 1 to 1000")
    return int(value)
