"""Property-based: over amounts, currencies, rates and caps, the policy decides on exact values, never raises.

For every generated case (amounts just above and below a cap or the threshold at the 3rd to 30th decimal,
huge amounts, many decimals, broken rates; the policy currency, a fiat needing a cross rate, a coin; the
persona's caps and a grant's):

- allowed (by the policy, then by the ledger's daily check) ⇔ value ≤ per-invoice cap, value ≤ threshold
  (or no threshold), and today's total + value ≤ the daily cap;
- held for approval ⇔ value ≤ cap and value > threshold;
- denied otherwise, with a reason, and a value that cannot be computed is denied;
- no exception escapes.

``value`` is computed here with :class:`fractions.Fraction`, independently of the policy.
"""

from __future__ import annotations

import asyncio
import decimal
from decimal import Context, Decimal
from fractions import Fraction
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from persona.policy import MAX_MAGNITUDE, ExtraCaps, Policy, PolicyDecision, Verdict
from persona.settings import InvoicePolicy, PersonaSettings
from tests.test_amounts import Rates
from tools.plisio.args import AMOUNT_INTEGER_DIGITS, FIAT_FRACTION_DIGITS, CreateInvoiceArgs
from tools.plisio.tools import PLISIO_TOOLS
from tools.registry import ToolFailure

CREATE = next(t for t in PLISIO_TOOLS if t.name == "plisio_create_invoice")
WIDE = Context(prec=200)
"""Exact sums of the generated numbers (the default context would round at 28 digits)."""
QUANTUM = Fraction(1, 10**8)
PROPERTY = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


# ----------------------------------------------------------------------------- strategies


def cents(lo: str, hi: str) -> st.SearchStrategy[Decimal]:
    return st.decimals(min_value=Decimal(lo), max_value=Decimal(hi), places=2)


good_rate = st.builds(
    lambda digits, exp: Decimal(f"{digits}E{exp}"),
    st.integers(1, 10**15),
    st.integers(-20, 10),
)
bad_rate: st.SearchStrategy[Any] = st.sampled_from(
    [
        Decimal(0), Decimal(-3), Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), Decimal("1E+999999"),
        Decimal("1E-999999"), decimal.InvalidOperation("bad"), decimal.Overflow("big"),
        decimal.DivisionByZero("zero"), None,  # None: no rate at all
    ]
)  # fmt: skip
rate = st.one_of(good_rate, good_rate, good_rate, bad_rate)


def near(base: Decimal) -> st.SearchStrategy[Decimal]:
    """``base`` plus or minus a few units at the 3rd to 30th decimal (or exactly ``base``)."""
    return st.builds(
        lambda k, e: WIDE.add(base, Decimal(f"{k}E-{e}")), st.integers(-5, 5), st.integers(3, 30)
    )


huge = st.builds(lambda digits, exp: Decimal(f"{digits}E{exp}"), st.integers(1, 10**60), st.integers(-60, 60))
many_decimals = st.decimals(
    min_value=Decimal("1E-30"), max_value=Decimal("1E+6"), allow_nan=False, allow_infinity=False
)
odd = st.sampled_from([Decimal("NaN"), Decimal("Infinity"), Decimal("-1"), Decimal("0"), Decimal("1" * 28)])


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    max_amount = draw(cents("0.01", "1000000"))
    daily_total = draw(cents("0.01", "10000000"))
    approval_above = draw(st.none() | cents("0", "1000000"))
    grant = draw(st.none() | st.builds(ExtraCaps, st.just("grants.g"), st.none() | cents("0.01", "1000000"),
                                       st.none() | cents("0.01", "10000000")))  # fmt: skip
    spent = draw(st.decimals(min_value=Decimal(0), max_value=daily_total * 2, places=8))
    kind = draw(st.sampled_from(["USD", "EUR", "BTC", "ETH"]))
    rates: dict[tuple[str, str], Any] = {("BTC", "USD"): draw(rate)}
    if kind == "EUR":
        rates[("BTC", "EUR")] = draw(rate)
    if kind == "ETH":
        rates[("ETH", "USD")] = draw(rate)
    # Amounts near the lines that matter, in the policy currency when the amount is USD (exactly at the
    # boundary, or a hair across it); else anything: huge, many decimals, broken.
    remaining = WIDE.subtract(daily_total, spent)
    lines = [max_amount, daily_total, remaining] + ([approval_above] if approval_above is not None else [])
    if grant is not None:
        lines += [x for x in (grant.max_amount, grant.daily_total) if x is not None]
    amount = draw(st.one_of(st.sampled_from(lines).flatmap(near), huge, many_decimals, odd))
    return {
        "rules": InvoicePolicy(currency="USD", max_amount=max_amount, daily_total=daily_total,
                               approval_above=approval_above),
        "grant": grant, "spent": spent, "kind": kind, "rates": rates, "amount": amount,
        "approved": draw(st.booleans()),
    }  # fmt: skip


