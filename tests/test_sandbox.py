"""The sandbox's Plisio routes: envelopes, shapes, validation errors and pagination (in-process)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tools.plisio.callbacks import sign_json
from tools.plisio.sandbox import SANDBOX_API_KEY, Sandbox
from tools.plisio.sandbox.catalog import COINS

pytestmark = pytest.mark.anyio
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
BASE = "http://sandbox.test/api/v1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def sandbox() -> Sandbox:
    return Sandbox(now=lambda: NOW)


@pytest.fixture
async def client(sandbox: Sandbox) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=sandbox.transport(), base_url=BASE) as http:
        yield http


async def call(client: httpx.AsyncClient, path: str, /, **params: str) -> httpx.Response:
    return await client.get(path, params={**params, "api_key": SANDBOX_API_KEY})


async def ok(client: httpx.AsyncClient, path: str, /, **params: str) -> Any:
    response = await call(client, path, **params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success"
    return body["data"]


async def error(
    client: httpx.AsyncClient, path: str, http_status: int, code: int, /, **params: str
) -> dict[str, Any]:
    response = await call(client, path, **params)
    assert response.status_code == http_status, response.text
    body = response.json()
    assert body["status"] == "error"
    assert set(body["data"]) == {"name", "message", "code"}
    assert body["data"]["code"] == code
    return dict(body["data"])


def decimals(text: str) -> int:
    assert re.fullmatch(r"\d+\.\d+", text), text
    return len(text.split(".")[1])


def new_invoice_params(order_number: str = "1", **extra: str) -> dict[str, str]:
    return {"order_number": order_number, "order_name": "Pro plan", "source_amount": "49.00", **extra}


# ------------------------------------------------------------------- shop, coins


async def test_shop_info_shape(client: httpx.AsyncClient) -> None:
    data = await ok(client, "shops")
    assert data == {
        "name": "Northwind Digital",
        "link": "https://northwind-digital.example",
        "logo": "https://northwind-digital.example/static/logo.png",
        "commission_payment": 1,
        "white_label": False,
        "extra_commission": 0,
        "verified": True,
    }


async def test_balance_shape_and_unknown_currency_is_105(client: httpx.AsyncClient) -> None:
    data = await ok(client, "balances/BTC")
    assert set(data) == {"psys_cid", "currency", "balance"}
    assert (data["psys_cid"], data["currency"]) == ("BTC", "BTC")
    assert decimals(data["balance"]) == 8
    assert Decimal(data["balance"]) > 0
    usdt = await ok(client, "balances/USDT_TRX")
    assert usdt["currency"] == "USDT"
    assert decimals(usdt["balance"]) == 6
    err = await error(client, "balances/BTCX", 422, 105)
    assert err == {
        "name": "Unprocessable entity",
        "message": 'Unsupported currency attribute value: {"currency":"BTCX"}',
        "code": 105,
    }
    assert (await ok(client, "balances", currency="ETH"))["psys_cid"] == "ETH"  # legacy PHP form


async def test_currencies_list_default_usd_and_per_fiat(client: httpx.AsyncClient) -> None:
    usd = await ok(client, "currencies")
    assert isinstance(usd, list)
    assert len(usd) >= 10
    fields = {
        "name", "cid", "currency", "icon", "rate_usd", "price_usd", "precision", "output_precision", "fiat",
        "fiat_rate", "min_sum_in", "invoice_commission_percentage", "hidden", "maintenance", "contractOf",
        "contractStandard",
    }  # fmt: skip
    assert all(set(entry) == fields for entry in usd)
    by_cid = {entry["cid"]: entry for entry in usd}
    assert {"BTC", "ETH", "LTC", "DOGE", "BCH", "TRX", "USDT_TRX", "USDT", "TON", "SOL"} <= set(by_cid)
    assert [e["cid"] for e in usd if e["hidden"] == 1] == ["XMR"]
    assert all(isinstance(e["hidden"], int) and isinstance(e["maintenance"], bool) for e in usd)
    assert by_cid["USDT_TRX"]["contractOf"] == "TRX"
    assert by_cid["USDT_TRX"]["contractStandard"] == "TRC-20"
    assert by_cid["BTC"]["fiat"] == "USD"
    assert by_cid["BTC"]["fiat_rate"] == by_cid["BTC"]["rate_usd"], "coins per one USD, like rate_usd"
    assert Decimal(by_cid["BTC"]["fiat_rate"]) * Decimal(by_cid["BTC"]["price_usd"]) == pytest.approx(
        1, rel=1e-3
    )
    eur = await ok(client, "currencies/EUR")
    btc_eur = next(e for e in eur if e["cid"] == "BTC")
    assert btc_eur["fiat"] == "EUR"
    assert Decimal(btc_eur["fiat_rate"]) > Decimal(by_cid["BTC"]["fiat_rate"]), "a euro buys more BTC"
    await error(client, "currencies/ZZZ", 422, 105)
    guest = await client.get("currencies/GBP")  # callable without a key, like the plugins do
    assert guest.status_code == 200
    assert guest.json()["data"][0]["fiat"] == "GBP"


@pytest.mark.parametrize(
    ("cid", "fields"),
    [
        ("BTC", {"conf_target", "feeRate", "feeRateUnit"}),
        ("ETH", {"gasLimit", "gasPrice", "value", "feeUnit"}),
        ("USDT", {"gasLimit", "gasPrice", "value", "feeUnit"}),
        ("TRX", {"value"}),
        ("TON", {"value", "feeUnit"}),
        ("XMR", {"conf_target", "value", "feeUnit"}),
    ],
)
async def test_fee_plans_have_the_chain_shape(client: httpx.AsyncClient, cid: str, fields: set[str]) -> None:
    response = await call(client, f"operations/fee-plan/{cid}")
    assert response.status_code == 200
    data = json.loads(response.text, parse_float=Decimal)["data"]
    assert list(data) == ["economy", "normal", "priority"]
    for plan in data.values():
        assert set(plan) == fields
        if "conf_target" in plan:
            assert isinstance(plan["conf_target"], int)
        if cid == "XMR":
            assert isinstance(plan["value"], Decimal)  # a JSON number, as in the docs' example
        elif "value" in plan:
            assert isinstance(plan["value"], str)
    await error(client, "operations/fee-plan/BTCX", 422, 105)


async def test_fee_estimate_and_insufficient_funds(client: httpx.AsyncClient) -> None:
    data = await ok(client, "operations/fee/BTC", addresses="bc1qexample", amounts="0.01")
    assert data["psys_cid"] == "BTC"
    assert data["currency"] == "BTC"
    assert data["plan"] == "normal"
    assert decimals(data["fee"]) == 8
    assert Decimal(data["fee"]) > 0
    priority = await ok(
        client, "operations/fee/BTC", addresses="a,b", amounts="0.01,0.02", feePlan="priority"
    )
    assert Decimal(priority["fee"]) > Decimal(data["fee"])
    assert priority["plan"] == "priority"
    err = await error(client, "operations/fee/BTC", 422, 116, addresses="bc1qexample", amounts="1000")
    assert json.loads(err["message"]) == {"balance": "Insufficient funds on balance"}
    err = await error(client, "operations/fee/BTC", 422, 100, addresses="a,b", amounts="0.1")
    assert "amounts" in json.loads(err["message"])
    err = await error(client, "operations/fee/BTC", 422, 100, amounts="0.1")
    assert json.loads(err["message"]) == {"addresses": "Addresses cannot be blank."}
    err = await error(client, "operations/fee/BTC", 422, 100, addresses="a", amounts="0.1", feePlan="turbo")
    assert json.loads(err["message"]) == {"feePlan": "Fee Plan is invalid."}


async def test_commission_shape(client: httpx.AsyncClient) -> None:
    data = await ok(client, "operations/commission/ETH", addresses="0xabc", amounts="0.5", type="cash_out")
    assert set(data) == {"commission", "fee", "feeUnit", "plan", "useWallet", "useWalletBalance", "plans"}
    assert (data["useWallet"], data["useWalletBalance"]) == ("false", "null")
    assert set(data["plans"]) == {"economy", "normal", "priority"}
    assert data["plans"]["normal"]["value"] == data["fee"] and data["feeUnit"] == "ETH"
    assert Decimal(data["commission"]) == Decimal("0.0025"), "Plisio's 0.5% alone: the fee is its own field"
    await error(client, "operations/commission/ETH", 422, 116, addresses="0xabc", amounts="5000")
    await error(client, "operations/commission/ETH", 422, 100, type="invoice")


# ---------------------------------------------------------------- auth & routing


@pytest.mark.parametrize(
    "path",
    [
        "shops",
        "balances/BTC",
        "operations",
        "operations/fee-plan/BTC",
        "invoices/new",
        "invoices/abc",
        "operations/x",
    ],
)
async def test_missing_or_wrong_key_is_401(client: httpx.AsyncClient, path: str) -> None:
    for params in ({}, {"api_key": "sk_wrong"}):
        response = await client.get(path, params=params)
        assert response.status_code == 401
        assert response.json() == {
            "status": "error",
            "data": {
                "name": "Unauthorized",
                "message": "Your request was made with invalid credentials.",
                "code": 0,
            },
        }


async def test_unknown_route_withdraw_and_method(client: httpx.AsyncClient) -> None:
    for path in ("operations/withdraw", "nothing/here", "operations/"):
        err = await error(client, path, 404, 0, type="cash_out", to="bc1q", amount="0.1")
        assert err["name"] == "Not Found"
    response = await client.post("shops", params={"api_key": SANDBOX_API_KEY})
    assert response.status_code == 405
    assert response.json()["data"]["name"] == "Method Not Allowed"


# ---------------------------------------------------------------------- invoices


async def test_create_invoice_standard_shop_shape(client: httpx.AsyncClient) -> None:
    data = await ok(client, "invoices/new", **new_invoice_params(currency="BTC", source_currency="USD"))
    assert set(data) == {"txn_id", "invoice_url", "invoice_total_sum"}
    assert re.fullmatch(r"[0-9a-f]{24}", data["txn_id"])
    assert data["invoice_url"].endswith(data["txn_id"])
    assert decimals(data["invoice_total_sum"]) == 8


async def test_create_invoice_white_label_shape() -> None:
    box = Sandbox(now=lambda: NOW, white_label=True)
    async with httpx.AsyncClient(transport=box.transport(), base_url=BASE) as http:
        data = await ok(http, "invoices/new", **new_invoice_params(currency="USDT_TRX", expire_min="30"))
        assert (await ok(http, "shops"))["white_label"] is True
    assert list(data) == [
        "txn_id", "invoice_url", "amount", "pending_amount", "wallet_hash", "psys_cid", "currency", "status",
        "source_currency", "source_rate", "expire_utc", "expected_confirmations", "qr_code", "verify_hash",
        "invoice_commission", "invoice_sum", "invoice_total_sum",
    ]  # fmt: skip
    assert data["status"] == "new"
    assert data["currency"] == "USDT"
    assert data["psys_cid"] == "USDT_TRX"
    assert data["expire_utc"] == int(NOW.timestamp()) + 30 * 60
    assert data["amount"] == data["pending_amount"] == data["invoice_total_sum"]
    amount, total = (
        Decimal(data["invoice_sum"]) + Decimal(data["invoice_commission"]),
        Decimal(data["amount"]),
    )
    assert amount == total  # the client pays the commission on top (commission_payment 1)
    assert data["wallet_hash"].startswith("T")
    png = base64.b64decode(data["qr_code"].removeprefix("data:image/png;base64,"))
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) < 2000
    unsigned = {k: v for k, v in data.items() if k != "verify_hash"}
    assert data["verify_hash"] == sign_json(unsigned, SANDBOX_API_KEY)


async def test_create_invoice_validation_errors(client: httpx.AsyncClient) -> None:
    err = await error(client, "invoices/new", 422, 100, order_number="1", source_amount="10")
    assert err["name"] == "Unprocessable entity"
    assert err["message"] == '{"order_name":"Order Name cannot be blank."}'  # JSON inside the string
    err = await error(client, "invoices/new", 422, 100, order_name="Thing", source_amount="10")
    assert json.loads(err["message"]) == {"order_number": "Order Number cannot be blank."}
    err = await error(client, "invoices/new", 422, 100, order_number="1", order_name="Thing")
    assert json.loads(err["message"]) == {"amount": "Amount cannot be blank."}
    err = await error(
        client, "invoices/new", 422, 100, **new_invoice_params("pp-7489d308", return_existing="1")
    )
    assert json.loads(err["message"]) == {"order_number": "Order Number must be an integer."}, (
        "before return_existing"
    )
    err = await error(client, "invoices/new", 422, 100, order_number="A-1", order_name="Thing")
    assert json.loads(err["message"]) == {
        "order_number": "Order Number must be an integer.", "amount": "Amount cannot be blank."}, "all at once"  # fmt: skip
    err = await error(client, "invoices/new", 422, 100, **new_invoice_params(email="not-an-email"))
    assert json.loads(err["message"]) == {"email": "Email is not a valid email address."}
    err = await error(client, "invoices/new", 422, 100, **new_invoice_params(amount="abc"))
    assert json.loads(err["message"]) == {"amount": "Amount must be a number."}
    err = await error(client, "invoices/new", 422, 105, **new_invoice_params(currency="BTCX"))
    assert err["message"] == 'Unsupported currency attribute value: {"currency":"BTCX"}'
    await error(client, "invoices/new", 422, 105, **new_invoice_params(currency="XMR"))  # hidden coin
    await error(client, "invoices/new", 422, 105, **new_invoice_params(source_currency="ZZZ"))
    err = await error(
        client, "invoices/new", 422, 100, **new_invoice_params(amount="0.00000001", currency="BTC")
    )
    assert "no less than" in json.loads(err["message"])["amount"]


async def test_duplicate_order_number_and_return_existing(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    first = await ok(client, "invoices/new", **new_invoice_params("5001"))
    err = await error(client, "invoices/new", 422, 104, **new_invoice_params("5001"))
    assert json.loads(err["message"]) == {"order_number": 'Order Number "5001" has already been taken.'}
    for word in ("1", "true"):
        again = await ok(client, "invoices/new", **new_invoice_params("5001", return_existing=word))
        assert again == first
    assert sum(op.order_number == "5001" for op in sandbox.state.operations.values()) == 1
    seeded = await ok(client, "invoices/new", **new_invoice_params("202618801", return_existing="1"))
    assert seeded["txn_id"] == sandbox.state.by_order_number("202618801").id  # type: ignore[union-attr]


async def test_new_invoice_appears_in_details_and_operations(client: httpx.AsyncClient) -> None:
    params = new_invoice_params("777000777", currency="ETH", source_currency="EUR", email="Buyer@Example.com")
    created = await ok(
        client, "invoices/new", **params, description="two seats", callback_url="http://shop.test/cb"
    )
    txn_id = created["txn_id"]

    details = await ok(client, f"invoices/{txn_id}")
    assert set(details) == {"invoice", "active_invoice_id", "shop", "paysys", "allowed_psys_cids"}
    invoice = details["invoice"]
    assert invoice["id"] == invoice["txn_id"] == details["active_invoice_id"] == txn_id
    assert invoice["status"] == "new"
    assert invoice["received_amount"] == "0.00000000"
    assert invoice["remaining_amount"] == invoice["pending_amount"] == invoice["amount"]
    assert invoice["invoice_total_sum"] == created["invoice_total_sum"]
    assert invoice["params"]["order_number"] == "777000777"
    assert invoice["params"]["email"] == "Buyer@Example.com"
    assert invoice["source_currency"] == "EUR"
    assert invoice["source_amount"] == "49.00"
    assert set(details["shop"]) == {"name", "link", "logo", "successUrl", "failedUrl", "allow_renew"}
    assert details["paysys"]["cid"] == "ETH"
    assert details["paysys"]["amount"] == invoice["amount"]
    assert {p["cid"] for p in details["allowed_psys_cids"]} >= {"BTC", "ETH", "USDT_TRX"}
    assert all("amount" in p for p in details["allowed_psys_cids"])

    by_email = await ok(client, f"invoices/email/{txn_id}", email="buyer@example.com")
    assert by_email == details
    await error(client, f"invoices/email/{txn_id}", 422, 100)  # email is required
    await error(client, f"invoices/email/{txn_id}", 404, 0, email="someone.else@example.com")

    listed = await ok(client, "operations", search="777000777")
    assert [op["id"] for op in listed["operations"]] == [txn_id]
    op = listed["operations"][0]
    assert op["type"] == "invoice"
    assert op["status"] == "new"
    params_out = op["params"]
    assert params_out["order_number"] == "777000777"
    assert params_out["order_name"] == "Pro plan"
    assert params_out["source_amount"] == "49.00"
    assert params_out["source_currency"] == "EUR"
    assert await ok(client, f"operations/{txn_id}") == op
    newest = await ok(client, "operations", limit="1")
    assert newest["operations"][0]["id"] == txn_id


async def test_unknown_ids_are_404(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    err = await error(client, "invoices/ffffffffffffffffffffffff", 404, 0)
    assert err["message"] == "Invoice not found."
    err = await error(client, "operations/ffffffffffffffffffffffff", 404, 0)
    assert err["message"] == "Operation not found."
    cash_in = next(op for op in sandbox.state.operations.values() if op.type == "cash_in")
    await error(client, f"invoices/{cash_in.id}", 404, 0)  # an operation, but not an invoice


# -------------------------------------------------------------------- operations


async def test_operations_pagination_meta_and_links(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    total = len(sandbox.state.operations)
    first = await ok(client, "operations")
    assert first["_meta"] == {
        "totalCount": total,
        "pageCount": -(-total // 20),
        "currentPage": 1,
        "perPage": 20,
    }
    assert len(first["operations"]) == 20
    created = [op["created_at_utc"] for op in first["operations"]]
    assert created == sorted(created, reverse=True)  # newest first
    links = first["_links"]
    assert list(links) == ["self", "first", "last", "next"]
    nxt = urlsplit(links["next"]["href"])
    assert nxt.scheme == "http"
    assert nxt.netloc == "sandbox.test"
    assert nxt.path == "/api/v1/operations"
    assert parse_qs(nxt.query) == {"api_key": [SANDBOX_API_KEY], "page": ["2"]}  # the key is echoed

    second = await ok(client, "operations", page="2", limit="50")
    assert second["_meta"]["currentPage"] == 2
    assert second["_meta"]["perPage"] == 50
    assert "prev" in second["_links"]
    assert "limit=50" in second["_links"]["self"]["href"]
    assert (await ok(client, "operations", limit="500"))["_meta"]["perPage"] == 50
    assert (await ok(client, "operations", limit="0"))["_meta"]["perPage"] == 1
    last = await ok(client, "operations", page="999", limit="50")
    assert last["_meta"]["currentPage"] == last["_meta"]["pageCount"]
    assert "next" not in last["_links"]
    seen: list[str] = []
    for page in range(1, last["_meta"]["pageCount"] + 1):
        seen += [
            op["id"] for op in (await ok(client, "operations", page=str(page), limit="50"))["operations"]
        ]
    assert len(seen) == len(set(seen)) == total


async def test_operations_filters(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    for status in ("completed", "expired", "pending internal", "cancelled duplicate", "mismatch", "new"):
        data = await ok(client, "operations", status=status, limit="50")
        assert data["operations"]
        assert all(op["status"] == status for op in data["operations"])
    for op_type in ("invoice", "cash_in", "cash_out", "mass_cash_out"):
        data = await ok(client, "operations", type=op_type, limit="50")
        assert data["operations"]
        assert all(op["type"] == op_type for op in data["operations"])
    data = await ok(client, "operations", currency="LTC", type="invoice", limit="50")
    assert all(op["psys_cid"] == "LTC" for op in data["operations"])
    by_email = await ok(client, "operations", search="OLIVIA.HART@example.com")
    assert by_email["_meta"]["totalCount"] == 4
    paid = next(op for op in sandbox.state.operations.values() if op.txs and op.is_invoice)
    by_txid = await ok(client, "operations", search=paid.txs[0].txid)
    assert [op["id"] for op in by_txid["operations"]] == [paid.id]
    assert (await ok(client, "operations", shop_id="nope"))["_meta"]["totalCount"] == 0
    err = await error(client, "operations", 422, 100, status="paid")
    assert json.loads(err["message"]) == {"status": "Status is invalid."}
    err = await error(client, "operations", 422, 100, type="withdraw")
    assert json.loads(err["message"]) == {"type": "Type is invalid."}
    await error(client, "operations", 422, 105, currency="BTCX")


async def test_operation_dto_amounts_and_tx(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    data = await ok(client, "operations", status="completed", type="invoice", limit="50")
    for op in data["operations"]:
        precision = COINS[op["psys_cid"]].precision
        for name in ("amount", "pending_sum", "actual_sum", "commission"):
            assert decimals(op[name]) == precision, (name, op[name])
        assert isinstance(op["created_at_utc"], int)
        assert isinstance(op["expire_at_utc"], int)
        assert op["tx"]
        assert op["tx_url"]
        assert op["tx_id"] == [tx["txid"] for tx in op["tx"]]
        assert (
            sum(Decimal(tx["value"]) for tx in op["tx"]) == Decimal(op["actual_sum"]) == Decimal(op["amount"])
        )
    expired = await ok(client, "operations", status="expired", limit="50")
    assert any(Decimal(op["actual_sum"]) > 0 for op in expired["operations"])  # underpaid expiries
    assert any(Decimal(op["actual_sum"]) == 0 for op in expired["operations"])
    mass = (await ok(client, "operations", type="mass_cash_out"))["operations"][0]
    assert isinstance(mass["sendmany"], dict)
    assert len(mass["sendmany"]) == 3
    assert mass["fee"] is not None
