"""Every example response of ``../shared/plisio-api.md`` (Plisio's docs and SDKs, quoted there), served to
the real client over ``httpx`` and read through the views the model sees. Copied here (the survey lives
outside the repository); where the docs' JSON is not literal JSON (the ETH fee plan lacks commas, the
operations example has ``...`` placeholders) the fix is named. Section numbers are the survey's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tools.errors import PlisioApiError
from tools.plisio import views
from tools.plisio.client import PlisioClient
from tools.plisio.sandbox import SANDBOX_API_KEY

pytestmark = pytest.mark.anyio
Ask = Callable[[PlisioClient], Awaitable[Any]]


async def served(body: dict[str, Any], ask: Ask, status: int = 200) -> Any:
    transport = httpx.MockTransport(lambda request: httpx.Response(status, json=body))
    async with PlisioClient(api_key=SANDBOX_API_KEY, transport=transport) as client:
        return await ask(client)


async def test_1_3_the_error_envelope() -> None:
    body = {"status": "error", "data": {"name": "Unprocessable entity",
            "message": "Unsupported currency attribute value: {\"currency\":\"BTCX\"}", "code": 105}}  # fmt: skip
    with pytest.raises(PlisioApiError) as failed:
        await served(body, lambda c: c.get_balance("BTCX"), 422)
    assert failed.value.code == 105 and "Unsupported currency attribute value" in str(failed.value)


async def test_2_1_a_standard_shops_invoice() -> None:
    body = {"status": "success", "data": {"txn_id": "5ee0e502283675293c450d0e",
            "invoice_url": "https://plisio.net/invoice/5ee0e502283675293c450d0e"}}  # fmt: skip
    created = await served(body, lambda c: c.create_invoice(order_number="1", order_name="btc1", currency="BTC",
                           source_currency="USD", source_amount=Decimal("2"), return_existing=False))  # fmt: skip
    assert views.invoice_created(created, "1") == {
        "txn_id": "5ee0e502283675293c450d0e", "invoice_url": "https://plisio.net/invoice/5ee0e502283675293c450d0e",
        "order_number": "1", "status": "new"}  # fmt: skip


async def test_2_1_a_white_label_shops_invoice() -> None:
    body = {"status": "success", "data": {
        "txn_id": "6553a1f2c0ffee0123456789", "invoice_url": "https://plisio.net/invoice/6553a1f2c0ffee0123456789",
        "amount": "0.00051255", "pending_amount": "0.00051255", "wallet_hash": "bc1qexampleaddress",
        "psys_cid": "BTC", "currency": "BTC", "status": "new", "source_currency": "USD", "source_rate": "49019.60784314",
        "expire_utc": 1700000000, "expected_confirmations": "1", "qr_code": "data:image/png;base64,iVBORw0...",
        "verify_hash": "<hmac>", "invoice_commission": "0.00000255", "invoice_sum": "0.00051000",
        "invoice_total_sum": "0.00051255"}}  # fmt: skip
    created = await served(body, lambda c: c.create_invoice(order_number="2", order_name="x", currency="BTC",
                           amount=Decimal("0.00051255"), return_existing=False))  # fmt: skip
    view = views.invoice_created(created, "2")
    assert (view["amount"], view["pending_amount"], view["commission"], view["invoice_sum"]) == (
        "0.00051255",
        "0.00051255",
        "0.00000255",
        "0.00051",
    )
    assert view["expire_at"] == "2023-11-14T22:13:20Z" and "wallet_hash" not in view and "qr_code" not in view


async def test_2_2_a_fee_estimate() -> None:
    body = {
        "status": "success",
        "data": {"fee": "0.00000775", "psys_cid": "BTC", "currency": "BTC", "plan": "normal"},
    }
    fee = await served(
        body, lambda c: c.estimate_fee("BTC", addresses=["2N2m6XRwR8sh"], amounts=[Decimal("0.003")])
    )
    assert views.fee_estimate(fee) == {"psys_cid": "BTC", "fee": "0.00000775", "plan": "normal"}


async def test_2_3_a_balance() -> None:
    body = {"status": "success", "data": {"psys_cid": "BTC", "currency": "BTC", "balance": "0.00110995"}}
    balance = await served(body, lambda c: c.get_balance("BTC"))
    assert views.balance(balance, "BTC")["balance"] == "0.00110995"


@pytest.mark.parametrize(
    ("data", "total"),
    [
        ({"commission": "0.003010710000000000", "fee": "0.001071000000000000", "plan": "priority",
          "useWallet": "false", "useWalletBalance": "null",
          "plans": {"normal": {"gasLimit": "21000", "gasPrice": "44000000000", "value": "0.000924000000000000"},
                    "priority": {"gasLimit": "21000", "gasPrice": "44000000000", "value": "0.000924000000000000"}}},
         "0.00408171"),
        ({"commission": "0.00000000", "fee": "0.00001020", "plan": "normal"}, "0.0000102"),  # the older example
    ],
)  # fmt: skip
async def test_2_4_a_commission_estimate(data: dict[str, Any], total: str) -> None:
    """The docs' examples name no fee coin (``feeUnit``): no total; with it, commission + fee."""
    com = await served({"status": "success", "data": data}, lambda c: c.estimate_commission("ETH"))
    assert "total_cost" not in views.commission(com, "ETH")
    body = {"status": "success", "data": {**data, "feeUnit": "ETH"}}
    named = await served(body, lambda c: c.estimate_commission("ETH"))
    assert views.commission(named, "ETH")["total_cost"] == total


