"""Policy: deterministic code reading ``config.yaml``. The model never holds authority.

Scopes say which tools a persona may call at all; invoice caps bound each invoice and each
day's total (in the policy currency, converted with Plisio's own rates); an approval
threshold holds larger invoices for a person. The daily total is checked and reserved in
one database transaction, so concurrent conversations cannot overshoot it together.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import func, select, text, update

from persona.config import InvoicePolicy, PersonaSettings, resolve_tools
from persona.store.engine import Store
from persona.store.tables import spend_ledger
from tools.errors import PlisioError
from tools.plisio.args import CreateInvoiceArgs
from tools.plisio.client import PlisioClient

CENT = Decimal("0.01")


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


def in_scope(persona: PersonaSettings, tool: str) -> bool:
    return tool in resolve_tools(persona)


class Prices(Protocol):
    async def price(self, coin: str, fiat: str) -> Decimal:
        """How much one unit of ``coin`` costs in ``fiat``."""
        ...


class PlisioPrices:
    """Prices from Plisio's ``/currencies/{fiat}`` (``fiat_rate``), cached for a minute."""

    def __init__(
        self, client: PlisioClient, *, ttl: float = 60.0, clock: Callable[[], float] = time.monotonic
    ):
        self._client, self._ttl, self._clock = client, ttl, clock
        self._cache: dict[str, tuple[float, dict[str, Decimal]]] = {}
        self._lock = asyncio.Lock()

    async def price(self, coin: str, fiat: str) -> Decimal:
        async with self._lock:
            hit = self._cache.get(fiat)
            if hit is None or self._clock() - hit[0] > self._ttl:
                currencies = await self._client.get_currencies(fiat)
                rates = {c.cid: c.fiat_rate for c in currencies if c.fiat_rate}
                hit = (self._clock(), {k: v for k, v in rates.items() if v is not None})
                self._cache[fiat] = hit
        if coin not in hit[1]:
            raise LookupError(f"Plisio gives no {fiat} rate for {coin}")
        return hit[1][coin]


async def value_invoice(args: CreateInvoiceArgs, currency: str, prices: Prices) -> Decimal:
    """The invoice's amount in the policy currency."""
    if args.source_amount is not None and args.source_currency is not None:
        if args.source_currency == currency:
            return args.source_amount
        # Cross rate through BTC: both prices come from the same Plisio rate table.
        in_source = await prices.price("BTC", args.source_currency)
        in_policy = await prices.price("BTC", currency)
        return args.source_amount * in_policy / in_source
    assert args.amount is not None
    assert args.currency is not None
    return args.amount * await prices.price(args.currency, currency)


