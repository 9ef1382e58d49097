"""Argument models of the Plisio tools: what a model may send, and nothing else.

Identifiers that end up in a URL path are pattern-checked (no ``/``, no ``..``); amounts are
decimal strings parsed to ``Decimal``; statuses and types are enums with Plisio's real values,
so ``"paid"`` is refused with the list of valid ones. The service, not the model, chooses
the order number and the callback URL of a new invoice.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Self

from pydantic import AfterValidator, Field, WithJsonSchema, model_validator

from tools.plisio.models import FeePlanName, OperationStatus, OperationType, WithdrawalType
from tools.registry import ToolArgs

AMOUNT_PATTERN = r"^\d+(\.\d+)?$"

# Every constraint is a JSON-schema keyword OpenAI's strict mode accepts (pattern, enum, minimum, ...),
# so the model is told exactly what is enforced; lengths are patterns because strict mode has no maxLength.
Amount = Annotated[
    Decimal,
    Field(gt=0),
    WithJsonSchema({"type": "string", "pattern": AMOUNT_PATTERN}),
]
PsysCid = Annotated[str, Field(pattern=r"^\w{2,20}$")]
"""A coin's Plisio id (BTC, ETH, USDT_TRX, ...); the tool descriptions say "coin" where it matters."""
Fiat = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="e.g. USD")]
PlisioId = Annotated[str, Field(pattern=r"^\w{6,40}$")]
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{3,190}$")


def _email(value: str) -> str:
    if not EMAIL.fullmatch(value):
        raise ValueError("not an email address (name@domain, at most 254 characters)")
    return value


# ``format: email`` is what strict mode offers; the local check (jsonschema's format checker, then this
# validator) accepts exactly name@domain without spaces.
Email = Annotated[str, AfterValidator(_email), WithJsonSchema({"type": "string", "format": "email"})]
Address = Annotated[str, Field(pattern=r"^[\w:-]{20,128}$")]


def _same_length(addresses: list[str] | None, amounts: list[Decimal] | None) -> None:
    if (addresses is None) != (amounts is None) or len(addresses or ()) != len(amounts or ()):
        raise ValueError("addresses and amounts must be given together, one amount per address, same order")


class CreateInvoiceArgs(ToolArgs):
    order_name: str = Field(pattern=r"^[^\n]{1,120}$")
    """What is paid for, as the payer sees it (the tool description says so)."""
    source_amount: Amount | None = Field(None, description="Fiat price")
    source_currency: Fiat | None = None
    amount: Amount | None = Field(None, description="Or crypto price")
    currency: PsysCid | None = Field(None, description="Coin, e.g. BTC; null: payer picks")
    allowed_psys_cids: list[Annotated[str, Field(pattern=r"^\w{2,20}$")]] | None = Field(None, max_length=20)
    description: str | None = Field(None, pattern=r"^[\s\S]{0,500}$")
    email: Email | None = None
    expire_min: int | None = Field(None, ge=10, le=4320)

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
    addresses: list[Address] = Field(min_length=1, max_length=50)
    amounts: list[Amount] = Field(min_length=1, max_length=50, description="Per address, in order")
    fee_plan: FeePlanName | None = None

    @model_validator(mode="after")
    def _pairs(self) -> Self:
        _same_length(self.addresses, self.amounts)
        return self


class EstimateCommissionArgs(EstimateFeeArgs):
    type: WithdrawalType | None = None


class CoinArgs(ToolArgs):
    psys_cid: PsysCid


class FiatArgs(ToolArgs):
    fiat: Fiat


class InvoiceArgs(ToolArgs):
    invoice_id: PlisioId


class InvoiceByEmailArgs(InvoiceArgs):
    email: Email


class NoArgs(ToolArgs):
    pass


class SupportedCurrenciesArgs(ToolArgs):
    include_hidden: bool | None = Field(None, description="Include disabled coins")


class ListTransactionsArgs(ToolArgs):
    type: OperationType | None = None
    status: OperationStatus | None = None
    currency: PsysCid | None = None
    search: str | None = Field(None, pattern=r"^[^\n]{1,100}$", description="txid, order number or email")
    page: int | None = Field(None, ge=1)
    limit: int | None = Field(None, ge=1, le=50)


class TransactionArgs(ToolArgs):
    operation_id: PlisioId
