"""Argument models of the Plisio tools: what a model may send, and nothing else.

Identifiers that end up in a URL path are pattern-checked (no ``/``, no ``..``); amounts are
decimal strings parsed to ``Decimal``; statuses and types are enums with Plisio's real values,
so ``"paid"`` is refused with the list of valid ones. The service, not the model, chooses
the order number and the callback URL of a new invoice.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Self

from pydantic import Field, WithJsonSchema, model_validator

from tools.plisio.models import FeePlanName, OperationStatus, OperationType, WithdrawalType
from tools.registry import ToolArgs

AMOUNT_PATTERN = r"^[0-9]{1,15}(\.[0-9]{1,18})?$"

Amount = Annotated[
    Decimal,
    Field(gt=0),
    WithJsonSchema({"type": "string", "pattern": AMOUNT_PATTERN}),
]
PsysCid = Annotated[
    str,
    Field(pattern=r"^[A-Z0-9_]{2,20}$", description="Plisio coin id (psys_cid), e.g. BTC, ETH, USDT_TRX"),
]
Fiat = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 fiat code, e.g. USD")]
PlisioId = Annotated[str, Field(pattern=r"^[A-Za-z0-9]{6,40}$")]
Email = Annotated[str, Field(pattern=r"^[^@\s,]{1,64}@[^@\s,]{1,190}\.[^@\s,]{2,24}$", max_length=254)]
Address = Annotated[str, Field(pattern=r"^[A-Za-z0-9:_\-]{20,128}$")]


def _same_length(addresses: list[str] | None, amounts: list[Decimal] | None) -> None:
    if (addresses is None) != (amounts is None) or len(addresses or ()) != len(amounts or ()):
        raise ValueError("addresses and amounts must be given together, one amount per address, same order")


class CreateInvoiceArgs(ToolArgs):
    order_name: str = Field(
        min_length=1, max_length=120, description="What is being paid for; shown to the payer"
    )
    source_amount: Amount | None = Field(
        None, description="Fiat price; needs source_currency. Else give amount+currency"
    )
    source_currency: Fiat | None = None
    amount: Amount | None = Field(None, description="Crypto price in `currency`, when there is no fiat price")
    currency: PsysCid | None = Field(
        None, description="Coin to pay in; null lets the payer pick from allowed coins"
    )
    allowed_psys_cids: list[Annotated[str, Field(pattern=r"^[A-Z0-9_]{2,20}$")]] | None = Field(
        None, max_length=20, description="Coins the payer may choose from"
    )
    description: str | None = Field(None, max_length=500)
    email: Email | None = Field(None, description="Payer email; pre-fills the payment page")
    expire_min: int | None = Field(None, ge=10, le=4320, description="Minutes until the invoice expires")

    @model_validator(mode="after")
    def _one_price(self) -> Self:
        fiat = self.source_amount is not None or self.source_currency is not None
        crypto = self.amount is not None
        if fiat and crypto:
            raise ValueError("give either source_amount+source_currency (fiat) or amount+currency, not both")
        if fiat and (self.source_amount is None or self.source_currency is None):
            raise ValueError("source_amount and source_currency go together")
        if crypto and self.currency is None:
            raise ValueError("amount is in crypto, so currency (the coin) is required")
        if not fiat and not crypto:
            raise ValueError("a price is required: source_amount+source_currency, or amount+currency")
        return self


class EstimateFeeArgs(ToolArgs):
    psys_cid: PsysCid
    addresses: list[Address] = Field(min_length=1, max_length=50, description="Destination addresses")
    amounts: list[Amount] = Field(
        min_length=1, max_length=50, description="One amount per address, same order"
    )
    fee_plan: FeePlanName | None = None

    @model_validator(mode="after")
    def _pairs(self) -> Self:
        _same_length(self.addresses, self.amounts)
        return self


class EstimateCommissionArgs(EstimateFeeArgs):
    type: WithdrawalType | None = Field(
        None, description="cash_out for one address, mass_cash_out for several"
    )


class CoinArgs(ToolArgs):
    psys_cid: PsysCid


class FiatArgs(ToolArgs):
    fiat: Fiat


class InvoiceArgs(ToolArgs):
    invoice_id: PlisioId = Field(description="Plisio invoice id (txn_id)")


class InvoiceByEmailArgs(InvoiceArgs):
    email: Email = Field(description="The payer's email")


class NoArgs(ToolArgs):
    pass


class SupportedCurrenciesArgs(ToolArgs):
    include_hidden: bool | None = Field(None, description="Also list coins the shop has disabled")


class ListTransactionsArgs(ToolArgs):
    type: OperationType | None = None
    status: OperationStatus | None = None
    currency: PsysCid | None = None
    search: str | None = Field(
        None, max_length=100, description="Text search: blockchain txid, order number or customer email"
    )
    page: int | None = Field(None, ge=1, le=10000, description="1-based page")
    limit: int | None = Field(None, ge=1, le=50, description="Items per page (default 20)")


class TransactionArgs(ToolArgs):
    operation_id: PlisioId = Field(description="Plisio operation id")
