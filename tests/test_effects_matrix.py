"""The fault matrix: ``plisio_create_invoice`` from chat, from an approval and from the recovery flow, against
every way a write can go wrong at the edge, over the real httpx client and the sandbox's fault injection.

For every cell: exactly one invoice at the sandbox (zero where the request never arrived), the effect's
final state and the daily reservation right (after the sweep, for outcomes first seen as unknown), an
audit record of the outcome, and no approval left ``approved``. Runs on SQLite, and on PostgreSQL when
``PERSONA_TEST_POSTGRES_URL`` is set.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from persona.app import Runtime
from persona.audit import AuditFilter
from persona.calls import call_context
from persona.drafts import Draft, DraftStore
from persona.effects.ledger import Effect, State
from persona.errors import EffectUnresolved
from persona.events import Event
from persona.flows import recovery
from persona.llm import ScriptedChatModel
from persona.loop import run_turn
from persona.settings import Settings
from persona.store.engine import Store
from tests.conftest import NOW
from tests.harness import build_runtime, call, repo_settings, say, step
from tools.plisio.sandbox import FaultRule, Sandbox

pytestmark = pytest.mark.anyio

NEW = "/api/v1/invoices/new"
TOOL_TIMEOUT_S = 0.4


@dataclass
class Clock:
    """The runtime's wall clock; the test moves it past ``effects.resolve_after_s`` before sweeping."""

    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now


class ConnectRefused(httpx.AsyncBaseTransport):
    """In front of the sandbox: ``/invoices/new`` never connects (the request never leaves)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner, self.refusing, self.refused = inner, False, 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.refusing and request.url.path == NEW:
            self.refused += 1
            raise httpx.ConnectError("connection refused", request=request)
        return await self.inner.handle_async_request(request)


def fast_settings() -> Settings:
    """The repo's config with a short tool timeout and quick retries, so a cell takes milliseconds."""
    base = repo_settings()
    personas = {
        name: p.model_copy(update={"limits": p.limits.model_copy(update={"tool_timeout_s": TOOL_TIMEOUT_S})})
        for name, p in base.personas.items()
    }
    retry = base.plisio.retry.model_copy(update={"max_attempts": 2, "base_delay": 0.0, "max_delay": 0.0})
    return base.model_copy(
        update={
            "personas": personas,
            "plisio": base.plisio.model_copy(update={"retry": retry}),
            "effects": base.effects.model_copy(update={"resolve_after_s": 1.0}),
        }
    )


@dataclass(frozen=True)
class Cell:
    rules: tuple[FaultRule, ...] = ()
    refuse_connect: bool = False
    arrives: bool = True
    """The request reaches the sandbox and is committed there."""
    first: State = State.APPLIED
    """What the call itself ends as, before any sweep."""


CELLS = {
    "calm": Cell(),
    "fail-before-send": Cell(refuse_connect=True, arrives=False, first=State.FAILED),
    "drop-after-commit": Cell((FaultRule(path=NEW, kind="drop_after_commit"),)),
    "timeout-after-send": Cell((FaultRule(path=NEW, kind="slow_after_commit", latency_ms=1500),)),
    "502": Cell((FaultRule(path=NEW, kind="error_status", status=502),), arrives=False, first=State.UNKNOWN),
    "503": Cell((FaultRule(path=NEW, kind="error_status", status=503),), arrives=False, first=State.UNKNOWN),
    "504": Cell((FaultRule(path=NEW, kind="html", status=504),), arrives=False, first=State.UNKNOWN),
    "502-after-commit": Cell((FaultRule(path=NEW, kind="error_after_commit", status=502),)),
    "504-after-commit": Cell((FaultRule(path=NEW, kind="error_after_commit", status=504),)),
    "truncated-answer": Cell((FaultRule(path=NEW, kind="truncated"),)),
    # The answer is lost and the inline lookup cannot be made: unknown until the sweep finds it.
    "drop-and-lookup-down": Cell(
        (
            FaultRule(path=NEW, kind="drop_after_commit"),
            FaultRule(path="/api/v1/operations", kind="error_status", status=503, times=8),
        ),
        first=State.UNKNOWN,
    ),
}


@dataclass
class Kit:
    rt: Runtime
    sandbox: Sandbox
    clock: Clock
    refuser: ConnectRefused
    retry: Callable[[], Awaitable[Draft | None]] | None = None
    """For a recovery flow that had to wait for its link: run it again (as the worker would)."""


@pytest.fixture
async def kit(store: Store, sandbox: Sandbox) -> Any:
    clock = Clock()
    refuser = ConnectRefused(sandbox.transport())
    rt = build_runtime(store, sandbox, settings=fast_settings(), now=clock, transport=refuser)
    yield Kit(rt, sandbox, clock, refuser)
    await rt.aclose()


def arm(kit: Kit, cell: Cell) -> Callable[[], None]:
    for rule in cell.rules:
        kit.sandbox.faults.add(rule)
    kit.refuser.refusing = cell.refuse_connect

    def disarm() -> None:
        kit.sandbox.faults.clear()
        kit.refuser.refusing = False

    return disarm


def invoices_for(sandbox: Sandbox, order_number: str) -> int:
    return sum(1 for op in list(sandbox.state.operations.values()) if op.order_number == order_number)


