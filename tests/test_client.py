"""The Plisio client against scripted fake transports: envelopes, typed errors, retries, secrecy."""

from __future__ import annotations

import json
import logging
import random
import socket
from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest

from tests.conftest import FakeClock
from tools.errors import (
    PlisioApiError,
    PlisioDeadlineExceeded,
    PlisioOutcomeUnknown,
    PlisioProtocolError,
    PlisioRateLimited,
    PlisioTransportError,
)
from tools.plisio.client import PlisioClient, RetryPolicy

pytestmark = pytest.mark.anyio

KEY = "sk_live_TESTKEY_5b9d0c7e3f1a"


class ScriptedTransport(httpx.AsyncBaseTransport):
    """Answers each request with the next scripted step (a response or an exception to raise)."""

    def __init__(
        self, *steps: httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]
    ) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.steps:
            raise AssertionError(f"unexpected extra request to {request.url.path}")
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        if callable(step) and not isinstance(step, httpx.Response):
            return step(request)
        return step


def ok(data: object, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json={"status": "success", "data": data})


def err(
    status: int, code: int, message: str, name: str = "Unprocessable entity", **headers: str
) -> httpx.Response:
    body = {"status": "error", "data": {"name": name, "message": message, "code": code}}
    return httpx.Response(status, json=body, headers=headers)


def client_for(transport: httpx.AsyncBaseTransport, clock: FakeClock, **retry: float) -> PlisioClient:
    return PlisioClient(
        KEY,
        base_url="https://api.plisio.test/api/v1",
        transport=transport,
        clock=clock,
        wall_clock=clock,
        sleep=clock.sleep,
        rng=random.Random(3),
        retry=RetryPolicy(**retry),  # type: ignore[arg-type]
    )


async def test_success_envelope_amounts_are_decimal_and_unknown_fields_kept(clock: FakeClock) -> None:
    t = ScriptedTransport(ok({"psys_cid": "BTC", "currency": "BTC", "balance": "0.00110995", "vault": "x1"}))
    async with client_for(t, clock) as c:
        bal = await c.get_balance("BTC")
    assert bal.balance == Decimal("0.00110995") and isinstance(bal.balance, Decimal)
    assert bal.extra_fields() == {"vault": "x1"}
    req = t.requests[0]
    assert req.method == "GET" and req.url.path == "/api/v1/balances/BTC"
    assert req.url.params["api_key"] == KEY


async def test_json_numbers_are_read_as_decimal_not_float(clock: FakeClock) -> None:
    body = b'{"status":"success","data":{"normal":{"conf_target":0,"value":0.000222}}}'
    t = ScriptedTransport(httpx.Response(200, content=body, headers={"content-type": "application/json"}))
    async with client_for(t, clock) as c:
        plans = await c.get_fee_plans("BTC")
    assert plans["normal"].value == Decimal("0.000222")


async def test_error_envelope_with_json_in_message_is_decoded(clock: FakeClock) -> None:
    t = ScriptedTransport(err(422, 116, '{"balance":"Insufficient funds on balance"}'))
    async with client_for(t, clock) as c:
        with pytest.raises(PlisioApiError) as info:
            await c.estimate_fee("BTC", addresses=["bc1qexample0000000000000000"], amounts=[Decimal("5")])
    e = info.value
    assert (e.code, e.http_status, e.name) == (116, 422, "Unprocessable entity")
    assert e.field_errors == {"balance": "Insufficient funds on balance"}
    assert "Insufficient funds" in str(e) and "/operations/fee/{psys_cid}" in str(e)
    assert len(t.requests) == 1, "a 422 is final, never retried"


async def test_http_200_with_error_status_is_an_error(clock: FakeClock) -> None:
    t = ScriptedTransport(err(200, 105, 'Unsupported currency attribute value: {"currency":"BTCX"}'))
    async with client_for(t, clock) as c:
        with pytest.raises(PlisioApiError) as info:
            await c.get_balance("BTCX")
    assert info.value.code == 105 and info.value.http_status == 200


