"""The refund policy evaluator: pure code that decides approve / deny / escalate and names the clause.

The policy is written in ``config.yaml`` (``flows.refunds``). Facts come from code reading the
operation from Plisio, never from a model, and the model that explains a decision cannot change it.
Clauses are tried in a fixed order and the first that decides names itself by its config key:

1. ``flows.refunds.one_per_invoice``    an earlier approve/escalate for the invoice -> deny
2. ``flows.refunds.escalate_reasons``   the reason mentions a listed word -> escalate
3. ``flows.refunds.underpaid``          expired with funds: escalate | deny | go on with what was received
   ``flows.refunds.eligible_statuses``  any other status not listed -> deny
4. ``flows.refunds.window_days``        paid more than ``window_days`` ago -> deny
5. ``flows.refunds.mismatch``           overpaid: escalate, or refund the overpaid part / everything
6. ``flows.refunds.currency``           no rate to value the refund in the policy currency -> escalate
7. ``flows.refunds.max_amount``         above -> deny
8. ``flows.refunds.auto_approve_up_to`` at or below -> approve; above -> escalate for a person
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from persona.settings import RefundPolicy
from tools.plisio.models import Operation

Verdict = Literal["approve", "deny", "escalate"]
CENT = Decimal("0.01")
PREFIX = "flows.refunds."


class Clause:
    """Config keys the decisions name (``one_per_invoice`` is built in, not a setting)."""

    ONE_PER_INVOICE = PREFIX + "one_per_invoice"
    ESCALATE_REASONS = PREFIX + "escalate_reasons"
    ELIGIBLE_STATUSES = PREFIX + "eligible_statuses"
    UNDERPAID = PREFIX + "underpaid"
    WINDOW_DAYS = PREFIX + "window_days"
    MISMATCH = PREFIX + "mismatch"
    CURRENCY = PREFIX + "currency"
    MAX_AMOUNT = PREFIX + "max_amount"
    AUTO_APPROVE_UP_TO = PREFIX + "auto_approve_up_to"


@dataclass(frozen=True)
class RefundFacts:
    """What the policy looks at, read from the Plisio operation by code."""

    txn_id: str
    status: str
    psys_cid: str
    """The invoice coin: a refund goes back in it."""
    expected: Decimal
    """Crypto amount the invoice asked for."""
    received: Decimal
    """Crypto amount that arrived."""
    fiat_amount: Decimal | None
    """The invoice's price (``params.source_amount``), if it was priced in fiat."""
    fiat_currency: str | None
    paid_at: datetime | None
    """``finished_at_utc``, else ``created_at_utc``."""
    reason: str
    requested_by: str
    rates: Mapping[str, Decimal] = field(default_factory=dict)
    """Policy-currency value of one unit of a currency (fiat code or coin), fetched from Plisio."""
    order_number: str | None = None
    order_name: str | None = None
    email: str | None = None
    wallet_hash: str | None = None
    created_at: datetime | None = None

    @property
    def underpaid(self) -> bool:
        return self.status == "expired" and self.received > 0

    @property
    def overpaid(self) -> Decimal:
        return max(self.received - self.expected, Decimal(0))

    @property
    def pricing_currency(self) -> str:
        """The currency the invoice's value is known in: its fiat price, else its coin."""
        return self.fiat_currency if self.fiat_amount is not None and self.fiat_currency else self.psys_cid

    def to_dict(self) -> dict[str, Any]:
        return {
            "txn_id": self.txn_id,
            "order_number": self.order_number,
            "order_name": self.order_name,
            "email": self.email,
            "status": self.status,
            "psys_cid": self.psys_cid,
            "expected": str(self.expected),
            "received": str(self.received),
            "overpaid": str(self.overpaid) if self.status == "mismatch" else None,
            "underpaid": self.underpaid,
            "fiat_amount": _s(self.fiat_amount),
            "fiat_currency": self.fiat_currency,
            "paid_at": _iso(self.paid_at),
            "created_at": _iso(self.created_at),
            "wallet_hash": self.wallet_hash,
            "reason": self.reason,
            "requested_by": self.requested_by,
            "rates": {k: str(v) for k, v in sorted(self.rates.items())},
        }