# ----------------------------------------------------------------------------- the oracle


def exact(value: Any) -> Fraction | None:
    """What the policy may compute with: finite, positive, within the magnitude bound."""
    if not isinstance(value, Decimal) or not value.is_finite() or value <= 0:
        return None
    if abs(value.adjusted()) > MAX_MAGNITUDE:
        return None
    return Fraction(value)


def expected_value(case: dict[str, Any]) -> Fraction | None:
    amount, rates, kind = exact(case["amount"]), case["rates"], case["kind"]
    if amount is None:
        return None
    if kind == "USD":
        return amount
    if kind == "EUR":
        usd, eur = exact(rates[("BTC", "USD")]), exact(rates[("BTC", "EUR")])
        return None if usd is None or eur is None else amount * usd / eur
    coin = exact(rates[(kind, "USD")])
    return None if coin is None else amount * coin


def decide(case: dict[str, Any]) -> PolicyDecision:
    kind, amount = case["kind"], case["amount"]
    if kind in ("USD", "EUR"):
        args = CreateInvoiceArgs.model_construct(
            order_name="x", source_amount=amount, source_currency=kind, amount=None, currency=None
        )
    else:
        args = CreateInvoiceArgs.model_construct(
            order_name="x", source_amount=None, source_currency=None, amount=amount, currency=kind
        )
    persona = PersonaSettings(prompt="p", tools=("plisio_create_invoice",), invoice_policy=case["rules"])
    grant = case["grant"]

    async def caps(_: str) -> ExtraCaps | None:
        return grant

    policy = Policy(Rates({k: v for k, v in case["rates"].items() if v is not None}), caps=caps)
    return asyncio.run(
        policy.evaluate(persona_name="p", persona=persona, tool=CREATE, args=args, approved=case["approved"])
    )


# ----------------------------------------------------------------------------- the properties


@PROPERTY
@given(cases())
def test_the_verdict_follows_the_exact_value(case: dict[str, Any]) -> None:
    decision = decide(case)  # no exception escapes: any would fail the property
    rules: InvoicePolicy = case["rules"]
    grant: ExtraCaps | None = case["grant"]
    cap, daily = rules.max_amount, rules.daily_total
    if grant is not None and grant.max_amount is not None:
        cap = min(cap, grant.max_amount)
    if grant is not None and grant.daily_total is not None:
        daily = min(daily, grant.daily_total)
    assert decision.reason, "every decision says why"

    value = expected_value(case)
    if value is None:
        assert decision.verdict is Verdict.DENY, decision
        assert decision.reason.startswith("cannot value the invoice in USD"), decision.reason
        return
    threshold = rules.approval_above
    held = not case["approved"] and threshold is not None and value > Fraction(threshold)
    if value > Fraction(cap):
        assert decision.verdict is Verdict.DENY and decision.clause.endswith(".max_amount"), decision
        return
    assert decision.verdict is (Verdict.APPROVAL if held else Verdict.ALLOW), (value, decision)

    # What the ledger then checks against today's total: the reservation, the exact value rounded up to
    # its 8 decimals; with caps and totals at that resolution the two checks agree.
    assert decision.daily_total == daily and decision.amount is not None
    reserved = Fraction(decision.amount)
    assert value <= reserved < value + QUANTUM
    spent = case["spent"]
    ledger_admits = WIDE.add(spent, decision.amount) <= daily
    assert ledger_admits == (Fraction(spent) + value <= Fraction(daily))


@PROPERTY
@given(
    st.one_of(
        st.text(max_size=40),
        st.from_regex(r"\A[0-9]{1,30}(\.[0-9]{0,12})?\Z"),
        st.from_regex(r"\A[\d.eE+\- ]{1,30}\Z"),
    )
)
def test_any_text_is_either_a_bounded_ascii_amount_or_a_field_error(raw: str) -> None:
    parsed = CREATE.parse({"order_name": "x", "source_amount": raw, "source_currency": "USD"})
    if isinstance(parsed, ToolFailure):
        assert parsed.field == "source_amount", parsed
        return
    assert parsed.source_amount is not None and parsed.source_amount > 0
    head, _, tail = raw.partition(".")
    assert raw.isascii() and head.isdigit() and (not tail or tail.isdigit())
    assert len(head) <= AMOUNT_INTEGER_DIGITS and len(tail) <= FIAT_FRACTION_DIGITS
    assert parsed.source_amount == Fraction(raw)
