"""Policy: deterministic code reading ``config.yaml``. The model never holds authority.

Scopes say which tools a persona may call at all; invoice caps bound each invoice and each
day's total (in the policy currency, converted with Plisio's own rates); an approval
threshold holds larger invoices for a person. The policy is pure: it reads the money a call is
about from the tool's own declared rule (``Tool.amount``) and says allow / deny / hold, with the
daily cap that applies; the effects ledger checks that cap and reserves in one transaction when it
claims the effect. It fails closed: a side-effect tool with no amount rule, or whose kind of side
effect no rule here covers, is denied.

Money is exact. The amount is valued in the policy currency as an exact fraction (Plisio's rates are
decimals, a cross rate is their quotient: no rounding anywhere), and the caps and the approval threshold
are compared against that exact value: ``250.004`` is above a 250 threshold, ``1000.005`` above a 1000
cap. Rounding happens only where a number is shown in a message. Whatever goes wrong while valuing (a
missing or broken rate, an amount or rate out of range, any decimal error) is a denial with the reason,
never an exception.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from enum import StrEnum
from fractions import Fraction
from typing import Any, Protocol

from persona.settings import InvoicePolicy, PersonaSettings, resolve_tools
from tools.errors import PlisioError
from tools.plisio.client import PlisioClient
from tools.registry import Money, Tool

CENT = Decimal("0.01")
"""Display only: the amounts in messages (a whole number of cents is shown with two decimals)."""
LEDGER_QUANTUM = Decimal("1E-8")
"""The effects ledger's resolution (``Numeric(24, 8)``): the amount a decision reserves is the exact value
rounded *up* to it, so a reservation is never less than the value; for caps with at most 8 decimals,
``spent + reserved <= cap`` holds exactly when ``spent + value <= cap`` does."""
MAX_MAGNITUDE = 40
"""An amount or a rate outside 10^-40 .. 10^40 is not a price but a fault (or an attack): denied."""


class ValuationError(Exception):
    """The money of a call cannot be valued in the policy currency; the policy denies with this reason."""


class Verdict(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    APPROVAL = "approval_required"


@dataclass(frozen=True)
class PolicyDecision:
    verdict: Verdict
    clause: str
    """The config key that decided, e.g. ``personas.finance.invoice_policy.max_amount``."""
    reason: str
    amount: Decimal | None = None
    currency: str | None = None
    daily_total: Decimal | None = None
    """The cap the effects ledger checks today's total against when it claims (None: no money moves)."""
    daily_clause: str | None = None

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW


@dataclass(frozen=True)
class ExtraCaps:
    """Caps a grant adds on top of the persona's (same currency); the stricter of the two applies."""

    clause: str
    """Config-like key naming the grant, e.g. ``grants.shop-main``."""
    max_amount: Decimal | None = None
    daily_total: Decimal | None = None


CapsSource = Callable[[str], Awaitable[ExtraCaps | None]]
"""persona name -> the extra caps of its grant, if any."""


@dataclass(frozen=True)
class GrantDenial:
    kind: str
    clause: str
    reason: str


class GrantChecker(Protocol):
    """The credentials vault's say on a call: None, or why this persona may not make it (grant scope)."""

    async def check(self, persona: str, tool: str) -> GrantDenial | None: ...


def in_scope(persona: PersonaSettings, tool: str) -> bool:
    return tool in resolve_tools(persona)


class Prices(Protocol):
    async def price(self, coin: str, fiat: str) -> Decimal:
        """How much one unit of ``coin`` costs in ``fiat``."""
        ...

    async def cross(self, source: str, target: str) -> tuple[Decimal, Decimal]:
        """``(n, d)`` such that an amount in fiat ``source`` is ``amount * n / d`` in fiat ``target``."""
        ...


MIN_RATE_DIGITS = 4
"""Fewest significant digits a Plisio rate may have to value money with (an error under 0.1%)."""


