"""Exact money: amounts are bounded ASCII decimal strings, the policy compares exact values and fails closed.

Issue 12, "Exact money": a 28-digit ``source_amount`` crashed the turn and left no audit trail; ``250.004``
skipped a 250 approval threshold and ``1000.005`` was held instead of refused (rounded before the checks);
Unicode digits passed the ``\\d`` patterns.
"""

from __future__ import annotations

import decimal
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from fractions import Fraction
from typing import Any

import httpx
import pytest

from persona.app import Runtime
from persona.calls import Outcome, call_context
from persona.events import Event
from persona.llm import ScriptedChatModel
from persona.loop import run_turn
from persona.policy import (
    ExtraCaps,
    Policy,
    PolicyDecision,
    Verdict,
    over_daily_total,
    reserved,
    shown,
)
from persona.settings import InvoicePolicy, PersonaSettings
from persona.store.engine import Store
from tests.harness import build_runtime, call, say, step
from tools.errors import PlisioError
from tools.plisio.args import (
    AMOUNT_INTEGER_DIGITS,
    CRYPTO_FRACTION_DIGITS,
    FIAT_FRACTION_DIGITS,
    CreateInvoiceArgs,
    EstimateFeeArgs,
)
from tools.plisio.sandbox import Sandbox
from tools.plisio.tools import PLISIO_TOOLS
from tools.registry import EXPECTED_KEYWORD, ToolFailure

CREATE = next(t for t in PLISIO_TOOLS if t.name == "plisio_create_invoice")
FEE = next(t for t in PLISIO_TOOLS if t.name == "plisio_estimate_fee")
BOUND = f"at most {AMOUNT_INTEGER_DIGITS} before the point"


def fiat(amount: str, currency: str = "USD") -> dict[str, Any]:
    return {"order_name": "x", "source_amount": amount, "source_currency": currency}


def crypto(amount: str, coin: str = "USDT") -> dict[str, Any]:
    return {"order_name": "x", "amount": amount, "currency": coin}


# ----------------------------------------------------------------------------- the bound, at the boundary


@pytest.mark.parametrize(
    "raw",
    [
        "1" * 28,  # the crash of the issue
        "1" * (AMOUNT_INTEGER_DIGITS + 1),
        "250.004",  # fiat has 2 decimals
        "1000.005",
        "١٠٠٠",  # Arabic-Indic digits
        "１０００",  # fullwidth digits
        "1000\n",  # Python's $ matches before a trailing newline
        " 1000",
        "+1000",
        "-5",
        "1e3",
        "1E+30",
        "1_000",
        "1,000",
        ".5",
        "5.",
        "NaN",
        "Infinity",
        "",
    ],
)
def test_a_fiat_amount_past_the_bound_is_a_field_level_error(raw: str) -> None:
    failure = CREATE.parse(fiat(raw))
    assert isinstance(failure, ToolFailure), raw
    assert failure.type == "invalid_arguments" and failure.field == "source_amount"
    assert BOUND in failure.message and f"at most {FIAT_FRACTION_DIGITS} after it" in failure.message


@pytest.mark.parametrize("raw", ["0", "0.00", "000"])
def test_zero_is_refused_too(raw: str) -> None:
    failure = CREATE.parse(fiat(raw))
    assert isinstance(failure, ToolFailure) and failure.field == "source_amount"
    assert "greater than 0" in failure.message


def test_the_largest_amounts_within_the_bound_are_accepted_exactly() -> None:
    big_fiat = "9" * AMOUNT_INTEGER_DIGITS + ".99"
    parsed = CREATE.parse(fiat(big_fiat))
    assert isinstance(parsed, CreateInvoiceArgs) and parsed.source_amount == Decimal(big_fiat)
    big_coin = "9" * AMOUNT_INTEGER_DIGITS + "." + "9" * CRYPTO_FRACTION_DIGITS
    parsed = CREATE.parse(crypto(big_coin))
    assert isinstance(parsed, CreateInvoiceArgs) and str(parsed.amount) == big_coin
    smallest = CREATE.parse(crypto("0." + "0" * (CRYPTO_FRACTION_DIGITS - 1) + "1"))
    assert isinstance(smallest, CreateInvoiceArgs) and smallest.amount == Decimal("1E-8")


