"""The real Plisio client against the sandbox's injected faults over a real socket (127.0.0.1).

Reads are retried on what is transient (5xx, 429 with Retry-After, HTML error pages, dropped
connections) and never on what is final; ``/invoices/new`` is never re-sent once it left, and the
tool's lookup finds the invoice a dropped connection hid by its order number instead. On a write,
anything that does not say "not applied" for certain (a gateway's 5xx, an unreadable answer) is
"outcome unknown", never a plain error.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import pytest

from tests.conftest import NOW, FakeClock
from tools.errors import PlisioApiError, PlisioOutcomeUnknown, PlisioProtocolError, PlisioRateLimited
from tools.plisio.args import CreateInvoiceArgs
from tools.plisio.client import PlisioClient, RetryPolicy
from tools.plisio.sandbox import SANDBOX_API_KEY, FaultRule, LoopbackServer, Sandbox
from tools.plisio.tools import PlisioContext, create_invoice, find_invoice

pytestmark = pytest.mark.anyio


@pytest.fixture
def served() -> Iterator[tuple[Sandbox, str]]:
    box = Sandbox(seed=7, now=lambda: NOW)
    with LoopbackServer(box.app) as server:
        yield box, f"{server.base_url}/api/v1"


@pytest.fixture
async def client(served: tuple[Sandbox, str], clock: FakeClock) -> AsyncIterator[PlisioClient]:
    _, url = served
    async with PlisioClient(
        SANDBOX_API_KEY, base_url=url, clock=clock, wall_clock=clock, sleep=clock.sleep, rng=random.Random(5),
        retry=RetryPolicy(max_attempts=4, deadline=30),
    ) as c:  # fmt: skip
        yield c


def hits(box: Sandbox, path: str) -> int:
    return sum(1 for r in box.requests if r.path == path)


@pytest.mark.parametrize(
    "rule",
    [
        FaultRule(path="/api/v1/shops", kind="error_status", status=503, times=2),
        FaultRule(path="/api/v1/shops", kind="error_status", status=502, times=1),
        FaultRule(path="/api/v1/shops", kind="rate_limit", retry_after=3, times=1),
        FaultRule(path="/api/v1/shops", kind="html", times=1),
        FaultRule(path="/api/v1/shops", kind="drop_after_commit", times=1),
    ],
    ids=["503x2", "502", "429", "html-502", "dropped"],
)
async def test_reads_recover_from_transient_faults(
    served: tuple[Sandbox, str], client: PlisioClient, clock: FakeClock, rule: FaultRule
) -> None:
    box, _ = served
    box.faults.add(rule)
    shop = await client.get_shop()
    assert shop.name == "Northwind Digital"
    assert hits(box, "/api/v1/shops") == rule.times + 1
    if rule.kind == "rate_limit":
        assert clock.sleeps[0] >= 3.0, "Retry-After honoured"


@pytest.mark.parametrize(
    ("kind", "needle"), [("truncated", "truncated or invalid JSON"), ("empty", "empty body")]
)
async def test_broken_bodies_are_protocol_errors(
    served: tuple[Sandbox, str], client: PlisioClient, kind: str, needle: str
) -> None:
    box, _ = served
    box.faults.add(FaultRule(path="/api/v1/balances/BTC", kind=kind, times=1))
    with pytest.raises(PlisioProtocolError, match=needle):
        await client.get_balance("BTC")
    assert hits(box, "/api/v1/balances/BTC") == 1, "a body that arrived broken is not retried blindly"


async def test_latency_is_just_slower(served: tuple[Sandbox, str], client: PlisioClient) -> None:
    box, _ = served
    box.faults.add(FaultRule(path="/api/v1/currencies", kind="latency", latency_ms=50, times=1))
    assert len(await client.get_currencies()) >= 5


async def test_create_invoice_is_sent_once_when_the_connection_drops_after_the_commit(
    served: tuple[Sandbox, str], client: PlisioClient
) -> None:
    box, _ = served
    box.faults.add(FaultRule(path="/api/v1/invoices/new", kind="drop_after_commit", times=1))
    with pytest.raises(PlisioOutcomeUnknown, match="not re-sent"):
        await client.create_invoice(
            order_number="1001", order_name="x", source_currency="USD", source_amount=Decimal("10")
        )
    assert hits(box, "/api/v1/invoices/new") == 1
    assert box.state.by_order_number("1001") is not None, "the sandbox committed it"


async def test_the_lookup_finds_the_invoice_the_dropped_connection_hid(
    served: tuple[Sandbox, str], client: PlisioClient
) -> None:
    box, _ = served
    box.faults.add(FaultRule(path="/api/v1/invoices/new", kind="drop_after_commit", times=1))
    ctx = PlisioContext(client=client, order_number="100000000000000001")
    args = CreateInvoiceArgs(order_name="Pro plan", source_amount=Decimal("49.90"), source_currency="USD")
    assert await find_invoice(args, ctx) is None, "nothing under that order number yet"
    with pytest.raises(PlisioOutcomeUnknown):
        await create_invoice(args, ctx)
    assert hits(box, "/api/v1/invoices/new") == 1, "never re-sent"
    found = await find_invoice(args, ctx)
    assert found is not None and found["order_number"] == "100000000000000001" and found["recovered"]
    again = await create_invoice(args, ctx)  # the same effect once more: Plisio returns the same invoice
    assert again["txn_id"] == found["id"] and hits(box, "/api/v1/invoices/new") == 2


@pytest.mark.parametrize(
    ("rule", "processed"),
    [
        (FaultRule(path="/api/v1/invoices/new", kind="error_status", status=502), False),
        (FaultRule(path="/api/v1/invoices/new", kind="error_status", status=503), False),
        (FaultRule(path="/api/v1/invoices/new", kind="html", status=504), False),
        (FaultRule(path="/api/v1/invoices/new", kind="error_after_commit", status=504), True),
        (FaultRule(path="/api/v1/invoices/new", kind="error_after_commit", status=502), True),
        (FaultRule(path="/api/v1/invoices/new", kind="truncated"), True),
        (FaultRule(path="/api/v1/invoices/new", kind="empty"), True),
    ],
    ids=["502", "503", "504-html", "504-after-commit", "502-after-commit", "truncated", "empty"],
)
async def test_a_gateway_error_or_unreadable_answer_on_create_is_outcome_unknown(
    served: tuple[Sandbox, str], client: PlisioClient, rule: FaultRule, processed: bool
) -> None:
    box, _ = served
    box.faults.add(rule)
    with pytest.raises(PlisioOutcomeUnknown, match="outcome is unknown"):
        await client.create_invoice(
            order_number="1002", order_name="x", source_currency="USD", source_amount=Decimal("10")
        )
    assert hits(box, "/api/v1/invoices/new") == 1, "a write is never retried once it may have left"
    assert (box.state.by_order_number("1002") is not None) is processed


async def test_a_definite_refusal_on_create_stays_a_plain_error(
    served: tuple[Sandbox, str], client: PlisioClient
) -> None:
    box, _ = served
    box.faults.add(FaultRule(path="/api/v1/invoices/new", kind="rate_limit", retry_after=3))
    with pytest.raises(PlisioRateLimited):
        await client.create_invoice(
            order_number="1003", order_name="x", source_currency="USD", source_amount=Decimal("10")
        )
    with pytest.raises(PlisioApiError) as refused:  # Plisio's own 422: definitely not applied
        await client.create_invoice(
            order_number="1004", order_name="x", source_currency="XXX", source_amount=Decimal("10")
        )
    assert not isinstance(refused.value, PlisioOutcomeUnknown)
    assert box.state.by_order_number("1003") is None and box.state.by_order_number("1004") is None
