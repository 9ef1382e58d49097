"""``return_existing``: a re-sent creation gets its own invoice back, and only that. The invoice an order
number already has is compared with what was asked (price, coin, payer, state) through the real client
against the sandbox; one that differs is an error the model and the flows act on, never a new invoice."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import pytest
from structlog.testing import capture_logs

from persona.effects import EffectKey, order_number
from tests.conftest import NOW, FakeClock
from tools.errors import PlisioExistingInvoice, PlisioOutcomeUnknown
from tools.plisio.args import CreateInvoiceArgs
from tools.plisio.client import PlisioClient, RetryPolicy
from tools.plisio.sandbox import SANDBOX_API_KEY, FaultRule, LoopbackServer, Sandbox
from tools.plisio.tools import PLISIO_TOOLS, PlisioContext, find_invoice
from tools.registry import run

pytestmark = pytest.mark.anyio
NUMBER = order_number(EffectKey("recovery:txn_1", "fresh_link"))
PRICE = {"order_name": "Pro plan", "source_amount": Decimal("49.90"), "source_currency": "USD"}


@pytest.fixture
def served() -> Iterator[tuple[Sandbox, str]]:
    box = Sandbox(seed=7, now=lambda: NOW)
    with LoopbackServer(box.app) as server:
        yield box, f"{server.base_url}/api/v1"


@pytest.fixture
async def client(served: tuple[Sandbox, str], clock: FakeClock) -> AsyncIterator[PlisioClient]:
    async with PlisioClient(
        SANDBOX_API_KEY, base_url=served[1], clock=clock, wall_clock=clock, sleep=clock.sleep,
        rng=random.Random(5), retry=RetryPolicy(max_attempts=2, deadline=30),
    ) as c:  # fmt: skip
        yield c


async def test_the_same_creation_again_gets_the_same_live_invoice(client: PlisioClient) -> None:
    first = await client.create_invoice(order_number=NUMBER, email="ann@example.com", **PRICE)
    again = await client.create_invoice(order_number=NUMBER, email="ANN@example.com", **PRICE)
    assert again.txn_id == first.txn_id


@pytest.mark.parametrize(
    ("change", "difference"),
    [
        ({"source_amount": Decimal("50.00")}, "price 49.90 USD instead of 50.00 USD"),
        ({"source_currency": "EUR"}, "price 49.90 USD instead of 49.90 EUR"),
        ({"email": "bob@example.com"}, "another payer email"),
    ],
    ids=["amount", "fiat", "payer"],
)
async def test_an_invoice_for_something_else_is_not_passed_off(
    client: PlisioClient, served: tuple[Sandbox, str], change: dict[str, object], difference: str
) -> None:
    first = await client.create_invoice(order_number=NUMBER, email="ann@example.com", currency="BTC", **PRICE)
    asked = {**PRICE, "email": "ann@example.com", "currency": "BTC", **change}
    with capture_logs() as logs, pytest.raises(PlisioExistingInvoice) as refused:
        await client.create_invoice(order_number=NUMBER, **asked)  # type: ignore[arg-type]
    assert refused.value.txn_id == first.txn_id and refused.value.differences == [difference]
    assert f"already had: {difference}. It is not the invoice asked for" in str(refused.value)
    assert [e["differences"] for e in logs if e["event"] == "plisio_existing_invoice_differs"] == [
        [difference]
    ]
    assert sum(op.order_number == NUMBER for op in served[0].state.operations.values()) == 1, "nothing new"


async def test_an_expired_invoice_is_never_handed_out_again(
    client: PlisioClient, served: tuple[Sandbox, str]
) -> None:
    first = await client.create_invoice(order_number=NUMBER, **PRICE)
    await served[0].expire(first.txn_id)
    with pytest.raises(PlisioExistingInvoice) as refused:
        await client.create_invoice(order_number=NUMBER, **PRICE)
    assert refused.value.differences == ["it is expired"]
    failure = await _tool(client, PRICE)
    assert failure["type"] == "existing_invoice_differs" and "it is expired" in failure["message"]


async def test_a_lookup_that_finds_another_invoice_says_so(
    client: PlisioClient, served: tuple[Sandbox, str]
) -> None:
    first = await client.create_invoice(order_number=NUMBER, **PRICE)
    await served[0].cancel(first.txn_id)
    ctx = PlisioContext(client=client, order_number=NUMBER)
    with pytest.raises(PlisioExistingInvoice) as refused:
        await find_invoice(CreateInvoiceArgs(**PRICE), ctx)  # type: ignore[arg-type]
    assert refused.value.differences == ["it is cancelled"] and refused.value.txn_id == first.txn_id


async def test_an_answer_that_cannot_be_read_back_is_outcome_unknown(
    client: PlisioClient, served: tuple[Sandbox, str]
) -> None:
    box = served[0]
    box.faults.add(FaultRule(path="/api/v1/operations/[0-9a-f]*", kind="error_status", status=503, times=5))
    with pytest.raises(PlisioOutcomeUnknown) as unknown:
        await client.create_invoice(order_number=NUMBER, **PRICE)
    assert "was answered but could not be checked against the ask" in str(unknown.value)
    assert box.state.by_order_number(NUMBER) is not None, "it was made: the lookup resolves it later"


async def _tool(client: PlisioClient, price: dict[str, object]) -> dict[str, object]:
    """What the model is told: the create tool's result as data."""
    tool = next(t for t in PLISIO_TOOLS if t.name == "plisio_create_invoice")
    result = await run(tool, CreateInvoiceArgs(**price), PlisioContext(client=client, order_number=NUMBER))  # type: ignore[arg-type]
    error: dict[str, object] = result.payload()["error"]
    return error