@pytest.mark.parametrize(
    ("response", "needle"),
    [
        (httpx.Response(200, content=b""), "empty body"),
        (
            httpx.Response(
                200,
                content=b"<html><title>502 Bad Gateway</title></html>",
                headers={"content-type": "text/html"},
            ),
            "HTML page instead of JSON (HTTP 200): '502 Bad Gateway'",
        ),
        (httpx.Response(200, content=b'{"status":"success","data":{"bal'), "truncated or invalid JSON"),
        (httpx.Response(200, json=[1, 2]), "not its {status, data} envelope"),
        (
            httpx.Response(200, json={"status": "success", "data": {"currency": "BTC"}}),
            "unexpected answer shape",
        ),
    ],
)
async def test_protocol_errors_have_clear_messages(
    clock: FakeClock, response: httpx.Response, needle: str
) -> None:
    async with client_for(ScriptedTransport(response), clock) as c:
        with pytest.raises(PlisioProtocolError) as info:
            await c.get_balance("BTC")
    assert needle in str(info.value)


async def test_reads_retry_5xx_with_capped_backoff_then_succeed(clock: FakeClock) -> None:
    t = ScriptedTransport(
        httpx.Response(503, text="busy"),
        httpx.Response(502, content=b"<html><h1>502</h1></html>", headers={"content-type": "text/html"}),
        err(504, 504, "gateway timeout", name="Gateway Timeout"),
        ok({"name": "Shop"}),
    )
    async with client_for(t, clock, base_delay=1.0, max_delay=2.0) as c:
        shop = await c.get_shop()
    assert shop.name == "Shop" and len(t.requests) == 4
    assert len(clock.sleeps) == 3
    caps = [1.0, 2.0, 2.0]  # exponential, capped at max_delay
    for slept, cap in zip(clock.sleeps, caps, strict=True):
        assert cap / 2 <= slept <= cap


async def test_retry_after_is_honoured(clock: FakeClock) -> None:
    t = ScriptedTransport(
        err(429, 429, "Rate limit exceeded.", name="Too Many Requests", **{"Retry-After": "7"}), ok([])
    )
    async with client_for(t, clock) as c:
        assert await c.get_currencies() == []
    assert clock.sleeps == [7.0]


async def test_retry_after_beyond_the_deadline_gives_up_without_sleeping(clock: FakeClock) -> None:
    t = ScriptedTransport(err(429, 429, "Rate limit exceeded.", **{"Retry-After": "120"}))
    async with client_for(t, clock, deadline=30) as c:
        with pytest.raises(PlisioDeadlineExceeded, match="30s deadline"):
            await c.get_shop()
    assert clock.sleeps == [] and len(t.requests) == 1


async def test_attempts_are_bounded(clock: FakeClock) -> None:
    t = ScriptedTransport(*[httpx.Response(503, text="x") for _ in range(3)])
    async with client_for(t, clock, max_attempts=3) as c:
        with pytest.raises(PlisioProtocolError):
            await c.get_shop()
    assert len(t.requests) == 3


async def test_rate_limited_error_is_typed_when_not_retried(clock: FakeClock) -> None:
    t = ScriptedTransport(err(429, 429, "Rate limit exceeded.", **{"Retry-After": "3"}))
    async with client_for(t, clock) as c:
        with pytest.raises(PlisioRateLimited) as info:
            await c.create_invoice(order_number="1", order_name="x", currency="BTC", amount=Decimal("0.1"))
    assert info.value.retry_after == 3.0 and len(t.requests) == 1


async def test_reads_retry_timeouts_and_dropped_connections(clock: FakeClock) -> None:
    t = ScriptedTransport(
        httpx.ReadTimeout("read timed out"), httpx.RemoteProtocolError("peer closed"), ok({"name": "S"})
    )
    async with client_for(t, clock) as c:
        assert (await c.get_shop()).name == "S"
    assert len(t.requests) == 3


