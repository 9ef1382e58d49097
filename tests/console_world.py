"""A small world for the console's tests: users of each role, two recovery drafts (the model of one asked for
a link of another amount and email: code tied it to the debt), a call held for approval, a refund decision, a
churn report and a poison callback."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from pydantic import SecretStr

from persona.app import Runtime
from persona.calls import call_context
from persona.drafts import Draft
from persona.flows import churn, recovery, refunds
from persona.llm import ChatModel, ScriptedChatModel
from persona.loop import run_turn
from persona.settings import OutboundSettings
from persona.store.engine import Store
from persona.users import Users
from persona.vault import Actor
from tests.conftest import NOW
from tests.harness import build_runtime, call, say, step
from tests.test_recovery import failed_invoice, recovery_script
from tools.plisio.sandbox import Sandbox
from tools.plisio.sandbox.seed import RECENT_REFUNDABLE_ORDER_NUMBERS

ADMIN, OPERATOR, VIEWER = "ada.admin@example.com", "oscar.ops@example.com", "vera.viewer@example.com"


class Outbox(httpx.AsyncBaseTransport):
    """The merchant's outbound receiver: keeps every approved message the console sends."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.requests.append(request)
        return httpx.Response(200, text="ok")

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


@dataclass
class World:
    rt: Runtime
    sandbox: Sandbox
    outbox: Outbox
    tokens: dict[str, str]
    drafts: list[Draft] = field(default_factory=list)
    approval_id: str = ""
    chat_conversation: str = ""
    refund_id: str = ""
    churn_id: str = ""
    poison_row: int = 0


def _models(overcharge: set[str]) -> Any:
    def factory(flow: str, persona: str, facts: Mapping[str, Any]) -> ChatModel | None:
        if flow != "recovery":
            return None  # refunds and churn: the policy's and the template's words
        if facts["txn_id"] not in overcharge:
            return recovery_script(facts)
        steps = [
            step(call("plisio_create_invoice", {"order_name": facts["order_name"], "source_amount": "400",
                                                "source_currency": "USD", "email": "someone.else@example.com"})),
            say(json.dumps({"subject": "A fresh link", "body": "Hi! Please use this new link."})),
        ]  # fmt: skip
        return ScriptedChatModel(steps, name="scripted-recovery")

    return factory


async def build_world(store: Store, sandbox: Sandbox, *, now: Any = None) -> World:
    rt = build_runtime(store, sandbox, now=now or (lambda: NOW))
    outbox = Outbox()
    rt.settings = rt.settings.model_copy(
        update={"outbound": OutboundSettings(webhook_url="https://crm.example/hooks/persona"),
                "outbound_secret": SecretStr("s3cret-outbound")}
    )  # fmt: skip
    rt.outbound_transport = outbox
    users, actor = Users(rt.store, rt.audit, rt.now), Actor("cli", "test-setup")
    tokens = {}
    for email, role in ((ADMIN, "admin"), (OPERATOR, "operator"), (VIEWER, "viewer")):
        users.add(email, role, actor)
        tokens[role] = users.issue_token(email, actor)
    world = World(rt, sandbox, outbox, tokens)
    good, bad = await failed_invoice(rt, sandbox), await failed_invoice(rt, sandbox)
    rt.model_factory = _models({bad.id})  # type: ignore[assignment]
    for op in (good, bad):
        draft = await recovery.handle_failure(rt.flows, op, trigger="webhook")
        assert draft is not None
        world.drafts.append(draft)
    world.chat_conversation, world.approval_id = await _held_call(rt)
    op = await _invoice(rt, RECENT_REFUNDABLE_ORDER_NUMBERS[2])
    world.refund_id = (
        await refunds.triage(
            rt.flows, txn_id=op.id, reason="ordered twice", requested_by=OPERATOR, trigger="http"
        )
    ).id
    world.churn_id = (await churn.scan(rt.flows, trigger="cli", requested_by=OPERATOR)).id
    world.poison_row = _poison(rt, now=rt.now())
    return world


async def _held_call(rt: Runtime) -> tuple[str, str]:
    """The operator asks the finance persona for a 600 USD invoice: above 250, so it waits for an admin."""
    model = ScriptedChatModel(
        [step(call("plisio_create_invoice", {"order_name": "Acme — yearly plan", "source_amount": "600",
                                             "source_currency": "USD", "email": "billing@acme.example"})),
         say("The 600 USD invoice for Acme waits for an admin's approval.")], name="scripted-finance",
    )  # fmt: skip
    ctx = call_context(rt.settings, "finance", OPERATOR, conversation_id="conv_console_demo", source="http")
    result = await run_turn(model=model, dispatcher=rt.dispatcher, ctx=ctx, system_prompt="You help.",
                            history=[], user_message="Invoice Acme 600 USD for the yearly plan, please.")  # fmt: skip
    held = [c for c in result.calls if c.approval_id]
    assert len(held) == 1, result.calls
    return ctx.conversation_id, str(held[0].approval_id)


async def _invoice(rt: Runtime, order_number: str) -> Any:
    page = await rt.plisio.client.list_operations(search=order_number, limit=10)
    return next(op for op in page.operations if op.params and op.params.order_number == order_number
                and op.status != "cancelled duplicate")  # fmt: skip


def _poison(rt: Runtime, *, now: datetime) -> int:
    from persona.inbox import Inbox

    recorded = Inbox(rt.store).record(
        source="callback", body=b"txn_id=&status=bogus", encoding="form", fields={"txn_id": "", "status": "bogus"},
        callback=None, error="txn_id is missing", now=now,
    )  # fmt: skip
    return recorded.id


def invoices_billed_to(sandbox: Sandbox, email: str) -> int:
    """How many invoices the sandbox holds for ``email`` (an approval executed once adds one)."""
    return sum(1 for op in sandbox.state.operations.values() if op.email == email)