async def test_a_crypto_price_matches_with_the_commission_on_top(
    client: PlisioClient, served: tuple[Sandbox, str]
) -> None:
    """The payer pays Plisio's commission on top: the invoice's amount is the price plus it, its
    invoice_sum the price. The same ask again is the same invoice; another crypto amount is not."""
    asked = {"order_name": "Remainder", "currency": "BTC", "amount": Decimal("0.00275409")}
    first = await client.create_invoice(order_number=NUMBER, **asked)  # type: ignore[arg-type]
    made = served[0].state.operations[first.txn_id]
    assert made.amount > asked["amount"] == made.invoice_sum  # type: ignore[operator]
    assert (await client.create_invoice(order_number=NUMBER, **asked)).txn_id == first.txn_id  # type: ignore[arg-type]
    with pytest.raises(PlisioExistingInvoice) as refused:
        await client.create_invoice(order_number=NUMBER, **{**asked, "amount": Decimal("0.003")})  # type: ignore[arg-type]
    assert refused.value.differences == [f"amount {made.amount} BTC instead of 0.003 BTC"]


async def test_a_fiat_priced_invoice_may_be_paid_in_another_coin(client: PlisioClient) -> None:
    """The payer picks the coin of a fiat-priced invoice (allowed_psys_cids): a coin is not its price."""
    first = await client.create_invoice(order_number=NUMBER, currency="BTC", **PRICE)  # type: ignore[arg-type]
    again = await client.create_invoice(order_number=NUMBER, currency="ETH", **PRICE)  # type: ignore[arg-type]
    assert again.txn_id == first.txn_id


async def test_a_record_without_a_status_cannot_clear_an_invoice() -> None:
    """Fail closed: a read-back that lacks what the comparison needs is an unknown outcome, not a match."""
    import httpx

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/invoices/new"):
            return httpx.Response(
                200, json={"status": "success", "data": {"txn_id": "abc123", "invoice_url": "u"}}
            )
        return httpx.Response(200, json={"status": "success", "data": {"id": "abc123", "type": "invoice"}})

    async with PlisioClient(SANDBOX_API_KEY, transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(PlisioOutcomeUnknown) as unknown:
            await client.create_invoice(order_number=NUMBER, **PRICE)  # type: ignore[arg-type]
    assert "Plisio's record of abc123 has no status" in str(unknown.value)
