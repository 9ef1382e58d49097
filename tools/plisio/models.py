"""Typed views of Plisio's answers.

Plisio documents its fields loosely and adds new ones over time, so every model keeps
unknown fields (``extra="allow"``) instead of dropping them, and accepts the documented
ones as optional. Money is ``Decimal`` parsed from Plisio's strings (or from JSON numbers
read with ``parse_float=Decimal``), never ``float``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


# Plisio's status values, wire spelling included (two contain a space).
class OperationStatus(StrEnum):
    NEW = "new"
    PENDING = "pending"
    PENDING_INTERNAL = "pending internal"
    COMPLETED = "completed"
    MISMATCH = "mismatch"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    ERROR = "error"
    CANCELLED_DUPLICATE = "cancelled duplicate"


class OperationType(StrEnum):
    CASH_IN = "cash_in"
    CASH_OUT = "cash_out"
    MASS_CASH_OUT = "mass_cash_out"
    INVOICE = "invoice"


class FeePlanName(StrEnum):
    ECONOMY = "economy"
    NORMAL = "normal"
    PRIORITY = "priority"


# The ``type`` of a fee/commission estimate: one address or several.
class WithdrawalType(StrEnum):
    CASH_OUT = "cash_out"
    MASS_CASH_OUT = "mass_cash_out"


TERMINAL_STATUSES = frozenset(
    {
        OperationStatus.COMPLETED,
        OperationStatus.MISMATCH,
        OperationStatus.EXPIRED,
        OperationStatus.CANCELLED,
        OperationStatus.ERROR,
        OperationStatus.CANCELLED_DUPLICATE,
    }
)


class PlisioModel(BaseModel):
    """Base: keep unknown fields, accept numbers-as-strings, stay immutable."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True, defer_build=True)

    def extra_fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class InvoiceCreated(PlisioModel):
    """``/invoices/new``: a standard shop gets the first three; a white-label shop gets the rest."""

    txn_id: str
    invoice_url: str | None = None
    invoice_total_sum: Decimal | None = None
    amount: Decimal | None = None
    pending_amount: Decimal | None = None
    wallet_hash: str | None = None
    psys_cid: str | None = None
    currency: str | None = None
    status: str | None = None
    source_currency: str | None = None
    source_rate: Decimal | None = None
    expire_utc: int | None = None
    expected_confirmations: int | None = None
    qr_code: str | None = None
    invoice_commission: Decimal | None = None
    invoice_sum: Decimal | None = None


class InvoiceInfo(PlisioModel):
    id: str | None = None
    txn_id: str | None = None
    invoice_url: str | None = None
    status: str | None = None
    amount: Decimal | None = None
    received_amount: Decimal | None = None
    pending_amount: Decimal | None = None
    remaining_amount: Decimal | None = None
    psys_cid: str | None = None
    currency: str | None = None
    source_currency: str | None = None
    source_amount: Decimal | None = None
    source_rate: Decimal | None = None
    invoice_commission: Decimal | None = None
    invoice_sum: Decimal | None = None
    invoice_total_sum: Decimal | None = None
    wallet_hash: str | None = None
    expected_confirmations: int | None = None
    expire_utc: int | None = None
    email: str | None = None
    tx_url: str | list[str] | None = None
    tx_id: list[str] | None = None
    params: dict[str, Any] | None = None


class ShopSummary(PlisioModel):
    name: str | None = None
    link: str | None = None
    logo: str | None = None


class Currency(PlisioModel):
    """One entry of ``/currencies[/{fiat}]``."""

    cid: str
    name: str | None = None
    currency: str | None = None
    icon: str | None = None
    rate_usd: Decimal | None = None
    price_usd: Decimal | None = None
    precision: int | None = None
    output_precision: int | None = None
    fiat: str | None = None
    fiat_rate: Decimal | None = None
    min_sum_in: Decimal | None = None
    invoice_commission_percentage: Decimal | None = None
    hidden: int | None = None
    maintenance: bool | None = None
    amount: Decimal | None = None


