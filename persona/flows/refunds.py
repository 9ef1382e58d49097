"""Refund triage: code reads the invoice and decides by the written policy; a persona explains.

The evaluator (:mod:`persona.flows.refund_policy`) decides approve / deny / escalate and names the
clause. The policy's persona then gathers facts with its tools, estimates what sending the refund
would cost and writes the explanation. What is stored is always the evaluator's decision; the cost
estimate is read from the tool results, not from the model's prose; an explanation that claims a
different outcome is flagged and replaced by the policy's own wording (the model's text is kept
for review). Nothing here sends money: a refund is a decision for a person to carry out.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

from sqlalchemy import select

from persona.audit import AuditEvent, AuditFilter
from persona.clock import as_utc
from persona.deps import FlowDeps
from persona.dispatcher import Outcome
from persona.errors import Conflict, NotFound
from persona.events import SOURCES, Event, FlowEvent
from persona.flows.refund_policy import (
    PriorDecision,
    RefundDecision,
    contradicts,
    evaluate,
    facts_from_operation,
    policy_explanation,
    pricing_currency,
)
from persona.flows.runs import FlowRuns
from persona.flows.turn import clean_text, conversation_id_for, persona_turn
from persona.loop import TurnResult
from persona.policy import PlisioPrices
from persona.store.flow_tables import refund_decisions
from tools.errors import PlisioApiError, PlisioDeadlineExceeded, PlisioProtocolError, PlisioTransportError
from tools.plisio.models import Operation

FLOW = "refund_triage"
TEMPLATE = "refund_triage.md.j2"
EXPLAINED_BY_POLICY = "policy"
STALE_RUN = timedelta(minutes=10)
"""A triage run still ``running`` after this long was left by a crashed process and is taken over."""
VERDICT_WORDS = {"approve": "approved", "deny": "denied", "escalate": "escalated to a person"}
_TXN_ID = re.compile(r"^[A-Za-z0-9]{6,40}$")
_ESTIMATES = {"plisio_estimate_fee": "fee", "plisio_estimate_commission": "commission"}
_TRIGGER_SOURCE = {"reconciler": "worker"}


@dataclass(frozen=True)
class RefundOutcome:
    """A stored refund decision, as listed and shown."""

    id: str
    txn_id: str
    decision: str
    clause: str
    rule_text: str
    refund_amount: Decimal | None
    refund_currency: str | None
    refund_value: Decimal | None
    """The refund in the policy currency (``value_currency``)."""
    explanation: str
    explained_by: str
    cost_estimate: dict[str, Any] | None
    created_at: datetime
    conversation_id: str | None
    requested_by: str = ""
    reason: str = ""
    detail: str = ""
    value_currency: str | None = None
    flags: tuple[str, ...] = ()
    facts: dict[str, Any] | None = None


def audit_source(trigger: str) -> str:
    """The audit ``source`` a trigger is recorded under (the audit log accepts a fixed set)."""
    source = _TRIGGER_SOURCE.get(trigger, trigger)
    if source not in SOURCES:
        raise ValueError(f"unknown trigger {trigger!r}; use one of {', '.join(sorted(SOURCES))}")
    return source


async def triage(
    deps: FlowDeps, *, txn_id: str, reason: str, requested_by: str, trigger: str
) -> RefundOutcome:
    """Decide a refund request for invoice ``txn_id`` by the policy, explain it, store and audit it.

    Raises :class:`NotFound` for an unknown invoice and :class:`PlisioTransportError` when Plisio
    cannot be reached; in both cases no decision is stored.
    """
    source = audit_source(trigger)
    policy = deps.settings.flows.refunds
    op = await _invoice(deps, txn_id)
    rates = await _rates(deps, op, policy.currency)
    reason_text = clean_text(reason, 2000) or ""
    runs = FlowRuns(deps.store, deps.now)
    key = ""
    for _ in range(3):
        prior = _prior(deps, txn_id)
        key = f"{FLOW}:{txn_id}:{len(prior)}"
        run, mine = runs.start(FLOW, key, trigger)
        if mine or (run.state == "running" and deps.now() - as_utc(run.started_at) > STALE_RUN):
            break
        if run.state == "running":
            raise Conflict(
                f"a refund request for invoice {txn_id} is being decided right now; try again shortly"
            )
    else:
        raise Conflict(f"refund requests for invoice {txn_id} keep arriving at once; try again")
    try:
        facts = facts_from_operation(op, reason=reason_text, requested_by=requested_by, rates=rates)
        decision = evaluate(policy, facts, now=deps.now(), prior=prior)
        outcome = await _explain_and_store(deps, decision, key=key, source=source, persona=policy.persona)
    except BaseException as exc:
        runs.finish(key, state="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    if outcome.conversation_id:
        runs.attach(key, outcome.conversation_id)
    runs.finish(key, state="done", summary=f"{outcome.id}: {outcome.decision} ({outcome.clause})")
    return outcome


async def _invoice(deps: FlowDeps, txn_id: str) -> Operation:
    if not _TXN_ID.fullmatch(txn_id):
        raise NotFound(f"{txn_id!r} is not a Plisio invoice id (6-40 letters and digits)")
    try:
        op = await deps.plisio.get_operation(txn_id)
    except PlisioApiError as exc:
        if exc.http_status == 404:
            raise NotFound(f"Plisio has no invoice {txn_id}") from None
        raise
    except (PlisioTransportError, PlisioDeadlineExceeded) as exc:
        raise PlisioTransportError(
            f"cannot triage the refund for {txn_id}: Plisio is unreachable ({exc.message}); no decision was stored",
            route=exc.route,
        ) from None
    if op.type != "invoice":
        raise NotFound(f"{txn_id} is a {op.type or 'non-invoice'} operation, not an invoice")
    return op


async def _rates(deps: FlowDeps, op: Operation, currency: str) -> dict[str, Decimal]:
    """Policy-currency value of the invoice's pricing currency; empty when Plisio gives no rate."""
    pricing = pricing_currency(op)
    if not pricing or pricing == currency:
        return {}
    prices = PlisioPrices(deps.plisio)
    try:
        if pricing == (op.psys_cid or op.currency):  # priced in crypto
            return {pricing: await prices.price(pricing, currency)}
        # A fiat price: a cross rate through one coin, both legs from the same Plisio rate table.
        n, d = await prices.cross(pricing, currency)
        with localcontext() as ctx:
            ctx.prec = 50
            return {pricing: n / d}
    except (LookupError, ArithmeticError, PlisioApiError, PlisioProtocolError):
        return {}  # no usable rate: the refund is not valued (the policy escalates, never approves)
    except (PlisioTransportError, PlisioDeadlineExceeded) as exc:
        raise PlisioTransportError(
            f"cannot value the refund for {op.id} in {currency}: Plisio is unreachable ({exc.message}); "
            "no decision was stored",
            route=exc.route,
        ) from None