@dataclass(frozen=True)
class PriorDecision:
    id: str
    txn_id: str
    decision: str
    clause: str
    created_at: datetime | None = None


@dataclass(frozen=True)
class RefundDecision:
    verdict: Verdict
    clause: str
    rule_text: str
    """The clause as the policy states it."""
    detail: str
    """How the clause applied to these facts."""
    facts: RefundFacts
    refund_amount: Decimal | None = None
    """Crypto to send back, in ``refund_currency`` (the invoice coin); None when denied."""
    refund_currency: str | None = None
    refund_fiat: Decimal | None = None
    """The same amount in the invoice's pricing currency (at the invoice's own rate)."""
    refund_fiat_currency: str | None = None
    refund_value: Decimal | None = None
    """The same amount in the policy currency, the one the limits are written in."""
    value_currency: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "clause": self.clause,
            "rule": self.rule_text,
            "detail": self.detail,
            "refund_amount": _s(self.refund_amount),
            "refund_currency": self.refund_currency,
            "refund_fiat": _s(self.refund_fiat),
            "refund_fiat_currency": self.refund_fiat_currency,
            "refund_value": _s(self.refund_value),
            "value_currency": self.value_currency,
        }


def rule_text(policy: RefundPolicy, clause: str) -> str:
    """The clause in plain words, with the configured values filled in."""
    cur = policy.currency
    texts = {
        Clause.ONE_PER_INVOICE: "One refund decision per invoice: an invoice that already has an approved or "
        "escalated refund request is not decided again.",
        Clause.ESCALATE_REASONS: "Requests whose reason mentions "
        + ", ".join(repr(r) for r in policy.escalate_reasons)
        + " go to a person.",
        Clause.ELIGIBLE_STATUSES: "Only invoices with status "
        + " or ".join(policy.eligible_statuses)
        + " (money received) can be refunded.",
        Clause.UNDERPAID: {
            "escalate": "Underpaid invoices (expired with part of the amount received) go to a person.",
            "refund_received": "Underpaid invoices (expired with part of the amount received) can be refunded "
            "up to the amount received.",
            "deny": "Underpaid invoices (expired with part of the amount received) are not refunded.",
        }[policy.underpaid],
        Clause.WINDOW_DAYS: f"Refunds only for invoices paid within the last {policy.window_days} days.",
        Clause.MISMATCH: {
            "overpayment_only": "For overpaid invoices (status mismatch) only the overpaid part is refunded.",
            "full": "For overpaid invoices (status mismatch) the full amount received is refundable.",
            "escalate": "Overpaid invoices (status mismatch) go to a person.",
        }[policy.mismatch],
        Clause.CURRENCY: f"Refund amounts are valued in {cur}, converted with Plisio's rates; without a rate "
        "the request goes to a person.",
        Clause.MAX_AMOUNT: f"Refunds above {policy.max_amount} {cur} are not handled here.",
        Clause.AUTO_APPROVE_UP_TO: f"Refunds up to {policy.auto_approve_up_to} {cur} are approved "
        f"automatically; larger ones (up to {policy.max_amount} {cur}) need a person's approval.",
    }
    return texts[clause]


