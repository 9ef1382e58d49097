"""The HTTP API around a test runtime: chat, audit, drafts, refunds, inbox, health, errors, lifespan."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from persona.app import Runtime
from persona.errors import (
    ConfigError,
    Conflict,
    Forbidden,
    NotConfigured,
    NotFound,
    StoreUnavailable,
)
from persona.llm import ChatModel, ScriptedChatModel
from persona.models import Models as RuntimeModels
from persona.server import create_app
from persona.store.engine import Store
from persona.worker import Worker
from tests.harness import REPO, bearer, build_runtime, call, config_text, say, step
from tests.test_webhooks import FakeFlows, callback_fields
from tests.test_worker_kill import cli
from tools.errors import PlisioTransportError
from tools.plisio.callbacks import encode_form_callback
from tools.plisio.sandbox import SANDBOX_API_KEY, Sandbox

pytestmark = pytest.mark.anyio


class Models:
    """A model factory handing out scripted models in order, and keeping them for assertions."""

    def __init__(self, *scripts: list[Any]) -> None:
        self.scripts = list(scripts)
        self.made: list[ScriptedChatModel] = []

    def __call__(self, flow: str, persona: str, facts: Mapping[str, Any]) -> ChatModel:
        model = ScriptedChatModel(self.scripts.pop(0), name="scripted-test")
        self.made.append(model)
        return model


@pytest.fixture
def rt(store: Store, sandbox: Sandbox) -> Iterator[Runtime]:
    runtime = build_runtime(store, sandbox)
    yield runtime
    runtime.audit.close()


def client(app: FastAPI, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://persona.test", headers=headers
    )


@pytest.fixture
async def http(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with client(create_app(rt, start_worker=False), bearer(rt)) as c:
        yield c


async def test_health_and_openapi_docs(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    assert (await http.get("/docs")).status_code == 200
    paths = (await http.get("/openapi.json")).json()["paths"]
    assert {"/webhooks/plisio", "/v1/chat", "/v1/audit", "/v1/drafts", "/v1/refund-requests", "/healthz",
            "/v1/inbox"} <= set(paths)  # fmt: skip


async def test_chat_turns_keep_their_conversation_and_report_tool_calls(rt: Runtime) -> None:
    models = Models(
        [step(call("plisio_get_balance", {"psys_cid": "BTC"})), say("You hold some BTC.")],
        [say("Still the same balance.")],
    )
    app = create_app(dataclasses.replace(rt, models=RuntimeModels(rt.settings, models)), start_worker=False)
    async with client(app, bearer(rt)) as http:
        first = await http.post("/v1/chat", json={"persona": "finance", "message": "What is my BTC balance?"})
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["text"] == "You hold some BTC."
        assert body["stopped_by"] is None and body["flags"] == []
        [tool] = body["tool_calls"]
        assert (tool["tool"], tool["outcome"]) == ("plisio_get_balance", "succeeded")
        assert set(body["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
        conversation = body["conversation_id"]
        second = await http.post("/v1/chat", json={"persona": "finance", "message": "And now?",
                                                   "conversation_id": conversation})  # fmt: skip
        assert second.json()["conversation_id"] == conversation
        seen = [m.get("content") for m in models.made[1].calls[0].messages]
        assert "What is my BTC balance?" in seen and "You hold some BTC." in seen
        stolen = await http.post("/v1/chat", json={"persona": "finance", "message": "hi",
                                                   "conversation_id": conversation},
                                 headers=bearer(rt, "mallory@example.com"))  # fmt: skip
        assert stolen.status_code == 403 and stolen.json()["error"]["type"] == "forbidden"
        audit = await http.get("/v1/audit", params={"conversation_id": conversation, "event": "turn_ended"})
        records = audit.json()["records"]
        assert [r["source"] for r in records] == ["http", "http"]
        assert all(r["conversation_id"] == conversation for r in records)
        assert {r["user"] for r in records} == {"alice@example.com"}  # from the token, never the body


async def test_chat_without_an_llm_is_503_with_the_fix(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/chat", json={"persona": "finance", "message": "hi"})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["type"] == "not_configured" and "llm.base_url" in error["message"]


async def test_chat_unknown_persona_and_bad_body(http: httpx.AsyncClient) -> None:
    unknown = await http.post("/v1/chat", json={"persona": "nobody", "message": "hi"})
    assert unknown.status_code == 404 and "no persona named 'nobody'" in unknown.json()["error"]["message"]
    flow_only = await http.post("/v1/chat", json={"persona": "recovery", "message": "hi"})
    assert (
        flow_only.status_code == 422
        and "chat with one of: finance, growth" in flow_only.json()["error"]["message"]
    )
    invalid = await http.post("/v1/chat", json={"message": "hi", "user": "mallory@example.com"})
    assert invalid.status_code == 422
    error = invalid.json()["error"]
    assert error["type"] == "validation_error"
    assert {f["field"] for f in error["fields"]} == {"body.persona", "body.user"}  # the token says who


async def test_audit_filters_are_validated(http: httpx.AsyncClient) -> None:
    assert (await http.get("/v1/audit", params={"since": "yesterday"})).status_code == 422
    assert (await http.get("/v1/audit", params={"limit": 0})).status_code == 422
    listed = (await http.get("/v1/audit", params={"limit": 5})).json()
    assert [r["event"] for r in listed["records"]] == [
        "user_added",
        "user_token_issued",
    ]  # the test's own token
    assert (await http.get("/v1/audit", params={"event": "turn_ended"})).json() == {"count": 0, "records": []}


async def test_refund_request_returns_the_decision(
    rt: Runtime, http: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    created = await rt.plisio.client.create_invoice(
        order_number="9", order_name="Pro plan", currency="BTC", source_amount=Decimal("40")
    )
    await sandbox.pay(created.txn_id)
    response = await http.post("/v1/refund-requests", json={
        "invoice_id": created.txn_id, "reason": "bought the wrong plan"})  # fmt: skip
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["txn_id"] == created.txn_id
    assert result["decision"] in {"approve", "deny", "escalate"} and result["clause"]
    assert result["refund_amount"] is None or isinstance(
        result["refund_amount"], str
    )  # money is never a float
    missing = await http.post("/v1/refund-requests", json={
        "invoice_id": "ffffffffffffffffffffffff", "reason": "x"})  # fmt: skip
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"


async def test_in_process_worker_turns_a_callback_into_a_listed_draft(rt: Runtime, sandbox: Sandbox) -> None:
    created = await rt.plisio.client.create_invoice(
        order_number="7", order_name="Pro plan", currency="BTC", source_amount=Decimal("100"),
        email="carol@example.com",
    )  # fmt: skip
    await sandbox.expire(created.txn_id)
    app = create_app(rt, start_worker=True, worker=lambda r: Worker(r.worker, churn=None, schedules=False))
    body = encode_form_callback(callback_fields(created.txn_id, "expired"), SANDBOX_API_KEY)
    async with app.router.lifespan_context(app), client(app, bearer(rt)) as http:
        posted = await http.post("/webhooks/plisio", content=body,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
        assert posted.status_code == 200
        for _ in range(100):  # the worker drafts first, then marks the inbox row done
            drafts = (await http.get("/v1/drafts", params={"status": "pending_review"})).json()["drafts"]
            settled = (await http.get("/v1/inbox", params={"state": "done"})).json()["rows"]
            if drafts and settled:
                break
            await asyncio.sleep(0.1)
        [draft] = drafts
        assert draft["txn_id"] == created.txn_id and draft["status"] == "pending_review"
        assert draft["customer_email"] == "carol@example.com" and draft["subject"] and draft["body"]
        one = await http.get(f"/v1/drafts/{draft['id']}")
        assert one.status_code == 200 and one.json()["draft"] == draft, "the same draft, in full, by its id"
        unknown = await http.get("/v1/drafts/nope")
        assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found"
        # No outbound channel is configured here: an unknown draft is still a 404, not "not configured".
        approve_unknown = await http.post("/v1/drafts/nope/approve")
        assert approve_unknown.status_code == 404 and approve_unknown.json()["error"]["type"] == "not_found"
        bogus = await http.get("/v1/drafts", params={"status": "bogus"})
        assert bogus.status_code == 422 and "use one of pending_review, approved," in bogus.text
        assert len((await http.get("/v1/drafts", params={"status": "all"})).json()["drafts"]) == 1
        done = (await http.get("/v1/inbox", params={"state": "done"})).json()["rows"]
        assert [(r["txn_id"], r["action"], r["plisio_status"]) for r in done] == [
            (created.txn_id, "recovery", "expired")
        ]


def _raiser(exc: Exception) -> Callable[[], Any]:
    async def route() -> None:
        raise exc

    return route


@pytest.mark.parametrize(
    ("exc", "status", "kind"),
    [
        (NotFound("no draft with id 'x'"), 404, "not_found"),
        (Forbidden("not yours"), 403, "forbidden"),
        (Conflict("already approved"), 409, "conflict"),
        (ConfigError("bad value", key="server.port"), 422, "config_error"),
        (NotConfigured("no LLM"), 503, "not_configured"),
        (StoreUnavailable("cannot write"), 503, "store_unavailable"),
        (PlisioTransportError("connect refused", route="/operations"), 502, "plisio_unreachable"),
        (RuntimeError("secret internals at 0xdeadbeef"), 500, "internal_error"),
    ],
)
async def test_errors_are_json_never_a_stack_trace(
    rt: Runtime, exc: Exception, status: int, kind: str
) -> None:
    app = create_app(rt, start_worker=False)
    app.add_api_route("/boom", _raiser(exc))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://persona.test") as http:
        response = await http.get("/boom")
    assert response.status_code == status
    assert response.json()["error"]["type"] == kind
    assert "Traceback" not in response.text and "0xdeadbeef" not in response.text


async def test_unknown_route_is_a_json_404(http: httpx.AsyncClient) -> None:
    response = await http.get("/v2/nothing")
    assert response.status_code == 404 and response.json()["error"]["type"] == "http_error"


async def test_inbox_listing(rt: Runtime, http: httpx.AsyncClient) -> None:
    body = encode_form_callback(callback_fields("6a1b2c3d4e5f60718293a4b5", "22"), SANDBOX_API_KEY)
    await http.post(
        "/webhooks/plisio", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    [row] = (await http.get("/v1/inbox", params={"state": "poison"})).json()["rows"]
    assert row["status"] == "22" and "unknown status" in row["error"]
    assert (await http.get("/v1/inbox", params={"state": "nonsense"})).status_code == 422
    assert FakeFlows().failures == []


@pytest.mark.slow
def test_persona_serve_command(tmp_path: Path) -> None:
    text = config_text().replace(
        "url: sqlite:///var/persona.sqlite3", f"url: sqlite:///{tmp_path / 'db.sqlite3'}"
    )
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text, encoding="utf-8")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
    for args in (
        ("users", "add", "ops@example.com", "--role", "operator"),
        ("users", "token", "ops@example.com"),
    ):
        done = subprocess.run(
            cli(cfg, *args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
    token = done.stdout.strip()
    proc = subprocess.Popen(cli(cfg, "serve", "--port", str(port), "--no-worker"), cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz").json() == {"status": "ok"}:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "persona serve did not come up"
            time.sleep(0.1)
        body = encode_form_callback(callback_fields("6a1b2c3d4e5f60718293a4b5", "expired"), SANDBOX_API_KEY)
        posted = httpx.post(f"{base}/webhooks/plisio", content=body,
                            headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
        assert posted.status_code == 200 and not posted.json()["duplicate"]
        assert httpx.get(f"{base}/v1/inbox").status_code == 401
        [row] = httpx.get(f"{base}/v1/inbox", headers={"Authorization": f"Bearer {token}"}).json()["rows"]
        assert (row["txn_id"], row["state"]) == ("6a1b2c3d4e5f60718293a4b5", "pending")  # no worker: waits
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert proc.returncode in (0, -signal.SIGTERM), output  # uvicorn re-raises the signal after a clean stop
    assert "Traceback" not in output
