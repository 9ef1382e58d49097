"""What an invoice creation asked for, and whether the invoice Plisio answered with is that one.

The client sends ``return_existing=1`` so that a re-sent creation (a retry, a resumed approval, a re-run
flow: the same order number) gets the same invoice instead of a duplicate-order error. The price of it:
Plisio answers with whatever invoice the order number already has, expired or for another amount. That
answer is an invoice the shop made before, not the one asked for now, so it is compared field by field
and a difference is an error the model and the flows can act on (tools/errors.py PlisioExistingInvoice).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from tools.plisio.models import InvoiceInfo, Operation

DEAD_STATES = frozenset({"expired", "cancelled", "cancelled duplicate", "error"})
"""An invoice in one of these can no longer be paid: never handed out as a payment link."""


@dataclass(frozen=True)
class InvoiceAsk:
    """The price and payer an invoice creation asked for (None: not asked, so not compared)."""

    amount: Decimal | None = None
    currency: str | None = None
    source_amount: Decimal | None = None
    source_currency: str | None = None
    email: str | None = None

    def differences(
        self, *, status: str | None, amount: Decimal | None, currency: str | None,
        source_amount: Decimal | None, source_currency: str | None, email: str | None,
        invoice_sum: Decimal | None = None,
    ) -> list[str]:  # fmt: skip
        """Each way the invoice seen differs from this ask, in words; empty when it is this one. A field
        the answer does not carry is not compared (a standard shop's details may leave some out)."""
        out = []
        if status in DEAD_STATES:
            out.append(f"it is {status}")
        if self.source_amount is not None and self.amount is None:
            out += _differ(
                "price", (self.source_amount, self.source_currency), (source_amount, source_currency)
            )
        if self.amount is not None:
            # A crypto price is the invoice's amount, or its invoice_sum when the payer pays the commission
            # on top (commission_payment; the white-label example: 0.00051255 = 0.00051000 + 0.00000255).
            seen = invoice_sum if invoice_sum is not None and invoice_sum == self.amount else amount
            out += _differ("amount", (self.amount, self.currency), (seen, currency))
        elif self.currency is not None and currency is not None and currency.upper() != self.currency.upper():
            out.append(f"coin {currency} instead of {self.currency}")
        if self.email is not None and email is not None and email.casefold() != self.email.casefold():
            out.append("another payer email")
        return out

    def against_invoice(self, invoice: InvoiceInfo) -> list[str]:
        params = invoice.params or {}
        return self.differences(
            status=invoice.status, amount=invoice.amount, currency=invoice.psys_cid or invoice.currency,
            source_amount=invoice.source_amount, source_currency=invoice.source_currency,
            email=invoice.email or (params.get("email") if isinstance(params.get("email"), str) else None),
            invoice_sum=invoice.invoice_sum,
        )  # fmt: skip

    def against_operation(self, op: Operation) -> list[str]:
        params = op.params
        return self.differences(
            status=op.status, amount=op.amount, currency=op.psys_cid or op.currency,
            source_amount=params.source_amount if params else None,
            source_currency=(params.source_currency if params else None) or op.source_currency,
            email=params.email if params else None,
            invoice_sum=None if op.amount is None or op.commission is None else op.amount - op.commission,
        )  # fmt: skip


def _differ(
    what: str, asked: tuple[Decimal, str | None], seen: tuple[Decimal | None, str | None]
) -> list[str]:
    (want, want_unit), (got, got_unit) = asked, seen
    if got is None:
        return []
    unit_differs = want_unit is not None and got_unit is not None and want_unit.upper() != got_unit.upper()
    if got != want or unit_differs:
        return [f"{what} {got} {got_unit or ''}".rstrip() + f" instead of {want} {want_unit or ''}".rstrip()]
    return []
