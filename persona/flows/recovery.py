"""Flow 1: failed-payment recovery. Code decides that it runs; a persona drafts; a person sends.

Triggered (by the worker, on the status re-read from Plisio) for ``expired`` (including
underpaid), ``cancelled`` and ``error``; never for ``cancelled duplicate`` (superseded, not
failed) or ``mismatch`` (overpaid). The persona pulls the customer's context with its own
tool calls and writes the message; a fresh payment link, if it created one within policy,
is attached by code from the tool result. The draft waits in the review queue.

One failed invoice -> at most one draft and at most one fresh link: the flow run, the draft and the
fresh link's effect are keyed by ``recovery:<txn_id>`` (the link is the effect ``(recovery:<txn_id>,
fresh_link)``, whichever path asks for it, the model's or the template's), so a duplicate callback, the
reconciler, a turn that stopped half-way or a worker that crashed mid-flow and was replaced all end at
the same single draft with the same single link.
"""

from __future__ import annotations

import asyncio
import json
import re
from decimal import Decimal
from typing import Any

import structlog

from persona.audit import AuditEvent
from persona.calls import call_context
from persona.deps import FlowDeps
from persona.dispatcher import Dispatched, Outcome
from persona.drafts import Draft, DraftStore
from persona.errors import EffectUnresolved
from persona.events import FlowEvent, Source
from persona.flows.runs import FlowRuns
from persona.flows.turn import clean_text, persona_turn
from persona.llm import ToolCall
from persona.loop import TurnResult
from tools.errors import PlisioError
from tools.plisio.models import Operation
from tools.plisio.views import iso, money

log = structlog.get_logger(__name__)

FLOW = "recovery"
SUCCESS = frozenset({"completed", "mismatch"})
SLOTS = {"plisio_create_invoice": "fresh_link"}
"""The flow's one side effect: whichever path creates the fresh link, it is this effect."""


def flow_key(txn_id: str) -> str:
    return f"{FLOW}:{txn_id}"


def facts_for(op: Operation) -> dict[str, Any]:
    """The typed projection of a failed invoice that the persona sees (never the raw callback)."""
    params = op.params
    received = op.actual_sum or Decimal(0)
    due = op.amount or Decimal(0)
    underpaid = op.status == "expired" and received > 0
    return {
        "txn_id": op.id,
        "status": op.status,
        "underpaid": underpaid,
        "psys_cid": op.psys_cid,
        "amount_due": money(due),
        "amount_received": money(received),
        "amount_still_due": money(max(due - received, Decimal(0))) if underpaid else None,
        "price": money(params.source_amount) if params and params.source_amount else None,
        "price_currency": (params.source_currency if params else None) or op.source_currency,
        "order_number": clean_text(params.order_number if params else None, 64),
        "order_name": clean_text(params.order_name if params else None, 120),
        "customer_email": clean_text(params.email if params else None, 254),
        "created_at": iso(op.created_at_utc),
        "expired_at": iso(op.expire_at_utc),
    }


def debt_terms(facts: dict[str, Any]) -> dict[str, Any] | None:
    """What a fresh link for this failed invoice must ask, fixed in code: the original price, currency and
    email; for an expired, underpaid invoice exactly the remainder, in the coin it was paid in. None when
    the invoice holds too little to tie a link to (no link is offered then)."""
    email = facts.get("customer_email")
    if facts.get("underpaid") and facts.get("amount_still_due") and facts.get("psys_cid"):
        return {"amount": facts["amount_still_due"], "currency": facts["psys_cid"], "source_amount": None,
                "source_currency": None, "email": email}  # fmt: skip
    if facts.get("price") and facts.get("price_currency"):
        return {"source_amount": facts["price"], "source_currency": facts["price_currency"], "amount": None,
                "email": email}  # fmt: skip
    if facts.get("amount_due") and facts.get("psys_cid"):
        return {"amount": facts["amount_due"], "currency": facts["psys_cid"], "source_amount": None,
                "source_currency": None, "email": email}  # fmt: skip
    return None