def _prior(deps: FlowDeps, txn_id: str) -> list[PriorDecision]:
    query = (
        select(refund_decisions)
        .where(refund_decisions.c.txn_id == txn_id)
        .order_by(refund_decisions.c.created_at, refund_decisions.c.id)
    )
    with deps.store.read("read refund decisions") as conn:
        rows = list(conn.execute(query))
    return [PriorDecision(r.id, r.txn_id, r.decision, r.clause, as_utc(r.created_at)) for r in rows]


async def _explain_and_store(
    deps: FlowDeps, decision: RefundDecision, *, key: str, source: str, persona: str
) -> RefundOutcome:
    facts = decision.facts
    decision_id = uuid.uuid4().hex[:12]
    projection = _projection(decision)
    result = await persona_turn(
        deps,
        flow=FLOW,
        persona=persona,
        key=key,
        source=source,
        template=TEMPLATE,
        instruction=_instruction(decision),
        facts=projection,
        user=facts.requested_by,
        extra={"refund_policy": deps.settings.flows.refunds, "verdict": VERDICT_WORDS[decision.verdict]},
    )
    fallback = policy_explanation(decision)
    flags: list[str] = []
    model_text: str | None = None
    conversation_id: str | None = None
    cost: dict[str, Any] | None = None
    if result is None:
        explanation, explained_by = fallback, EXPLAINED_BY_POLICY
    else:
        conversation_id = conversation_id_for(FLOW, key)
        cost = cost_estimate(result, decision.refund_currency or facts.psys_cid)
        flags += result.flags
        model_text = clean_text(result.text, 4000) or ""
        contradiction = contradicts(model_text, decision.verdict)
        if result.stopped_by is not None or not model_text:
            flags.append(f"model_unfinished:{result.stopped_by or 'empty'}")
            explanation, explained_by = fallback, EXPLAINED_BY_POLICY
        elif contradiction is not None:
            flags.append(f"explanation_contradicts_decision:{contradiction}")
            explanation, explained_by = fallback, EXPLAINED_BY_POLICY
        else:
            explanation, explained_by = model_text, model_name(deps, conversation_id, persona)
    stored_facts = {
        "invoice": facts.to_dict(),
        "decision": decision.to_dict(),
        "review": {
            "flags": flags,
            "model_explanation": model_text if explained_by == EXPLAINED_BY_POLICY else None,
        },
    }
    now = deps.now()
    with deps.store.begin("store a refund decision") as conn:
        conn.execute(
            refund_decisions.insert().values(
                id=decision_id, txn_id=facts.txn_id, requested_by=facts.requested_by, reason=facts.reason,
                decision=decision.verdict, clause=decision.clause, rule_text=decision.rule_text,
                refund_amount=decision.refund_amount, refund_currency=decision.refund_currency,
                facts=json.dumps(stored_facts, sort_keys=True), cost_estimate=None if cost is None else json.dumps(cost),
                explanation=explanation, explained_by=explained_by, conversation_id=conversation_id, created_at=now,
            )
        )  # fmt: skip
    outcome = RefundOutcome(
        id=decision_id, txn_id=facts.txn_id, decision=decision.verdict, clause=decision.clause,
        rule_text=decision.rule_text, refund_amount=decision.refund_amount, refund_currency=decision.refund_currency,
        refund_value=decision.refund_value, explanation=explanation, explained_by=explained_by, cost_estimate=cost,
        created_at=now, conversation_id=conversation_id, requested_by=facts.requested_by, reason=facts.reason,
        detail=decision.detail, value_currency=decision.value_currency, flags=tuple(flags), facts=stored_facts,
    )  # fmt: skip
    await _audit(deps, outcome, source=source, persona=persona)
    return outcome


