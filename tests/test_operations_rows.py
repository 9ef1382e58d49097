"""A page of ``/operations`` with rows that do not read: the good rows are kept, the bad ones are counted
and named (in the result, in a log event), never dropped unseen, and a page of another shape still fails."""

from __future__ import annotations

import json

import httpx
import pytest
from structlog.testing import capture_logs

from tools.errors import PlisioProtocolError
from tools.plisio.args import ListTransactionsArgs
from tools.plisio.client import PlisioClient
from tools.plisio.sandbox import SANDBOX_API_KEY, Sandbox
from tools.plisio.tools import PlisioContext, list_transactions

pytestmark = pytest.mark.anyio


class BrokenRows(httpx.AsyncBaseTransport):
    """The sandbox, with rows of every ``/operations`` page spoiled as a real answer could be."""

    def __init__(self, inner: httpx.AsyncBaseTransport, spoil: dict[int, object]) -> None:
        self.inner, self.spoil = inner, spoil

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.url.path != "/api/v1/operations":
            return response
        body = json.loads(await response.aread())
        rows = body["data"]["operations"]
        for index, value in self.spoil.items():
            if index < len(rows):
                rows[index] = value(rows[index]) if callable(value) else value
        return httpx.Response(response.status_code, json=body)


def _amount(row: dict[str, object]) -> dict[str, object]:
    return {**row, "amount": "twelve"}


async def test_the_good_rows_of_a_page_are_kept_and_the_bad_ones_named() -> None:
    sandbox = Sandbox(seed=7)
    spoil = {1: _amount, 3: {"type": "invoice"}, 4: "not an object"}
    async with PlisioClient(
        api_key=SANDBOX_API_KEY, transport=BrokenRows(sandbox.transport(), spoil)
    ) as client:
        with capture_logs() as logs:
            page = await client.list_operations(limit=10)
            view = await list_transactions(ListTransactionsArgs(limit=10), PlisioContext(client=client))
    assert len(page.operations) == 7, "10 rows, 3 unreadable"
    bad_id = sandbox_ids(sandbox)[1]
    assert [r.id for r in page.skipped] == [bad_id, None, None]
    assert page.skipped[0].error == "row 1: amount: Input should be a valid decimal"
    assert view["skipped"]["count"] == 3 and view["skipped"]["ids"] == [bad_id, None, None]
    assert len(view["operations"]) == 7
    events = [e for e in logs if e["event"] == "plisio_rows_skipped"]
    assert events and events[0]["count"] == 3 and events[0]["ids"] == [bad_id, None, None]


def sandbox_ids(sandbox: Sandbox) -> list[str]:
    """The ids of the first page as the sandbox lists it (newest first)."""
    ops = sorted(sandbox.state.operations.values(), key=lambda op: (op.created_at, op.id), reverse=True)
    return [op.id for op in ops]


async def test_a_page_of_another_shape_is_still_a_protocol_error() -> None:
    body = {"status": "success", "data": {"operations": 5}}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
    async with PlisioClient(api_key=SANDBOX_API_KEY, transport=transport) as client:
        with pytest.raises(PlisioProtocolError) as failed:
            await client.list_operations()
    assert "unexpected answer shape at operations" in str(failed.value)


async def test_a_lookup_whose_row_cannot_be_read_is_not_taken_as_absent() -> None:
    """The search for an effect's order number comes back with its row unreadable: "not there" would fail
    an effect whose invoice exists, so the lookup fails instead (the effect stays unknown)."""
    from decimal import Decimal

    from tools.errors import PlisioProtocolError
    from tools.plisio.args import CreateInvoiceArgs
    from tools.plisio.tools import find_invoice

    sandbox = Sandbox(seed=7)
    number = "4242424242424242"
    async with PlisioClient(
        api_key=SANDBOX_API_KEY, transport=BrokenRows(sandbox.transport(), {0: _amount})
    ) as client:
        await client.create_invoice(order_number=number, order_name="Pro plan", source_amount=Decimal("10"),
                                    source_currency="USD", return_existing=False)  # fmt: skip
        args = CreateInvoiceArgs(order_name="Pro plan", source_amount=Decimal("10"), source_currency="USD")  # type: ignore[call-arg]
        with pytest.raises(PlisioProtocolError, match="1 row\\(s\\) of the search for order number"):
            await find_invoice(args, PlisioContext(client=client, order_number=number))


def test_an_order_number_sent_as_a_json_number_reads_as_its_digits() -> None:
    from tools.plisio.models import Operation

    op = Operation.model_validate({"id": "x", "params": {"order_number": 4242424242424242}})
    assert op.params is not None and op.params.order_number == "4242424242424242"
