"""The effects ledger beyond the fault matrix: cancellation, failing siblings, repeated and reused call ids,
the recovery flow's paths, the fail-closed policy, audit records a cancelled waiter must not lose."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from persona.app import Runtime
from persona.audit import AuditEvent, AuditFilter
from persona.calls import Outcome, call_context
from persona.effects import is_order_number
from persona.effects.keys import arguments_hash
from persona.effects.ledger import State
from persona.events import Event
from persona.flows import recovery
from persona.llm import ScriptedChatModel, ToolCall
from persona.loop import run_turn
from persona.models import Models as RuntimeModels
from persona.policy import SIDE_EFFECT_RULES, Verdict
from persona.settings import Limits
from persona.store.engine import Store
from tests.harness import build_runtime, call, say, step
from tests.test_effects_matrix import fast_settings
from tools.errors import ToolDefinitionError
from tools.plisio.args import CreateInvoiceArgs
from tools.plisio.sandbox import FaultRule, Sandbox
from tools.plisio.tools import PLISIO_TOOLS, PlisioContext, create_invoice, find_invoice
from tools.registry import Tool

pytestmark = pytest.mark.anyio

INVOICE = {"order_name": "ACME retainer", "source_amount": "40", "source_currency": "USD"}


class BrokenReads(httpx.AsyncBaseTransport):
    """A read route that raises a bug (not a network error) once armed; everything else passes."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner, self.armed = inner, False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.armed and request.url.path.startswith("/api/v1/balances/"):
            await asyncio.sleep(0.05)
            raise RuntimeError("a bug in a read")
        return await self.inner.handle_async_request(request)


@pytest.fixture
async def rt(store: Store, sandbox: Sandbox) -> AsyncIterator[Runtime]:
    runtime = build_runtime(store, sandbox)
    yield runtime
    await runtime.aclose()


def invoices(sandbox: Sandbox) -> list[Any]:
    return [op for op in list(sandbox.state.operations.values()) if is_order_number(op.order_number or "")]


async def chat(
    rt: Runtime, steps: list[Any], *, conversation_id: str | None = None, history: Any = (), **kw: Any
) -> Any:
    ctx = call_context(rt.settings, "finance", "alice@example.com", conversation_id=conversation_id)
    model = ScriptedChatModel(steps)
    result = await run_turn(
        model=model, dispatcher=rt.dispatcher, ctx=ctx, system_prompt="s", history=list(history), **kw
    )
    return result, ctx


async def test_a_cancelled_turn_still_sees_its_write_through_and_records_it(
    store: Store, sandbox: Sandbox
) -> None:
    rt = build_runtime(store, sandbox)
    try:
        sandbox.faults.add(FaultRule(path="/api/v1/invoices/new", kind="slow_after_commit", latency_ms=300))
        task = asyncio.ensure_future(chat(rt, [step(call("plisio_create_invoice", INVOICE)), say("Done.")]))
        for _ in range(200):
            if invoices(sandbox):
                break
            await asyncio.sleep(0.01)
        assert invoices(sandbox), "the invoice was committed at the sandbox"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        [effect] = rt.dispatcher.effects.ledger.find()
        assert effect.state is State.APPLIED, (
            "the write finished and was marked, though the turn was cancelled"
        )
        events = [r.event for r in rt.audit.conversation(effect.conversation_id)]
        assert Event.TOOL_CALL_SUCCEEDED in events and events[-1] == Event.TURN_FAILED
        assert rt.audit.conversation(effect.conversation_id)[-1].reason == "cancelled"
        assert len(invoices(sandbox)) == 1
    finally:
        await rt.aclose()