_JSON_OBJECT = re.compile(r"\{.*\}", re.S)


def parse_draft(text: str, fallback_subject: str) -> tuple[str, str]:
    """The persona ends with ``{"subject", "body"}``; be lenient with what surrounds it."""
    match = _JSON_OBJECT.search(text or "")
    if match:
        try:
            data = json.loads(match.group(0), strict=False)  # models put raw newlines in strings
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("body"), str) and data["body"].strip():
            subject = data.get("subject") if isinstance(data.get("subject"), str) else fallback_subject
            return (subject or fallback_subject).strip()[:200], data["body"].strip()
    return fallback_subject, (text or "").strip()


def template_draft(facts: dict[str, Any], shop: str, link: str | None) -> tuple[str, str]:
    """Used when no model is configured: plain, factual, and still reviewed by a person."""
    what = facts.get("order_name") or "your order"
    price = f"{facts['price']} {facts['price_currency']}" if facts.get("price") else "the amount due"
    if facts.get("underpaid"):
        opening = (
            f"We received {facts['amount_received']} {facts['psys_cid']} for {what}, but the invoice expired "
            f"before the full amount arrived: {facts['amount_still_due']} {facts['psys_cid']} was still due."
        )
    else:
        opening = f"Your payment of {price} for {what} did not go through (the invoice {facts['status']})."
    action = (
        f"You can complete it here: {link}" if link else "Reply to this email and we will send a new link."
    )
    body = f"Hello,\n\n{opening} {action}\n\nThe {shop} team"
    return f"Your payment for {what} did not go through", body


def _link_from(result: TurnResult | None) -> tuple[str | None, str | None]:
    for call in result.calls if result else ():
        if call.tool == "plisio_create_invoice" and call.outcome in (Outcome.SUCCEEDED, Outcome.REPLAYED):
            data = call.data()
            return data.get("invoice_url"), data.get("txn_id")
    return None, None


def _wait_for_link(calls: list[Dispatched]) -> None:
    """A fresh link sent with no answer yet: no draft now (it would go out without the link while the
    invoice exists); the worker retries the flow, and the retry finds the link's effect resolved."""
    creates = [c for c in calls if c.tool == "plisio_create_invoice"]
    if any(c.outcome in (Outcome.SUCCEEDED, Outcome.REPLAYED) for c in creates):
        return
    for call in creates:
        if call.outcome is Outcome.UNKNOWN:
            raise EffectUnresolved(
                f"the fresh payment link (effect {call.effect_id}) was sent to Plisio and its outcome is not "
                "known yet; the draft waits until it is resolved (the worker retries; `persona effects resolve`)"
            )


async def _shop_name(deps: FlowDeps) -> str:
    try:
        shop = await deps.plisio.get_shop()
    except PlisioError:
        return "Plisio shop"
    return clean_text(shop.name, 60) or "Plisio shop"


async def _template_link(
    deps: FlowDeps, facts: dict[str, Any], key: str, source: str
) -> tuple[str | None, str | None]:
    """Without a model, code asks for the fresh link itself, through the same dispatcher and policy."""
    settings = deps.settings.flows.recovery
    terms = debt_terms(facts)
    if not settings.offer_new_link or terms is None:
        return None, None
    args = {
        "order_name": facts.get("order_name") or "Order",
        **{k: v for k, v in terms.items() if v is not None},
    }
    ctx = call_context(deps.settings, settings.persona, f"system:{FLOW}", source=source, flow_key=key, slots=SLOTS,
                     pinned={"plisio_create_invoice": terms},
                     conversation_id=f"{FLOW}_template_{facts['txn_id']}")  # fmt: skip
    done = await deps.dispatcher.dispatch(ToolCall(id="fresh_link", name="plisio_create_invoice",
                                                 arguments=json.dumps(args)), ctx, seq=0)  # fmt: skip
    _wait_for_link([done])
    if done.outcome not in (Outcome.SUCCEEDED, Outcome.REPLAYED):
        return None, None
    data = done.data()
    return data.get("invoice_url"), data.get("txn_id")


