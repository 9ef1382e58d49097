"""Churn signals computed from invoice history: pure code, so the numbers a report rests on are exact.

A persona only summarises these signals; it never computes them. The definitions match the
sandbox seed's docstring (``tools/plisio/sandbox/seed.py``), whose constants are the known answers:

* churned repeat customer: >= ``min_completed`` ``completed`` invoices, and no invoice of any status
  created in the last ``quiet_days`` days, i.e. in ``(now - quiet_days, now]``
* expired share: expired / all invoices by ``created_at_utc`` in ``(now - recent_days, now]`` against
  ``(now - lookback_days, now - recent_days]``; rising when the recent share is higher
* repeat underpayer: >= ``underpaid_min`` invoices ``expired`` with ``actual_sum > 0``
* coin switcher: ``completed``/``mismatch`` invoices in >= ``coin_switch_min`` distinct ``psys_cid``

Customers are keyed by payer email (case-folded); invoices without an email (guests) count only
in the expired share. Only ``type == "invoice"`` operations created within the lookback count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from persona.settings import ChurnSettings
from tools.plisio.models import Operation

PAID = frozenset({"completed", "mismatch"})


def _at(ts: int | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def is_underpaid(op: Operation) -> bool:
    """Expired with part of the amount received: Plisio labels an underpaid invoice ``expired``."""
    return op.status == "expired" and (op.actual_sum or Decimal(0)) > 0


@dataclass(frozen=True)
class InvoiceEvidence:
    """One invoice behind a signal, as a growth person would look it up."""

    txn_id: str
    order_number: str | None
    status: str
    psys_cid: str | None
    created_at: datetime
    amount: Decimal | None
    """Crypto due, in ``psys_cid``."""
    received: Decimal | None
    """Crypto received (``actual_sum``)."""
    fiat_amount: Decimal | None
    fiat_currency: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "txn_id": self.txn_id,
            "order_number": self.order_number,
            "status": self.status,
            "psys_cid": self.psys_cid,
            "created_at": self.created_at.isoformat(),
            "amount": _s(self.amount),
            "received": _s(self.received),
            "fiat_amount": _s(self.fiat_amount),
            "fiat_currency": self.fiat_currency,
        }


@dataclass(frozen=True)
class CustomerEvidence:
    """Per-customer counts over the lookback window, shared by every signal that names the customer."""

    email: str
    invoices: int
    completed: int
    paid: int
    """completed + mismatch."""
    underpaid: int
    first_invoice_at: datetime
    last_invoice_at: datetime
    last_paid_at: datetime | None
    coins_paid: tuple[str, ...]
    """Distinct coins of paid invoices, in the order first used."""
    paid_by_currency: tuple[tuple[str, Decimal], ...]
    """Fiat totals of paid invoices per pricing currency."""
    evidence: tuple[InvoiceEvidence, ...] = ()
    """The invoices that make this customer match the signal (underpaid ones, paid ones)."""

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        return {
            "email": self.email,
            "invoices": self.invoices,
            "completed": self.completed,
            "paid": self.paid,
            "underpaid": self.underpaid,
            "first_invoice_at": self.first_invoice_at.isoformat(),
            "last_invoice_at": self.last_invoice_at.isoformat(),
            "last_paid_at": None if self.last_paid_at is None else self.last_paid_at.isoformat(),
            "days_since_last_invoice": None if now is None else (now - self.last_invoice_at).days,
            "coins_paid": list(self.coins_paid),
            "paid_by_currency": {cur: str(total) for cur, total in self.paid_by_currency},
            "evidence": [e.to_dict() for e in self.evidence],
        }


@dataclass(frozen=True)
class ExpiredShare:
    recent_start: datetime
    previous_start: datetime
    recent_expired: int
    recent_total: int
    previous_expired: int
    previous_total: int

    @property
    def recent_share(self) -> Fraction | None:
        return Fraction(self.recent_expired, self.recent_total) if self.recent_total else None

    @property
    def previous_share(self) -> Fraction | None:
        return Fraction(self.previous_expired, self.previous_total) if self.previous_total else None

    @property
    def rising(self) -> bool:
        recent, previous = self.recent_share, self.previous_share
        return recent is not None and recent > (previous or 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recent_window": [self.recent_start.isoformat(), "now"],
            "previous_window": [self.previous_start.isoformat(), self.recent_start.isoformat()],
            "recent_expired": self.recent_expired,
            "recent_total": self.recent_total,
            "recent_share": _share(self.recent_share),
            "recent_percent": _percent(self.recent_share),
            "previous_expired": self.previous_expired,
            "previous_total": self.previous_total,
            "previous_share": _share(self.previous_share),
            "previous_percent": _percent(self.previous_share),
            "rising": self.rising,
        }


@dataclass(frozen=True)
class ChurnSignals:
    now: datetime
    window_start: datetime
    settings: ChurnSettings
    invoices: int
    """Invoices inside the lookback window that the signals were computed from."""
    customers: int
    churned: tuple[CustomerEvidence, ...]
    underpayers: tuple[CustomerEvidence, ...]
    switchers: tuple[CustomerEvidence, ...]
    expired_share: ExpiredShare
    definitions: dict[str, str] = field(default_factory=dict)

    def emails(self, signal: str) -> frozenset[str]:
        return frozenset(c.email for c in getattr(self, signal))

    def to_dict(self) -> dict[str, Any]:
        def people(rows: tuple[CustomerEvidence, ...]) -> list[dict[str, Any]]:
            return [row.to_dict(self.now) for row in rows]

        return {
            "now": self.now.isoformat(),
            "window_start": self.window_start.isoformat(),
            "invoices_scanned": self.invoices,
            "customers": self.customers,
            "definitions": dict(self.definitions),
            "churned_repeat_customers": people(self.churned),
            "repeat_underpayers": people(self.underpayers),
            "coin_switchers": people(self.switchers),
            "expired_share": self.expired_share.to_dict(),
        }


def definitions(s: ChurnSettings) -> dict[str, str]:
    return {
        "churned_repeat_customers": f">= {s.min_completed} completed invoices and no invoice of any status "
        f"in the last {s.quiet_days} days",
        "repeat_underpayers": f">= {s.underpaid_min} invoices expired with part of the amount received",
        "coin_switchers": f"completed/mismatch invoices paid in >= {s.coin_switch_min} different coins",
        "expired_share": f"expired / all invoices created in the last {s.recent_days} days, against the "
        f"{s.lookback_days - s.recent_days} days before",
    }


def compute(operations: Sequence[Operation], *, now: datetime, settings: ChurnSettings) -> ChurnSignals:
    """All four signals over ``operations`` (any order, any type; non-invoices are ignored)."""
    window_start = now - timedelta(days=settings.lookback_days)
    recent_start = now - timedelta(days=settings.recent_days)
    quiet_start = now - timedelta(days=settings.quiet_days)
    invoices: list[tuple[Operation, datetime]] = []
    for op in operations:
        created = _at(op.created_at_utc)
        if op.type == "invoice" and created is not None and window_start < created <= now:
            invoices.append((op, created))
    invoices.sort(key=lambda pair: (pair[1], pair[0].id))

    by_customer: dict[str, list[tuple[Operation, datetime]]] = {}
    counts = [0, 0, 0, 0]  # recent expired, recent total, previous expired, previous total
    for op, created in invoices:
        recent = created > recent_start
        counts[1 if recent else 3] += 1
        if op.status == "expired":
            counts[0 if recent else 2] += 1
        email = op.params.email if op.params is not None else None
        if email:
            by_customer.setdefault(email.strip().casefold(), []).append((op, created))

    churned: list[CustomerEvidence] = []
    underpayers: list[CustomerEvidence] = []
    switchers: list[CustomerEvidence] = []
    for email in sorted(by_customer):
        history = by_customer[email]
        completed = [(op, at) for op, at in history if op.status == "completed"]
        paid = [(op, at) for op, at in history if op.status in PAID]
        underpaid = [(op, at) for op, at in history if is_underpaid(op)]
        coins = list(dict.fromkeys(op.psys_cid for op, _ in paid if op.psys_cid))
        last_invoice = max(at for _, at in history)
        if len(completed) >= settings.min_completed and last_invoice <= quiet_start:
            churned.append(_customer(email, history, completed))
        if len(underpaid) >= settings.underpaid_min:
            underpayers.append(_customer(email, history, underpaid))
        if len(coins) >= settings.coin_switch_min:
            switchers.append(_customer(email, history, paid))

    return ChurnSignals(
        now=now,
        window_start=window_start,
        settings=settings,
        invoices=len(invoices),
        customers=len(by_customer),
        churned=tuple(churned),
        underpayers=tuple(underpayers),
        switchers=tuple(switchers),
        expired_share=ExpiredShare(recent_start, window_start, *counts),
        definitions=definitions(settings),
    )


def _customer(
    email: str, history: list[tuple[Operation, datetime]], matching: list[tuple[Operation, datetime]]
) -> CustomerEvidence:
    paid = [(op, at) for op, at in history if op.status in PAID]
    totals: dict[str, Decimal] = {}
    for op, _ in paid:
        params = op.params
        if params is not None and params.source_amount is not None:
            cur = params.source_currency or op.source_currency or "?"
            totals[cur] = totals.get(cur, Decimal(0)) + params.source_amount
    return CustomerEvidence(
        email=email,
        invoices=len(history),
        completed=sum(op.status == "completed" for op, _ in history),
        paid=len(paid),
        underpaid=sum(is_underpaid(op) for op, _ in history),
        first_invoice_at=min(at for _, at in history),
        last_invoice_at=max(at for _, at in history),
        last_paid_at=max((_paid_at(op, at) for op, at in paid), default=None),
        coins_paid=tuple(dict.fromkeys(op.psys_cid for op, _ in paid if op.psys_cid)),
        paid_by_currency=tuple(sorted(totals.items())),
        evidence=tuple(_invoice(op, at) for op, at in matching),
    )


def _paid_at(op: Operation, created: datetime) -> datetime:
    return _at(op.finished_at_utc) or created


def _invoice(op: Operation, created: datetime) -> InvoiceEvidence:
    params = op.params
    return InvoiceEvidence(
        txn_id=op.id,
        order_number=params.order_number if params else None,
        status=op.status or "",
        psys_cid=op.psys_cid,
        created_at=created,
        amount=op.amount,
        received=op.actual_sum,
        fiat_amount=params.source_amount if params else None,
        fiat_currency=(params.source_currency if params else None) or op.source_currency,
    )


def _s(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _share(value: Fraction | None) -> str | None:
    return None if value is None else f"{value.numerator}/{value.denominator}"


def _percent(value: Fraction | None) -> str | None:
    return None if value is None else f"{float(value) * 100:.1f}%"
