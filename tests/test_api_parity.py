"""The HTTP API does what the CLI's review and operations commands do, through the same domain calls:
re-send a draft, refund decisions, churn reports and scans, one audit record, the chain's verification,
a conversation's transcript, inbox rows and their retry, one approval, the effects ledger."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from persona.app import Runtime
from persona.audit import AuditFilter
from persona.effects.keys import EffectKey, arguments_hash
from persona.effects.ledger import Intent, State
from persona.events import Source
from persona.flows import recovery
from persona.llm import ChatModel
from persona.operations import retry_inbox_row
from persona.server import create_app
from persona.settings import OutboundSettings
from persona.store.engine import Store
from tests.harness import bearer, build_runtime, call, repo_settings, say, step
from tests.test_recovery import Capture, failed_invoice, recovery_script, with_outbound
from tests.test_server import Models
from tests.test_webhooks import callback_fields
from tools.plisio.callbacks import encode_form_callback
from tools.plisio.sandbox import SANDBOX_API_KEY, Sandbox

pytestmark = pytest.mark.anyio

ADMIN, APPROVER, OPERATOR, VIEWER = (
    "ava@example.com",
    "bob@example.com",
    "olga@example.com",
    "vic@example.com",
)
BIG = {"order_name": "Big retainer", "source_amount": "400", "source_currency": "USD"}


class Flows:
    """The model factory: scripted chat turns in order, the well-behaved recovery script, none for the rest
    (refunds and churn then explain by their templates)."""

    def __init__(self, *chats: list[Any]) -> None:
        self.chat = Models(*chats)

    def __call__(self, flow: str, persona: str, facts: Mapping[str, Any]) -> ChatModel:
        if flow == "chat":
            return self.chat(flow, persona, facts)
        return recovery_script(facts)


@pytest.fixture
def rt(store: Store, sandbox: Sandbox, tmp_path: Path) -> Iterator[Runtime]:
    base = repo_settings()
    audit = base.audit.model_copy(update={"checkpoint_dir": str(tmp_path / "checkpoints")})
    runtime = build_runtime(store, sandbox, settings=base.model_copy(update={"audit": audit}))
    yield runtime
    runtime.audit.close()


@pytest.fixture
def app(rt: Runtime) -> FastAPI:
    return create_app(rt, start_worker=False)


@pytest.fixture
async def as_role(rt: Runtime, app: FastAPI) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """A client per role: admin, approver (a second admin), operator, viewer."""
    people = {"admin": (ADMIN, "admin"), "approver": (APPROVER, "admin"), "operator": (OPERATOR, "operator"),
              "viewer": (VIEWER, "viewer")}  # fmt: skip
    clients = {
        name: httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://persona.test", headers=bearer(rt, *who)
        )
        for name, who in people.items()
    }
    try:
        yield clients
    finally:
        for client in clients.values():
            await client.aclose()


def events(rt: Runtime, event: str) -> list[Any]:
    return rt.audit.query(AuditFilter(event=event))


def refused(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == kind, error
    return str(error["message"])


# -- drafts ----------------------------------------------------------------------------------------


async def test_send_redelivers_a_failed_draft_to_the_outbound_receiver(
    rt: Runtime, sandbox: Sandbox, as_role: dict[str, httpx.AsyncClient]
) -> None:
    rt.model_factory = Flows()
    http = as_role["operator"]
    draft = await recovery.handle_failure(rt.flows, await failed_invoice(rt, sandbox), trigger="webhook")
    assert draft is not None
    refused(await http.post(f"/v1/drafts/{draft.id}/send"), 409, "conflict")  # still waiting for review
    no_channel = refused(await http.post(f"/v1/drafts/{draft.id}/approve"), 503, "not_configured")
    assert "outbound.webhook_url" in no_channel and f"/v1/drafts/{draft.id}/mark-sent" in no_channel
    with_outbound(rt, Capture(status=503))
    failed = await http.post(f"/v1/drafts/{draft.id}/approve", json={"note": "looks right"})
    assert failed.status_code == 200 and failed.json()["draft"]["status"] == "send_failed"

    receiver = Capture()
    rt.outbound_transport = receiver
    refused(await as_role["viewer"].post(f"/v1/drafts/{draft.id}/send"), 403, "forbidden")
    sent = await http.post(f"/v1/drafts/{draft.id}/send")
    assert sent.status_code == 200, sent.text
    body = sent.json()["draft"]
    assert body["status"] == "sent" and [a.get("status_code") for a in body["delivery"]["attempts"]] == [
        503,
        200,
    ]
    [delivered] = receiver.requests
    assert json.loads(delivered.content)["draft_id"] == draft.id
    [record] = events(rt, "draft_sent")
    assert (record.source, record.user, record.payload["draft_id"]) == ("http", OPERATOR, draft.id)

    refused(await http.post(f"/v1/drafts/{draft.id}/send"), 409, "conflict")  # sent: once is enough
    refused(await http.post("/v1/drafts/nope/send"), 404, "not_found")
    assert len(receiver.requests) == 1


async def test_send_without_an_outbound_channel_says_how_to_fix_it_or_mark_sent(
    rt: Runtime, sandbox: Sandbox, as_role: dict[str, httpx.AsyncClient]
) -> None:
    rt.model_factory = Flows()
    draft = await recovery.handle_failure(rt.flows, await failed_invoice(rt, sandbox), trigger="webhook")
    assert draft is not None
    with_outbound(rt, Capture(status=500))
    await as_role["operator"].post(f"/v1/drafts/{draft.id}/approve")
    rt.settings = rt.settings.model_copy(update={"outbound": OutboundSettings()})
    message = refused(await as_role["operator"].post(f"/v1/drafts/{draft.id}/send"), 503, "not_configured")
    assert "outbound.webhook_url" in message and "mark-sent" in message
    marked = await as_role["operator"].post(f"/v1/drafts/{draft.id}/mark-sent", json={"note": "sent by hand"})
    assert marked.json()["draft"]["status"] == "sent"


# -- refunds and churn -----------------------------------------------------------------------------


async def test_refund_decisions_are_listed_and_shown_and_the_body_takes_both_names(
    rt: Runtime, sandbox: Sandbox, as_role: dict[str, httpx.AsyncClient]
) -> None:
    http = as_role["operator"]
    created = await rt.plisio.client.create_invoice(
        order_number="9", order_name="Pro plan", currency="BTC", source_amount=Decimal("40")
    )
    await sandbox.pay(created.txn_id)
    new_name = await http.post(
        "/v1/refund-requests", json={"invoice": created.txn_id, "reason": "wrong plan"}
    )
    old_name = await http.post("/v1/refund-requests", json={"invoice_id": created.txn_id, "reason": "again"})
    assert new_name.status_code == old_name.status_code == 200, (new_name.text, old_name.text)
    assert new_name.json()["txn_id"] == old_name.json()["txn_id"] == created.txn_id
    both = await http.post("/v1/refund-requests", json={"invoice": created.txn_id, "invoice_id": created.txn_id,
                                                        "reason": "x"})  # fmt: skip
    assert "not both" in refused(both, 422, "validation_error")
    assert "invoice" in refused(
        await http.post("/v1/refund-requests", json={"reason": "x"}), 422, "validation_error"
    )

    listed = (await http.get("/v1/refunds")).json()
    assert listed["count"] == 2 and {r["id"] for r in listed["refunds"]} == {
        new_name.json()["id"],
        old_name.json()["id"],
    }
    assert (await http.get("/v1/refunds", params={"limit": 1})).json()["count"] == 1
    refused(await http.get("/v1/refunds", params={"limit": 0}), 422, "validation_error")
    shown = await http.get(f"/v1/refunds/{new_name.json()['id']}")
    assert shown.json() == new_name.json(), "the stored decision is what the triage answered"
    assert (
        shown.json()["requested_by"] == OPERATOR
        and shown.json()["facts"]["invoice"]["txn_id"] == created.txn_id
    )
    refused(await http.get("/v1/refunds/nope"), 404, "not_found")
    refused(await as_role["viewer"].get("/v1/refunds"), 403, "forbidden")


async def test_churn_scan_reports_and_runs(rt: Runtime, as_role: dict[str, httpx.AsyncClient]) -> None:
    http = as_role["operator"]
    refused(await as_role["viewer"].post("/v1/churn/scan"), 403, "forbidden")
    scanned = await http.post("/v1/churn/scan")
    assert scanned.status_code == 200, scanned.text
    report = scanned.json()
    assert report["trigger"] == "http" and report["operations_scanned"] > 0 and report["headline"]
    [audited] = events(rt, "churn_report_created")
    assert (audited.source, audited.user) == ("http", OPERATOR)

    listed = (await http.get("/v1/churn")).json()
    assert listed["count"] == 1 and listed["reports"][0]["id"] == report["id"]
    assert (await http.get(f"/v1/churn/{report['id']}")).json() == report
    refused(await http.get("/v1/churn/nope"), 404, "not_found")
    slot = {"slot": "2026-11-23T06:00:00"}
    first, again = (
        (await http.post("/v1/churn/scan", json=slot)),
        (await http.post("/v1/churn/scan", json=slot)),
    )
    assert first.json()["id"] == again.json()["id"], "one report per slot, whoever asks"
    assert first.json()["run_key"] == "churn_scan:2026-11-23T06:00:00+00:00"
    refused(await http.post("/v1/churn/scan", json={"slot": "soon"}), 422, "validation_error")
    runs = (await http.get("/v1/churn/runs")).json()
    assert runs["count"] == 2 and runs["schedule"] == rt.settings.flows.churn.schedule
    assert {r["state"] for r in runs["runs"]} == {"done"}
    refused(await http.get("/v1/churn", params={"limit": "many"}), 422, "validation_error")


# -- audit -----------------------------------------------------------------------------------------


async def test_viewers_read_a_record_the_verification_and_a_conversation(
    rt: Runtime, as_role: dict[str, httpx.AsyncClient]
) -> None:
    rt.model_factory = Flows([say("You hold some BTC.")])
    turn = await as_role["operator"].post("/v1/chat", json={"persona": "finance", "message": "BTC balance?"})
    conversation = turn.json()["conversation_id"]
    http = as_role["viewer"]
    head_before = rt.audit.head()

    verified = await http.get("/v1/audit/verify")
    assert verified.status_code == 200, verified.text
    result = verified.json()
    assert result["ok"] is True and result["head"] == {"seq": head_before[0], "hash": head_before[1]}
    assert result["findings"][0]["title"] == "audit chain intact"
    assert any(f["level"] == "warn" and "no signed checkpoint" in f["title"] for f in result["findings"])
    assert rt.audit.head() == head_before, "verifying appends nothing"
    assert not Path(rt.settings.checkpoint_path()).exists(), "nor creates a checkpoint folder or key"
    same = (await http.get("/v1/audit/verify", params={"expect_head": head_before[1]})).json()
    assert same["ok"] is True
    moved = (await http.get("/v1/audit/verify", params={"expect_head": "f" * 64})).json()
    assert moved["ok"] is False and any(f["level"] == "bad" for f in moved["findings"])
    refused(await http.get("/v1/audit/verify", params={"expect_head": "nope"}), 422, "validation_error")

    [started] = rt.audit.query(AuditFilter(event="turn_started", conversation_id=conversation))
    one = (await http.get(f"/v1/audit/{started.seq}")).json()["record"]
    assert one == started.model_dump(mode="json")
    refused(await http.get("/v1/audit/999999"), 404, "not_found")
    refused(await http.get("/v1/audit/first"), 422, "validation_error")

    shown = (await http.get(f"/v1/conversations/{conversation}")).json()
    assert (shown["persona"], shown["user"], shown["conversation_id"]) == ("finance", OPERATOR, conversation)
    assert shown["count"] == len(shown["records"]) == len(rt.audit.conversation(conversation))
    assert any("BTC balance?" in line for line in shown["transcript"])
    assert any("You hold some BTC." in line for line in shown["transcript"])
    refused(await http.get("/v1/conversations/conv_nobody"), 404, "not_found")


async def test_audit_filters_refuse_values_no_record_can_have(as_role: dict[str, httpx.AsyncClient]) -> None:
    http = as_role["viewer"]
    assert "turn_ended" in refused(
        await http.get("/v1/audit", params={"event": "bogus"}), 422, "config_error"
    )
    assert "http" in refused(await http.get("/v1/audit", params={"source": "bogus"}), 422, "config_error")
    assert "plisio_get_balance" in refused(
        await http.get("/v1/audit", params={"tool": "x"}), 422, "config_error"
    )
    ok = await http.get(
        "/v1/audit", params={"event": "turn_ended", "source": "http", "tool": "plisio_get_balance"}
    )
    assert ok.json() == {"count": 0, "records": []}, "a known value with no records yet is simply none"


# -- inbox -----------------------------------------------------------------------------------------


async def _poison_row(http: httpx.AsyncClient) -> int:
    body = encode_form_callback(callback_fields("6a1b2c3d4e5f60718293a4b5", "22"), SANDBOX_API_KEY)
    await http.post(
        "/webhooks/plisio", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    [row] = (await http.get("/v1/inbox", params={"state": "poison"})).json()["rows"]
    return int(row["id"])


async def test_inbox_row_is_shown_and_retried_by_an_operator_and_audited(
    rt: Runtime, as_role: dict[str, httpx.AsyncClient]
) -> None:
    http = as_role["operator"]
    row_id = await _poison_row(http)
    shown = (await http.get(f"/v1/inbox/{row_id}")).json()["row"]
    assert (shown["state"], shown["txn_id"]) == ("poison", "6a1b2c3d4e5f60718293a4b5")
    refused(await as_role["viewer"].get(f"/v1/inbox/{row_id}"), 403, "forbidden")
    refused(await as_role["viewer"].post(f"/v1/inbox/{row_id}/retry"), 403, "forbidden")

    retried = await http.post(f"/v1/inbox/{row_id}/retry")
    assert retried.status_code == 200, retried.text
    assert (retried.json()["row"]["state"], retried.json()["row"]["attempts"]) == ("pending", 0)
    [record] = events(rt, "inbox_retried")
    assert (record.source, record.user, record.payload["inbox_id"]) == ("http", OPERATOR, row_id)
    assert record.payload["txn_id"] == "6a1b2c3d4e5f60718293a4b5"

    refused(await http.post(f"/v1/inbox/{row_id}/retry"), 409, "conflict")  # pending: nothing to retry
    refused(await http.post("/v1/inbox/424242/retry"), 404, "not_found")
    refused(await http.get("/v1/inbox/424242"), 404, "not_found")
    refused(await http.post("/v1/inbox/0/retry"), 422, "validation_error")
    refused(await http.get("/v1/inbox/latest"), 422, "validation_error")


async def test_the_cli_retry_is_the_same_domain_call_with_its_own_source(
    rt: Runtime, as_role: dict[str, httpx.AsyncClient]
) -> None:
    row_id = await _poison_row(as_role["operator"])
    row = await retry_inbox_row(rt.operator, row_id, by=None, source=Source.CLI)
    assert row.state == "pending"
    [record] = events(rt, "inbox_retried")
    assert (record.source, record.user, record.payload["inbox_id"]) == ("cli", None, row_id)


# -- approvals and effects -------------------------------------------------------------------------


async def test_one_approval_is_shown_to_admins_only(
    rt: Runtime, as_role: dict[str, httpx.AsyncClient]
) -> None:
    rt.model_factory = Flows([step(call("plisio_create_invoice", BIG)), say("It waits for approval.")])
    turn = await as_role["operator"].post(
        "/v1/chat", json={"persona": "finance", "message": "Invoice 400 USD"}
    )
    approval_id = turn.json()["tool_calls"][0]["approval_id"]
    shown = (await as_role["admin"].get(f"/v1/approvals/{approval_id}")).json()["approval"]
    assert (shown["status"], shown["user_id"], shown["arguments"]["source_amount"]) == (
        "pending",
        OPERATOR,
        "400",
    )
    refused(await as_role["operator"].get(f"/v1/approvals/{approval_id}"), 403, "forbidden")
    refused(await as_role["admin"].get("/v1/approvals/nope"), 404, "not_found")
    assert "unknown value 'bogus' (fix: use one of pending, approved," in refused(
        await as_role["admin"].get("/v1/approvals", params={"status": "bogus"}), 422, "validation_error"
    )

    effect = (await as_role["admin"].get(f"/v1/effects/{approval_id}")).json()["effect"]
    assert (effect["state"], effect["needs_approval"], effect["key"]) == (
        "held",
        True,
        f"chat:{shown['conversation_id']}#0",
    )
    assert "nothing to resolve" in refused(
        await as_role["admin"].post(f"/v1/effects/{approval_id}/resolve"), 409, "conflict"
    )
    approved = await as_role["approver"].post(
        f"/v1/approvals/{approval_id}/approve", json={"note": "checked"}
    )
    assert approved.json()["approval"]["status"] == "executed"
    after = (await as_role["admin"].get(f"/v1/approvals/{approval_id}")).json()["approval"]
    assert (after["status"], after["decided_by"], after["decision_note"]) == ("executed", APPROVER, "checked")


async def test_effects_are_listed_filtered_and_an_unresolved_one_is_looked_up(
    rt: Runtime, as_role: dict[str, httpx.AsyncClient]
) -> None:
    """An effect left ``claimed`` (its process died before the answer) that Plisio has: resolved applied."""
    arguments = {"order_name": "Lost answer", "source_amount": "40", "source_currency": "USD"}
    intent = Intent(
        key=EffectKey("chat:conv_lost", "0"), tool="plisio_create_invoice", persona="finance", user=OPERATOR,
        conversation_id="conv_lost", source="http", model_call_id="call_lost", arguments_json=json.dumps(arguments),
        arguments_hash=arguments_hash(arguments), reason="40 USD within caps", amount=Decimal("40"), currency="USD",
    )  # fmt: skip
    ledger = rt.dispatcher.effects.ledger
    claimed = ledger.claim(intent, day="2026-11-24", cap=None).effect
    assert claimed is not None and claimed.state is State.CLAIMED
    http = as_role["admin"]
    unresolved = (await http.get("/v1/effects", params={"state": "unresolved"})).json()
    assert [e["id"] for e in unresolved["effects"]] == [claimed.id]
    assert (await http.get("/v1/effects", params={"state": "applied"})).json()["count"] == 0
    assert "unresolved" in refused(
        await http.get("/v1/effects", params={"state": "bogus"}), 422, "validation_error"
    )
    refused(await as_role["operator"].get("/v1/effects"), 403, "forbidden")
    refused(await as_role["operator"].post(f"/v1/effects/{claimed.id}/resolve"), 403, "forbidden")
    refused(await http.get("/v1/effects/nope"), 404, "not_found")
    refused(await http.post("/v1/effects/nope/resolve"), 404, "not_found")

    still = (await http.post(f"/v1/effects/{claimed.id}/resolve")).json()["effect"]
    assert still["state"] == "claimed", "not at Plisio yet: left for the sweep to decide"
    await rt.plisio.client.create_invoice(
        order_number=claimed.order_number, order_name="Lost answer", source_currency="USD",
        source_amount=Decimal("40"), currency="BTC",
    )  # fmt: skip
    resolved = (await http.post(f"/v1/effects/{claimed.id}/resolve")).json()["effect"]
    assert resolved["state"] == "applied" and "found at Plisio" in resolved["reason"]
    [record] = events(rt, "effect_resolved")
    assert (record.source, record.payload["effect_id"], record.decision) == ("http", claimed.id, "applied")
    refused(await http.post(f"/v1/effects/{claimed.id}/resolve"), 409, "conflict")