def evaluate(
    policy: RefundPolicy, facts: RefundFacts, *, now: datetime, prior: Sequence[PriorDecision]
) -> RefundDecision:
    """The policy's decision on ``facts``; deterministic, no I/O."""

    def decide(verdict: Verdict, clause: str, detail: str, **amounts: Any) -> RefundDecision:
        if verdict == "deny":
            amounts = {}
        return RefundDecision(verdict, clause, rule_text(policy, clause), detail, facts, **amounts)

    earlier = [p for p in prior if p.txn_id == facts.txn_id and p.decision in ("approve", "escalate")]
    if earlier:
        first = earlier[0]
        return decide(
            "deny",
            Clause.ONE_PER_INVOICE,
            f"invoice {facts.txn_id} already has a refund decision {first.id} ({first.decision}, "
            f"{first.clause})",
        )

    reason = facts.reason.casefold()
    hit = next((word for word in policy.escalate_reasons if word.casefold() in reason), None)
    if hit is not None:
        return decide("escalate", Clause.ESCALATE_REASONS, f"the reason mentions {hit!r}")

    refundable = facts.received
    if facts.underpaid:
        received = (
            f"{facts.received} of {facts.expected} {facts.psys_cid} received before the invoice expired"
        )
        if policy.underpaid == "escalate":
            return decide("escalate", Clause.UNDERPAID, received)
        if policy.underpaid == "deny":
            return decide("deny", Clause.UNDERPAID, received)
    elif facts.status not in policy.eligible_statuses:
        return decide("deny", Clause.ELIGIBLE_STATUSES, f"the invoice status is {facts.status!r}")
    elif refundable <= 0:
        return decide("deny", Clause.ELIGIBLE_STATUSES, "nothing was received for this invoice")

    if facts.paid_at is None:
        return decide("escalate", Clause.WINDOW_DAYS, "the payment time is unknown")
    age = now - facts.paid_at
    if age > timedelta(days=policy.window_days):
        return decide(
            "deny", Clause.WINDOW_DAYS, f"paid {_days(age)} ago ({facts.paid_at:%Y-%m-%d %H:%M} UTC)"
        )

    mismatch_note = ""
    if facts.status == "mismatch":
        overpaid = facts.overpaid
        if policy.mismatch == "escalate":
            return decide("escalate", Clause.MISMATCH, f"overpaid by {overpaid} {facts.psys_cid}")
        if policy.mismatch == "overpayment_only":
            if overpaid <= 0:
                return decide("deny", Clause.MISMATCH, "nothing was paid beyond the invoice amount")
            refundable = overpaid
            mismatch_note = f"; only the overpaid {overpaid} {facts.psys_cid} is refundable"

    amounts: dict[str, Any] = {"refund_amount": refundable, "refund_currency": facts.psys_cid}
    pricing = facts.pricing_currency
    if facts.fiat_amount is not None and pricing != facts.psys_cid and facts.expected > 0:
        fiat = _money(facts.fiat_amount * refundable / facts.expected)
    else:
        fiat = refundable
    amounts |= {"refund_fiat": fiat, "refund_fiat_currency": pricing}
    if pricing == policy.currency:
        value = _money(fiat)
    elif pricing in facts.rates:
        value = _money(fiat * facts.rates[pricing])
    else:
        return decide(
            "escalate",
            Clause.CURRENCY,
            f"no {pricing}->{policy.currency} rate was available to value {fiat} {pricing}{mismatch_note}",
            **amounts,
        )
    amounts |= {"refund_value": value, "value_currency": policy.currency}
    valued = f"{refundable} {facts.psys_cid} = {_shown(fiat, pricing, value, policy.currency)}{mismatch_note}"

    if value > policy.max_amount:
        return decide("deny", Clause.MAX_AMOUNT, f"{valued}, above {policy.max_amount} {policy.currency}")
    if value <= policy.auto_approve_up_to:
        return decide(
            "approve",
            Clause.AUTO_APPROVE_UP_TO,
            f"{valued}, at most {policy.auto_approve_up_to} {policy.currency}",
            **amounts,
        )
    return decide(
        "escalate",
        Clause.AUTO_APPROVE_UP_TO,
        f"{valued}, above {policy.auto_approve_up_to} {policy.currency}",
        **amounts,
    )