class PlisioPrices:
    """Prices from Plisio's ``/currencies/{fiat}``, cached for a minute. Its ``fiat_rate`` is coins per one
    unit of the fiat (Plisio's own plugins price an order as ``crypto = total * fiat_rate``; see
    tools/plisio/README.md), so one coin costs ``1 / fiat_rate`` of the fiat. A rate comes at the coin's
    precision, so it can be coarse (one yen is ``0.00000010`` BTC: one digit): a rate with fewer than
    :data:`MIN_RATE_DIGITS` significant digits is refused, and a cross rate between two fiats goes through
    the coin whose rates have the most digits in both."""

    def __init__(
        self, client: PlisioClient, *, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic
    ):
        self._client, self._ttl, self._clock = client, ttl, clock
        self._cache: dict[str, tuple[float, dict[str, Decimal]]] = {}
        self._lock = asyncio.Lock()

    async def _rates(self, fiat: str) -> dict[str, Decimal]:
        """Coins per one ``fiat``, by coin: only finite, positive rates within :data:`MAX_MAGNITUDE`."""
        async with self._lock:
            hit = self._cache.get(fiat)
            if hit is None or self._clock() - hit[0] > self._ttl:
                currencies = await self._client.get_currencies(fiat)
                rates = {c.cid: c.fiat_rate for c in currencies if _usable(c.fiat_rate)}
                hit = (self._clock(), {k: v for k, v in rates.items() if v is not None})
                self._cache[fiat] = hit
        return hit[1]

    async def price(self, coin: str, fiat: str) -> Decimal:
        rate = (await self._rates(fiat)).get(coin)
        if rate is None:
            raise LookupError(f"Plisio gives no usable {fiat} rate for {coin}")
        if _digits(rate) < MIN_RATE_DIGITS:
            raise LookupError(
                f"Plisio's {fiat} rate for {coin} ({rate} {coin} per {fiat}) has too few digits to value money"
            )
        with localcontext() as ctx:
            ctx.prec = 50
            return Decimal(1) / rate

    async def cross(self, source: str, target: str) -> tuple[Decimal, Decimal]:
        src, tgt = await self._rates(source), await self._rates(target)
        both = [c for c in src if c in tgt]
        if not both:
            raise LookupError(f"Plisio gives no coin rated in both {source} and {target}")
        best = max(both, key=lambda c: (min(_digits(src[c]), _digits(tgt[c])), c == "BTC"))
        if min(_digits(src[best]), _digits(tgt[best])) < MIN_RATE_DIGITS:
            raise LookupError(
                f"Plisio's {source} and {target} rates have too few digits to convert between them"
            )
        return src[best], tgt[best]  # source -> coins -> target: * coins-per-source / coins-per-target


def _usable(rate: Decimal | None) -> bool:
    return rate is not None and rate.is_finite() and rate > 0 and abs(rate.adjusted()) <= MAX_MAGNITUDE


def _digits(rate: Decimal) -> int:
    return len(rate.normalize().as_tuple().digits)


SIDE_EFFECT_RULES = {"creates_invoice": "invoice_policy"}
"""The kinds of side effect the policy has caps for, and the persona setting that holds them."""