class SpendLedger:
    """Per persona, per UTC day: how much has been invoiced (reserved or committed)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def spent(self, persona: str, day: str) -> Decimal:
        with self._store.read("read the spend ledger") as conn:
            total = conn.execute(
                select(func.coalesce(func.sum(spend_ledger.c.amount_usd), 0)).where(
                    spend_ledger.c.persona == persona,
                    spend_ledger.c.day == day,
                    spend_ledger.c.status != "released",
                )
            ).scalar_one()
        return Decimal(str(total))

    def reserve(
        self,
        *,
        persona: str,
        day: str,
        amount: Decimal,
        cap: Decimal,
        conversation_id: str,
        tool_call_id: str,
        now: datetime,
    ) -> Decimal | None:
        """Atomically check ``spent + amount <= cap`` and reserve. Returns the new total, or None if over."""
        with self._store.begin("reserve spend") as conn:
            if self._store.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(persona.encode())})
            existing = conn.execute(
                select(spend_ledger.c.status).where(
                    spend_ledger.c.conversation_id == conversation_id,
                    spend_ledger.c.tool_call_id == tool_call_id,
                )
            ).first()
            spent = Decimal(
                str(
                    conn.execute(
                        select(func.coalesce(func.sum(spend_ledger.c.amount_usd), 0)).where(
                            spend_ledger.c.persona == persona,
                            spend_ledger.c.day == day,
                            spend_ledger.c.status != "released",
                        )
                    ).scalar_one()
                )
            )
            if existing is not None and existing.status != "released":
                return spent  # the same call again: already counted once
            if spent + amount > cap:
                return None
            if existing is not None:
                conn.execute(
                    update(spend_ledger)
                    .where(
                        spend_ledger.c.conversation_id == conversation_id,
                        spend_ledger.c.tool_call_id == tool_call_id,
                    )
                    .values(status="reserved", amount_usd=amount, day=day)
                )
            else:
                conn.execute(
                    spend_ledger.insert().values(
                        persona=persona,
                        day=day,
                        amount_usd=amount,
                        conversation_id=conversation_id,
                        tool_call_id=tool_call_id,
                        status="reserved",
                        created_at=now,
                    )
                )
            return spent + amount

    def settle(self, *, conversation_id: str, tool_call_id: str, committed: bool) -> None:
        with self._store.begin("settle spend") as conn:
            conn.execute(
                update(spend_ledger)
                .where(
                    spend_ledger.c.conversation_id == conversation_id,
                    spend_ledger.c.tool_call_id == tool_call_id,
                )
                .values(status="committed" if committed else "released")
            )


class Policy:
    """Decides allow / deny / approval for a validated call. Pure rules plus the ledger."""

    def __init__(
        self,
        ledger: SpendLedger,
        prices: Prices,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        caps: CapsSource | None = None,
    ) -> None:
        self._ledger, self._prices, self._now, self._caps = ledger, prices, now, caps

    async def evaluate(
        self,
        *,
        persona_name: str,
        persona: PersonaSettings,
        tool: str,
        args: Any,
        conversation_id: str,
        tool_call_id: str,
        approved: bool = False,
    ) -> PolicyDecision:
        base = f"personas.{persona_name}"
        if not in_scope(persona, tool):
            return PolicyDecision(
                Verdict.DENY, f"{base}.tools", f"{tool} is not among the tools of {persona_name}"
            )
        if not isinstance(args, CreateInvoiceArgs):
            return PolicyDecision(Verdict.ALLOW, f"{base}.tools", "read-only tool in scope")
        rules = persona.invoice_policy
        if rules is None:
            return PolicyDecision(
                Verdict.DENY,
                f"{base}.invoice_policy",
                "no invoice caps are configured, so invoices are refused",
            )
        return await self._invoice(base, persona_name, rules, args, conversation_id, tool_call_id, approved)

    async def _invoice(
        self,
        base: str,
        persona_name: str,
        rules: InvoicePolicy,
        args: CreateInvoiceArgs,
        conversation_id: str,
        tool_call_id: str,
        approved: bool,
    ) -> PolicyDecision:
        clause = f"{base}.invoice_policy"
        cur = rules.currency
        extra = None if self._caps is None else await self._caps(persona_name)
        max_clause, max_amount = f"{clause}.max_amount", rules.max_amount
        day_clause, daily_total = f"{clause}.daily_total", rules.daily_total
        if extra is not None and extra.max_amount is not None and extra.max_amount < max_amount:
            max_clause, max_amount = f"{extra.clause}.max_amount", extra.max_amount
        if extra is not None and extra.daily_total is not None and extra.daily_total < daily_total:
            day_clause, daily_total = f"{extra.clause}.daily_total", extra.daily_total
        try:
            amount = (await value_invoice(args, cur, self._prices)).quantize(CENT)
        except (PlisioError, LookupError) as exc:
            return PolicyDecision(
                Verdict.DENY, clause, f"cannot value the invoice in {cur} to check the caps: {exc}"
            )
        if amount > max_amount:
            return PolicyDecision(
                Verdict.DENY, max_clause,
                f"{amount} {cur} is above the per-invoice cap of {max_amount} {cur}", amount, cur,
            )  # fmt: skip
        if not approved and rules.approval_above is not None and amount > rules.approval_above:
            return PolicyDecision(
                Verdict.APPROVAL, f"{clause}.approval_above",
                f"{amount} {cur} is above {rules.approval_above} {cur}: a person must approve it", amount, cur,
            )  # fmt: skip
        day = self._now().astimezone(UTC).date().isoformat()
        total = await asyncio.to_thread(
            self._ledger.reserve,
            persona=persona_name, day=day, amount=amount, cap=daily_total,
            conversation_id=conversation_id, tool_call_id=tool_call_id, now=self._now(),
        )  # fmt: skip
        if total is None:
            spent = (await asyncio.to_thread(self._ledger.spent, persona_name, day)).quantize(CENT)
            return PolicyDecision(
                Verdict.DENY, day_clause,
                f"{amount} {cur} would bring today's invoices to {spent + amount} {cur}, above the daily cap of "
                f"{daily_total} {cur}", amount, cur,
            )  # fmt: skip
        total = total.quantize(CENT)
        note = " (approved by a person)" if approved else ""
        return PolicyDecision(
            Verdict.ALLOW,
            clause,
            f"{amount} {cur} within caps; today's total {total} {cur}{note}",
            amount,
            cur,
        )

    async def settle(self, *, conversation_id: str, tool_call_id: str, committed: bool) -> None:
        await asyncio.to_thread(
            self._ledger.settle,
            conversation_id=conversation_id,
            tool_call_id=tool_call_id,
            committed=committed,
        )