async def test_create_invoice_is_retried_only_in_the_connect_phase(clock: FakeClock) -> None:
    t = ScriptedTransport(
        httpx.ConnectError("connection refused"), ok({"txn_id": "abc123def456", "invoice_url": "u"}),
        ok({"id": "abc123def456", "type": "invoice", "status": "new",
            "params": {"order_number": "1", "source_amount": "10", "source_currency": "USD"}}),
    )  # fmt: skip
    async with client_for(t, clock) as c:
        inv = await c.create_invoice(
            order_number="1", order_name="x", source_currency="USD", source_amount=Decimal("10")
        )
    assert inv.txn_id == "abc123def456" and len(t.requests) == 3, "two sends (one never left), one read-back"
    assert t.requests[0].url.params["return_existing"] == "1"
    assert t.requests[2].url.path.endswith("/operations/abc123def456")


@pytest.mark.parametrize(
    "failure",
    [httpx.ReadTimeout("timed out"), httpx.RemoteProtocolError("peer closed"), httpx.ReadError("reset")],
)
async def test_create_invoice_is_never_resent_after_it_left(clock: FakeClock, failure: Exception) -> None:
    t = ScriptedTransport(failure)
    async with client_for(t, clock) as c:
        with pytest.raises(PlisioOutcomeUnknown, match="not re-sent"):
            await c.create_invoice(order_number="1", order_name="x", currency="BTC", amount=Decimal("0.1"))
    assert len(t.requests) == 1


async def test_create_invoice_is_not_retried_on_5xx_and_its_outcome_is_unknown(clock: FakeClock) -> None:
    t = ScriptedTransport(httpx.Response(503, text="x"))
    async with client_for(t, clock) as c:
        with pytest.raises(PlisioOutcomeUnknown, match="HTTP 503"):
            await c.create_invoice(order_number="1", order_name="x", currency="BTC", amount=Decimal("0.1"))
    assert len(t.requests) == 1


async def test_amounts_are_sent_as_plain_decimal_strings(clock: FakeClock) -> None:
    t = ScriptedTransport(ok({"fee": "0.0001", "plan": "normal"}))
    async with client_for(t, clock) as c:
        await c.estimate_fee(
            "BTC", addresses=["a" * 30, "b" * 30], amounts=[Decimal("1E-8"), Decimal("2.50")]
        )
    params = t.requests[0].url.params
    assert params["amounts"] == "0.00000001,2.5"
    assert params["addresses"] == "a" * 30 + "," + "b" * 30


async def test_path_identifiers_cannot_escape_the_route(clock: FakeClock) -> None:
    async with client_for(ScriptedTransport(), clock) as c:
        with pytest.raises(ValueError, match="not a valid Plisio identifier"):
            await c.get_invoice("../operations/withdraw")


async def test_key_is_scrubbed_from_answers_logs_reprs_and_errors(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    leaky = {
        "operations": [],
        "_links": {"self": {"href": f"https://api.plisio.net/api/v1/operations?api_key={KEY}&page=1"}},
        "_meta": {"totalCount": 0, "pageCount": 0, "currentPage": 1, "perPage": 20},
    }
    t = ScriptedTransport(ok(leaky), err(422, 1, f"bad key {KEY}"))
    caplog.set_level(logging.DEBUG)
    async with client_for(t, clock) as c:
        page = await c.list_operations()
        with pytest.raises(PlisioApiError) as info:
            await c.get_shop()
        assert KEY not in repr(c)
    assert KEY not in json.dumps(page.model_dump(mode="json", by_alias=True))
    assert KEY not in str(info.value) and KEY not in repr(info.value.to_dict())
    assert any("HTTP Request" in r.getMessage() for r in caplog.records), "httpx's URL log line was captured"
    assert all(KEY not in r.getMessage() for r in caplog.records)
    assert "api_key=***" in caplog.text


async def test_unreachable_plisio_names_the_host_not_the_key(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    caplog.set_level(logging.DEBUG)
    client = PlisioClient(
        KEY,
        base_url=f"http://127.0.0.1:{port}/api/v1",
        clock=clock,
        sleep=clock.sleep,
        retry=RetryPolicy(max_attempts=2),
    )
    async with client:
        with pytest.raises(PlisioTransportError) as info:
            await client.get_shop()
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message and "cannot connect" in message
    assert KEY not in message and KEY not in caplog.text
    assert info.value.__cause__ is None and info.value.__suppress_context__