@pytest.mark.parametrize("source", ["approval", "recovery"])
async def test_cancelling_an_approval_or_a_flow_mid_call_still_records_the_invoice(
    store: Store, sandbox: Sandbox, source: str
) -> None:
    """The HTTP request approving a call goes away, the server's shutdown cancels the worker mid-flow."""
    rt = build_runtime(store, sandbox)
    try:
        if source == "approval":
            big = {"order_name": "Big retainer", "source_amount": "400", "source_currency": "USD"}
            held, _ = await chat(rt, [step(call("plisio_create_invoice", big)), say("held")])
            work: Any = rt.dispatcher.approve(held.calls[0].approval_id or "", by="bob@example.com")
        else:
            created = await rt.plisio.client.create_invoice(
                order_number="3001", order_name="Studio", source_currency="USD", source_amount=Decimal("240"),
                currency="BTC", email="maria.garcia@example.com",
            )  # fmt: skip
            await sandbox.expire(created.txn_id)
            op = await rt.plisio.client.get_operation(created.txn_id)
            work = recovery.handle_failure(rt.flows, op, trigger="webhook")
        sandbox.faults.add(FaultRule(path="/api/v1/invoices/new", kind="slow_after_commit", latency_ms=300))
        task = asyncio.ensure_future(work)
        for _ in range(200):
            if invoices(sandbox):
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        [effect] = rt.dispatcher.effects.ledger.find()
        assert effect.state is State.APPLIED and len(invoices(sandbox)) == 1
        records = rt.audit.query(AuditFilter(limit=1000))
        assert any(r.event == Event.TOOL_CALL_SUCCEEDED and (r.payload or {}).get("effect_id") == effect.id
                   for r in records)  # fmt: skip
        assert rt.approvals.find("approved") == []
    finally:
        await rt.aclose()


async def test_a_failing_read_cancels_its_siblings_never_the_write(store: Store, sandbox: Sandbox) -> None:
    broken = BrokenReads(sandbox.transport())
    rt = build_runtime(store, sandbox, transport=broken)
    try:
        broken.armed = True
        sandbox.faults.add(FaultRule(path="/api/v1/invoices/new", kind="slow_after_commit", latency_ms=200))
        steps = [step(call("plisio_get_balance", {"psys_cid": "BTC"}), call("plisio_create_invoice", INVOICE)),
                 say("Done.")]  # fmt: skip
        with pytest.raises(RuntimeError, match="a bug in a read"):
            await chat(rt, steps)
        [effect] = rt.dispatcher.effects.ledger.find()
        assert effect.state is State.APPLIED and len(invoices(sandbox)) == 1
        records = rt.audit.conversation(effect.conversation_id)
        assert [r.event for r in records][-1] == Event.TURN_FAILED
        assert "RuntimeError: a bug in a read" in (records[-1].reason or "")
        assert any(
            r.event == Event.TOOL_CALL_SUCCEEDED and r.tool == "plisio_create_invoice" for r in records
        )
    finally:
        await rt.aclose()


async def test_a_cancelled_audit_waiter_never_drops_the_record(rt: Runtime) -> None:
    waiter = asyncio.ensure_future(
        rt.audit.append(AuditEvent(event="tool_call_succeeded", source="chat", payload={"marker": 1}))
    )
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await rt.audit.flush()
    rt.audit.flush_sync()
    await asyncio.sleep(0.05)
    marked = [r for r in rt.audit.query(AuditFilter(limit=1000)) if (r.payload or {}).get("marker") == 1]
    assert len(marked) == 1 and rt.audit.verify().ok


async def test_the_model_repeating_a_create_gets_the_same_effect(rt: Runtime, sandbox: Sandbox) -> None:
    """Same call id, a new call id, "40" vs "40.00": one intent in one conversation, one invoice."""
    first, ctx = await chat(rt, [step(call("plisio_create_invoice", INVOICE, call_id="c1")), say("ok")])
    same_id, _ = await chat(
        rt, [step(call("plisio_create_invoice", INVOICE, call_id="c1")), say("ok")],
        conversation_id=ctx.conversation_id, history=first.messages,
    )  # fmt: skip
    other_id, _ = await chat(
        rt, [step(call("plisio_create_invoice", {**INVOICE, "source_amount": "40.00"}, call_id="c9")), say("ok")],
        conversation_id=ctx.conversation_id, history=[*first.messages, *same_id.messages],
    )  # fmt: skip
    assert first.calls[0].outcome is Outcome.SUCCEEDED
    assert same_id.calls[0].outcome is other_id.calls[0].outcome is Outcome.REPLAYED
    assert json.loads(same_id.calls[0].content)["result"]["txn_id"] == first.calls[0].data()["txn_id"]
    assert len(invoices(sandbox)) == 1 and len(rt.dispatcher.effects.ledger.find()) == 1
    [attempted] = [
        r for r in rt.audit.conversation(ctx.conversation_id) if r.event == Event.TOOL_CALL_ATTEMPTED
    ][2:]
    assert attempted.payload["seq"] == 2, "a new call number: found by its arguments, not by its key"