async def from_chat(kit: Kit, cell: Cell) -> Effect:
    model = ScriptedChatModel(
        [step(call("plisio_create_invoice", {"order_name": "ACME retainer", "source_amount": "40.00",
                                             "source_currency": "USD"})), say("Done.")]
    )  # fmt: skip
    ctx = call_context(kit.rt.settings, "finance", "alice@example.com")
    disarm = arm(kit, cell)
    try:
        result = await run_turn(model=model, dispatcher=kit.rt.dispatcher, ctx=ctx, system_prompt="s")
    finally:
        disarm()
    [done] = result.calls
    assert done.effect_id is not None
    return kit.rt.dispatcher.effects.ledger.get(done.effect_id)


async def from_approval(kit: Kit, cell: Cell) -> Effect:
    model = ScriptedChatModel(
        [step(call("plisio_create_invoice", {"order_name": "Big retainer", "source_amount": "400",
                                             "source_currency": "USD"})), say("It awaits approval.")]
    )  # fmt: skip
    ctx = call_context(kit.rt.settings, "finance", "alice@example.com")
    result = await run_turn(model=model, dispatcher=kit.rt.dispatcher, ctx=ctx, system_prompt="s")
    [held] = result.calls
    assert held.approval_id is not None
    disarm = arm(kit, cell)
    try:
        _, done = await kit.rt.dispatcher.approve(held.approval_id, by="bob@example.com")
    finally:
        disarm()
    assert done.effect_id == held.approval_id
    return kit.rt.dispatcher.effects.ledger.get(held.approval_id)


async def from_recovery(kit: Kit, cell: Cell) -> Effect:
    client = kit.rt.plisio.client
    created = await client.create_invoice(
        order_number="3000", order_name="Northwind Studio", source_currency="USD", source_amount=Decimal("240"),
        currency="BTC", email="maria.garcia@example.com",
    )  # fmt: skip
    await kit.sandbox.expire(created.txn_id)
    op = await client.get_operation(created.txn_id)
    disarm = arm(kit, cell)
    try:
        # No model: the template path.
        draft = await recovery.handle_failure(kit.rt.flows, op, trigger="webhook")
    except EffectUnresolved:
        draft = None  # the link's outcome is not known: no draft without it; the worker retries the flow
    finally:
        disarm()
    [effect] = kit.rt.dispatcher.effects.ledger.find()
    assert effect.namespace == f"recovery:{op.id}" and effect.slot == "fresh_link"
    if effect.state is State.UNKNOWN:
        assert draft is None and DraftStore(kit.rt.store).for_invoice(op.id) == []
        kit.retry = lambda: recovery.handle_failure(kit.rt.flows, op, trigger="webhook")
    else:
        assert draft is not None and (draft.payment_link is not None) == (effect.state is State.APPLIED)
    return effect


SOURCES = {"chat": from_chat, "approval": from_approval, "recovery": from_recovery}


@pytest.mark.parametrize("cell_name", list(CELLS))
@pytest.mark.parametrize("source", list(SOURCES))
async def test_fault_matrix(kit: Kit, source: str, cell_name: str) -> None:
    cell = CELLS[cell_name]
    effect = await SOURCES[source](kit, cell)
    ledger = kit.rt.dispatcher.effects.ledger
    persona, day = effect.persona, NOW.date().isoformat()
    assert effect.state is cell.first, f"{source}/{cell_name}: the call ended {effect.state}"
    assert invoices_for(kit.sandbox, effect.order_number) == (1 if cell.arrives else 0)
    held_back = effect.amount if effect.state is not State.FAILED else Decimal(0)
    assert ledger.spent(persona, day) == held_back, "unknown keeps its reservation, failed releases it"

    kit.clock.now = NOW + timedelta(seconds=30)  # past effects.resolve_after_s
    await kit.rt.dispatcher.effects.sweep()
    final = ledger.get(effect.id)
    expected = State.APPLIED if cell.arrives else State.FAILED
    assert final.state is expected
    assert invoices_for(kit.sandbox, effect.order_number) == (1 if cell.arrives else 0), (
        "the sweep never sends"
    )
    assert ledger.spent(persona, day) == (final.amount if cell.arrives else Decimal(0))

    records = kit.rt.audit.query(AuditFilter(limit=1000))
    outcome_events = {Event.TOOL_CALL_SUCCEEDED, Event.TOOL_CALL_FAILED, Event.TOOL_CALL_DENIED,
                      Event.EFFECT_RESOLVED}  # fmt: skip
    mine = [
        r for r in records if (r.payload or {}).get("effect_id") == effect.id and r.event in outcome_events
    ]
    assert mine, "the outcome is audited"
    last = mine[-1]
    if last.event == Event.EFFECT_RESOLVED:
        assert last.decision == expected.value
    else:
        assert (last.event == Event.TOOL_CALL_SUCCEEDED) is cell.arrives
    assert kit.rt.approvals.find("approved") == [], "no approval left half-done"
    if source == "approval":
        status = kit.rt.approvals.get(effect.id).status
        assert status == ("executed" if cell.arrives else "failed")
    if kit.retry is not None:  # the worker's retry of the flow, once the link is resolved
        draft = await kit.retry()
        assert draft is not None and draft.new_txn_id is not None and draft.payment_link
        assert kit.sandbox.state.operations[draft.new_txn_id].order_number == effect.order_number
        assert invoices_for(kit.sandbox, effect.order_number) == 1
    assert kit.rt.audit.verify().ok