@pytest.mark.parametrize(
    "data",
    [
        {"normal": {"conf_target": 0, "value": 0.000222}, "priority": {"conf_target": 2, "value": 0.000444}},
        # The docs' ETH example, with the commas it lacks:
        {"normal": {"gasLimit": "21000", "gasPrice": "44000000000", "value": "0.000924000000000000"},
         "priority": {"gasLimit": "21000", "gasPrice": "44000000000", "value": "0.000924000000000000"}},
    ],
    ids=["XMR", "ETH"],
)  # fmt: skip
async def test_2_6_fee_plans(data: dict[str, Any]) -> None:
    plans = await served({"status": "success", "data": data}, lambda c: c.get_fee_plans("XMR"))
    assert set(plans) == {"normal", "priority"}
    summary = views.fee_plan_summary(plans["priority"], "XMR")
    assert Decimal(str(summary.get("value") or summary.get("fee"))) in (
        Decimal("0.000444"),
        Decimal("0.000924"),
    )


async def test_2_9_an_operations_page() -> None:
    """The docs' example without its ``"amount":"0.…"`` and ``"...": "..."`` placeholders (and so without
    the second row's id)."""
    body = {"status": "success", "data": {
        "operations": [
            {"user_id": 1, "shop_id": "607sdw35f4ee4a2b7t", "type": "invoice", "status": "completed",
             "tx_url": ["https://etherscan.io/tx/0x0000000000", "https://etherscan.io/tx/0x0000000000"],
             "id": "1000000"},
            {"user_id": 1, "shop_id": None, "type": "cash_in", "status": "completed", "pending_sum": "0.00000000",
             "psys_cid": "BTC", "currency": "BTC", "source_currency": "USD", "source_rate": "0.00010216", "fee": None,
             "wallet_hash": "0x0000000000", "sendmany": None, "params": {"value": "0.00225754", "currency": "BTC"},
             "expire_at_utc": None, "created_at_utc": 1563529570}],
        "_links": {"self": {"href": "…"}, "next": {"href": "…"}, "last": {"href": "…"}},
        "_meta": {"totalCount": 2, "pageCount": 1, "currentPage": 1, "perPage": 20}}}  # fmt: skip
    page = await served(body, lambda c: c.list_operations())
    view = views.operations_page(page)
    # The second row's "id" was among what the placeholders cut: it is set apart and named, not lost.
    assert [op["id"] for op in view["operations"]] == ["1000000"] and view["total_count"] == 2
    assert view["skipped"]["count"] == 1 and view["skipped"]["ids"] == [None]
    assert page.skipped[0].error == "row 1: id: Field required"


async def test_2_11_a_withdrawal_as_an_operation() -> None:
    body = {"status": "success", "data": {
        "type": "cash_out", "status": "completed", "psys_cid": "BTC", "currency": "BTC", "source_currency": "USD",
        "source_rate": "0.00010282", "fee": "0.00000256", "wallet_hash": "2N3c…",
        "params": {"fee": {"conf_target": 3, "plan": "normal", "value": "0.00000256"}}, "created_at_utc": 1591707445,
        "amount": "0.00200000", "tx_url": "https://sochain.com/resolver?query=08c7…", "id": "5edf873d9ed3a558712be543"}}  # fmt: skip
    op = await served(body, lambda c: c.get_operation("5edf873d9ed3a558712be543"), 201)
    view = views.operation(op)
    assert (view["id"], view["type"], view["amount"], view["fee"]) == (
        "5edf873d9ed3a558712be543",
        "cash_out",
        "0.002",
        "0.00000256",
    )
