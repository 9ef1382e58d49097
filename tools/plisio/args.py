"""Argument models of the Plisio tools: what a model may send, and nothing else.

Identifiers that end up in a URL path are pattern-checked (no ``/``, no ``..``); amounts are
ASCII decimal strings with bounded digits (:data:`AMOUNT_INTEGER_DIGITS`, :data:`CRYPTO_FRACTION_DIGITS`,
:data:`FIAT_FRACTION_DIGITS`) parsed to ``Decimal``; statuses and types are enums with Plisio's real values,
so ``"paid"`` is refused with the list of valid ones. The service, not the model, chooses
the order number and the callback URL of a new invoice.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema, model_validator

from tools.plisio.models import FeePlanName, OperationStatus, OperationType, WithdrawalType
from tools.registry import EXPECTED_KEYWORD, ToolArgs

# The bounds of every amount a caller (a model, the CLI, a flow) may give: declared here, once.
AMOUNT_INTEGER_DIGITS = 18
"""Digits before the decimal point, any amount (10^18 of anything is far beyond a real invoice)."""
CRYPTO_FRACTION_DIGITS = 8
"""Digits after the point for an amount of a coin (``amount``, ``amounts``)."""
FIAT_FRACTION_DIGITS = 2
"""Digits after the point for a fiat price (``source_amount``)."""


def amount_pattern(fraction_digits: int) -> str:
    """The JSON-schema pattern of an amount: ASCII ``[0-9]`` only (``\\d`` would admit Unicode digits)."""
    return rf"^[0-9]{{1,{AMOUNT_INTEGER_DIGITS}}}(\.[0-9]{{1,{fraction_digits}}})?$"


def amount_expected(fraction_digits: int) -> str:
    """The bound in words: the field-level error a caller gets past it."""
    example = "49.90" if fraction_digits == FIAT_FRACTION_DIGITS else "0.0015"
    return (
        f"a decimal string of ASCII digits 0-9, at most {AMOUNT_INTEGER_DIGITS} before the point and at most "
        f'{fraction_digits} after it, with no sign, spaces or exponent (e.g. "{example}")'
    )


def _amount_validator(fraction_digits: int) -> BeforeValidator:
    """The same bound in pydantic, so a caller that skips the JSON schema meets it too."""
    # fullmatch without anchors: Python's ``$`` also matches before a trailing newline.
    form = re.compile(amount_pattern(fraction_digits).removeprefix("^").removesuffix("$"))
    expected = amount_expected(fraction_digits)

    def check(value: Any) -> Any:
        if isinstance(value, Decimal) and value.is_finite() and value.adjusted() < AMOUNT_INTEGER_DIGITS:
            value = format(value, "f")  # a Decimal from code is held to the same form as a model's string
        elif isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not form.fullmatch(value):
            raise ValueError(f"must be {expected}")
        return value

    return BeforeValidator(check)


def _amount_schema(fraction_digits: int) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "type": "string",
            "pattern": amount_pattern(fraction_digits),
            EXPECTED_KEYWORD: amount_expected(fraction_digits),
        }
    )


# Every constraint is a JSON-schema keyword OpenAI's strict mode accepts (pattern, enum, minimum, ...),
# so the model is told exactly what is enforced; lengths are patterns because strict mode has no maxLength.
# An amount is checked by jsonschema (the pattern), then by pydantic (the same bound), then parsed to an
# exact ``Decimal`` > 0.
CryptoAmount = Annotated[
    Decimal, _amount_validator(CRYPTO_FRACTION_DIGITS), Field(gt=0), _amount_schema(CRYPTO_FRACTION_DIGITS)
]
"""An amount of a coin: at most 18 + 8 digits."""
FiatAmount = Annotated[
    Decimal, _amount_validator(FIAT_FRACTION_DIGITS), Field(gt=0), _amount_schema(FIAT_FRACTION_DIGITS)
]
"""A fiat price: at most 18 + 2 digits."""
PsysCid = Annotated[str, Field(pattern=r"^\w{2,20}$")]
"""A coin's Plisio id (BTC, ETH, USDT_TRX, ...); the tool descriptions say "coin" where it matters."""
Fiat = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="e.g. USD")]
ROUTE_WORDS = frozenset({"new", "email", "withdraw", "fee", "fee-plan", "commission"})
"""Path words beside ``{id}`` in Plisio's routes: an "id" spelled so would call another route
(``/operations/withdraw`` is Plisio's withdrawal)."""


def _not_a_route(value: str) -> str:
    if value.casefold() in ROUTE_WORDS:
        raise ValueError(
            f"{value!r} is a name of a Plisio route, not an id (fix: pass the invoice's or operation's id)"
        )
    return value


PlisioId = Annotated[str, Field(pattern=r"^\w{6,40}$"), AfterValidator(_not_a_route)]
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
    source_amount: FiatAmount | None = Field(None, description="Fiat price")
    source_currency: Fiat | None = None
    amount: CryptoAmount | None = Field(None, description="Or crypto price")
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
    amounts: list[CryptoAmount] = Field(min_length=1, max_length=50, description="Per address, in order")
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