def test_a_crypto_amount_has_eight_decimals_and_the_same_integer_bound() -> None:
    nine = CREATE.parse(crypto("0.000000001"))
    assert isinstance(nine, ToolFailure) and nine.field == "amount"
    assert f"at most {CRYPTO_FRACTION_DIGITS} after it" in nine.message
    wide = CREATE.parse(crypto("٣"))
    assert isinstance(wide, ToolFailure) and wide.field == "amount"
    fee = FEE.parse({"psys_cid": "BTC", "addresses": ["bc1q" + "x" * 30], "amounts": ["1" * 19]})
    assert isinstance(fee, ToolFailure) and fee.field == "amounts.0" and BOUND in fee.message


def test_the_schema_says_ascii_digits_and_keeps_the_error_text_local() -> None:
    for tool in PLISIO_TOOLS:
        sent = json.dumps(tool.parameters)
        assert "\\\\d" not in sent, f"{tool.name}: \\d admits Unicode digits"
        assert EXPECTED_KEYWORD not in sent, f"{tool.name}: local keyword sent to the model"
    spec = CREATE.parameters["properties"]["source_amount"]
    assert spec["pattern"] == r"^[0-9]{1,18}(\.[0-9]{1,2})?$" and spec["type"] == ["string", "null"]
    assert CREATE.parameters["properties"]["amount"]["pattern"] == r"^[0-9]{1,18}(\.[0-9]{1,8})?$"
    assert EXPECTED_KEYWORD in CREATE.validation_schema["properties"]["source_amount"]


def test_a_caller_that_skips_the_schema_meets_the_same_bound() -> None:
    """pydantic checks the form again: model_validate straight away, and Decimals from code."""
    for raw in ["١٠٠٠", "1" * 28, "250.004", "1000\n", 49.9]:
        with pytest.raises(ValueError, match=BOUND):
            CreateInvoiceArgs.model_validate(fiat(raw))  # type: ignore[arg-type]
    for value in [Decimal("1E+30"), Decimal("NaN"), Decimal("-1"), Decimal("240.001")]:
        with pytest.raises(ValueError, match=BOUND):
            CreateInvoiceArgs(order_name="x", source_amount=value, source_currency="USD")
    ok = CreateInvoiceArgs(order_name="x", source_amount=Decimal("240.00"), source_currency="USD")
    assert ok.source_amount == Decimal("240")
    with pytest.raises(ValueError, match=BOUND):
        EstimateFeeArgs.model_validate(
            {"psys_cid": "BTC", "addresses": ["bc1q" + "x" * 30], "amounts": ["１"]}
        )


# ----------------------------------------------------------------------------- the policy, exact


class Rates:
    """Prices from a table; a value that is an exception is raised."""

    def __init__(self, table: dict[tuple[str, str], Any]) -> None:
        self.table = table

    async def price(self, coin: str, fiat: str) -> Decimal:
        found = self.table.get((coin, fiat))
        if found is None:
            raise LookupError(f"Plisio gives no {fiat} rate for {coin}")
        if isinstance(found, BaseException):
            raise found
        assert isinstance(found, Decimal)
        return found

    async def cross(self, source: str, target: str) -> tuple[Decimal, Decimal]:
        """Through BTC: ``amount * price(BTC, target) / price(BTC, source)``."""
        return await self.price("BTC", target), await self.price("BTC", source)


RULES = InvoicePolicy(
    currency="USD", max_amount=Decimal("1000"), daily_total=Decimal("5000"), approval_above=Decimal("250")
)
PERSONA = PersonaSettings(prompt="p", tools=("plisio_create_invoice",), invoice_policy=RULES)
RATES = {
    ("USDT", "USD"): Decimal("1"),
    ("BTC", "USD"): Decimal("7"),
    ("BTC", "EUR"): Decimal("3"),
    ("ETH", "USD"): Decimal("0.333333333333333333333333333333"),
}


