"""Deterministic demo data for the Northwind Digital shop, with patterns whose answers are known.

Same ``seed`` + same ``now`` -> byte-identical operations. The seed moves the background (times,
amounts, which regular bought what); the curated patterns below are fixed relative to ``now`` and
hold for every seed. Definitions (all over ``type == "invoice"`` operations, keyed by payer email):

* churned repeat customer: >= 3 ``completed`` invoices, and no invoice of any status created in
  the last ``CHURN_QUIET_DAYS`` days (so every completed one is older than that)
* repeat underpayer: >= 2 invoices ``expired`` with ``actual_sum > 0`` (received, then timed out)
* coin switcher: ``completed``/``mismatch`` invoices in >= 3 different ``psys_cid``
* expired share: expired / all invoices by ``created_at_utc``, in (now-30d, now] vs (now-90d, now-30d]
* refundable: ``completed`` with ``created_at_utc`` within the last ``REFUND_WINDOW_DAYS`` days
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from decimal import ROUND_DOWN, Decimal
from fractions import Fraction
from typing import Final

from tools.plisio.sandbox import identifiers
from tools.plisio.sandbox.catalog import ACTIVE_COINS, COINS, FIATS, fee_for, withdraw_commission
from tools.plisio.sandbox.demo_shop import BACKGROUND, COINS_OF, CUSTOMERS, OPENING_BALANCES, PRODUCTS
from tools.plisio.sandbox.invoicing import price
from tools.plisio.sandbox.records import CREDITED, Operation, Shop, Tx
from tools.plisio.sandbox.state import ShopState, credit_for

DAY: Final = 86_400
CHURN_QUIET_DAYS: Final = 45
REFUND_WINDOW_DAYS: Final = 14

CHURNED_REPEAT_CUSTOMERS: Final = frozenset(
    {
        "olivia.hart@example.com",
        "marcus.bell@example.com",
        "zoe.angstrom@example.com",
        "jonas.weber@example.com",
    }
)
REPEAT_UNDERPAYERS: Final = frozenset(
    {"priya.nair@example.com", "diego.alvarez@example.com", "mei.tanaka@example.com"}
)
COIN_SWITCHERS: Final = frozenset(
    {"sam.okafor@example.com", "lena.fischer@example.com", "raj.patel@example.com"}
)
# Near misses: Liam's last completed payment is 44 days old (not churned); Nora paid in 2 coins and
# let an invoice in a 3rd coin expire unpaid (not a switcher).
NEAR_MISS_CUSTOMERS: Final = frozenset({"liam.osei@example.com", "nora.quinn@example.com"})
RECENT_REFUNDABLE_ORDER_NUMBERS: Final = ("202618801", "202618802", "202618803")  # among other recent ones
TOO_OLD_TO_REFUND_ORDER_NUMBERS: Final = ("202618804",)  # completed 20 days ago

INVOICES_LAST_30D: Final = 120
EXPIRED_LAST_30D: Final = 30
INVOICES_PREVIOUS_60D: Final = 180
EXPIRED_PREVIOUS_60D: Final = 18
EXPIRED_SHARE_LAST_30D: Final = Fraction(EXPIRED_LAST_30D, INVOICES_LAST_30D)  # 1/4
EXPIRED_SHARE_PREVIOUS_60D: Final = Fraction(EXPIRED_PREVIOUS_60D, INVOICES_PREVIOUS_60D)  # 1/10

# Curated invoices: (order_number, email, days ago, status, coin, product index, received / amount).
_U = "underpaid"  # expired with part of the amount received
_CURATED: Final[tuple[tuple[str, str, float, str, str, int, str], ...]] = (
    ("202617001", "olivia.hart@example.com", 88, "completed", "BTC", 1, "1"),
    ("202617002", "olivia.hart@example.com", 74, "completed", "BTC", 0, "1"),
    ("202617003", "olivia.hart@example.com", 61, "completed", "BTC", 0, "1"),
    ("202617004", "olivia.hart@example.com", 52, "completed", "LTC", 6, "1"),
    ("202617005", "marcus.bell@example.com", 85, "completed", "ETH", 7, "1"),
    ("202617006", "marcus.bell@example.com", 70, "completed", "ETH", 0, "1"),
    ("202617007", "marcus.bell@example.com", 58, "completed", "USDT", 2, "1"),
    ("202617008", "zoe.angstrom@example.com", 80, "completed", "USDT_TRX", 3, "1"),
    ("202617009", "zoe.angstrom@example.com", 66, "completed", "USDT_TRX", 4, "1"),
    ("202617010", "zoe.angstrom@example.com", 55, "completed", "TRX", 5, "1"),
    ("202617011", "zoe.angstrom@example.com", 49, "completed", "USDT_TRX", 0, "1"),
    ("202617012", "jonas.weber@example.com", 83, "completed", "BTC", 1, "1"),
    ("202617013", "jonas.weber@example.com", 63, "completed", "BTC", 8, "1"),
    ("202617014", "jonas.weber@example.com", 47, "completed", "BTC", 6, "1"),
    ("202617015", "priya.nair@example.com", 40, _U, "USDT_TRX", 2, "0.6"),
    ("202617016", "priya.nair@example.com", 25, "completed", "USDT_TRX", 0, "1"),
    ("202617017", "priya.nair@example.com", 9, _U, "USDT_TRX", 1, "0.8"),
    ("202617018", "diego.alvarez@example.com", 70, _U, "BTC", 1, "0.5"),
    ("202617019", "diego.alvarez@example.com", 33, _U, "BTC", 7, "0.9"),
    ("202617020", "diego.alvarez@example.com", 20, "completed", "BTC", 0, "1"),
    ("202617021", "diego.alvarez@example.com", 6, _U, "BTC", 2, "0.7"),
    ("202617022", "mei.tanaka@example.com", 50, "completed", "ETH", 3, "1"),
    ("202617023", "mei.tanaka@example.com", 28, "completed", "USDT", 0, "1"),
    ("202617024", "mei.tanaka@example.com", 18, _U, "ETH", 7, "0.75"),
    ("202617025", "mei.tanaka@example.com", 4, _U, "ETH", 4, "0.55"),
    ("202617026", "sam.okafor@example.com", 60, "completed", "BTC", 0, "1"),
    ("202617027", "sam.okafor@example.com", 42, "completed", "ETH", 0, "1"),
    ("202617028", "sam.okafor@example.com", 21, "completed", "USDT_TRX", 0, "1"),
    ("202617029", "sam.okafor@example.com", 5, "completed", "SOL", 6, "1"),
    ("202617030", "lena.fischer@example.com", 77, "completed", "LTC", 4, "1"),
    ("202617031", "lena.fischer@example.com", 40, "completed", "DOGE", 3, "1"),
    ("202617032", "lena.fischer@example.com", 12, "completed", "TON", 8, "1"),
    ("202617033", "raj.patel@example.com", 35, "completed", "BTC", 2, "1"),
    ("202617034", "raj.patel@example.com", 22, "completed", "ETH", 7, "1"),
    ("202617035", "raj.patel@example.com", 8, "completed", "TRX", 6, "1"),
    ("202617036", "raj.patel@example.com", 3, "mismatch", "USDT", 0, "1.25"),
    ("202617037", "liam.osei@example.com", 80, "completed", "BTC", 0, "1"),
    ("202617038", "liam.osei@example.com", 65, "completed", "BTC", 0, "1"),
    ("202617039", "liam.osei@example.com", 44, "completed", "LTC", 0, "1"),
    ("202617040", "nora.quinn@example.com", 38, "completed", "BTC", 1, "1"),
    ("202617041", "nora.quinn@example.com", 17, "completed", "ETH", 3, "1"),
    ("202617042", "nora.quinn@example.com", 2, "expired", "SOL", 0, "0"),
    ("202618801", "ava.brooks@example.com", 2, "completed", "BTC", 1, "1"),
    ("202618802", "noah.kim@example.com", 6, "completed", "USDT_TRX", 2, "1"),
    ("202618803", "sofia.rossi@example.com", 11, "completed", "ETH", 3, "1"),
    ("202618804", "ava.brooks@example.com", 20, "completed", "BTC", 1, "1"),
)

# Background invoices per window (on top of the curated ones there) other than completed/expired.
_OPEN_RECENT: Final = {"new": 4, "pending": 3, "pending internal": 1}
_OTHER_LAST_30D: Final = {"cancelled": 5, "error": 3, "mismatch": 3, "cancelled duplicate": 3}
_OTHER_PREVIOUS_60D: Final = {"cancelled": 8, "error": 4, "mismatch": 4, "cancelled duplicate": 4}
_UNDERPAID_SHARE: Final = Fraction(1, 3)
_GUEST_SHARE: Final = 0.08


class _Builder:
    """Turns plans into ``Operation`` records, drawing every random choice from one ``Random``."""

    def __init__(self, state: ShopState, rng: random.Random, now: int) -> None:
        self.state, self.rng, self.now, self.shop = state, rng, now, state.shop
        self.ops: list[Operation] = []

    def invoice(
        self,
        *,
        order_number: str,
        email: str | None,
        created: int,
        status: str,
        cid: str,
        product: int,
        ratio: Decimal,
    ) -> Operation:
        coin = COINS[cid]
        name, usd = PRODUCTS[product]
        fiat = next((c.fiat for c in CUSTOMERS if c.email == email), "USD")
        fiat_amount = (usd * FIATS[fiat]).quantize(Decimal("0.01"))
        pricing = price(coin, self.shop, crypto=None, fiat=fiat, fiat_amount=fiat_amount)
        op = Operation(
            id=identifiers.object_id(self.rng, created),
            type="invoice",
            status=status,
            psys_cid=cid,
            created_at=created,
            amount=pricing.amount,
            shop_id=self.shop.id,
            wallet_hash=identifiers.address(self.rng, cid),
            source_currency=fiat,
            source_amount=pricing.source_amount,
            source_rate=pricing.source_rate,
            invoice_sum=pricing.invoice_sum,
            invoice_commission=pricing.commission,
            expire_at=created + 60 * self.shop.default_expire_min,
            order_number=order_number,
            order_name=name,
            email=email,
            allowed_psys_cids=ACTIVE_COINS,
            view_key=identifiers.token(self.rng),
        )
        op.received = coin.q(op.amount * ratio, ROUND_DOWN)
        values = [op.received] if op.received > 0 else []
        if status == "completed" and self.rng.random() < 0.1:  # paid in two transfers
            first = coin.q(op.received / 2, ROUND_DOWN)
            values = [first, op.received - first]
        for value in values:
            at = created + self.rng.randint(120, 2400)
            confirmations = 0 if status == "pending" else coin.expected_confirmations
            op.txs.append(Tx(identifiers.txid(self.rng, cid), value, at // 60, at, confirmations))
        op.finished_at = self._finished(op)
        if status in CREDITED:
            op.credited = credit_for(op)
        self.ops.append(op)
        return op

    def _finished(self, op: Operation) -> int | None:
        if op.status in {"new", "pending", "pending internal"}:
            return None
        if op.status == "expired":
            return op.expire_at
        if op.status == "cancelled":
            return op.created_at + 10 * 3600
        return max([op.created_at + self.rng.randint(180, 3000), *(tx.created_at + 60 for tx in op.txs)])

    def transfer(
        self, kind: str, cid: str, amount: Decimal, created: int, status: str = "completed", outputs: int = 1
    ) -> Operation:
        """A deposit to the shop wallet (cash_in) or a withdrawal from it (cash_out/mass_cash_out)."""
        coin = COINS[cid]
        op = Operation(
            id=identifiers.object_id(self.rng, created),
            type="cash_in" if kind == "cash_in" else ("mass_cash_out" if outputs > 1 else "cash_out"),
            status=status,
            psys_cid=cid,
            created_at=created,
            amount=coin.q(amount),
            shop_id=None,
            source_currency="USD",
            source_rate=coin.coins_per_fiat("USD"),
            finished_at=created + self.rng.randint(300, 3600),
        )
        if kind == "cash_in":
            op.wallet_hash = self.deposit_address(cid)
            op.credited = op.amount
        else:
            op.fee, op.fee_plan = fee_for(coin, "normal", outputs), "normal"
            op.commission = withdraw_commission(coin, op.amount)
            if outputs > 1:
                split = coin.q(op.amount / outputs, ROUND_DOWN)
                shares = [split] * (outputs - 1) + [op.amount - split * (outputs - 1)]
                op.sendmany = {identifiers.address(self.rng, cid): s for s in shares}
            else:
                op.wallet_hash = identifiers.address(self.rng, cid)
            op.credited = -(op.amount + op.commission) if status == "completed" else Decimal(0)
        if status == "completed":
            op.txs.append(Tx(identifiers.txid(self.rng, cid), op.amount, created // 60, created, 6))
        self.ops.append(op)
        return op

    def deposit_address(self, cid: str) -> str:
        """The shop's own (fixed) wallet address for direct deposits."""
        return identifiers.address(random.Random(f"deposit:{cid}"), cid)