def policy_explanation(decision: RefundDecision) -> str:
    """The deterministic explanation: the decision, the rule and how it applied."""
    word = {"approve": "Approved", "deny": "Denied", "escalate": "Escalated to a person"}[decision.verdict]
    text = f"{word} under {decision.clause}: {decision.rule_text} In this case: {decision.detail}."
    if decision.refund_amount is not None:
        text += f" Refund: {decision.refund_amount} {decision.refund_currency}"
        if decision.refund_value is not None:
            text += f" (about {decision.refund_value} {decision.value_currency})"
        text += "."
    return text


_CLAIMS: dict[str, re.Pattern[str]] = {
    "approve": re.compile(
        r"\b(approved|approve|approving|granted|will be refunded|has been refunded|"
        r"refund (?:is|has been|was|will be) (?:issued|sent|processed|paid))\b",
        re.I,
    ),
    "deny": re.compile(r"\b(denied|deny|declined|rejected|refused|ineligible|not eligible)\b", re.I),
    "escalate": re.compile(r"\b(escalated|escalate|escalating|manual review|referred to a person)\b", re.I),
}
_HEDGE_BEFORE = re.compile(
    r"\b(not|no|never|cannot|can't|couldn't|isn't|wasn't|won't|without|would|could|if|unless|only|"
    r"needs?|requires?|awaiting|pending|until|whether)\b|n't\b",
    re.I,
)
_HEDGE_AFTER = re.compile(r"^[^.;!?\n]{0,30}\b(automatically|only|if|when|unless|within|up to)\b", re.I)


def contradicts(text: str, verdict: str) -> str | None:
    """The other verdict ``text`` asserts (e.g. "approved" for a denied refund), if any.

    Negated or conditional mentions ("not approved", "would be approved if", "approved
    automatically up to") are not claims; a person reviews whatever is flagged.
    """
    for other, pattern in _CLAIMS.items():
        if other == verdict:
            continue
        for match in pattern.finditer(text):
            before = re.split(r"[.;!?\n]", text[max(0, match.start() - 60) : match.start()])[-1]
            after = text[match.end() :]
            if _HEDGE_BEFORE.search(before) or _HEDGE_AFTER.search(after):
                continue
            return other
    return None


def facts_from_operation(
    op: Operation,
    *,
    reason: str,
    requested_by: str,
    rates: Mapping[str, Decimal] | None = None,
) -> RefundFacts:
    """Read the policy's facts off a Plisio operation (an invoice)."""
    params = op.params
    status = op.status or ""
    expected = op.amount if op.amount is not None else (params.amount if params else None) or Decimal(0)
    if op.actual_sum is not None:
        received = op.actual_sum
    else:  # no actual_sum: a paid invoice received its amount, anything else received nothing known
        received = expected if status in ("completed", "mismatch") else Decimal(0)
    created = _at(op.created_at_utc)
    return RefundFacts(
        txn_id=op.id,
        status=status,
        psys_cid=op.psys_cid or op.currency or "",
        expected=expected,
        received=received,
        fiat_amount=params.source_amount if params else None,
        fiat_currency=(params.source_currency if params else None) or op.source_currency,
        paid_at=_at(op.finished_at_utc) or created,
        reason=reason,
        requested_by=requested_by,
        rates=dict(rates or {}),
        order_number=params.order_number if params else None,
        order_name=params.order_name if params else None,
        email=params.email if params else None,
        wallet_hash=op.wallet_hash,
        created_at=created,
    )


def pricing_currency(op: Operation) -> str:
    """Which currency a rate is needed for, before the facts are built (see ``RefundFacts``)."""
    params = op.params
    if params is not None and params.source_amount is not None:
        fiat = params.source_currency or op.source_currency
        if fiat:
            return fiat
    return op.psys_cid or op.currency or ""


def _shown(fiat: Decimal, pricing: str, value: Decimal, currency: str) -> str:
    return f"{value} {currency}" if pricing == currency else f"{fiat} {pricing} = {value} {currency}"


def _money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def _days(age: timedelta) -> str:
    days = age.total_seconds() / 86_400
    return f"{days:.1f} days"


def _at(ts: int | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _s(value: Decimal | None) -> str | None:
    return None if value is None else str(value)
