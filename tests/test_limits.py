"""Limits before auth: a body's size before it is read (413), the token before the body (401), a pace on
failed tokens per address (429 with Retry-After), bounded numeric parameters (422), and a flood of forged
callbacks that grows the audit log by one record per address and minute."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI

from persona.app import Runtime
from persona.http_limits import FailedAttempts
from persona.rejections import OTHER, Rejections, Tally, kind_of
from persona.server import create_app
from persona.store.engine import Store
from tests.harness import bearer, build_runtime
from tests.test_server import client
from tools.plisio.sandbox import Sandbox

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 12, 3, 12, 0, 5, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.at = T0

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def rt(store: Store, sandbox: Sandbox, clock: Clock) -> Iterator[Runtime]:
    runtime = build_runtime(store, sandbox, now=clock)
    yield runtime
    runtime.audit.close()


@pytest.fixture
def app(rt: Runtime) -> FastAPI:
    return create_app(rt, start_worker=False)


@pytest.fixture
async def anon(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client(app) as c:
        yield c


class Streamed(httpx.AsyncByteStream):
    """A body sent without Content-Length, counting what the server pulled from it."""

    def __init__(self, chunks: int, size: int = 65_536) -> None:
        self.chunks, self.size, self.sent = chunks, size, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.chunks):
            self.sent += 1
            yield b"x" * self.size


async def test_an_unauthenticated_body_is_refused_unread(anon: httpx.AsyncClient) -> None:
    big = b'{"persona": "finance", "message": "' + b"x" * (20 * 1024 * 1024) + b'"}'
    answer = await anon.post("/v1/chat", content=big, headers={"content-type": "application/json"})
    assert answer.status_code == 413, answer.text  # declared too large: nothing read
    body = Streamed(chunks=320)
    answer = await anon.post("/v1/chat", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert body.sent <= 1, "the body was read before the token was checked"
    assert "valid API token" in answer.json()["error"]["message"]


async def test_an_authenticated_body_past_the_limit_is_413_at_the_byte(rt: Runtime, app: FastAPI) -> None:
    async with client(app, bearer(rt)) as http:
        body = Streamed(chunks=320)
        answer = await http.post("/v1/chat", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 413
        assert answer.json()["error"] == {
            "type": "payload_too_large",
            "message": "request bodies are limited to 1048576 bytes (server.max_request_bytes)",
        }
        assert body.sent <= 18, "reading stopped near the limit (1 MiB in 64 KiB chunks)"
        fine = await http.post("/v1/chat", json={"persona": "nobody", "message": "hi"})
        assert fine.status_code in (404, 422), fine.text  # a small body still reaches the route


async def test_failed_tokens_are_paced_per_address(anon: httpx.AsyncClient, rt: Runtime) -> None:
    wrong = {"authorization": "Bearer pp_not-a-real-token"}
    for _ in range(10):
        assert (await anon.get("/v1/audit", headers=wrong)).status_code == 401
    throttled = await anon.get("/v1/audit", headers=wrong)
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    assert "too many failed tokens" in throttled.json()["error"]["message"]
    good = await anon.get("/v1/audit", headers=bearer(rt))
    assert good.status_code == 429, "while throttled the token is not even looked up"


def test_the_pace_forgets_a_failure_after_a_minute_and_bounds_its_memory() -> None:
    now = [0.0]
    pace = FailedAttempts(3, clock=lambda: now[0], max_addresses=100)
    for _ in range(3):
        pace.failed("10.0.0.1")
    assert pace.retry_after("10.0.0.1") == 60
    now[0] = 59.5
    assert pace.retry_after("10.0.0.1") == 1
    now[0] = 60.0
    assert pace.retry_after("10.0.0.1") is None
    for n in range(1000):
        pace.failed(f"10.1.{n // 256}.{n % 256}")
    assert len(pace) == 100


async def test_numeric_parameters_are_bounded(rt: Runtime, app: FastAPI) -> None:
    async with client(app, bearer(rt, role="admin")) as http:
        answer = await http.get("/v1/audit", params={"after_seq": 10**30})
        assert answer.status_code == 422
        assert "less than or equal to 9223372036854775807" in answer.json()["error"]["message"]
        assert (await http.get(f"/v1/inbox/{10**12}")).status_code == 422
        spec = (await http.get("/openapi.json")).json()
    unbounded = [
        (path, p["name"])
        for path, ops in spec["paths"].items()
        for op in ops.values()
        for p in op.get("parameters", [])
        if _numeric(p["schema"]) and "maximum" not in _numeric(p["schema"])
    ]
    assert unbounded == []


def _numeric(schema: dict[str, object]) -> dict[str, object] | None:
    if schema.get("type") == "integer" or schema.get("type") == "number":
        return schema
    for option in schema.get("anyOf", []):  # type: ignore[attr-defined]
        if option.get("type") in ("integer", "number"):
            return option  # type: ignore[no-any-return]
    return None


async def test_a_flood_of_forged_callbacks_is_one_audit_record_per_address_and_minute(
    rt: Runtime, app: FastAPI, anon: httpx.AsyncClient, clock: Clock
) -> None:
    before = rt.audit.head()[0]
    tracemalloc.start()
    try:
        for n in range(300):
            forged = {"txn_id": f"T{n}", "status": "completed", "verify_hash": "0" * 40}
            assert (await anon.post("/webhooks/plisio", data=forged)).status_code == 401
            big = await anon.post("/webhooks/plisio", content=b"x" * 20_000)
            assert big.status_code == 413
        grown = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    receiver = app.state.receiver
    assert receiver.rejections.open == 1, "one address, one open tally"
    assert grown < 2_000_000, f"{grown} bytes kept after 600 refusals"
    clock.at += timedelta(minutes=1)
    await anon.post(
        "/webhooks/plisio", data={"txn_id": "late", "status": "completed", "verify_hash": "0" * 40}
    )
    await rt.audit.flush()
    after = rt.audit.head()[0]
    assert after - before == 1, "the closed minute is one record; the new one is still open"
    [record] = [r for r in _records(rt, before) if r.event == "webhook_rejected"]
    assert record.payload["count"] == 600 and record.payload["kinds"] == {
        "body too large": 300,
        "signature": 300,
    }
    assert record.payload["peer"] == "127.0.0.1" and record.payload["minute"] == "2026-12-03T12:00:00Z"
    assert record.reason is not None and record.reason.startswith("600 callback(s) refused from 127.0.0.1")
    await receiver.rejections.flush_all()
    await rt.audit.flush()
    assert rt.audit.head()[0] - before == 2


def _records(rt: Runtime, after: int) -> list[object]:
    head = rt.audit.head()[0]
    return [rt.audit.get(seq) for seq in range(after + 1, head + 1)]


async def test_tallies_past_the_address_bound_share_one() -> None:
    written: list[Tally] = []

    async def write(tally: Tally) -> None:
        written.append(tally)

    tallies = Rejections(write, max_addresses=3)
    for n in range(50):
        await tallies.add(f"198.51.100.{n}", "signature: no", 10, T0)
    assert tallies.open == 4  # three addresses and "other"
    assert await tallies.flush_due(T0) == 0, "the minute is not over"
    assert await tallies.flush_due(T0 + timedelta(minutes=1)) == 4
    other = next(t for t in written if t.peer == OTHER)
    assert other.count == 47 and other.bytes == 470
    assert kind_of("malformed body: not UTF-8") == "malformed body"
