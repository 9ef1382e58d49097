"""The callback receiver, end to end: the real app on a real loopback port, real signed callbacks.

Callbacks come from the sandbox (an invoice created with ``callback_url=<server>/webhooks/plisio``
and then expired/paid) or are signed here with ``encode_form_callback``/``encode_json_callback``.
Every storage test runs on SQLite and, when configured, PostgreSQL (the ``store`` fixture).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine

from persona.app import Runtime
from persona.audit import AuditFilter
from persona.clock import utcnow
from persona.deps import FlowDeps
from persona.drafts import DraftStore
from persona.inbox import Inbox, InboxRow
from persona.invoices import InvoiceStates
from persona.server import create_app
from persona.store.engine import Store
from persona.store.schema import prepare
from persona.worker import Worker
from tests.harness import bearer, build_runtime, repo_settings
from tests.test_callbacks import hmac_sha1
from tools.plisio.callbacks import (
    FORM_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    encode_form_callback,
    encode_json_callback,
    php_serialize,
)
from tools.plisio.models import Operation
from tools.plisio.sandbox import SANDBOX_API_KEY, LoopbackServer, Sandbox

pytestmark = pytest.mark.anyio

KEY = SANDBOX_API_KEY
OLD_KEY = "sk_previous_0123456789abcdef"


@dataclass
class FakeFlows:
    """Stands in for ``persona.flows.recovery``: records what the worker asked for."""

    failures: list[tuple[str, str | None, str]] = field(default_factory=list)
    successes: list[tuple[str, str | None]] = field(default_factory=list)

    async def handle_failure(self, deps: FlowDeps, op: Operation, *, trigger: str) -> None:
        self.failures.append((op.id, op.status, trigger))

    async def handle_success(self, deps: FlowDeps, op: Operation) -> None:
        self.successes.append((op.id, op.status))


def callback_fields(txn_id: str, status: str, **extra: str) -> dict[str, str]:
    return {
        "amount": "0.00150000", "currency": "BTC", "ipn_type": "invoice", "order_number": "ORD-1",
        "psys_cid": "BTC", "source_amount": "100.00", "source_currency": "USD", "status": status,
        "txn_id": txn_id, **extra,
    }  # fmt: skip


@pytest.fixture
def rt(store: Store, sandbox: Sandbox) -> Iterator[Runtime]:
    runtime = build_runtime(store, sandbox)
    yield runtime
    runtime.audit.close()


@pytest.fixture
async def server(rt: Runtime) -> AsyncIterator[LoopbackServer]:
    async with LoopbackServer(create_app(rt, start_worker=False)) as srv:
        yield srv


@pytest.fixture
def flows() -> FakeFlows:
    return FakeFlows()


@pytest.fixture
def worker(rt: Runtime, flows: FakeFlows) -> Worker:
    return Worker(rt.worker, handlers=flows, churn=None, schedules=False)


async def post(
    srv: LoopbackServer, body: bytes | Any, content_type: str = FORM_CONTENT_TYPE, query: str = ""
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=srv.base_url, timeout=30) as http:
        return await http.post(
            f"/webhooks/plisio{query}", content=body, headers={"Content-Type": content_type}
        )


async def new_invoice(rt: Runtime, callback_url: str, order: str = "1") -> str:
    created = await rt.plisio.client.create_invoice(
        order_number=order, order_name="Pro plan", currency="BTC", source_amount=Decimal("100"),
        callback_url=callback_url,
    )  # fmt: skip
    return created.txn_id


def rows(rt: Runtime, state: str = "all") -> list[InboxRow]:
    return Inbox(rt.store).list(state)


async def refusals(rt: Runtime, srv: LoopbackServer) -> list[Any]:
    """The ``webhook_rejected`` tallies, written now (the receiver writes an address's when its minute closes)."""
    await srv.app.state.receiver.rejections.flush_all()  # type: ignore[attr-defined]
    return events(rt, "webhook_rejected")


def events(rt: Runtime, name: str) -> list[Any]:
    rt.audit.flush_sync()  # the receiver commits its audit record just after the 200
    return rt.audit.query(AuditFilter(event=name))


# -- the sandbox's own callbacks --------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "?json=true"])
async def test_sandbox_callback_is_stored_before_the_200(
    rt: Runtime, server: LoopbackServer, sandbox: Sandbox, query: str
) -> None:
    txn_id = await new_invoice(rt, f"{server.base_url}/webhooks/plisio{query}")
    report = await sandbox.expire(txn_id)
    assert report["callback"]["status_code"] == 200
    [row] = rows(rt)
    assert (row.txn_id, row.status, row.state, row.source) == (txn_id, "expired", "pending", "callback")
    assert row.encoding == ("json" if query else "form")
    [received] = events(rt, "webhook_received")
    assert received.source == "webhook"
    assert received.payload == {
        "inbox_id": row.id, "txn_id": txn_id, "status": "expired", "encoding": row.encoding, "key": "current",
    }  # fmt: skip


# -- signatures -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["form", "json"])
async def test_altered_byte_is_401_without_a_row(rt: Runtime, server: LoopbackServer, encoding: str) -> None:
    fields = callback_fields("6a1b2c3d4e5f60718293a4b5", "expired")
    body = encode_form_callback(fields, KEY) if encoding == "form" else encode_json_callback(fields, KEY)
    altered = body.replace(b"0.0015", b"0.0016")
    assert altered != body
    ctype = FORM_CONTENT_TYPE if encoding == "form" else JSON_CONTENT_TYPE
    response = await post(server, altered, ctype)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "bad_signature"
    assert rows(rt) == []
    [rejected] = await refusals(rt, server)
    assert "does not match" in (rejected.reason or "")
    assert KEY not in rejected.model_dump_json()


@pytest.mark.parametrize(
    ("variant", "reason"),
    [("missing", "no verify_hash"), ("empty", "is empty"), ("wrong_key", "does not match")],
)
async def test_missing_empty_or_wrong_key_signature_is_401(
    rt: Runtime, server: LoopbackServer, variant: str, reason: str
) -> None:
    fields = callback_fields("6a1b2c3d4e5f60718293a4b5", "expired")
    if variant == "wrong_key":
        body = encode_form_callback(fields, "sk_somebody_else")
    else:
        body = str(
            httpx.QueryParams({**fields, **({"verify_hash": ""} if variant == "empty" else {})})
        ).encode()
    response = await post(server, body)
    assert response.status_code == 401
    assert rows(rt) == []
    [rejected] = await refusals(rt, server)
    assert reason in (rejected.reason or "")


async def test_previous_key_is_accepted_during_a_rotation(store: Store, sandbox: Sandbox) -> None:
    settings = repo_settings(PLISIO_PREVIOUS_API_KEY=OLD_KEY)
    rt = build_runtime(store, sandbox, settings=settings)
    body = encode_json_callback(callback_fields("6a1b2c3d4e5f60718293a4b5", "expired"), OLD_KEY)
    async with LoopbackServer(create_app(rt, start_worker=False)) as srv:
        response = await post(srv, body, JSON_CONTENT_TYPE, "?json=true")
    assert response.status_code == 200
    [received] = events(rt, "webhook_received")
    assert received.payload["key"] == "previous"
    rt.audit.close()


async def test_previous_key_is_refused_when_not_configured(rt: Runtime, server: LoopbackServer) -> None:
    body = encode_json_callback(callback_fields("6a1b2c3d4e5f60718293a4b5", "expired"), OLD_KEY)
    response = await post(server, body, JSON_CONTENT_TYPE, "?json=true")
    assert response.status_code == 401
    assert rows(rt) == []


async def test_secrets_source_is_injectable(rt: Runtime) -> None:
    """The vault will supply current + previous keys itself: any callable will do."""
    body = encode_form_callback(callback_fields("6a1b2c3d4e5f60718293a4b5", "expired"), "sk_from_vault")
    async with LoopbackServer(create_app(rt, start_worker=False, secrets=lambda: ["sk_from_vault"])) as srv:
        assert (await post(srv, body)).status_code == 200
        legacy = encode_form_callback(callback_fields("6a1b2c3d4e5f60718293a4b6", "expired"), KEY)
        assert (await post(srv, legacy)).status_code == 401


# -- size, type, shape ------------------------------------------------------------------------------------


async def test_oversized_body_is_413_whether_declared_or_streamed(
    rt: Runtime, server: LoopbackServer
) -> None:
    limit = rt.settings.server.max_body_bytes
    fields = callback_fields("6a1b2c3d4e5f60718293a4b5", "expired", order_name="x" * limit)
    body = encode_form_callback(fields, KEY)
    assert (await post(server, body)).status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while reading
        for start in range(0, len(body), 1024):
            yield body[start : start + 1024]

    response = await post(server, chunks())
    assert response.status_code == 413
    assert rows(rt) == []
    [tally] = await refusals(rt, server)  # one record per address and minute
    assert (tally.payload["count"], tally.payload["kinds"]) == (2, {"body too large": 2})
    assert tally.reason.startswith(
        "2 callback(s) refused from 127.0.0.1 in the minute (first: body too large)"
    )


def multipart(fields: dict[str, str], boundary: str = "----plisio7d1b") -> tuple[bytes, str]:
    """The body PHP's curl sends for an array of POST fields."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in fields.items()
    ]
    return ("".join(parts) + f"--{boundary}--\r\n").encode(), f"multipart/form-data; boundary={boundary}"


def signed_form(fields: dict[str, str]) -> dict[str, str]:
    return dict(httpx.QueryParams(encode_form_callback(fields, KEY).decode()))


@pytest.mark.parametrize(
    ("encoding", "ctype", "query"),
    [
        ("json", FORM_CONTENT_TYPE, ""),  # JSON labelled as a form
        ("json", "text/plain", ""),
        ("json", "text/plain", "?json=true"),
        ("json", FORM_CONTENT_TYPE, "?json=true"),
        ("json", "", "?json=true"),
        ("form", "text/plain", ""),
        ("form", "", ""),
        ("form", JSON_CONTENT_TYPE, ""),  # a form labelled as JSON: the body says which it is
        ("multipart", "", ""),
    ],
)
async def test_a_callback_is_read_however_it_is_labelled(
    rt: Runtime, server: LoopbackServer, encoding: str, ctype: str, query: str
) -> None:
    """Plisio does not document its Content-Type: ``?json=true`` first, then the body decides."""
    fields = callback_fields("6a1b2c3d4e5f60718293a4b5", "expired")
    if encoding == "multipart":
        body, ctype = multipart(signed_form(fields))
    else:
        body = encode_json_callback(fields, KEY) if encoding == "json" else encode_form_callback(fields, KEY)
    response = await post(server, body, ctype, query)
    assert response.status_code == 200, response.text
    [row] = rows(rt)
    assert row.txn_id == "6a1b2c3d4e5f60718293a4b5"
    [received] = events(rt, "webhook_received")
    assert received.payload["encoding"] == ("json" if encoding == "json" else "form")


async def test_json_true_with_a_form_body_says_why_it_is_refused(rt: Runtime, server: LoopbackServer) -> None:
    body = encode_form_callback(callback_fields("6a1b2c3d4e5f60718293a4b5", "expired"), KEY)
    response = await post(server, body, FORM_CONTENT_TYPE, "?json=true")
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(
        "the body is not a Plisio callback: callback body is not JSON: Expecting value at offset 0"
    )
    assert rows(rt) == []


async def test_a_refused_signature_says_which_check_failed(rt: Runtime, server: LoopbackServer) -> None:
    body = encode_form_callback(callback_fields("6a1b2c3d4e5f60718293a4b5", "expired"), "sk_somebody_else")
    response = await post(server, body)
    assert response.status_code == 401
    message = response.json()["error"]["message"]
    assert message == "the callback's signature does not hold: verify_hash does not match"
    assert KEY not in message


@pytest.mark.parametrize("shape", ["form", "multipart"])
async def test_nested_form_keys_are_verified_as_php_builds_them(
    rt: Runtime, server: LoopbackServer, shape: str
) -> None:
    """``params[order_number]=...`` (what PHP's receiver accepts) is signed over PHP's nested array."""
    fields = {**callback_fields("6a1b2c3d4e5f60718293a4b5", "expired"), "params[order_number]": "123",
              "params[items][]": "seat", "params[items][ ]": "desk"}  # fmt: skip
    post_array = {k: v for k, v in fields.items() if not k.startswith("params")}
    post_array["params"] = {
        "order_number": "123",
        "items": {0: "seat", 1: "desk"},
    }  # "[ ]" appends, as in PHP  # type: ignore[assignment]
    signature = hmac_sha1(KEY, php_serialize(post_array))  # type: ignore[arg-type]
    signed = {**fields, "verify_hash": signature}
    if shape == "multipart":
        body, ctype = multipart(signed)
    else:
        body, ctype = str(httpx.QueryParams(signed)).encode(), FORM_CONTENT_TYPE
    response = await post(server, body, ctype)
    assert response.status_code == 200, response.text
    [row] = rows(rt)
    assert json.loads(row.fields["params"]) == {"order_number": "123", "items": {"0": "seat", "1": "desk"}}


async def test_an_empty_body_is_400_with_its_reason(rt: Runtime, server: LoopbackServer) -> None:
    response = await post(server, b"", FORM_CONTENT_TYPE)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "the body is not a Plisio callback: form body has no fields"


@pytest.mark.parametrize(
    ("body", "ctype"),
    [(b"{not json", JSON_CONTENT_TYPE), (b"[1, 2]", JSON_CONTENT_TYPE), (b"\xff\xfe=1", FORM_CONTENT_TYPE)],
)
async def test_unparsable_body_is_400_without_a_row(
    rt: Runtime, server: LoopbackServer, body: bytes, ctype: str
) -> None:
    response = await post(server, body, ctype)
    assert response.status_code == 400
    assert rows(rt) == []
    [rejected] = await refusals(rt, server)
    assert "(first: malformed body" in (rejected.reason or "")
    assert rejected.payload["kinds"] == {"malformed body": 1}


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"status": "expired", "amount": "1"}, "no txn_id"),
        (callback_fields("6a1b2c3d4e5f60718293a4b5", "111"), "unknown status '111'"),
        (
            callback_fields("6a1b2c3d4e5f60718293a4b5", "expired", amount="lots"),
            "amount 'lots' is not a number",
        ),
    ],
)
async def test_signed_but_unusable_is_poison_and_acknowledged(
    rt: Runtime, server: LoopbackServer, worker: Worker, flows: FakeFlows, fields: dict[str, str], error: str
) -> None:
    response = await post(server, encode_form_callback(fields, KEY))
    assert response.status_code == 200
    assert response.json()["state"] == "poison"
    [row] = rows(rt, "poison")
    assert error in (row.error or "")
    assert await worker.drain() == []  # never claimed
    assert flows.failures == []
    async with httpx.AsyncClient(base_url=server.base_url, headers=bearer(rt)) as http:
        listed = (await http.get("/v1/inbox", params={"state": "poison"})).json()
    assert [r["id"] for r in listed["rows"]] == [row.id]
    assert events(rt, "webhook_poison")[0].reason == row.error


# -- duplicates, order, replay ----------------------------------------------------------------------------


async def test_duplicate_sequential_is_acknowledged_once(
    rt: Runtime, server: LoopbackServer, worker: Worker, flows: FakeFlows, sandbox: Sandbox
) -> None:
    txn_id = await new_invoice(rt, f"{server.base_url}/webhooks/plisio")
    await sandbox.expire(txn_id)
    body = encode_form_callback(callback_fields(txn_id, "expired"), KEY)
    second = await post(server, body)  # other bytes, same txn_id + status
    third = await post(server, body)  # same bytes
    assert [second.status_code, third.status_code] == [200, 200]
    assert second.json()["duplicate"] and third.json()["duplicate"]
    assert len(rows(rt)) == 1
    assert len(events(rt, "webhook_duplicate")) == 2
    await worker.drain()
    assert flows.failures == [(txn_id, "expired", "webhook")]


async def test_twenty_concurrent_duplicates_make_one_row_and_one_draft(
    rt: Runtime, server: LoopbackServer, sandbox: Sandbox
) -> None:
    txn_id = await new_invoice(rt, "http://127.0.0.1:9/nowhere")  # its own callback goes nowhere
    await sandbox.expire(txn_id)
    body = encode_form_callback(callback_fields(txn_id, "expired"), KEY)
    answers = await asyncio.gather(*(post(server, body) for _ in range(20)))
    assert [a.status_code for a in answers] == [200] * 20
    assert sum(not a.json()["duplicate"] for a in answers) == 1
    assert len(rows(rt)) == 1
    real = Worker(rt.worker, churn=None, schedules=False)  # the real recovery flow
    processed = await real.drain()
    assert [(p.outcome, p.action) for p in processed] == [("done", "recovery")]
    assert len(DraftStore(rt.store).for_invoice(txn_id)) == 1
    assert (await post(server, body)).json()["duplicate"]
    assert await real.drain() == []
    assert len(DraftStore(rt.store).for_invoice(txn_id)) == 1


async def test_late_pending_after_completed_stays_completed(
    rt: Runtime, server: LoopbackServer, worker: Worker, flows: FakeFlows
) -> None:
    txn_id = "6a1b2c3d4e5f60718293a4b5"
    assert (
        await post(server, encode_form_callback(callback_fields(txn_id, "completed"), KEY))
    ).status_code == 200
    await worker.drain()
    late = encode_json_callback(callback_fields(txn_id, "pending", confirmations="1"), KEY)
    assert (await post(server, late, JSON_CONTENT_TYPE, "?json=true")).status_code == 200
    [processed] = await worker.drain()
    assert processed.action == "stale"
    assert InvoiceStates(rt.store).get(txn_id) == "completed"
    assert flows.successes == [(txn_id, "completed")]


async def test_replayed_old_callback_is_acknowledged_and_does_nothing(
    rt: Runtime, server: LoopbackServer, worker: Worker, flows: FakeFlows, sandbox: Sandbox
) -> None:
    txn_id = await new_invoice(rt, f"{server.base_url}/webhooks/plisio?json=true")
    await sandbox.expire(txn_id)
    await worker.drain()
    assert flows.failures == [(txn_id, "expired", "webhook")]
    [delivered] = rows(rt)
    original = encode_json_callback(callback_fields(txn_id, "expired"), KEY)
    for _ in range(2):
        response = await post(server, original, JSON_CONTENT_TYPE, "?json=true")
        assert (response.status_code, response.json()["duplicate"], response.json()["state"]) == (
            200,
            True,
            "done",
        )
    assert await worker.drain() == []
    assert flows.failures == [(txn_id, "expired", "webhook")]
    assert [r.id for r in rows(rt)] == [delivered.id]


# -- the store is down ----------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_store_unavailable_is_503_so_plisio_retries(
    store: Store, sandbox: Sandbox, tmp_path: Path
) -> None:
    if store.dialect == "sqlite":  # the database's directory vanishes under a running server
        broken = Store.open(f"sqlite:///{tmp_path / 'gone' / 'db.sqlite3'}")
        prepare(broken, now=utcnow)
        broken.engine.dispose()
        shutil.rmtree(tmp_path / "gone")
    else:  # PostgreSQL on a port where nothing listens
        url = f"postgresql+psycopg://persona@127.0.0.1:{_closed_port()}/persona"
        engine = create_engine(url, connect_args={"connect_timeout": 2})
        broken = Store(engine, dialect="postgresql", masked_url=url, password=None)
    rt = build_runtime(store, sandbox)
    body = encode_form_callback(callback_fields("6a1b2c3d4e5f60718293a4b5", "expired"), KEY)
    async with LoopbackServer(create_app(dataclasses.replace(rt, store=broken), start_worker=False)) as srv:
        response = await post(srv, body)
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "store_unavailable"
        assert "sqlite" not in response.text and "postgresql" not in response.text
        async with httpx.AsyncClient(base_url=srv.base_url) as http:
            assert (await http.get("/healthz")).status_code == 200  # alive: restarting would not help
            assert (await http.get("/readyz")).status_code == 503  # not ready: send no traffic here
    async with LoopbackServer(create_app(rt, start_worker=False)) as srv:
        assert (await post(srv, body)).status_code == 200  # Plisio's retry lands once the store is back
    rt.audit.close()
    broken.close()