async def test_a_retry_after_a_lost_answer_is_answered_from_the_effect(
    store: Store, sandbox: Sandbox
) -> None:
    rt = build_runtime(store, sandbox, settings=fast_settings())
    try:
        sandbox.faults.add(FaultRule(path="/api/v1/invoices/new", kind="error_status", status=504))
        sandbox.faults.add(FaultRule(path="/api/v1/operations", kind="error_status", status=503, times=8))
        first, ctx = await chat(rt, [step(call("plisio_create_invoice", INVOICE)), say("unsure")])
        assert first.calls[0].outcome is Outcome.UNKNOWN
        content = json.loads(first.calls[0].content)
        assert content["status"] == "outcome_unknown" and "Do not call it again" in content["message"]
        retry, _ = await chat(rt, [step(call("plisio_create_invoice", INVOICE, call_id="new_id")), say("ok")],
                              conversation_id=ctx.conversation_id)  # fmt: skip
        assert retry.calls[0].outcome is Outcome.UNKNOWN, "still not known: answered, not re-sent"
        assert [r.path for r in sandbox.requests].count("/api/v1/invoices/new") == 1
        [effect] = rt.dispatcher.effects.ledger.find()
        assert (
            effect.state is State.UNKNOWN
            and rt.dispatcher.effects.ledger.spent("finance", "2026-11-24") == 40
        )
    finally:
        await rt.aclose()


async def test_a_reused_call_id_never_touches_another_effect(rt: Runtime, sandbox: Sandbox) -> None:
    """A held call's id reused for a second call: two effects; approving the first executes it once."""
    big = {"order_name": "Big retainer", "source_amount": "400", "source_currency": "USD"}
    held, ctx = await chat(rt, [step(call("plisio_create_invoice", big, call_id="dup")), say("held")])
    assert held.calls[0].outcome is Outcome.PENDING_APPROVAL
    reused, _ = await chat(rt, [step(call("plisio_create_invoice", INVOICE, call_id="dup")), say("made")],
                           conversation_id=ctx.conversation_id)  # fmt: skip
    assert reused.calls[0].outcome is Outcome.SUCCEEDED
    approval, done = await rt.dispatcher.approve(held.calls[0].approval_id or "", by="bob@example.com")
    assert (approval.status, done.outcome) == ("executed", Outcome.SUCCEEDED)
    assert len(invoices(sandbox)) == 2 and {e.state for e in rt.dispatcher.effects.ledger.find()} == {
        State.APPLIED
    }
    assert rt.audit.verify().ok


async def test_an_overlong_model_call_id_is_replaced_before_anything_is_stored(
    rt: Runtime, sandbox: Sandbox
) -> None:
    result, _ = await chat(rt, [step(ToolCall(id="x" * 5000, name="plisio_create_invoice",
                                              arguments=json.dumps(INVOICE))), say("ok")])  # fmt: skip
    [done] = result.calls
    assert done.outcome is Outcome.SUCCEEDED and len(done.call_id) <= 64
    assert "unusable" in " ".join(done.notices)
    [effect] = rt.dispatcher.effects.ledger.find()
    assert effect.model_call_id == done.call_id and len(invoices(sandbox)) == 1


async def test_recovery_makes_one_link_whatever_mix_of_model_and_template_runs(
    rt: Runtime, sandbox: Sandbox
) -> None:
    """The model creates the link, then its turn stops at a limit: the template path gets the same link."""
    client = rt.plisio.client
    created = await client.create_invoice(
        order_number="3009", order_name="Studio", source_currency="USD", source_amount=Decimal("240"),
        currency="BTC", email="maria.garcia@example.com",
    )  # fmt: skip
    await sandbox.expire(created.txn_id)
    op = await client.get_operation(created.txn_id)
    link = {"order_name": "Studio (again)", "source_amount": "240.00", "source_currency": "USD",
            "email": "maria.garcia@example.com"}  # fmt: skip
    endless = [step(call("plisio_create_invoice", link))] + [
        step(call("plisio_get_invoice", {"invoice_id": op.id}, call_id=f"r{i}")) for i in range(20)
    ]
    rt.model_factory = lambda flow, persona, facts: ScriptedChatModel(endless)
    draft = await recovery.handle_failure(rt.flows, op, trigger="webhook")
    assert draft is not None and draft.drafted_by == "template", "the turn stopped at max_steps"
    [effect] = rt.dispatcher.effects.ledger.find()
    assert effect.state is State.APPLIED and draft.payment_link and draft.new_txn_id
    assert [i.id for i in invoices(sandbox)] == [draft.new_txn_id], "one fresh link, shared by both paths"
    # A worker crash and a re-run of the flow (the draft gone from view): still the same effect.
    rerun = await rt.dispatcher.dispatch(
        ToolCall(id="fresh_link", name="plisio_create_invoice", arguments=json.dumps({**link, "source_amount": "240"})),
        call_context(rt.settings, "recovery", "system:recovery", flow_key=f"recovery:{op.id}", slots=recovery.SLOTS), seq=0,
    )  # fmt: skip
    assert rerun.outcome is Outcome.REPLAYED and rerun.data()["txn_id"] == draft.new_txn_id
    assert len(invoices(sandbox)) == 1