def _exact(value: object, what: str) -> Fraction:
    """A finite, positive decimal within :data:`MAX_MAGNITUDE`, as an exact fraction."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise ValuationError(f"{what} is not a decimal number ({type(value).__name__})")
    number = Decimal(value)
    if not number.is_finite():
        raise ValuationError(f"{what} is not a finite number ({number})")
    if number <= 0:
        raise ValuationError(f"{what} is not positive ({shown(number)})")
    if abs(number.adjusted()) > MAX_MAGNITUDE:
        raise ValuationError(f"{what} is out of range ({number:.3E})")
    return Fraction(number)


async def value_money(money: Money, currency: str, prices: Prices) -> Fraction:
    """``money`` in the policy currency, exactly (no rounding: a cross rate stays a fraction).

    Raises :class:`ValuationError` when it cannot be valued (a rate missing, broken or out of range)."""
    value = _exact(money.value, f"the amount in {money.currency}")
    try:
        if money.currency == currency:
            return value
        if money.fiat:
            # A cross rate through one coin, both legs from the same Plisio rate table.
            n, d = await prices.cross(money.currency, currency)
            return (
                value * _exact(n, f"Plisio's {money.currency} rate") / _exact(d, f"Plisio's {currency} rate")
            )
        return value * _exact(
            await prices.price(money.currency, currency), f"Plisio's {money.currency} rate in {currency}"
        )
    except (PlisioError, LookupError) as exc:
        raise ValuationError(str(exc)) from exc


def reserved(value: Fraction) -> Decimal:
    """What a decision reserves against the daily total: ``value`` rounded up to :data:`LEDGER_QUANTUM`."""
    units = math.ceil(value / Fraction(LEDGER_QUANTUM))
    return Decimal(f"{units}E{LEDGER_QUANTUM.as_tuple().exponent}")


def shown(value: Fraction | Decimal) -> str:
    """A number for a message (never for a check): two decimals when it is a whole number of cents, else
    its exact digits up to 8 decimals, else ``≈`` and 8 decimals; very large values in scientific form."""
    exact = Fraction(value)
    with localcontext() as ctx:
        ctx.prec, ctx.rounding = 60, ROUND_HALF_EVEN
        if abs(exact) >= 10**24:
            ctx.prec = 7
            return f"≈{Decimal(exact.numerator) / Decimal(exact.denominator):E}"
        if (exact * 100).denominator == 1:
            return f"{Decimal(exact.numerator) / Decimal(exact.denominator):.2f}"
        places = Fraction(LEDGER_QUANTUM)
        if (exact / places).denominator == 1:
            return format((Decimal(exact.numerator) / Decimal(exact.denominator)).normalize(), "f")
        rounded = (Decimal(exact.numerator) / Decimal(exact.denominator)).quantize(LEDGER_QUANTUM)
        return f"≈{rounded:f}"


class Policy:
    """Decides allow / deny / approval for a validated call: pure rules, no storage."""

    def __init__(self, prices: Prices, *, caps: CapsSource | None = None) -> None:
        self._prices, self._caps = prices, caps

    async def evaluate(
        self,
        *,
        persona_name: str,
        persona: PersonaSettings,
        tool: Tool[Any, Any],
        args: Any,
        approved: bool = False,
    ) -> PolicyDecision:
        base = f"personas.{persona_name}"
        if not in_scope(persona, tool.name):
            return PolicyDecision(
                Verdict.DENY, f"{base}.tools", f"{tool.name} is not among the tools of {persona_name}"
            )
        if tool.read_only:
            return PolicyDecision(Verdict.ALLOW, f"{base}.tools", "read-only tool in scope")
        if tool.side_effect not in SIDE_EFFECT_RULES:
            return PolicyDecision(
                Verdict.DENY, f"{base}.tools",
                f"{tool.name} {tool.side_effect or 'has a side effect'}, which no policy rule covers, so it is refused",
            )  # fmt: skip
        if tool.amount is None:
            return PolicyDecision(
                Verdict.DENY, f"{base}.tools",
                f"{tool.name} declares no amount rule, so its caps cannot be checked and it is refused",
            )  # fmt: skip
        rules = persona.invoice_policy
        if rules is None:
            return PolicyDecision(
                Verdict.DENY,
                f"{base}.invoice_policy",
                "no invoice caps are configured, so invoices are refused",
            )
        return await self._capped(base, persona_name, rules, tool.amount(args), approved)

    async def _capped(
        self, base: str, persona_name: str, rules: InvoicePolicy, money: Money, approved: bool
    ) -> PolicyDecision:
        clause = f"{base}.invoice_policy"
        cur = rules.currency
        extra = None if self._caps is None else await self._caps(persona_name)
        max_clause, max_amount = f"{clause}.max_amount", rules.max_amount
        day_clause, daily_total = f"{clause}.daily_total", rules.daily_total
        try:
            if extra is not None and extra.max_amount is not None and extra.max_amount < max_amount:
                max_clause, max_amount = f"{extra.clause}.max_amount", extra.max_amount
            if extra is not None and extra.daily_total is not None and extra.daily_total < daily_total:
                day_clause, daily_total = f"{extra.clause}.daily_total", extra.daily_total
            value = await value_money(money, cur, self._prices)
            return self._compare(
                value, rules, clause, max_clause, max_amount, day_clause, daily_total, approved
            )
        except ValuationError as exc:
            reason = f"cannot value the invoice in {cur} to check the caps: {exc}"
        except (ArithmeticError, ValueError) as exc:  # any decimal signal, a broken cap or rate: fail closed
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            reason = f"cannot value the invoice in {cur} to check the caps: a decimal error ({detail})"
        return PolicyDecision(Verdict.DENY, clause, reason, currency=cur)

    @staticmethod
    def _compare(
        value: Fraction, rules: InvoicePolicy, clause: str, max_clause: str, max_amount: Decimal,
        day_clause: str, daily_total: Decimal, approved: bool,
    ) -> PolicyDecision:  # fmt: skip
        """The exact value against the exact caps; only the messages round."""
        cur, amount = rules.currency, shown(value)
        if value > Fraction(max_amount):
            return PolicyDecision(
                Verdict.DENY, max_clause,
                f"{amount} {cur} is above the per-invoice cap of {max_amount} {cur}", reserved(value), cur,
            )  # fmt: skip
        threshold = rules.approval_above
        if not approved and threshold is not None and value > Fraction(threshold):
            return PolicyDecision(
                Verdict.APPROVAL, f"{clause}.approval_above",
                f"{amount} {cur} is above {threshold} {cur}: a person must approve it", reserved(value), cur,
                daily_total, day_clause,
            )  # fmt: skip
        note = " (approved by a person)" if approved else ""
        return PolicyDecision(
            Verdict.ALLOW, clause, f"{amount} {cur} within caps{note}", reserved(value), cur, daily_total,
            day_clause,
        )  # fmt: skip


def over_daily_total(decision: PolicyDecision, spent: Decimal) -> PolicyDecision:
    """The denial when the ledger finds that ``decision``'s amount would take today's total over its cap."""
    assert decision.amount is not None
    assert decision.daily_total is not None
    cur = decision.currency
    return PolicyDecision(
        Verdict.DENY, decision.daily_clause or "",
        f"{shown(decision.amount)} {cur} would bring today's invoices to {shown(Fraction(spent) + Fraction(decision.amount))} {cur}, "
        f"above the daily cap of {decision.daily_total} {cur}", decision.amount, cur,
    )  # fmt: skip