class InvoiceDetails(PlisioModel):
    """``/invoices/{id}`` and ``/invoices/email/{id}``."""

    invoice: InvoiceInfo
    active_invoice_id: str | None = None
    shop: ShopSummary | None = None
    paysys: Currency | None = None
    allowed_psys_cids: list[Currency] = Field(default_factory=list)


class OperationParams(PlisioModel):
    """An operation's order fields. ``order_number`` may arrive as a JSON number (Plisio's docs call it a
    number): read as its digits."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    order_number: str | None = None
    order_name: str | None = None
    description: str | None = None
    email: str | None = None
    source_amount: Decimal | None = None
    source_currency: str | None = None
    amount: Decimal | None = None


class Operation(PlisioModel):
    """An ``OperationDto``: an invoice, a deposit or a withdrawal."""

    id: str
    type: str | None = None
    status: str | None = None
    psys_cid: str | None = None
    currency: str | None = None
    amount: Decimal | None = None
    pending_sum: Decimal | None = None
    source_currency: str | None = None
    source_rate: Decimal | None = None
    fee: Decimal | None = None
    commission: Decimal | None = None
    wallet_hash: str | None = None
    params: OperationParams | None = None
    created_at_utc: int | None = None
    expire_at_utc: int | None = None
    finished_at_utc: int | None = None
    confirmations: int | None = None
    tx_url: str | list[str] | None = None
    tx_id: list[str] | None = None
    actual_sum: Decimal | None = None
    shop_id: str | None = None


class PageMeta(PlisioModel):
    total_count: int = Field(0, alias="totalCount")
    page_count: int = Field(0, alias="pageCount")
    current_page: int = Field(1, alias="currentPage")
    per_page: int = Field(0, alias="perPage")


@dataclass(frozen=True)
class SkippedRow:
    """A row of a list Plisio answered that could not be read: kept out of the page, never dropped
    unseen (its id, when it has one, and why)."""

    id: str | None
    error: str


class OperationsPage(PlisioModel):
    operations: list[Operation]
    meta: PageMeta = Field(default_factory=lambda: PageMeta(), alias="_meta")
    skipped: tuple[SkippedRow, ...] = ()
    """Rows that did not read as an operation (the client keeps the rest of the page)."""


class FeeEstimate(PlisioModel):
    fee: Decimal
    psys_cid: str | None = None
    currency: str | None = None
    plan: str | None = None


class Commission(PlisioModel):
    """``/operations/commission``: ``commission`` is Plisio's own cut and ``fee`` the network fee, apart
    (DOC-COM's older example ``{"commission":"0.00000000","fee":"0.00001020"}`` has no commission beside a
    fee, so one does not include the other; see tools/plisio/README.md). ``feeUnit`` (OAS, optional)
    names the fee's coin, the parent chain's for a token."""

    commission: Decimal
    fee: Decimal | None = None
    fee_unit: str | None = Field(None, alias="feeUnit")
    plan: str | None = None
    plans: dict[str, dict[str, Any]] | None = None
    max_amount: Decimal | None = Field(None, alias="maxAmount")


class FeePlan(PlisioModel):
    """One plan of ``/operations/fee-plan/{cid}``: which fields exist depends on the chain."""

    conf_target: int | None = None
    fee_rate: Decimal | None = Field(None, alias="feeRate")
    fee_rate_unit: str | None = Field(None, alias="feeRateUnit")
    gas_limit: Decimal | None = Field(None, alias="gasLimit")
    gas_price: Decimal | None = Field(None, alias="gasPrice")
    value: Decimal | None = None
    fee_unit: str | None = Field(None, alias="feeUnit")


class Balance(PlisioModel):
    psys_cid: str | None = None
    currency: str | None = None
    balance: Decimal
    locked_balance: Decimal | None = Field(None, alias="lockedBalance")


class Shop(PlisioModel):
    name: str | None = None
    link: str | None = None
    logo: str | None = None
    commission_payment: int | str | None = None
    white_label: bool | None = None
    extra_commission: Decimal | None = None
    verified: bool | None = None
