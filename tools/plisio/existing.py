"""What an invoice creation asked for, and whether the invoice Plisio answered with is that one.

The client sends ``return_existing=1`` so that a re-sent creation (a retry, a resumed approval, a re-run
flow: the same order number) gets the same invoice instead of a duplicate-order error. The price of it:
Plisio answers with whatever invoice the order number already has, expired or for another amount. So
the answer is read back as an operation (``GET /operations/{id}``: Plisio's ``OperationDto`` carries the
status and the order's ``params``, its invoice details do not) and compared with the ask. A difference is
an error the model and the flows act on (tools/errors.py PlisioExistingInvoice); a record that lacks what
the comparison needs (no status, no price) cannot clear the invoice either: it is "could not check", never
a match.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from tools.plisio.models import Operation

DEAD_STATES = frozenset({"expired", "cancelled", "error"})
"""An invoice in one of these can no longer be paid: never handed out as a payment link. (``cancelled
duplicate`` is not one: it is an invoice superseded when the payer switched coin, the order still live.)"""


class Unverifiable(Exception):
    """The record lacks what the comparison needs; the message says what."""


@dataclass(frozen=True)
class InvoiceAsk:
    """The order number, price and payer an invoice creation asked for (None: not asked)."""

    order_number: str
    amount: Decimal | None = None
    currency: str | None = None
    source_amount: Decimal | None = None
    source_currency: str | None = None
    email: str | None = None

    def against(self, op: Operation) -> list[str]:
        """Each way the invoice ``op`` differs from this ask, in words; empty when it is this one. Raises
        :class:`Unverifiable` when ``op`` does not carry the status or the price asked for."""
        params = op.params
        if op.status is None:
            raise Unverifiable(f"Plisio's record of {op.id} has no status")
        out: list[str] = []
        number = params.order_number if params else None
        if number is not None and number != self.order_number:
            out.append(f"order number {number} instead of {self.order_number}")
        if op.status in DEAD_STATES:
            out.append(f"it is {op.status}")
        if self.amount is None:
            seen_fiat = params.source_amount if params else None
            seen_unit = (params.source_currency if params else None) or op.source_currency
            if self.source_amount is not None:
                if seen_fiat is None:
                    raise Unverifiable(f"Plisio's record of {op.id} has no source_amount to compare")
                out += _differ("price", (self.source_amount, self.source_currency), (seen_fiat, seen_unit))
        else:
            # A crypto price is the invoice's amount, or that minus Plisio's commission when the payer pays
            # it on top (the white-label example: 0.00051255 = 0.00051000 + 0.00000255).
            if op.amount is None:
                raise Unverifiable(f"Plisio's record of {op.id} has no amount to compare")
            net = op.amount - op.commission if op.commission is not None else None
            seen = net if net is not None and _close(self.amount, net) else op.amount
            out += _differ("amount", (self.amount, self.currency), (seen, op.psys_cid or op.currency))
        email = params.email if params else None
        if self.email is not None and email is not None and email.casefold() != self.email.casefold():
            out.append("another payer email")
        return out


def _close(want: Decimal, got: Decimal) -> bool:
    """Equal up to the rounding of what was made (Plisio rounds an amount to the coin's precision, a fiat
    price to cents: ``100.12345678`` asked is ``100.123457`` TRX made): one unit of the last place of
    ``got``, and never more than a cent's worth (a normalised ``100`` is not a licence for ``100.9``)."""
    exponent = got.as_tuple().exponent
    unit = min(Decimal(1).scaleb(exponent if isinstance(exponent, int) else 0), Decimal("0.01"))
    return abs(want - got) <= unit


def _differ(what: str, asked: tuple[Decimal, str | None], seen: tuple[Decimal, str | None]) -> list[str]:
    (want, want_unit), (got, got_unit) = asked, seen
    unit_differs = want_unit is not None and got_unit is not None and want_unit.upper() != got_unit.upper()
    if not _close(want, got) or unit_differs:
        return [f"{what} {got} {got_unit or ''}".rstrip() + f" instead of {want} {want_unit or ''}".rstrip()]
    return []
