"""The sandbox's stored facts: the shop, its customers, operations (invoices, deposits, withdrawals).

Plain mutable dataclasses with ``Decimal`` money and unix-second timestamps; how they look on the
wire is ``dto.py``'s business, how they change is ``state.py``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final, Literal

from tools.plisio.sandbox.catalog import COINS, Coin

OperationType = Literal["cash_in", "cash_out", "mass_cash_out", "invoice"]
OPERATION_TYPES: Final = ("cash_in", "cash_out", "mass_cash_out", "invoice")
STATUSES: Final = (
    "new",
    "pending",
    "pending internal",
    "completed",
    "mismatch",
    "expired",
    "cancelled",
    "error",
    "cancelled duplicate",
)
TERMINAL: Final = frozenset({"completed", "mismatch", "expired", "cancelled", "error", "cancelled duplicate"})
# Statuses whose received coins reach the shop's balance (see state.credit_for).
CREDITED: Final = frozenset({"completed", "mismatch", "expired"})


@dataclass(frozen=True)
class Customer:
    """A payer of the demo shop. ``segment`` says which seeded pattern (if any) they belong to."""

    email: str
    name: str
    fiat: str
    segment: str


@dataclass(frozen=True)
class Shop:
    id: str
    user_id: int
    name: str
    link: str
    logo: str
    white_label: bool
    commission_payment: int  # 1: the client pays Plisio's commission on top; 0: the shop pays it
    extra_commission: Decimal
    verified: bool
    success_url: str
    failed_url: str
    status_url: str | None
    default_expire_min: int = 600


@dataclass
class Tx:
    """One on-chain transfer into an invoice (or out of a withdrawal)."""

    txid: str
    value: Decimal
    block: int
    created_at: int
    confirmations: int
    processed: bool = True


@dataclass
class Operation:
    """An ``OperationDto``: a Plisio invoice is an operation of type ``invoice`` (txn_id == id)."""

    id: str
    type: OperationType
    status: str
    psys_cid: str
    created_at: int
    amount: Decimal  # invoice: what the payer must send (= invoice_total_sum); others: moved amount
    shop_id: str | None
    wallet_hash: str | None = None
    source_currency: str | None = None
    source_amount: Decimal | None = None
    source_rate: Decimal | None = None
    invoice_sum: Decimal = Decimal(0)
    invoice_commission: Decimal = Decimal(0)
    received: Decimal = Decimal(0)
    expire_at: int | None = None
    finished_at: int | None = None
    order_number: str | None = None
    order_name: str | None = None
    description: str | None = None
    email: str | None = None
    callback_url: str | None = None
    success_callback_url: str | None = None
    fail_callback_url: str | None = None
    success_invoice_url: str | None = None
    fail_invoice_url: str | None = None
    allowed_psys_cids: tuple[str, ...] = ()
    plugin: str | None = None
    version: str | None = None
    language: str | None = None
    view_key: str = ""
    switch_id: str | None = None  # a "cancelled duplicate" points at the invoice that replaced it
    txs: list[Tx] = field(default_factory=list)
    fee: Decimal | None = None
    fee_plan: str | None = None
    commission: Decimal = Decimal(0)
    sendmany: dict[str, Decimal] | None = None
    credited: Decimal = Decimal(0)  # what this operation has added to (or removed from) the balance

    @property
    def coin(self) -> Coin:
        return COINS[self.psys_cid]

    @property
    def is_invoice(self) -> bool:
        return self.type == "invoice"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def remaining(self) -> Decimal:
        return max(self.amount - self.received, Decimal(0))

    @property
    def confirmations(self) -> int:
        return max((tx.confirmations for tx in self.txs), default=0)

    @property
    def tx_urls(self) -> list[str]:
        return [self.coin.tx_url(tx.txid) for tx in self.txs]