async def decide(
    raw: dict[str, Any], *, rates: dict[tuple[str, str], Any] | None = None, approved: bool = False,
    persona: PersonaSettings = PERSONA, caps: ExtraCaps | None = None,
) -> PolicyDecision:  # fmt: skip
    args = CREATE.parse(raw)
    assert isinstance(args, CreateInvoiceArgs), args

    async def extra(_: str) -> ExtraCaps | None:
        return caps

    policy = Policy(Rates(RATES if rates is None else rates), caps=extra)
    return await policy.evaluate(
        persona_name="finance", persona=persona, tool=CREATE, args=args, approved=approved
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("amount", "verdict", "clause"),
    [
        ("250", Verdict.ALLOW, "personas.finance.invoice_policy"),
        (
            "250.004",
            Verdict.APPROVAL,
            "personas.finance.invoice_policy.approval_above",
        ),  # skipped it, rounded
        ("250.00000001", Verdict.APPROVAL, "personas.finance.invoice_policy.approval_above"),
        ("1000", Verdict.APPROVAL, "personas.finance.invoice_policy.approval_above"),
        ("1000.005", Verdict.DENY, "personas.finance.invoice_policy.max_amount"),  # was held, rounded
        ("1000.00000001", Verdict.DENY, "personas.finance.invoice_policy.max_amount"),
    ],
)
async def test_the_caps_compare_exact_values(amount: str, verdict: Verdict, clause: str) -> None:
    decision = await decide(crypto(amount))  # 1 USDT = 1 USD: the value is the amount, digit for digit
    assert (decision.verdict, decision.clause) == (verdict, clause), decision.reason
    assert decision.reason.startswith(f"{shown(Decimal(amount))} USD")


@pytest.mark.anyio
async def test_messages_show_the_exact_amount_not_a_rounded_one() -> None:
    held = await decide(crypto("250.004"))
    assert held.reason == "250.004 USD is above 250 USD: a person must approve it"
    refused = await decide(crypto("1000.005"))
    assert refused.reason == "1000.005 USD is above the per-invoice cap of 1000 USD"
    fine = await decide(fiat("49.9"))
    assert fine.reason == "49.90 USD within caps" and fine.amount == Decimal("49.9")


@pytest.mark.anyio
async def test_a_cross_rate_keeps_full_precision() -> None:
    """100 EUR at BTC = 3 EUR = 7 USD is 233.333... USD: exactly, not 28 digits of it."""
    rules = RULES.model_copy(update={"approval_above": Decimal("233.33")})
    persona = PERSONA.model_copy(update={"invoice_policy": rules})
    held = await decide(fiat("100", "EUR"), persona=persona)
    assert held.verdict is Verdict.APPROVAL and held.reason.startswith("≈233.33333333 USD is above 233.33")
    assert held.amount == Decimal("233.33333334"), "the reservation is rounded up, never down"
    # 3000 ETH at 0.(30 threes) USD is 999.(27 nines) USD: at a cap of exactly that, allowed. Decimal's
    # 28 digits would round the value to 1000 and refuse it.
    exact = Decimal("999." + "9" * 27)
    rules = RULES.model_copy(update={"max_amount": exact, "approval_above": None})
    persona = PERSONA.model_copy(update={"invoice_policy": rules})
    at_cap = await decide(crypto("3000", "ETH"), persona=persona)
    assert at_cap.verdict is Verdict.ALLOW, at_cap.reason
    assert at_cap.amount == Decimal("1000.00000000"), "reserved rounded up to the ledger's 8 decimals"
    rules = rules.model_copy(update={"max_amount": Decimal("999." + "9" * 26 + "8")})
    persona = PERSONA.model_copy(update={"invoice_policy": rules})
    over = await decide(crypto("3000", "ETH"), persona=persona)
    assert over.verdict is Verdict.DENY and over.clause.endswith("max_amount")