async def test_every_side_effect_tool_is_covered_by_the_policy(rt: Runtime) -> None:
    """Walk the registry: each side-effect tool has an amount rule, a lookup and a policy rule."""
    side_effects = [t for t in PLISIO_TOOLS if not t.read_only]
    assert side_effects, "there is at least one write tool"
    for tool in side_effects:
        assert tool.amount is not None and tool.lookup is not None, tool.name
        assert tool.side_effect in SIDE_EFFECT_RULES, tool.name
    persona = rt.settings.persona("finance")
    args = CreateInvoiceArgs(order_name="x", source_amount=Decimal("5000"), source_currency="USD")
    decision = await rt.policy.evaluate(
        persona_name="finance", persona=persona, tool=side_effects[0], args=args
    )
    assert decision.verdict is Verdict.DENY and "per-invoice cap" in decision.reason


async def test_the_policy_fails_closed_for_an_uncovered_side_effect(rt: Runtime) -> None:
    real = next(t for t in PLISIO_TOOLS if t.name == "plisio_create_invoice")
    persona = rt.settings.persona("finance")
    args = CreateInvoiceArgs(order_name="x", source_amount=Decimal("5"), source_currency="USD")
    unruled = Tool(name="plisio_create_invoice", description="d", args_model=CreateInvoiceArgs,
                   handler=create_invoice, read_only=False, side_effect="creates_invoice", lookup=find_invoice)  # fmt: skip
    unknown_kind = Tool(name="plisio_create_invoice", description="d", args_model=CreateInvoiceArgs,
                        handler=create_invoice, read_only=False, side_effect="sends_money", amount=real.amount,
                        lookup=find_invoice)  # fmt: skip
    for tool, why in ((unruled, "declares no amount rule"), (unknown_kind, "no policy rule covers")):
        decision = await rt.policy.evaluate(persona_name="finance", persona=persona, tool=tool, args=args)
        assert decision.verdict is Verdict.DENY and why in decision.reason
    with pytest.raises(ToolDefinitionError, match="must declare lookup"):
        Tool[CreateInvoiceArgs, PlisioContext](
            name="w", description="d", args_model=CreateInvoiceArgs, handler=create_invoice, read_only=False,
            side_effect="creates_invoice",
        )  # fmt: skip


def test_equal_amounts_hash_equal() -> None:
    a = CreateInvoiceArgs.model_validate({**INVOICE, "source_amount": "240"}).model_dump(mode="python")
    b = CreateInvoiceArgs.model_validate({**INVOICE, "source_amount": "240.00"}).model_dump(mode="python")
    c = CreateInvoiceArgs.model_validate({**INVOICE, "source_amount": "240.01"}).model_dump(mode="python")
    assert arguments_hash(a) == arguments_hash(b) != arguments_hash(c)


async def test_the_daily_total_counts_unknown_and_releases_failed(store: Store, sandbox: Sandbox) -> None:
    rt = build_runtime(store, sandbox, settings=fast_settings())
    try:
        sandbox.faults.add(FaultRule(path="/api/v1/invoices/new", kind="error_status", status=502))
        sandbox.faults.add(FaultRule(path="/api/v1/operations", kind="error_status", status=503, times=8))
        await chat(rt, [step(call("plisio_create_invoice", INVOICE)), say("?")])
        ledger = rt.dispatcher.effects.ledger
        assert ledger.spent("finance", "2026-11-24") == 40
        limits = Limits(max_steps=3)
        over = {"order_name": "Other", "source_amount": "999", "source_currency": "USD"}
        result, _ = await chat(rt, [step(call("plisio_create_invoice", over)), say("?")], limits=limits)
        assert result.calls[0].outcome is Outcome.PENDING_APPROVAL  # above 250: held, nothing reserved
        assert ledger.spent("finance", "2026-11-24") == 40
        sandbox.faults.add(FaultRule(path="/api/v1/invoices/new", kind="rate_limit"))  # a definite "no"
        refused, _ = await chat(rt, [step(call("plisio_create_invoice", {**INVOICE, "order_name": "Third"})),
                                     say("?")])  # fmt: skip
        assert refused.calls[0].outcome is Outcome.FAILED
        assert ledger.spent("finance", "2026-11-24") == 40, "the failed one released its 40"
        states = sorted(e.state.value for e in ledger.find())
        assert states == ["failed", "held", "unknown"]
    finally:
        await rt.aclose()


