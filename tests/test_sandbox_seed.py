"""The seeded demo shop: deterministic, believable, and its documented patterns hold (read via the API)."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import httpx
import pytest

from tools.plisio.sandbox import SANDBOX_API_KEY, Sandbox
from tools.plisio.sandbox import seed as S

pytestmark = pytest.mark.anyio
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
DAY = 86_400
BASE = "http://sandbox.test/api/v1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def everything(box: Sandbox) -> tuple[list[dict[str, Any]], dict[str, str], bytes]:
    """All operations through the public API (paged), every balance, and the raw bytes seen."""
    raw = b""
    async with httpx.AsyncClient(transport=box.transport(), base_url=BASE) as http:
        ops: list[dict[str, Any]] = []
        page, pages = 1, 1
        while page <= pages:
            response = await http.get(
                "operations", params={"page": page, "limit": 50, "api_key": SANDBOX_API_KEY}
            )
            raw += response.content
            data = response.json()["data"]
            ops += data["operations"]
            pages = data["_meta"]["pageCount"]
            page += 1
        balances = {}
        for cid in ("BTC", "ETH", "LTC", "DOGE", "BCH", "TRX", "USDT_TRX", "USDT", "TON", "SOL", "XMR"):
            response = await http.get(f"balances/{cid}", params={"api_key": SANDBOX_API_KEY})
            raw += response.content
            balances[cid] = response.json()["data"]["balance"]
    return ops, balances, raw


async def test_same_seed_and_clock_give_byte_identical_data() -> None:
    one, two = Sandbox(seed=7, now=lambda: NOW), Sandbox(seed=7, now=lambda: NOW)
    assert (await everything(one))[2] == (await everything(two))[2]
    other = Sandbox(seed=8, now=lambda: NOW)
    assert (await everything(other))[2] != (await everything(one))[2]
    one.reset()
    assert (await everything(one))[2] == (await everything(two))[2]


async def test_the_shop_looks_real() -> None:
    box = Sandbox(now=lambda: NOW)
    ops, balances, _ = await everything(box)
    now = int(NOW.timestamp())
    assert 250 <= len(ops) <= 400
    assert all(now - 90 * DAY < op["created_at_utc"] <= now for op in ops)
    assert {op["type"] for op in ops} == {"invoice", "cash_in", "cash_out", "mass_cash_out"}
    statuses = {op["status"] for op in ops if op["type"] == "invoice"}
    assert statuses == {
        "new", "pending", "pending internal", "completed", "mismatch", "expired", "cancelled", "error",
        "cancelled duplicate",
    }  # fmt: skip
    assert any(op["type"] == "cash_out" and op["status"] == "error" for op in ops)
    assert all(Decimal(value) > 0 for value in balances.values())
    customers = box.customers()
    assert len(customers) == 40
    assert all(c.email.endswith("@example.com") for c in customers)
    assert sum(not c.name.isascii() for c in customers) >= 2
    invoices = [op for op in ops if op["type"] == "invoice"]
    assert {op["params"].get("email") for op in invoices} - {None} <= {c.email for c in customers}
    assert len({op["psys_cid"] for op in invoices}) >= 8
    assert len({op["params"]["source_currency"] for op in invoices}) == 3
    for op in invoices:
        if op["status"] in {"new", "pending", "pending internal"}:
            assert op["expire_at_utc"] > now  # still open: a tick at "now" expires nothing
        if op["status"] == "cancelled duplicate":
            peers = [o for o in invoices if o["params"]["order_number"] == op["params"]["order_number"]]
            assert len(peers) == 2
            assert {o["status"] for o in peers} == {"cancelled duplicate", "completed"}
    assert await box.tick() == []


@pytest.mark.parametrize("seed", [7, 1, 2024])
async def test_documented_patterns_hold(seed: int) -> None:
    ops, _, _ = await everything(Sandbox(seed=seed, now=lambda: NOW))
    now = int(NOW.timestamp())
    invoices = [op for op in ops if op["type"] == "invoice"]
    by_email: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for op in invoices:
        if op["params"].get("email"):
            by_email[op["params"]["email"]].append(op)

    churned = {
        email
        for email, history in by_email.items()
        if sum(op["status"] == "completed" for op in history) >= 3
        and all(op["created_at_utc"] <= now - S.CHURN_QUIET_DAYS * DAY for op in history)
    }
    underpayers = {
        email
        for email, history in by_email.items()
        if sum(op["status"] == "expired" and Decimal(op["actual_sum"]) > 0 for op in history) >= 2
    }
    switchers = {
        email
        for email, history in by_email.items()
        if len({op["psys_cid"] for op in history if op["status"] in {"completed", "mismatch"}}) >= 3
    }
    assert churned == S.CHURNED_REPEAT_CUSTOMERS
    assert underpayers == S.REPEAT_UNDERPAYERS
    assert switchers == S.COIN_SWITCHERS
    assert not S.NEAR_MISS_CUSTOMERS & (churned | underpayers | switchers)

    last_30 = [op for op in invoices if op["created_at_utc"] > now - 30 * DAY]
    before = [op for op in invoices if now - 90 * DAY < op["created_at_utc"] <= now - 30 * DAY]
    share_recent = Fraction(sum(op["status"] == "expired" for op in last_30), len(last_30))
    share_before = Fraction(sum(op["status"] == "expired" for op in before), len(before))
    assert (len(last_30), len(before)) == (S.INVOICES_LAST_30D, S.INVOICES_PREVIOUS_60D)
    assert share_recent == S.EXPIRED_SHARE_LAST_30D > share_before == S.EXPIRED_SHARE_PREVIOUS_60D

    by_number = {op["params"]["order_number"]: op for op in invoices}
    for number in S.RECENT_REFUNDABLE_ORDER_NUMBERS:
        op = by_number[number]
        assert op["status"] == "completed"
        assert op["created_at_utc"] > now - S.REFUND_WINDOW_DAYS * DAY
    for number in S.TOO_OLD_TO_REFUND_ORDER_NUMBERS:
        op = by_number[number]
        assert op["status"] == "completed"
        assert op["created_at_utc"] <= now - S.REFUND_WINDOW_DAYS * DAY