def _curated(b: _Builder) -> None:
    for index, (number, email, days, status, cid, product, ratio) in enumerate(_CURATED):
        created = b.now - int(days * DAY) + (index % 7) * 1800
        real_status = "expired" if status == _U else status
        b.invoice(
            order_number=number,
            email=email,
            created=created,
            status=real_status,
            cid=cid,
            product=product,
            ratio=Decimal(ratio),
        )


def _slots(b: _Builder) -> list[tuple[int, str, bool]]:
    """Background (created_at, status, underpaid) so the window totals hit the published constants."""
    recent = [op for op in b.ops if op.created_at > b.now - 30 * DAY]
    older = [op for op in b.ops if op.created_at <= b.now - 30 * DAY]
    plan: list[tuple[int, str, bool]] = []
    for total, expired, others, ops, (lo, hi) in (
        (INVOICES_LAST_30D, EXPIRED_LAST_30D, _OTHER_LAST_30D, recent, (DAY // 2, 29 * DAY + DAY // 2)),
        (
            INVOICES_PREVIOUS_60D,
            EXPIRED_PREVIOUS_60D,
            _OTHER_PREVIOUS_60D,
            older,
            (30 * DAY + DAY // 2, 89 * DAY),
        ),
    ):
        n_expired = expired - sum(op.status == "expired" for op in ops)
        statuses = ["expired"] * n_expired + [s for s, n in others.items() for _ in range(n)]
        if lo == DAY // 2:
            statuses += [s for s, n in _OPEN_RECENT.items() for _ in range(n)]
        duplicates = others["cancelled duplicate"]
        n_completed = total - len(ops) - len(statuses) - duplicates  # each duplicate has a replacement
        if n_expired < 0 or n_completed < 0:
            raise AssertionError("curated invoices exceed the seeded window targets")
        statuses += ["completed"] * n_completed
        n_underpaid = int(n_expired * _UNDERPAID_SHARE)
        for i, status in enumerate(statuses):
            if status in _OPEN_RECENT:
                created = b.now - b.rng.randint(1800, 8 * 3600)
            else:
                created = b.now - b.rng.randint(lo, hi)
            plan.append((created, status, status == "expired" and i < n_underpaid))
    return plan


class _Assigner:
    """Picks a payer per background invoice without breaking the curated patterns' definitions."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.paid: Counter[str] = Counter()
        self.underpaid: Counter[str] = Counter()

    @staticmethod
    def _pays(status: str) -> bool:
        return status in {"completed", "mismatch", "cancelled duplicate"}  # a duplicate's replacement pays

    def pick(self, status: str, underpaid: bool) -> str | None:
        if self.rng.random() < _GUEST_SHARE:
            return None
        weights = [3 if c.segment == "regular" else 1 for c in BACKGROUND]
        for customer in self.rng.choices(BACKGROUND, weights, k=len(BACKGROUND) * 2):
            email = customer.email
            if underpaid and self.underpaid[email] >= 1:
                continue
            if self._pays(status) and customer.segment == "one_off" and self.paid[email] >= 2:
                continue
            self.note(email, status, underpaid)
            return email
        return None

    def note(self, email: str, status: str, underpaid: bool) -> None:
        self.paid[email] += self._pays(status)
        self.underpaid[email] += underpaid


def _coin_for(rng: random.Random, email: str | None, *, secondary: bool = False) -> str:
    if email is None:
        return rng.choice(("BTC", "BTC", "ETH", "USDT_TRX", "USDT_TRX", "LTC", "USDT", "TRX", "DOGE", "TON"))
    primary, second = COINS_OF[email]
    return second if secondary or rng.random() < 0.25 else primary


_RATIOS: Final = {"pending": (30, 80), "mismatch": (102, 160)}


def _background(b: _Builder) -> None:
    rng, assigner = b.rng, _Assigner(b.rng)
    plan = _slots(b)
    regulars = [c.email for c in BACKGROUND if c.segment == "regular"]
    reserved = [
        i
        for i, (created, status, _) in enumerate(plan)
        if status == "completed" and created > b.now - 29 * DAY
    ]
    if len(reserved) < len(regulars):
        raise AssertionError("not enough recent completed invoices to keep every regular active")
    owners: dict[int, str | None] = dict(zip(reserved, regulars, strict=False))
    for i, email in owners.items():
        assigner.note(email or "", plan[i][1], underpaid=False)
    records: list[tuple[int, str, bool, str | None]] = []
    for i, (created, status, underpaid) in enumerate(plan):
        email = owners[i] if i in owners else assigner.pick(status, underpaid)
        records.append((created, status, underpaid, email))
    records.sort(key=lambda r: (r[0], r[1]))
    for number, (created, status, underpaid, email) in enumerate(records, start=20001):
        order_number, product = f"2026{number}", rng.randrange(len(PRODUCTS))
        if underpaid:
            ratio = Decimal(rng.randint(35, 95)) / 100
        elif status in _RATIOS:
            ratio = Decimal(rng.randint(*_RATIOS[status])) / 100
        else:
            ratio = Decimal(1) if status in {"completed", "pending internal"} else Decimal(0)
        if status == "cancelled duplicate":  # the payer switched coin: same order, a new invoice
            old = b.invoice(
                order_number=order_number,
                email=email,
                created=created,
                status=status,
                cid=_coin_for(rng, email, secondary=True),
                product=product,
                ratio=Decimal(0),
            )
            new = b.invoice(
                order_number=order_number,
                email=email,
                created=created + rng.randint(60, 600),
                status="completed",
                cid=_coin_for(rng, email),
                product=product,
                ratio=Decimal(1),
            )
            old.switch_id = new.id
            continue
        b.invoice(
            order_number=order_number,
            email=email,
            created=created,
            status=status,
            cid=_coin_for(rng, email),
            product=product,
            ratio=ratio,
        )


def _treasury(b: _Builder, balances: dict[str, Decimal]) -> None:
    """Deposits to the wallet, then withdrawals sized from what the shop then held."""
    rng = b.rng
    for _ in range(12):
        cid = rng.choice(("BTC", "ETH", "USDT_TRX", "LTC", "USDT"))
        usd = Decimal(rng.randint(150, 2500))
        op = b.transfer("cash_in", cid, usd / COINS[cid].price_usd, b.now - rng.randint(DAY, 89 * DAY))
        balances[cid] += op.credited
    withdrawals = (
        ("BTC", 1),
        ("BTC", 1),
        ("ETH", 1),
        ("USDT_TRX", 1),
        ("USDT_TRX", 3),
        ("LTC", 1),
        ("TRX", 1),
    )
    for cid, outputs in withdrawals:
        share = Decimal(rng.randint(18, 30)) / 100
        op = b.transfer(
            "cash_out", cid, balances[cid] * share, b.now - rng.randint(2 * DAY, 88 * DAY), outputs=outputs
        )
        balances[cid] += op.credited
        balances[COINS[cid].fee_coin] -= op.fee or Decimal(0)
    b.transfer("cash_out", "BTC", Decimal("0.05"), b.now - rng.randint(2 * DAY, 60 * DAY), status="error")


def populate(state: ShopState, seed: int, now: int) -> None:
    """Fill ``state`` with the demo shop's last 90 days before ``now``."""
    b = _Builder(state, random.Random(seed), now)
    _curated(b)
    _background(b)
    balances = {cid: COINS[cid].q(OPENING_BALANCES[cid]) for cid in COINS}
    for op in b.ops:
        balances[op.psys_cid] += op.credited
    _treasury(b, balances)
    for op in sorted(b.ops, key=lambda op: (op.created_at, op.id)):
        state.add(op)
    state.balances.update(balances)


def build_state(shop: Shop, seed: int, now: Callable[[], int]) -> ShopState:
    state = ShopState(shop, CUSTOMERS, runtime_seed=f"runtime:{seed}")
    populate(state, seed, now())
    return state