# -- duplicate HTTP requests --------------------------------------------------------------------------


def invoice_script() -> list[Any]:
    """What a model says to "invoice ACME 40 USD": the same call every time it is asked (as a scripted
    model must; a real one would pick another call id, which changes nothing: the arguments are the same)."""
    return [step(call("plisio_create_invoice", INVOICE, call_id="inv")), say("Invoice created.")]


async def test_a_retried_chat_request_with_an_idempotency_key_runs_once(
    store: Store, sandbox: Sandbox
) -> None:
    import dataclasses

    from persona.server import create_app
    from tests.harness import bearer

    rt = build_runtime(store, sandbox)
    made: list[ScriptedChatModel] = []

    def factory(flow: str, persona: str, facts: Any) -> ScriptedChatModel:
        made.append(ScriptedChatModel(invoice_script()))
        return made[-1]

    app = create_app(dataclasses.replace(rt, models=RuntimeModels(rt.settings, factory)), start_worker=False)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p.test",
                                     headers=bearer(rt)) as http:  # fmt: skip
            body = {"persona": "finance", "message": "invoice ACME 40 USD"}
            key = {"Idempotency-Key": "7f0c2a34-retry-1"}
            first = await http.post("/v1/chat", json=body, headers=key)
            again = await http.post("/v1/chat", json=body, headers=key)
            assert first.status_code == again.status_code == 200, first.text
            assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
            assert len(made) == 1, "the retry did not run the turn again"
            other = await http.post("/v1/chat", json={**body, "message": "invoice ACME 41 USD"}, headers=key)
            assert other.status_code == 409 and "another request body" in other.json()["error"]["message"]
            bad = await http.post("/v1/chat", json=body, headers={"Idempotency-Key": "has space"})
            assert bad.status_code == 400 and "visible ASCII" in bad.json()["error"]["message"]
            # Without a key, a re-sent request in the same conversation is a new turn; the model asks for
            # the same invoice again and gets the one it made: still one invoice.
            conv = first.json()["conversation_id"]
            plain = await http.post("/v1/chat", json={**body, "conversation_id": conv})
            assert plain.status_code == 200 and plain.json()["tool_calls"][0]["outcome"] == "replayed"
        assert len(invoices(sandbox)) == 1
    finally:
        await rt.aclose()


# -- a process killed between claim and mark ------------------------------------------------------------


