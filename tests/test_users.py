"""Users, roles and API tokens on the HTTP API; the ``persona users`` commands."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from persona.app import Runtime
from persona.audit import AuditFilter
from persona.calls import call_context
from persona.drafts import DraftStore
from persona.models import Models as RuntimeModels
from persona.server import create_app
from persona.store.engine import Store
from persona.store.vault_tables import api_tokens
from persona.users import Users, token_hash
from persona.vault import Actor
from tests.conftest import NOW
from tests.harness import bearer, build_runtime, call, config_text
from tests.test_vault import Clock
from tests.test_webhooks import callback_fields
from tools.plisio.callbacks import encode_form_callback
from tools.plisio.sandbox import SANDBOX_API_KEY, Sandbox

pytestmark = pytest.mark.anyio

SETUP = Actor("cli", "root@example.com")


@pytest.fixture
def wall() -> Clock:
    return Clock()


@pytest.fixture
def rt(store: Store, sandbox: Sandbox, wall: Clock) -> Iterator[Runtime]:
    runtime = build_runtime(store, sandbox, now=wall)
    yield runtime
    runtime.audit.close()


@pytest.fixture
async def http(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(rt, start_worker=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://persona.test") as c:
        yield c


async def held_invoice(rt: Runtime, user: str = "alice@example.com") -> str:
    """A create-invoice call over the approval threshold: held, pending."""
    args = {"order_name": "ACME retainer", "source_amount": "400", "source_currency": "USD"}
    done = await rt.dispatcher.dispatch(
        call("plisio_create_invoice", args), call_context(rt.settings, "finance", user)
    )
    assert done.outcome.value == "pending_approval" and done.approval_id
    return done.approval_id


async def test_a_viewer_token_cannot_approve_and_an_admin_token_can(
    rt: Runtime, http: httpx.AsyncClient
) -> None:
    approval_id = await held_invoice(rt)
    for role in ("viewer", "operator"):
        refused = await http.post(
            f"/v1/approvals/{approval_id}/approve", headers=bearer(rt, f"{role}@x.io", role)
        )
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"] == {
            "type": "forbidden", "message": f"role {role} may not decide approvals (it needs: admin)"
        }  # fmt: skip
        assert rt.approvals.get(approval_id).status == "pending"
    listed = await http.get("/v1/approvals", headers=bearer(rt, "viewer@x.io", "viewer"))
    assert listed.status_code == 403
    admin = bearer(rt, "boss@x.io", "admin")
    assert [a["id"] for a in (await http.get("/v1/approvals", headers=admin)).json()["approvals"]] == [
        approval_id
    ]
    approved = await http.post(f"/v1/approvals/{approval_id}/approve", json={"note": "ok"}, headers=admin)
    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert body["approval"]["status"] == "executed" and body["approval"]["decided_by"] == "boss@x.io"
    assert body["call"]["outcome"] == "succeeded"
    [granted] = rt.audit.query(AuditFilter(event="approval_granted"))
    assert granted.source == "http" and granted.payload["approved_by"] == granted.user == "boss@x.io"
    again = await http.post(f"/v1/approvals/{approval_id}/approve", headers=admin)
    assert again.status_code == 409


async def test_an_admin_cannot_approve_their_own_call(rt: Runtime, http: httpx.AsyncClient) -> None:
    approval_id = await held_invoice(rt, "boss@x.io")
    own = await http.post(f"/v1/approvals/{approval_id}/approve", headers=bearer(rt, "boss@x.io", "admin"))
    assert own.status_code == 403 and "cannot approve it" in own.json()["error"]["message"]
    rejected = await http.post(
        f"/v1/approvals/{approval_id}/reject", headers=bearer(rt, "other@x.io", "admin")
    )
    assert rejected.status_code == 200 and rejected.json()["approval"]["status"] == "rejected"


async def test_a_disabled_users_token_is_refused(rt: Runtime, http: httpx.AsyncClient) -> None:
    headers = bearer(rt, "eve@x.io", "viewer")
    assert (await http.get("/v1/audit", headers=headers)).status_code == 200
    users = Users(rt.store, rt.audit, rt.now)
    disabled = users.disable("eve@x.io", SETUP)
    assert disabled.status == "disabled"
    refused = await http.get("/v1/audit", headers=headers)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert refused.json()["error"]["type"] == "unauthorized"
    [event] = rt.audit.query(AuditFilter(event="user_disabled"))
    assert event.user == "root@example.com" and event.payload == {"email": "eve@x.io", "tokens_revoked": 1}
    with pytest.raises(Exception, match="is disabled"):
        users.issue_token("eve@x.io", SETUP)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer pp_" + "A" * 43}, {"Authorization": "Bearer nonsense"},
     {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}],
)  # fmt: skip
async def test_missing_or_wrong_tokens_get_the_same_401(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await http.get("/v1/audit", headers=headers)
    assert response.status_code == 401
    assert response.json() == {
        "error": {
            "type": "unauthorized",
            "message": "a valid API token is required (Authorization: Bearer <token>;"
            " `persona users token EMAIL` issues one)",
        }
    }


ROUTES = [
    ("POST", "/v1/chat", {"persona": "nobody", "message": "hi"}),
    ("GET", "/v1/drafts", None),
    ("POST", "/v1/drafts/d1/reject", None),
    ("POST", "/v1/refund-requests", {"invoice_id": "ffffffffffffffffffffffff", "reason": "x"}),
    ("GET", "/v1/inbox", None),
    ("GET", "/v1/audit", None),
    ("GET", "/v1/approvals", None),
    ("POST", "/v1/approvals/a1/approve", None),
]
ALLOWED = {
    "admin": {r[1] for r in ROUTES},
    "operator": {
        "/v1/chat",
        "/v1/drafts",
        "/v1/drafts/d1/reject",
        "/v1/refund-requests",
        "/v1/inbox",
        "/v1/audit",
    },
    "viewer": {"/v1/audit"},
}


@pytest.mark.parametrize("role", ["admin", "operator", "viewer"])
async def test_role_matrix(rt: Runtime, http: httpx.AsyncClient, role: str) -> None:
    headers = bearer(rt, f"{role}@x.io", role)
    for method, path, body in ROUTES:
        response = await http.request(method, path, json=body, headers=headers)
        assert (response.status_code != 403) == (path in ALLOWED[role]), (role, path, response.text)
        assert response.status_code != 401
        assert (await http.request(method, path, json=body)).status_code == 401, path


async def test_open_endpoints_and_the_documented_security_scheme(
    rt: Runtime, http: httpx.AsyncClient
) -> None:
    assert (await http.get("/healthz")).status_code == 200
    body = encode_form_callback(callback_fields("6a1b2c3d4e5f60718293a4b5", "expired"), SANDBOX_API_KEY)
    posted = await http.post(
        "/webhooks/plisio", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert posted.status_code == 200, "the callback is authenticated by its signature, not a token"
    assert (await http.get("/docs")).status_code == 200
    spec = (await http.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["apiToken"] == {
        "type": "http", "scheme": "bearer",
        "description": "An API token from `persona users token EMAIL`, sent as `Authorization: Bearer pp_...`.",
    }  # fmt: skip
    assert spec["paths"]["/v1/chat"]["post"]["security"] == [{"apiToken": ["admin", "operator"]}], (
        "its roles, as every /v1 route"
    )
    assert "security" not in spec["paths"]["/healthz"]["get"]
    assert "security" not in spec["paths"]["/webhooks/plisio"]["post"]
    assert {"/v1/approvals/{approval_id}/approve", "/v1/drafts/{draft_id}/approve"} <= set(spec["paths"])


async def test_drafts_are_decided_by_the_token_user(rt: Runtime, http: httpx.AsyncClient) -> None:
    draft, _ = DraftStore(rt.store).create(
        flow_key="recovery:t1", txn_id="t1", order_number="ORD-1", customer_email="c@x.io", subject="Hi",
        body="Pay again?", payment_link=None, new_txn_id=None, context={}, drafted_by="template",
        conversation_id=None, now=NOW,
    )  # fmt: skip
    viewer = await http.post(f"/v1/drafts/{draft.id}/reject", headers=bearer(rt, "v@x.io", "viewer"))
    assert viewer.status_code == 403
    operator = bearer(rt, "op@x.io", "operator")
    smuggled = await http.post(f"/v1/drafts/{draft.id}/reject", json={"by": "someone@else"}, headers=operator)
    assert smuggled.status_code == 422, "who decides comes from the token, not the body"
    rejected = await http.post(f"/v1/drafts/{draft.id}/reject", json={"note": "tone"}, headers=operator)
    assert rejected.status_code == 200 and rejected.json()["draft"]["decided_by"] == "op@x.io"
    [event] = rt.audit.query(AuditFilter(event="draft_rejected"))
    assert (event.user, event.source) == ("op@x.io", "http")


async def test_tokens_are_stored_hashed_and_their_use_is_noted_at_most_once_a_minute(
    rt: Runtime, http: httpx.AsyncClient, wall: Clock
) -> None:
    headers = bearer(rt, "op@x.io", "operator")
    token = headers["Authorization"].removeprefix("Bearer ")
    assert re.fullmatch(r"pp_[A-Za-z0-9_-]{43}", token)
    with rt.store.read("test") as conn:
        [row] = conn.execute(select(api_tokens)).all()
    assert row.token_hash == token_hash(token) and row.prefix == token[:8] and row.last_used_at is None
    assert token not in repr(tuple(row))
    [issued] = rt.audit.query(AuditFilter(event="user_token_issued"))
    assert issued.payload["prefix"] == token[:8] and token not in issued.model_dump_json()

    def used() -> Any:
        with rt.store.read("test") as conn:
            return conn.execute(select(api_tokens.c.last_used_at)).scalar_one()

    await http.get("/v1/inbox", headers=headers)
    first = used()
    wall.at = NOW + timedelta(seconds=30)
    await http.get("/v1/inbox", headers=headers)
    assert used() == first
    wall.at = NOW + timedelta(minutes=2)
    await http.get("/v1/inbox", headers=headers)
    assert used() != first


async def test_chat_records_the_authenticated_user(rt: Runtime) -> None:
    from persona.llm import ScriptedChatModel
    from tests.harness import say

    app = create_app(
        dataclasses.replace(rt, models=RuntimeModels(rt.settings, lambda *_: ScriptedChatModel([say("hi")]))),
        start_worker=False,
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        forged = await http.post("/v1/chat", json={"persona": "finance", "message": "hi", "user": "ceo@x.io"},
                                 headers=bearer(rt, "op@x.io"))  # fmt: skip
        assert forged.status_code == 422
        done = await http.post(
            "/v1/chat", json={"persona": "finance", "message": "hi"}, headers=bearer(rt, "op@x.io")
        )
        assert done.status_code == 200
    records = rt.audit.query(AuditFilter(conversation_id=done.json()["conversation_id"]))
    assert records and {r.user for r in records} == {"op@x.io"}


def persona(
    cfg: Path, *args: str, check: int = 0, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "persona", "--config", str(cfg), *args], input=stdin, capture_output=True, text=True,
        timeout=120, cwd=cfg.parent, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.returncode == check, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(config_text(), encoding="utf-8")
    return path


@pytest.mark.slow
def test_users_commands(cfg: Path) -> None:
    added = persona(
        cfg, "users", "add", "Alice@Example.com", "--role", "operator", "--by", "root@example.com"
    )
    assert "user alice@example.com added as operator" in added.stdout
    persona(cfg, "users", "add", "alice@example.com", "--role", "viewer", check=1)
    persona(cfg, "users", "add", "bob@example.com", "--role", "owner", check=1)
    issued = persona(cfg, "users", "token", "alice@example.com")
    token = issued.stdout.strip()
    assert re.fullmatch(r"pp_[A-Za-z0-9_-]{43}", token) and "shown once" in issued.stderr
    listed = persona(cfg, "users", "list").stdout
    assert "alice@example.com" in listed and "operator" in listed and token not in listed
    persona(cfg, "users", "disable", "alice@example.com")
    again = persona(cfg, "users", "token", "alice@example.com", check=1)
    assert "is disabled" in again.stderr
    audit = persona(cfg, "audit", "list", "--limit", "20").stdout
    for event in ("user_added", "user_token_issued", "user_disabled"):
        assert event in audit
    assert token not in audit


@pytest.mark.slow
def test_vault_commands(cfg: Path) -> None:
    """The key comes from stdin or a hidden prompt, never argv; nothing prints it."""
    stored = persona(
        cfg, "connect", "plisio", "--name", "shop-main", "--key-stdin", stdin=SANDBOX_API_KEY + "\n"
    )
    assert "connection shop-main stored" in stored.stdout
    refused = persona(
        cfg, "connect", "plisio", "--name", "shop-2", "--key-stdin", stdin="sk_wrong_0123456789\n", check=1
    )
    assert "Plisio refused the key" in refused.stderr and "sk_wrong_0123456789" not in refused.stderr
    assert (cfg.parent / "var" / "master.key").stat().st_mode & 0o777 == 0o600
    persona(cfg, "grants", "add", "--persona", "finance", "--connection", "shop-main", "--max-amount", "200")
    persona(cfg, "grants", "add", "--persona", "growth", "--connection", "shop-main", "--tools", "@read")
    listed = persona(cfg, "connections", "list").stdout
    assert "shop-main" in listed and "finance, growth" in listed and SANDBOX_API_KEY not in listed
    grants = persona(cfg, "grants", "list").stdout
    assert "plisio_create_invoice" in grants and "200" in grants
    rotated = persona(cfg, "connections", "rotate", "shop-main", "--key-stdin", stdin=SANDBOX_API_KEY + "\n")
    assert "callbacks signed with the previous key are accepted until" in rotated.stdout
    rekeyed = persona(cfg, "connections", "rekey")
    assert "master key rotated to version 2" in rekeyed.stdout and "4 row(s) re-wrapped" in rekeyed.stdout
    persona(cfg, "grants", "remove", "--persona", "growth", "--connection", "shop-main")
    revoked = persona(cfg, "connections", "revoke", "shop-main")
    assert "1 grant(s) revoked" in revoked.stdout
    audit = persona(cfg, "audit", "list", "--limit", "50").stdout
    for event in ("connection_created", "grant_added", "connection_rotated", "master_key_rotated",
                  "grant_removed", "connection_revoked"):  # fmt: skip
        assert event in audit
    everything = stored.stdout + stored.stderr + listed + grants + rotated.stdout + rekeyed.stdout + audit
    assert SANDBOX_API_KEY not in everything


async def test_a_draft_can_be_marked_sent_by_hand_when_there_is_no_outbound_channel(
    rt: Runtime, http: httpx.AsyncClient
) -> None:
    store = DraftStore(rt.store)
    waiting, _ = store.create(
        flow_key="recovery:t2", txn_id="t2", order_number="ORD-2", customer_email="d@x.io", subject="Hi",
        body="Pay again?", payment_link=None, new_txn_id=None, context={}, drafted_by="template",
        conversation_id=None, now=NOW,
    )  # fmt: skip
    operator = bearer(rt, "op@x.io", "operator")
    approve = await http.post(f"/v1/drafts/{waiting.id}/approve", headers=operator)
    assert approve.status_code == 503, "no outbound.webhook_url: an approval could go nowhere"
    sent = await http.post(f"/v1/drafts/{waiting.id}/mark-sent", json={"note": "sent from my mailbox"},
                           headers=operator)  # fmt: skip
    assert sent.status_code == 200
    draft = sent.json()["draft"]
    assert (draft["status"], draft["decided_by"]) == ("sent", "op@x.io")
    [attempt] = draft["delivery"]["attempts"]
    assert (
        attempt["by_hand"] is True
        and attempt["by"] == "op@x.io"
        and attempt["note"] == "sent from my mailbox"
    )
    events = [(r.event, r.user, r.source) for r in rt.audit.query(AuditFilter(conversation_id=None))
              if r.event.startswith("draft_")]  # fmt: skip
    assert events == [("draft_approved", "op@x.io", "http"), ("draft_marked_sent", "op@x.io", "http")]
    again = await http.post(f"/v1/drafts/{waiting.id}/mark-sent", headers=operator)
    assert again.status_code == 409 and "is sent" in again.json()["error"]["message"]
    viewer = await http.post(f"/v1/drafts/{waiting.id}/mark-sent", headers=bearer(rt, "v@x.io", "viewer"))
    assert viewer.status_code == 403
    unknown = await http.post("/v1/drafts/nope/mark-sent", headers=operator)
    assert unknown.status_code == 404
