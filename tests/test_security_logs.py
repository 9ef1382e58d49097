"""Security events in the log: what the callback receiver, the worker, the vault and the sign-in paths log when
they refuse or detect something, each driven through its real path, and that no secret (a Plisio key, the
master key, an API token) is a field of any event they log.

``capture_logs`` (tests/conftest.py) holds every event at every level as the code logged it, before the
scrubbing processor: a secret found there was handed to the logger, and only the scrubber stood in its way.
Every storage test runs on SQLite, and on PostgreSQL too when ``PERSONA_TEST_POSTGRES_URL`` is set.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from persona.app import Runtime
from persona.masterkey import encode_key
from persona.server import create_app
from persona.store.engine import Store
from persona.store.vault_tables import credential_blobs
from persona.worker import Worker
from tests.harness import bearer, build_runtime
from tests.test_console import sign_in
from tests.test_vault import (
    KEY,
    OTHER_KEY,
    Kit,
    connect_key,
    dispatch,
    error_of,
    grant,
    make_kit,
    post_callback,
)
from tests.test_webhooks import FakeFlows
from tests.test_worker import enqueue, new_invoice, settings_with
from tools.plisio.callbacks import FORM_CONTENT_TYPE
from tools.plisio.sandbox import SANDBOX_API_KEY, Sandbox

pytestmark = pytest.mark.anyio

Logs = list[MutableMapping[str, Any]]
TXN = "6a1b2c3d4e5f60718293a4b5"


def named(logs: Logs, event: str) -> Logs:
    return [entry for entry in logs if entry["event"] == event]


def assert_no_secret(logs: Logs, *secret_values: str) -> None:
    assert logs, "something was logged"
    shown = repr(logs)
    for value in secret_values:
        assert value not in shown, f"a secret is a field of a logged event: {value[:6]}..."


@pytest.fixture
def kit(store: Store, tmp_path: Path) -> Iterator[Kit]:
    made = make_kit(store, tmp_path)  # the shop's key is KEY; the master key is a file in tmp_path
    yield made
    made.rt.audit.close()


async def app_client(rt: Runtime) -> httpx.AsyncClient:
    app = create_app(rt, start_worker=False)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://persona.test")


# -- the callback receiver -------------------------------------------------------------------------------


async def test_callbacks_refused_for_their_signature_size_or_form_are_logged_without_a_key(
    kit: Kit, capture_logs: Logs
) -> None:
    await connect_key(kit)  # callbacks now verify with the vault's key
    limit = kit.rt.settings.server.max_body_bytes
    async with await app_client(kit.rt) as http:
        forged = await post_callback(http, OTHER_KEY, TXN)  # signed with a key that is not the shop's
        huge = await http.post(
            "/webhooks/plisio", content=b"a=" + b"1" * limit, headers={"Content-Type": FORM_CONTENT_TYPE}
        )
        broken = await http.post(
            "/webhooks/plisio", content=b"\xff\xfe", headers={"Content-Type": FORM_CONTENT_TYPE}
        )
        genuine = await post_callback(http, KEY, TXN)
    assert [r.status_code for r in (forged, huge, broken, genuine)] == [401, 413, 400, 200]
    signature, size, form = named(capture_logs, "webhook_rejected")
    assert signature["log_level"] == size["log_level"] == form["log_level"] == "warning"
    assert signature["reason"].startswith("signature: ") and signature["peer"] == "127.0.0.1"
    assert set(signature) == {"event", "log_level", "reason", "peer", "bytes", "content_type"}
    assert signature["content_type"] == FORM_CONTENT_TYPE and signature["bytes"] > 0
    assert (size["reason"], size["limit"]) == ("body too large", limit)
    assert form["reason"].startswith("malformed body: ")
    [received] = named(capture_logs, "webhook_received")
    assert (received["txn_id"], received["status"], received["key"]) == (TXN, "expired", "current")
    assert_no_secret(capture_logs, KEY, OTHER_KEY)


async def test_a_wrong_master_key_refuses_callbacks_and_is_logged_as_such_not_as_tampering(
    kit: Kit, capture_logs: Logs
) -> None:
    await connect_key(kit)
    master = kit.key_file.read_text()
    swapped = encode_key(secrets.token_bytes(32))
    kit.key_file.write_text(swapped)  # the key file replaced under a running server
    async with await app_client(kit.rt) as http:
        refused = await post_callback(http, KEY, TXN)
    assert refused.status_code == 503, "not 401: Plisio retries once the right key is back"
    [wrong] = named(capture_logs, "vault_wrong_master_key")
    assert wrong["log_level"] == "error"
    assert (wrong["key_version"], wrong["where"]) == (1, f"the key file {kit.key_file}")
    [unusable] = named(capture_logs, "vault_callback_key_unusable")
    assert (unusable["log_level"], unusable["connection"], unusable["slot"]) == (
        "error",
        "shop-main",
        "current",
    )
    assert "is not the one the vault was encrypted with" in unusable["error"]
    [unverifiable] = named(capture_logs, "webhook_no_secret")
    assert unverifiable["log_level"] == "error"
    assert named(capture_logs, "credential_tamper_detected") == [], "a wrong key is not tampering"
    assert named(capture_logs, "webhook_received") == []
    assert_no_secret(capture_logs, KEY, master.strip(), swapped)


# -- the vault -------------------------------------------------------------------------------------------


async def test_the_first_master_key_and_a_verified_key_are_logged_by_path_and_name_only(
    store: Store, tmp_path: Path, capture_logs: Logs
) -> None:
    kit = make_kit(store, tmp_path)  # the runtime's first use creates the key file (it keys the audit log)
    try:
        [created] = named(capture_logs, "vault_master_key_created")
        assert (created["log_level"], created["path"]) == ("warning", str(kit.key_file))
        await connect_key(kit)
        [verified] = named(capture_logs, "vault_key_verified")
        assert (verified["log_level"], verified["connection"]) == ("info", "shop-main")
        assert set(verified) == {"event", "log_level", "connection", "shop"}
        assert_no_secret(capture_logs, KEY, kit.key_file.read_text().strip())
    finally:
        kit.rt.audit.close()


async def test_a_ciphertext_copied_to_another_personas_row_is_logged_as_tampering(
    kit: Kit, capture_logs: Logs
) -> None:
    await connect_key(kit)
    grant(kit, "finance")
    grant(kit, "growth")
    rows = {(b.persona, b.slot): b for b in kit.blobs()}
    growth, finance = rows["growth", "current"], rows["finance", "current"]
    with kit.rt.store.begin("tamper") as conn:
        conn.execute(
            update(credential_blobs)
            .where(credential_blobs.c.id == finance.id)
            .values(nonce=growth.nonce, ciphertext=growth.ciphertext)
        )
    done = await dispatch(kit, "finance", "plisio_get_balance", {"psys_cid": "BTC"})
    assert done.outcome.value == "denied" and error_of(done)["type"] == "credential_unavailable"
    [tamper] = named(capture_logs, "credential_tamper_detected")
    assert {k: v for k, v in tamper.items() if k != "connection_id"} == {
        "event": "credential_tamper_detected", "log_level": "error", "connection": "shop-main", "slot": "current",
        "row_persona": "finance", "key_version": 1, "blob_id": finance.id,
    }  # fmt: skip
    assert tamper["connection_id"] == finance.connection_id
    assert named(capture_logs, "vault_wrong_master_key") == []
    assert_no_secret(capture_logs, KEY, kit.key_file.read_text().strip())


# -- tokens: the HTTP API and the console's sign-in ---------------------------------------------------------


@pytest.fixture
async def rt(store: Store, sandbox: Sandbox) -> AsyncIterator[Runtime]:
    runtime = build_runtime(store, sandbox)
    yield runtime
    await runtime.aclose()


async def test_refused_api_tokens_and_roles_are_logged_without_the_token(
    rt: Runtime, capture_logs: Logs
) -> None:
    guessed = "pp_" + secrets.token_urlsafe(32)
    viewer = bearer(rt, "vera@example.com", "viewer")
    async with await app_client(rt) as http:
        anonymous = await http.get("/v1/audit")
        unknown = await http.get("/v1/audit", headers={"Authorization": f"Bearer {guessed}"})
        too_low = await http.post("/v1/approvals/86fd50f050a2/approve", headers=viewer)
        allowed = await http.get("/v1/audit", headers=viewer)
    assert [r.status_code for r in (anonymous, unknown, too_low, allowed)] == [401, 401, 403, 200]
    no_token, bad_token = named(capture_logs, "http_auth_refused")
    assert no_token == {"event": "http_auth_refused", "log_level": "info", "path": "/v1/audit",
                        "reason": "no bearer token"}  # fmt: skip
    assert bad_token == {"event": "http_auth_refused", "log_level": "info", "path": "/v1/audit",
                         "reason": "unknown, revoked or disabled token"}  # fmt: skip
    [role] = named(capture_logs, "http_role_refused")
    assert (role["user"], role["role"], role["path"]) == ("vera@example.com", "viewer",
                                                          "/v1/approvals/86fd50f050a2/approve")  # fmt: skip
    assert_no_secret(capture_logs, guessed, viewer["Authorization"].removeprefix("Bearer "))


async def test_a_refused_console_sign_in_is_logged_without_the_token(rt: Runtime, capture_logs: Logs) -> None:
    guessed = "pp_" + secrets.token_urlsafe(32)
    operator = bearer(rt, "oscar@example.com", "operator")["Authorization"].removeprefix("Bearer ")
    async with await app_client(rt) as http:
        refused = await sign_in(http, guessed)
        http.cookies.clear()  # a form posted from another site carries no sign-in cookie
        forged = await http.post("/sign-in", data={"token": operator, "csrf": "x", "next": ""})
        signed = await sign_in(http, operator)
    assert [r.status_code for r in (refused, forged, signed)] == [401, 403, 303]
    [bad] = named(capture_logs, "web_signin_refused")
    assert bad == {"event": "web_signin_refused", "log_level": "warning",
                   "reason": "unknown, revoked or disabled token"}  # fmt: skip
    [csrf] = named(capture_logs, "web_csrf_refused")
    assert (csrf["log_level"], csrf["path"], csrf["user"]) == ("warning", "/sign-in", None)
    [ok] = named(capture_logs, "web_signed_in")
    assert (ok["user"], ok["role"]) == ("oscar@example.com", "operator")
    session = http.cookies.get("persona_session")
    assert session
    assert_no_secret(capture_logs, guessed, operator, session)


# -- the worker ----------------------------------------------------------------------------------------------


async def test_a_callback_plisio_contradicts_is_logged_with_both_statuses(
    rt: Runtime, sandbox: Sandbox, capture_logs: Logs
) -> None:
    txn_id = await new_invoice(rt)
    await sandbox.pay(txn_id)  # really completed
    enqueue(rt, txn_id, "expired", rt.now())  # a signed claim that it expired
    flows = FakeFlows()
    [done] = await Worker(rt.worker, handlers=flows, churn=None, schedules=False).drain()
    assert (done.action, flows.failures) == ("success", []), "no recovery for a paid invoice"
    [processed] = named(capture_logs, "inbox_processed")
    assert processed["log_level"] == "info" and processed["txn_id"] == txn_id
    assert {k: processed[k] for k in ("status", "plisio_status", "action", "trigger")} == {
        "status": "expired", "plisio_status": "completed", "action": "success", "trigger": "webhook",
    }  # fmt: skip


class LeakyRefusal(httpx.AsyncBaseTransport):
    """Plisio unreachable, with an error that repeats the request's URL (and so its ``api_key``)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"connection refused: {request.url}", request=request)


async def test_a_worker_retry_after_plisio_failed_logs_the_error_without_the_key(
    store: Store, sandbox: Sandbox, rt: Runtime, capture_logs: Logs
) -> None:
    txn_id = await new_invoice(rt)
    await sandbox.expire(txn_id)
    row = enqueue(rt, txn_id, "expired", rt.now())
    down = build_runtime(store, sandbox, settings=settings_with(), transport=LeakyRefusal())  # one attempt
    try:
        [result] = await Worker(down.worker, handlers=FakeFlows(), churn=None, schedules=False).drain()
    finally:
        await down.aclose()
    assert result.outcome == "retry"
    [retry] = named(capture_logs, "inbox_retry_scheduled")
    assert retry["log_level"] == "warning" and (retry["inbox_id"], retry["txn_id"]) == (row.id, txn_id)
    assert retry["error"].startswith("plisio_unreachable: ") and "connection refused" in retry["error"]
    assert_no_secret(capture_logs, SANDBOX_API_KEY)