async def handle_failure(deps: FlowDeps, op: Operation, *, trigger: str) -> Draft | None:
    """Draft a recovery message for a failed invoice (at most one per invoice)."""
    settings = deps.settings.flows.recovery
    if op.type not in (None, "invoice") or op.status not in settings.statuses:
        return None
    key = flow_key(op.id)
    drafts = DraftStore(deps.store)
    existing = await asyncio.to_thread(drafts.by_key, key)
    if existing is not None:
        return existing
    runs = FlowRuns(deps.store, deps.now)
    run, mine = await asyncio.to_thread(runs.start, FLOW, key, trigger)
    if not mine and run.state == "done":
        return await asyncio.to_thread(drafts.by_key, key)
    # A "running" run left by a crashed worker: the caller holds the inbox lease, so it takes over.
    source = Source.WORKER if trigger in {"webhook", "reconciler", "worker"} else trigger
    facts = facts_for(op)
    terms = debt_terms(facts)
    try:
        shop = await _shop_name(deps)
        result = await persona_turn(
            deps, flow=FLOW, persona=settings.persona, key=key, source=source, template="recovery.md.j2",
            instruction="A customer's payment failed. Check their invoice and history with your tools, then draft "
            "one recovery message.",
            facts=facts, user=f"system:{FLOW}", extra={"offer_new_link": settings.offer_new_link, "shop": shop},
            slots=SLOTS, pinned={"plisio_create_invoice": terms} if terms is not None else None,
        )  # fmt: skip
        fallback_subject = f"Your payment for {facts.get('order_name') or 'your order'} did not go through"
        if result is None or result.stopped_by is not None:
            link, new_txn = await _template_link(deps, facts, key, source)
            subject, body = template_draft(facts, shop, link)
            drafted_by = "template"
        else:
            _wait_for_link(result.calls)
            link, new_txn = _link_from(result)
            subject, body = parse_draft(result.text, fallback_subject)
            drafted_by = result.model or "model"
        draft, created = await asyncio.to_thread(
            drafts.create, flow_key=key, txn_id=op.id, order_number=facts.get("order_number"),
            customer_email=facts.get("customer_email"), subject=subject, body=body, payment_link=link,
            new_txn_id=new_txn, context=facts, drafted_by=drafted_by,
            conversation_id=None if result is None else result.conversation_id, now=deps.now(),
        )  # fmt: skip
    except Exception as exc:
        await asyncio.to_thread(runs.finish, key, state="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    await asyncio.to_thread(runs.finish, key, state="done", summary=f"draft {draft.id} ({drafted_by})")
    if created:
        await deps.audit.append(
            AuditEvent(
                event=FlowEvent.DRAFT_CREATED, source=source, user=f"system:{FLOW}", persona=settings.persona,
                conversation_id=draft.conversation_id,
                payload={"draft_id": draft.id, "txn_id": op.id, "status": op.status, "drafted_by": drafted_by,
                         "payment_link": link, "underpaid": facts["underpaid"]},
            )
        )  # fmt: skip
        log.info("recovery_draft_created", draft_id=draft.id, txn_id=op.id, drafted_by=drafted_by)
    return draft


async def handle_success(deps: FlowDeps, op: Operation) -> None:
    """The customer paid after all: a recovery draft still waiting for review is now obsolete."""
    drafts = DraftStore(deps.store)
    for draft in await asyncio.to_thread(drafts.for_invoice, op.id):
        if draft.status != "pending_review":
            continue
        obsolete = await asyncio.to_thread(
            drafts.transition, draft.id, from_=("pending_review",), to="obsolete", by=None,
            note=f"the invoice is now {op.status}: no message needed", now=deps.now(),
        )  # fmt: skip
        await deps.audit.append(
            AuditEvent(
                event=FlowEvent.DRAFT_OBSOLETED, source=Source.WORKER, user=f"system:{FLOW}",
                conversation_id=obsolete.conversation_id,
                payload={"draft_id": draft.id, "txn_id": op.id, "status": op.status},
            )
        )  # fmt: skip