@pytest.mark.anyio
async def test_a_grant_cap_is_compared_exactly_too() -> None:
    caps = ExtraCaps("grants.shop", max_amount=Decimal("200"), daily_total=Decimal("300"))
    over = await decide(crypto("200.00000001"), caps=caps)
    assert over.verdict is Verdict.DENY and over.clause == "grants.shop.max_amount"
    at = await decide(crypto("200"), caps=caps)
    assert at.verdict is Verdict.ALLOW and at.daily_total == Decimal("300")
    assert at.daily_clause == "grants.shop.daily_total"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("raw", "rates", "needle"),
    [
        (fiat("100", "EUR"), {("BTC", "USD"): Decimal("7")}, "no EUR rate for BTC"),
        (fiat("100", "EUR"), {**RATES, ("BTC", "EUR"): Decimal("0")}, "not positive"),
        (fiat("100", "EUR"), {**RATES, ("BTC", "EUR"): Decimal("-3")}, "not positive"),
        (fiat("100", "EUR"), {**RATES, ("BTC", "EUR"): Decimal("NaN")}, "not a finite number"),
        (fiat("100", "EUR"), {**RATES, ("BTC", "EUR"): Decimal("Infinity")}, "not a finite number"),
        (fiat("100", "EUR"), {**RATES, ("BTC", "EUR"): Decimal("1E+999999")}, "out of range"),
        (fiat("100", "EUR"), {**RATES, ("BTC", "EUR"): Decimal("1E-999999")}, "out of range"),
        (crypto("1", "BTC"), {("BTC", "USD"): decimal.InvalidOperation("bad")}, "InvalidOperation"),
        (crypto("1", "BTC"), {("BTC", "USD"): decimal.Overflow("big")}, "Overflow"),
        (crypto("1", "BTC"), {("BTC", "USD"): PlisioError("rates are down")}, "rates are down"),
        (crypto("1", "BTC"), {("BTC", "USD"): ZeroDivisionError("x")}, "ZeroDivisionError"),
    ],
)
async def test_any_valuation_error_is_a_denial_with_a_reason(
    raw: dict[str, Any], rates: dict[tuple[str, str], Any], needle: str
) -> None:
    decision = await decide(raw, rates=rates)
    assert decision.verdict is Verdict.DENY and decision.clause == "personas.finance.invoice_policy"
    assert decision.reason.startswith("cannot value the invoice in USD to check the caps")
    assert needle in decision.reason


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("value", "verdict", "needle"),
    [
        (Decimal("1" * 28), Verdict.DENY, "above the per-invoice cap"),  # crashed quantize() before
        (Decimal("1" * 60), Verdict.DENY, "the amount in USD is out of range"),
        (Decimal("1E+999999"), Verdict.DENY, "out of range"),
        (Decimal("NaN"), Verdict.DENY, "not a finite number"),
        (Decimal("sNaN"), Verdict.DENY, "not a finite number"),
        (Decimal("-Infinity"), Verdict.DENY, "not a finite number"),
        (Decimal("-5"), Verdict.DENY, "not positive"),
        (Decimal("0"), Verdict.DENY, "not positive"),
        (Decimal("250.0000000000000000000000000000001"), Verdict.APPROVAL, "≈250.00000000 USD is above 250"),
    ],
)
async def test_amounts_that_skip_validation_never_escape_the_policy(
    value: Decimal, verdict: Verdict, needle: str
) -> None:
    """Args built by code without validation (``model_construct``): the policy still decides, never raises."""
    args = CreateInvoiceArgs.model_construct(
        order_name="x", source_amount=value, source_currency="USD", amount=None, currency=None
    )
    decision = await Policy(Rates(RATES)).evaluate(
        persona_name="finance", persona=PERSONA, tool=CREATE, args=args
    )
    assert decision.verdict is verdict and needle in decision.reason, decision.reason


def test_reservation_and_display() -> None:
    assert reserved(Fraction(700, 3)) == Decimal("233.33333334")
    assert reserved(Fraction(Decimal("250.004"))) == Decimal("250.004")
    assert reserved(Fraction(1, 10**12)) == Decimal("1E-8")
    assert [shown(Decimal(v)) for v in ("1500", "49.9", "250.004", "0.00000001")] == [
        "1500.00", "49.90", "250.004", "0.00000001",
    ]  # fmt: skip
    assert shown(Fraction(700, 3)) == "≈233.33333333"
    assert shown(Decimal("1" * 40)) == "≈1.111111E+39"
    decision = PolicyDecision(
        Verdict.ALLOW,
        "c",
        "r",
        Decimal("0.004"),
        "USD",
        Decimal("600"),
        "personas.finance.invoice_policy.daily_total",
    )
    denied = over_daily_total(decision, Decimal("599.997"))
    assert denied.verdict is Verdict.DENY
    assert (
        denied.reason
        == "0.004 USD would bring today's invoices to 600.001 USD, above the daily cap of 600 USD"
    )


# ----------------------------------------------------------------------------- through the dispatcher