async def _audit(deps: FlowDeps, outcome: RefundOutcome, *, source: str, persona: str) -> None:
    payload = {
        "refund_decision_id": outcome.id, "txn_id": outcome.txn_id, "clause": outcome.clause,
        "detail": outcome.detail, "refund_amount": _s(outcome.refund_amount), "refund_currency": outcome.refund_currency,
        "refund_value": _s(outcome.refund_value), "value_currency": outcome.value_currency,
        "explained_by": outcome.explained_by, "cost_estimate": outcome.cost_estimate, "flags": list(outcome.flags),
        "reason_text": outcome.reason,
    }  # fmt: skip
    common = {
        "source": source, "user": outcome.requested_by, "persona": persona,
        "conversation_id": outcome.conversation_id,
    }  # fmt: skip
    await deps.audit.append(
        AuditEvent(
            event=FlowEvent.REFUND_DECIDED,
            decision=outcome.decision,
            reason=outcome.clause,
            payload=payload,
            **common,
        )
    )
    contradiction = [f for f in outcome.flags if f.startswith("explanation_contradicts_decision")]
    if contradiction:
        review = (outcome.facts or {}).get("review", {})
        await deps.audit.append(
            AuditEvent(
                event=FlowEvent.REFUND_EXPLANATION_FLAGGED, decision=outcome.decision, reason=contradiction[0],
                payload={"refund_decision_id": outcome.id, "txn_id": outcome.txn_id,
                         "model_explanation": review.get("model_explanation")},
                **common,
            )
        )  # fmt: skip


def _projection(decision: RefundDecision) -> dict[str, Any]:
    """What the persona sees: typed facts and the decision, free text bounded."""
    facts = decision.facts
    invoice = facts.to_dict()
    invoice["order_name"] = clean_text(facts.order_name)
    invoice.pop("reason", None)
    invoice.pop("requested_by", None)
    estimate: dict[str, Any] | None = None
    if decision.refund_amount is not None and decision.refund_amount > 0:
        estimate = {
            "psys_cid": decision.refund_currency,
            "amount": str(decision.refund_amount),
            "address": facts.wallet_hash,
            "address_note": "the customer gave no refund address: this is the invoice's own wallet_hash, "
            "used only to estimate the cost; say so",
        }
    return {
        "refund_request": {"reason": clean_text(facts.reason, 500), "requested_by": facts.requested_by},
        "invoice": invoice,
        "decision": decision.to_dict(),
        "cost_estimate_inputs": estimate,
    }


