"""Invoice life in the sandbox: control moves, balances, and the signed callbacks they send."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from tools.plisio.callbacks import verify
from tools.plisio.sandbox import (
    SANDBOX_API_KEY,
    InvoiceFinalError,
    LoopbackServer,
    Sandbox,
    UnknownInvoiceError,
)

pytestmark = pytest.mark.anyio
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
BASE = "http://sandbox.test/api/v1"
CONTROL = "http://sandbox.test/_sandbox"
CALLBACK = "http://merchant.test/plisio/callback"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Posted:
    path: str
    query: str
    content_type: str
    body: bytes


@dataclass
class Receiver:
    """A merchant endpoint that records every callback and answers ``status``."""

    status: int = 200
    calls: list[Posted] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.calls.append(
            Posted(scope["path"], scope["query_string"].decode(), headers["content-type"], body)
        )
        await send(
            {"type": "http.response.start", "status": self.status, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    def verified(self, index: int = -1) -> dict[str, str]:
        call = self.calls[index]
        return verify(call.body, content_type=call.content_type, secrets=[SANDBOX_API_KEY]).fields


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sandbox(receiver: Receiver, clock: Clock) -> Sandbox:
    return Sandbox(now=clock, callback_transport=httpx.ASGITransport(app=receiver))


@pytest.fixture
async def client(sandbox: Sandbox) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=sandbox.transport(), base_url=BASE) as http:
        yield http


async def api(client: httpx.AsyncClient, path: str, /, **params: str) -> Any:
    response = await client.get(path, params={**params, "api_key": SANDBOX_API_KEY})
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def new_invoice(client: httpx.AsyncClient, order_number: str = "1", **extra: str) -> str:
    params = {
        "order_number": order_number,
        "order_name": "Pro plan",
        "currency": "BTC",
        "source_amount": "100",
    }
    data = await api(client, "invoices/new", **{**params, "callback_url": CALLBACK, **extra})
    return str(data["txn_id"])


async def balance(client: httpx.AsyncClient, cid: str = "BTC") -> Decimal:
    return Decimal((await api(client, f"balances/{cid}"))["balance"])


async def test_pay_in_full_completes_credits_and_sends_a_signed_form_callback(
    client: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver
) -> None:
    txn_id = await new_invoice(client, email="ana@example.com")
    before = await balance(client)
    result = await sandbox.pay(txn_id)
    assert result["invoice"]["status"] == "completed"
    assert result["callback"] == {"url": CALLBACK, "status_code": 200, "error": None}

    call = receiver.calls[-1]
    assert call.path == "/plisio/callback"
    assert call.content_type == "application/x-www-form-urlencoded"
    assert call.body.decode().split("&")[-1].startswith("verify_hash=")
    fields = receiver.verified()
    invoice = result["invoice"]
    assert fields["txn_id"] == txn_id
    assert fields["status"] == "completed"
    assert fields["ipn_type"] == "invoice"
    assert fields["merchant"] == "Northwind Digital"
    assert fields["merchant_id"] == "65f2c0de9a1b4e7d3c2a1f08"
    assert fields["order_number"] == "1"
    assert fields["order_name"] == "Pro plan"
    assert fields["amount"] == invoice["amount"]
    assert fields["currency"] == "BTC"
    assert fields["psys_cid"] == "BTC"
    assert (fields["source_currency"], fields["source_amount"]) == ("USD", "100.00")
    assert fields["invoice_total_sum"] == invoice["invoice_total_sum"]
    assert fields["email"] == "ana@example.com"
    assert fields["expire_utc"] == str(int(NOW.timestamp()) + 600 * 60)
    assert json.loads(fields["tx_urls"]) == invoice["tx_url"]
    assert len(invoice["tx_url"]) == 1
    assert fields["comment"].endswith(txn_id)

    assert await balance(client) == before + Decimal(invoice["invoice_sum"])
    detail = await api(client, f"operations/{txn_id}")
    assert detail["status"] == "completed"
    assert detail["actual_sum"] == invoice["amount"]
    assert detail["tx"][0]["value"] == invoice["amount"]
    assert detail["finished_at_utc"] == int(NOW.timestamp())


async def test_partial_payment_is_pending_until_the_rest_arrives(
    client: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver
) -> None:
    txn_id = await new_invoice(client)
    amount = Decimal(sandbox.invoice(txn_id)["amount"])
    first = await sandbox.pay(txn_id, Decimal("0.0001"))
    assert first["invoice"]["status"] == "pending"
    assert Decimal(first["invoice"]["received_amount"]) == Decimal("0.0001")
    assert Decimal(first["invoice"]["pending_amount"]) == amount - Decimal("0.0001")
    assert receiver.verified()["status"] == "pending"
    rest = await sandbox.pay(txn_id)
    assert rest["invoice"]["status"] == "completed"
    assert rest["invoice"]["received_amount"] == rest["invoice"]["amount"]
    assert [receiver.verified(i)["status"] for i in range(len(receiver.calls))] == ["pending", "completed"]
    assert len((await api(client, f"operations/{txn_id}"))["tx"]) == 2


async def test_overpayment_is_mismatch(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    txn_id = await new_invoice(client)
    amount = Decimal(sandbox.invoice(txn_id)["amount"])
    before = await balance(client)
    result = await sandbox.pay(txn_id, amount * 2)
    assert result["invoice"]["status"] == "mismatch"
    assert Decimal(result["invoice"]["received_amount"]) == amount * 2
    assert await balance(client) > before + Decimal(result["invoice"]["invoice_sum"])


async def test_underpaid_expiry_keeps_the_received_amount(
    client: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver
) -> None:
    txn_id = await new_invoice(client)
    before = await balance(client)
    await sandbox.pay(txn_id, Decimal("0.0005"))
    result = await sandbox.expire(txn_id)
    assert result["invoice"]["status"] == "expired"
    assert result["invoice"]["received_amount"] == "0.00050000"
    assert receiver.verified()["status"] == "expired"
    op = await api(client, f"operations/{txn_id}")
    assert op["status"] == "expired"
    assert op["actual_sum"] == "0.00050000"
    assert before < await balance(client) < before + Decimal("0.0005")  # credited minus commission share


async def test_cancel_error_and_terminal_invoices_refuse_moves(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    cancelled = await new_invoice(client, "2")
    failed = await new_invoice(client, "3")
    assert (await sandbox.cancel(cancelled))["invoice"]["status"] == "cancelled"
    assert (await sandbox.error(failed))["invoice"]["status"] == "error"
    for move in (sandbox.pay, sandbox.expire, sandbox.cancel, sandbox.error):
        with pytest.raises(InvoiceFinalError):
            await move(cancelled)
    with pytest.raises(UnknownInvoiceError):
        await sandbox.pay("ffffffffffffffffffffffff")
    response = await client.post(f"{CONTROL}/invoices/{failed}/pay")
    assert response.status_code == 409
    assert "error" in response.json()


async def test_json_callback_when_the_url_asks_for_it(
    client: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver
) -> None:
    order_name = "Café Sans webfont licence — ×2"
    txn_id = await new_invoice(client, order_name=order_name, callback_url=CALLBACK + "?json=true")
    await sandbox.pay(txn_id)
    call = receiver.calls[-1]
    assert call.content_type == "application/json"
    assert call.query == "json=true"
    payload = json.loads(call.body)
    assert list(payload)[-1] == "verify_hash"
    assert isinstance(payload["expire_utc"], int)
    assert all(isinstance(v, str) for k, v in payload.items() if k != "expire_utc")
    assert order_name.encode() in call.body  # UTF-8, not \\u escapes
    fields = receiver.verified()
    assert fields["order_name"] == order_name
    assert fields["status"] == "completed"


async def test_non_ascii_form_callback_verifies(
    client: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver
) -> None:
    txn_id = await new_invoice(client, order_name="Zoë's Ångström pack ×3")
    await sandbox.pay(txn_id)
    assert receiver.verified()["order_name"] == "Zoë's Ångström pack ×3"


async def test_failed_deliveries_are_recorded_not_raised(clock: Clock) -> None:
    failing = Receiver(status=500)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    for transport, code, error in (
        (httpx.ASGITransport(app=failing), 500, "HTTP 500"),
        (httpx.MockTransport(refuse), None, "ConnectError"),
    ):
        box = Sandbox(now=clock, callback_transport=transport)
        async with httpx.AsyncClient(transport=box.transport(), base_url=BASE) as http:
            txn_id = await new_invoice(http)
        result = await box.pay(txn_id)
        assert result["invoice"]["status"] == "completed"
        assert result["callback"]["status_code"] == code
        assert error in result["callback"]["error"]
        assert box.callbacks[-1].error == result["callback"]["error"]


async def test_no_callback_url_falls_back_to_the_status_url(clock: Clock, receiver: Receiver) -> None:
    transport = httpx.ASGITransport(app=receiver)
    bare = Sandbox(now=clock, callback_transport=transport)
    with_status = Sandbox(now=clock, callback_transport=transport, status_url="http://merchant.test/status")
    for box, expected in ((bare, None), (with_status, "http://merchant.test/status")):
        async with httpx.AsyncClient(transport=box.transport(), base_url=BASE) as http:
            txn_id = await new_invoice(http, callback_url="")
        result = await box.pay(txn_id)
        assert (result["callback"] or {}).get("url") == expected
    assert [call.path for call in receiver.calls] == ["/status"]


async def test_success_and_fail_callback_urls_get_the_outcome(
    client: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver
) -> None:
    urls = {
        "success_callback_url": "http://merchant.test/ok",
        "fail_callback_url": "http://merchant.test/fail",
    }
    paid = await new_invoice(client, "4", **urls)
    lost = await new_invoice(client, "5", **urls)
    assert len((await sandbox.pay(paid))["extra_callbacks"]) == 1
    assert len((await sandbox.expire(lost))["extra_callbacks"]) == 1
    assert [c.path for c in receiver.calls] == ["/plisio/callback", "/ok", "/plisio/callback", "/fail"]


async def test_creation_callback_is_optional(clock: Clock, receiver: Receiver) -> None:
    box = Sandbox(
        now=clock, callback_transport=httpx.ASGITransport(app=receiver), send_creation_callbacks=True
    )
    async with httpx.AsyncClient(transport=box.transport(), base_url=BASE) as http:
        txn_id = await new_invoice(http)
        await api(http, "invoices/new", order_number="1", order_name="Pro plan", return_existing="1")
    assert len(receiver.calls) == 1  # return_existing does not announce again
    fields = receiver.verified()
    assert fields["status"] == "new"
    assert fields["txn_id"] == txn_id
    assert fields["tx_urls"] == "null"


async def test_tick_expires_overdue_invoices_per_the_injected_clock(
    client: httpx.AsyncClient, sandbox: Sandbox, receiver: Receiver, clock: Clock
) -> None:
    txn_id = await new_invoice(client, expire_min="30")
    assert await sandbox.tick() == []
    clock.now += timedelta(minutes=31)
    expired = await sandbox.tick()
    assert [e["invoice"]["id"] for e in expired] == [txn_id]
    assert expired[0]["invoice"]["status"] == "expired"
    assert receiver.verified()["status"] == "expired"
    clock.now += timedelta(hours=11)
    later = (await client.post(f"{CONTROL}/tick")).json()["expired"]
    assert {e["invoice"]["status"] for e in later} == {"expired"}
    assert len(later) == 8  # the seeded new / pending / pending internal invoices
    assert (await api(client, "operations", status="new"))["_meta"]["totalCount"] == 0


async def test_control_endpoints_over_http(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    txn_id = await new_invoice(client)
    response = await client.post(f"{CONTROL}/invoices/{txn_id}/pay", json={"amount": "0.0001"})
    assert response.status_code == 200
    assert response.json()["invoice"]["status"] == "pending"
    assert response.json()["callback"]["status_code"] == 200
    assert (await client.post(f"{CONTROL}/invoices/{txn_id}/pay", json={"amount": "-1"})).status_code == 422
    assert (await client.post(f"{CONTROL}/invoices/{txn_id}/pay", content=b"{nope")).status_code == 422
    assert (await client.post(f"{CONTROL}/invoices/{txn_id}/refund")).status_code == 404
    assert (await client.post(f"{CONTROL}/invoices/ffffffffffffffffffffffff/expire")).status_code == 404
    assert (await client.post(f"{CONTROL}/invoices/{txn_id}/expire")).json()["invoice"]["status"] == "expired"

    logged = (await client.get(f"{CONTROL}/requests")).json()["requests"]
    assert logged[0]["path"] == "/api/v1/invoices/new"
    assert logged[0]["query"]["api_key"] == "***"
    assert SANDBOX_API_KEY not in json.dumps(logged)
    assert len((await client.get(f"{CONTROL}/customers")).json()["customers"]) == 40
    assert len((await client.get(f"{CONTROL}/callbacks")).json()["callbacks"]) == 2
    assert (await client.get(CONTROL)).json()["assumptions"]

    assert (await client.post(f"{CONTROL}/reset")).json() == {"reset": True}
    missing = await client.get(f"invoices/{txn_id}", params={"api_key": SANDBOX_API_KEY})
    assert missing.status_code == 404
    assert sandbox.requests == [sandbox.requests[0]]


async def test_end_to_end_over_loopback_sockets(clock: Clock) -> None:
    receiver = Receiver()
    with LoopbackServer(receiver) as merchant:
        box = Sandbox(now=clock)  # real network for callbacks
        async with LoopbackServer(box.app) as plisio, httpx.AsyncClient(base_url=plisio.base_url) as http:
            params = {
                "order_number": "9001",
                "order_name": "Pro plan",
                "source_amount": "25",
                "currency": "LTC",
                "api_key": SANDBOX_API_KEY,
            }
            callback = f"{merchant.base_url}/ipn?json=true"
            created = await http.get("/api/v1/invoices/new", params={**params, "callback_url": callback})
            assert created.status_code == 200
            txn_id = created.json()["data"]["txn_id"]
            paid = await http.post(f"/_sandbox/invoices/{txn_id}/pay")
            assert paid.json()["callback"] == {"url": callback, "status_code": 200, "error": None}
            listed = await http.get(
                "/api/v1/operations", params={"search": "9001", "api_key": SANDBOX_API_KEY}
            )
            assert listed.json()["data"]["operations"][0]["status"] == "completed"
    assert receiver.verified()["txn_id"] == txn_id