@pytest.fixture
async def rt(store: Store, sandbox: Sandbox) -> AsyncIterator[Runtime]:
    runtime = build_runtime(store, sandbox)
    yield runtime
    await runtime.aclose()


async def chat_turn(rt: Runtime, *steps: Any) -> tuple[Any, str]:
    ctx = call_context(rt.settings, "finance", "alice@example.com")
    result = await run_turn(
        model=ScriptedChatModel(list(steps)), dispatcher=rt.dispatcher, ctx=ctx, system_prompt="s",
        user_message="make the invoice",
    )  # fmt: skip
    return result, ctx.conversation_id


@pytest.mark.anyio
async def test_a_huge_amount_is_refused_audited_and_the_turn_ends(rt: Runtime, sandbox: Sandbox) -> None:
    """The issue's crash: a 28-digit source_amount and a balance read in the same model step."""
    huge = "1" * 28
    result, conv = await chat_turn(
        rt,
        step(call("plisio_create_invoice", fiat(huge)), call("plisio_get_balance", {"psys_cid": "BTC"})),
        say("That amount is not valid."),
    )
    assert result.text == "That amount is not valid."
    create, balance = result.calls
    assert create.outcome is Outcome.FAILED and balance.outcome is Outcome.SUCCEEDED
    error = json.loads(create.content)["error"]
    assert error["type"] == "invalid_arguments" and error["field"] == "source_amount"
    assert huge in error["message"] and BOUND in error["message"]
    assert not any(r.path.endswith("/invoices/new") for r in sandbox.requests)

    records = list(rt.audit.conversation(conv))
    mine = [(r.event, r.tool) for r in records if r.tool == "plisio_create_invoice"]
    assert mine == [
        (Event.TOOL_CALL_ATTEMPTED, "plisio_create_invoice"),
        (Event.TOOL_CALL_FAILED, "plisio_create_invoice"),
    ]
    refused = next(r for r in records if r.event == Event.TOOL_CALL_FAILED)
    assert refused.decision == "invalid_arguments" and BOUND in (refused.reason or "")
    reads = [r.event for r in records if r.tool == "plisio_get_balance"]
    assert reads == [Event.TOOL_CALL_ATTEMPTED, Event.TOOL_CALL_SUCCEEDED], "the read is audited too"
    assert records[-1].event == Event.TURN_ENDED


class AbsurdRates(httpx.AsyncBaseTransport):
    """The sandbox, except that its EUR rates are absurd (an exponent no price has): what a broken or hostile
    rate source could answer."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if not request.url.path.endswith("/currencies/EUR"):
            return response
        body = json.loads(await response.aread())
        for coin in body["data"]:
            coin["fiat_rate"] = "1e999999999"
        return httpx.Response(response.status_code, json=body)


@pytest.mark.anyio
async def test_a_conversion_error_in_the_policy_is_a_denial_not_a_500(store: Store, sandbox: Sandbox) -> None:
    """Valid arguments whose valuation blows up (an absurd rate from Plisio's rate table)."""
    rt = build_runtime(store, sandbox, transport=AbsurdRates(sandbox.transport()))
    result, conv = await chat_turn(
        rt,
        step(
            call("plisio_create_invoice", fiat("100", "EUR")), call("plisio_get_balance", {"psys_cid": "BTC"})
        ),
        say("I could not value it."),
    )
    create, balance = result.calls
    assert create.outcome is Outcome.DENIED and balance.outcome is Outcome.SUCCEEDED
    error = json.loads(create.content)["error"]
    assert error["type"] == "policy_denied" and error["clause"] == "personas.finance.invoice_policy"
    assert "cannot value the invoice in USD" in error["message"]
    assert not any(r.path.endswith("/invoices/new") for r in sandbox.requests)

    records = list(rt.audit.conversation(conv))
    mine = [r.event for r in records if r.tool == "plisio_create_invoice"]
    assert mine == [Event.TOOL_CALL_ATTEMPTED, Event.TOOL_CALL_DENIED]
    denied = next(r for r in records if r.event == Event.TOOL_CALL_DENIED)
    assert denied.decision == "deny" and "cannot value the invoice" in (denied.reason or "")
    assert records[-1].event == Event.TURN_ENDED
    await rt.aclose()