@pytest.mark.parametrize("arrived", [True, False], ids=["killed-after-send", "killed-before-commit"])
@pytest.mark.slow
async def test_an_approval_whose_process_is_killed_mid_call_is_resolved_by_the_sweep(
    tmp_path: Any, arrived: bool
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time
    from datetime import UTC, datetime, timedelta

    from persona.config import load_settings
    from tests.harness import REPO
    from tests.test_worker_kill import write_config
    from tools.plisio.sandbox import LoopbackServer

    box = Sandbox(seed=7)
    with LoopbackServer(box.app) as server:
        cfg = write_config(tmp_path, server.base_url, "http://127.0.0.1:9")
        rt = Runtime.build(load_settings(cfg))
        try:
            big = {"order_name": "Big retainer", "source_amount": "400", "source_currency": "USD"}
            held, _ = await chat(rt, [step(call("plisio_create_invoice", big)), say("held")])
            approval_id = held.calls[0].approval_id
            assert approval_id is not None
            # Sent and committed, the answer slow; or held at a gateway that never passes it on.
            kind = "slow_after_commit" if arrived else "error_status"
            box.faults.add(FaultRule(path="/api/v1/invoices/new", kind=kind, latency_ms=60_000))
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
            child = subprocess.Popen(
                [sys.executable, "-m", "persona", "--config", str(cfg), "approvals", "approve", approval_id,
                 "--by", "bob@example.com"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 60
                while not any(r.path == "/api/v1/invoices/new" for r in box.requests):
                    assert time.monotonic() < deadline and child.poll() is None, child.stdout
                    await asyncio.sleep(0.05)
                effect = rt.dispatcher.effects.ledger.get(approval_id)
                assert effect.state is State.CLAIMED, "approved and sent, no outcome yet"
                os.kill(child.pid, signal.SIGKILL)
                assert child.wait(timeout=10) == -signal.SIGKILL
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait(timeout=10)
                if child.stdout is not None:
                    child.stdout.close()  # else a ResourceWarning (unclosed pipe) when it is collected
            box.faults.clear()
            assert (box.state.by_order_number(effect.order_number) is not None) is arrived
            assert rt.approvals.get(approval_id).status == "approved", "cut off half-way"
        finally:
            await rt.aclose()
        later = datetime.now(UTC) + timedelta(hours=1)
        rt = Runtime.build(load_settings(cfg), now=lambda: later)
        try:
            [resolved] = await rt.dispatcher.effects.sweep()
            assert resolved.state is (State.APPLIED if arrived else State.FAILED)
            assert rt.approvals.get(approval_id).status == ("executed" if arrived else "failed")
            day = resolved.day or ""
            assert rt.dispatcher.effects.ledger.spent("finance", day) == (Decimal(400) if arrived else 0)
            assert sum(
                1 for op in list(box.state.operations.values()) if op.order_number == resolved.order_number
            ) == (1 if arrived else 0)
            assert rt.audit.verify().ok
        finally:
            await rt.aclose()


async def test_an_answer_that_arrives_after_the_sweep_gave_up_still_counts(
    store: Store, sandbox: Sandbox
) -> None:
    """The sweep concludes "not there" while the request is still held up; then Plisio makes the invoice
    and answers: the effect is applied and its amount counted again, not left failed."""
    from datetime import timedelta

    from tests.conftest import NOW
    from tests.test_effects_matrix import Clock

    clock = Clock()
    settings = fast_settings()
    personas = {
        n: p.model_copy(update={"limits": p.limits.model_copy(update={"tool_timeout_s": 5.0})})
        for n, p in settings.personas.items()
    }
    rt = build_runtime(store, sandbox, settings=settings.model_copy(update={"personas": personas}), now=clock)
    try:
        sandbox.faults.add(FaultRule(path="/api/v1/invoices/new", kind="latency", latency_ms=400))
        task = asyncio.ensure_future(chat(rt, [step(call("plisio_create_invoice", INVOICE)), say("ok")]))
        ledger = rt.dispatcher.effects.ledger
        for _ in range(200):
            if ledger.find() and any(r.path == "/api/v1/invoices/new" for r in sandbox.requests):
                break
            await asyncio.sleep(0.01)
        clock.now = NOW + timedelta(seconds=30)
        [gave_up] = await rt.dispatcher.effects.sweep()
        assert gave_up.state is State.FAILED and ledger.spent("finance", "2026-11-24") == 0
        result, _ = await task
        assert result.calls[0].outcome is Outcome.SUCCEEDED
        [effect] = ledger.find()
        assert effect.state is State.APPLIED and ledger.spent("finance", "2026-11-24") == 40
        assert len(invoices(sandbox)) == 1
    finally:
        await rt.aclose()


async def test_a_lost_answer_whose_invoice_expired_meanwhile_is_failed_not_applied(
    store: Store, sandbox: Sandbox
) -> None:
    """The create committed, its answer was lost and the lookup could not look; by the sweep the invoice
    under the effect's order number has expired: that is not the invoice asked for, so the effect fails
    (with that reason) and its amount is released, instead of a dead link being counted as made."""
    from datetime import timedelta

    from tests.conftest import NOW
    from tests.test_effects_matrix import Clock

    clock = Clock()
    rt = build_runtime(store, sandbox, settings=fast_settings(), now=clock)
    try:
        sandbox.faults.add(FaultRule(path="/api/v1/invoices/new", kind="drop_after_commit", times=1))
        sandbox.faults.add(FaultRule(path="/api/v1/operations", kind="error_status", status=503, times=20))
        result, _ = await chat(rt, [step(call("plisio_create_invoice", INVOICE)), say("sent")])
        assert result.calls[0].outcome is Outcome.UNKNOWN
        [made] = invoices(sandbox)
        await sandbox.expire(made.id)
        sandbox.faults.clear()
        clock.now = NOW + timedelta(hours=1)
        [resolved] = await rt.dispatcher.effects.sweep()
        assert resolved.state is State.FAILED
        assert resolved.reason is not None and "is not the one asked for: it is expired" in resolved.reason
        assert rt.dispatcher.effects.ledger.spent("finance", "2026-11-24") == 0
        assert rt.audit.verify().ok
    finally:
        await rt.aclose()