def _instruction(decision: RefundDecision) -> str:
    word = VERDICT_WORDS[decision.verdict]
    steps = [
        f"A refund was requested for invoice {decision.facts.txn_id}. The refund policy has decided: {word} "
        f"(clause {decision.clause}). That decision is final; you explain it, you do not change it.",
        "1. Check the invoice with plisio_get_invoice or plisio_get_transaction.",
    ]
    if decision.refund_amount is not None and decision.refund_amount > 0:
        steps.append(
            "2. Estimate the cost of sending the refund: call plisio_estimate_fee and plisio_estimate_commission "
            "with the psys_cid, address and amount in cost_estimate_inputs. The address is the invoice's "
            "wallet_hash because the customer gave none: say so."
        )
    else:
        steps.append("2. Nothing will be sent, so no cost estimate is needed.")
    steps.append(
        f"3. Write a short explanation (under 120 words) for the finance team: first sentence says the refund is "
        f"{word} and why (the rule), then the amounts and the estimated cost if you have one."
    )
    return "\n".join(steps)


def model_name(deps: FlowDeps, conversation_id: str, default: str) -> str:
    """Which model wrote the turn's last answer, from the audit log (the flow never holds the model)."""
    records = deps.audit.query(
        AuditFilter(conversation_id=conversation_id, event=Event.MODEL_RESPONSE, limit=1, newest=True)
    )
    return next((r.model for r in records if r.model), default)


def cost_estimate(result: TurnResult, coin: str) -> dict[str, Any] | None:
    """The last successful fee and commission estimates for ``coin`` from the turn's tool results."""
    found: dict[str, Any] = {}
    for call in result.calls:
        kind = _ESTIMATES.get(call.tool)
        if kind is None or call.outcome not in (Outcome.SUCCEEDED, Outcome.REPLAYED):
            continue
        if call.result is None or not call.result.ok or not isinstance(call.result.data, dict):
            continue
        data = call.result.data
        if data.get("psys_cid") not in (None, coin):
            continue
        found[kind] = {**data, "tool_call_id": call.call_id}
    return found or None


# -- reading ---------------------------------------------------------------------------------------


def list_decisions(deps: FlowDeps, limit: int = 50) -> list[RefundOutcome]:
    """Newest first."""
    query = (
        select(refund_decisions)
        .order_by(refund_decisions.c.created_at.desc(), refund_decisions.c.id.desc())
        .limit(max(1, min(limit, 1000)))
    )
    with deps.store.read("read refund decisions") as conn:
        return [_outcome(r) for r in conn.execute(query)]


def ids_starting(deps: FlowDeps, prefix: str, limit: int) -> list[str]:
    """Decision ids that start with ``prefix`` (an id given by its first characters), in id order."""
    return deps.store.starting(refund_decisions.c.id, prefix, limit, "find a refund decision")


def get_decision(deps: FlowDeps, decision_id: str) -> RefundOutcome:
    with deps.store.read("read a refund decision") as conn:
        row = conn.execute(select(refund_decisions).where(refund_decisions.c.id == decision_id)).first()
    if row is None:
        raise NotFound(f"no refund decision {decision_id!r}; `persona refunds list` shows them")
    return _outcome(row)


def _outcome(row: Any) -> RefundOutcome:
    facts = json.loads(row.facts)
    decided = facts.get("decision", {})
    value = decided.get("refund_value")
    amount = decided.get("refund_amount")  # the exact string; the Numeric column may round on SQLite
    return RefundOutcome(
        id=row.id, txn_id=row.txn_id, decision=row.decision, clause=row.clause, rule_text=row.rule_text,
        refund_amount=Decimal(amount) if amount is not None else _decimal(row.refund_amount), refund_currency=row.refund_currency,
        refund_value=None if value is None else Decimal(value), explanation=row.explanation,
        explained_by=row.explained_by, cost_estimate=None if row.cost_estimate is None else json.loads(row.cost_estimate),
        created_at=as_utc(row.created_at), conversation_id=row.conversation_id, requested_by=row.requested_by,
        reason=row.reason, detail=decided.get("detail", ""), value_currency=decided.get("value_currency"),
        flags=tuple(facts.get("review", {}).get("flags", [])), facts=facts,
    )  # fmt: skip


def _decimal(value: Any) -> Decimal | None:
    if value is None:
        return None
    exact = value if isinstance(value, Decimal) else Decimal(str(value))
    return Decimal(format(exact.normalize(), "f"))


def _s(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


__all__ = [
    "RefundOutcome",
    "audit_source",
    "contradicts",
    "cost_estimate",
    "get_decision",
    "list_decisions",
    "model_name",
    "policy_explanation",
    "triage",
]
