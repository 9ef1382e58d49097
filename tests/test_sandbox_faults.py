"""Fault injection and the request log, in-process and over a real loopback socket."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from tools.plisio.sandbox import SANDBOX_API_KEY, FaultRule, LoopbackServer, Sandbox

pytestmark = pytest.mark.anyio
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
BASE = "http://sandbox.test/api/v1"
CONTROL = "http://sandbox.test/_sandbox"
KEY = {"api_key": SANDBOX_API_KEY}
ORDER = {"order_name": "Pro plan", "currency": "BTC", "source_amount": "30", **KEY}


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


async def test_latency_then_normal_answer(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    sandbox.faults.add(FaultRule(path="/api/v1/shops", kind="latency", latency_ms=150))
    started = time.monotonic()
    response = await client.get("shops", params=KEY)
    assert time.monotonic() - started >= 0.15
    assert response.status_code == 200
    assert response.json()["status"] == "success"


async def test_error_status_rate_limit_and_html_are_not_processed(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    sandbox.faults.add(FaultRule(path="/api/v1/invoices/new", kind="error_status", status=500))
    sandbox.faults.add(FaultRule(path="/api/v1/invoices/new", kind="rate_limit", retry_after=7))
    sandbox.faults.add(FaultRule(path="/api/v1/invoices/new", kind="html"))

    failed = await client.get("invoices/new", params={"order_number": "101", **ORDER})
    assert failed.status_code == 500
    assert failed.json() == {
        "status": "error",
        "data": {"name": "Internal Server Error", "message": "An internal server error occurred.", "code": 0},
    }
    limited = await client.get("invoices/new", params={"order_number": "102", **ORDER})
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "7"
    assert limited.json()["data"] == {
        "name": "Too Many Requests",
        "message": "Rate limit exceeded.",
        "code": 0,
    }
    page = await client.get("invoices/new", params={"order_number": "103", **ORDER})
    assert page.status_code == 502
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>502 Bad Gateway</title>" in page.text
    assert "nginx" in page.text

    assert all(sandbox.state.by_order_number(n) is None for n in ("101", "102", "103"))
    assert [(r.status, r.fault) for r in sandbox.requests] == [
        (500, "error_status"),
        (429, "rate_limit"),
        (502, "html"),
    ]


async def test_truncated_and_empty_bodies_commit_the_request(
    client: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    sandbox.faults.add(FaultRule(path="/api/v1/invoices/*", kind="truncated"))
    sandbox.faults.add(FaultRule(path="/api/v1/invoices/*", kind="empty"))
    cut = await client.get("invoices/new", params={"order_number": "201", **ORDER})
    assert cut.status_code == 200
    assert cut.headers["content-length"] == str(len(cut.content))
    assert cut.text.startswith('{"status":"success"')
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.content)
    empty = await client.get("invoices/new", params={"order_number": "202", **ORDER})
    assert empty.status_code == 200
    assert empty.content == b""
    assert sandbox.state.by_order_number("201") is not None
    assert sandbox.state.by_order_number("202") is not None


async def test_drop_after_commit_in_process(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    """ASGITransport re-raises the app's exception: a RemoteProtocolError subclass, as over TCP."""
    sandbox.faults.add(FaultRule(path="/api/v1/invoices/new", kind="drop_after_commit"))
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get("invoices/new", params={"order_number": "301", **ORDER})
    invoice = sandbox.state.by_order_number("301")
    assert invoice is not None
    assert invoice.status == "new"
    retry = await client.get("invoices/new", params={"order_number": "301", "return_existing": "1", **ORDER})
    assert retry.json()["data"]["txn_id"] == invoice.id
    assert [r.fault for r in sandbox.requests] == ["drop_after_commit", None]


async def test_drop_after_commit_over_a_real_socket(sandbox: Sandbox) -> None:
    sandbox.faults.add(FaultRule(path="/api/v1/invoices/new", kind="drop_after_commit"))
    async with LoopbackServer(sandbox.app) as server, httpx.AsyncClient(base_url=server.base_url) as http:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await http.get("/api/v1/invoices/new", params={"order_number": "930200000302", **ORDER})
        assert (
            sandbox.state.by_order_number("930200000302") is not None
        )  # committed although the client saw nothing
        listed = await http.get("/api/v1/operations", params={"search": "930200000302", **KEY})
        assert listed.json()["data"]["_meta"]["totalCount"] == 1
        sandbox.faults.add(FaultRule(path="/api/v1/balances/*", kind="rate_limit", retry_after=3))
        limited = await http.get("/api/v1/balances/BTC", params=KEY)
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == "3"
        assert (await http.get("/api/v1/balances/BTC", params=KEY)).status_code == 200


async def test_rules_match_by_glob_and_are_consumed(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    sandbox.faults.add(FaultRule(path="/api/v1/balances/*", kind="error_status", times=2))
    assert (await client.get("shops", params=KEY)).status_code == 200  # not matched, not consumed
    assert [(await client.get("balances/BTC", params=KEY)).status_code for _ in range(3)] == [503, 503, 200]
    assert sandbox.faults.rules == []


async def test_faults_over_the_control_api(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    rule = {"path": "*", "kind": "empty", "times": 5}
    created = await client.post(f"{CONTROL}/faults", json=rule)
    assert created.status_code == 201
    assert created.json()["rules"][0]["remaining"] == 5
    listed = await client.get(f"{CONTROL}/faults")  # control paths are never faulted
    assert listed.status_code == 200
    assert listed.json()["rules"][0]["kind"] == "empty"
    assert (await client.get("shops", params=KEY)).content == b""
    assert (await client.delete(f"{CONTROL}/faults")).json() == {"cleared": 1}
    assert (await client.get("shops", params=KEY)).json()["status"] == "success"
    bad = await client.post(f"{CONTROL}/faults", json={"path": "/x", "kind": "explode"})
    assert bad.status_code == 422
    assert bad.json()["details"]


async def test_request_log_counts_and_scrubs(client: httpx.AsyncClient, sandbox: Sandbox) -> None:
    for number in ("401", "402"):
        await client.get("invoices/new", params={"order_number": number, **ORDER})
    await client.get("shops", params=KEY)
    await client.get(f"{CONTROL}/requests")
    assert [r.path for r in sandbox.requests].count("/api/v1/invoices/new") == 2
    assert len(sandbox.requests) == 3  # control calls are not logged
    first = sandbox.requests[0]
    assert (first.method, first.status, first.fault) == ("GET", 200, None)
    assert first.query["api_key"] == "***"
    assert first.query["order_number"] == "401"
    logged = (await client.get(f"{CONTROL}/requests")).json()["requests"]
    assert SANDBOX_API_KEY not in json.dumps(logged)
    assert (await client.delete(f"{CONTROL}/requests")).json() == {"cleared": 3}
    assert sandbox.requests == []


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_uvicorn_access_log_never_shows_the_key(sandbox: Sandbox) -> None:
    with LoopbackServer(sandbox.app):  # installs the log filters (uvicorn's loggers do not propagate)
        pass
    logger, keep = logging.getLogger("uvicorn.access"), _Keep()
    logger.addHandler(keep)
    try:
        path = f"/api/v1/shops?api_key={SANDBOX_API_KEY}&page=2"
        logger.warning('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", path, "1.1", 200)
    finally:
        logger.removeHandler(keep)
    assert keep.lines == ['127.0.0.1:1 - "GET /api/v1/shops?api_key=***&page=2 HTTP/1.1" 200']
