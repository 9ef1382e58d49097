"""The worker: leases, verify-by-fetch, backoff when Plisio is down, the reconciler, the scheduler.

Clocks are injected (``Clock``), Plisio is the in-process sandbox (or a transport that refuses
every connection), and the flows are a recording fake unless a test says otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from persona.app import Runtime
from persona.audit import AuditFilter
from persona.deps import FlowDeps
from persona.errors import Conflict
from persona.inbox import Inbox, Recorded, parse_callback
from persona.invoices import InvoiceStates, Transition, advance
from persona.scheduler import Job, Scheduler, cron_slot, interval_slot
from persona.settings import RetrySettings, Settings, WorkerSettings
from persona.store.engine import Store
from persona.worker import Worker
from tests.conftest import NOW
from tests.harness import build_runtime, repo_settings
from tests.test_webhooks import FakeFlows, callback_fields
from tools.plisio.sandbox import Sandbox

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self, start: datetime = NOW) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def settings_with(**worker: Any) -> Settings:
    base = repo_settings()
    plisio = base.plisio.model_copy(update={"retry": RetrySettings(max_attempts=1)})
    return base.model_copy(update={"worker": WorkerSettings(**worker), "plisio": plisio})


@pytest.fixture
def wall() -> Clock:
    return Clock()


@pytest.fixture
def rt(store: Store, sandbox: Sandbox, wall: Clock) -> Iterator[Runtime]:
    runtime = build_runtime(store, sandbox, settings=settings_with(max_attempts=3, retry_backoff_s=30, lease_s=60),
                            now=wall)  # fmt: skip
    yield runtime
    runtime.audit.close()


def enqueue(rt: Runtime, txn_id: str, status: str, now: datetime) -> Recorded:
    fields = callback_fields(txn_id, status)
    body = "&".join(f"{k}={v}" for k, v in fields.items()).encode()
    return Inbox(rt.store).record(
        source="callback", body=body, encoding="form", fields=fields, callback=parse_callback(fields), error=None,
        now=now,
    )  # fmt: skip


async def new_invoice(rt: Runtime, order: str = "1") -> str:
    created = await rt.plisio.client.create_invoice(
        order_number=order, order_name="Pro plan", currency="BTC", source_amount=Decimal("100"),
        callback_url="http://127.0.0.1:9/lost",  # every callback is lost
    )  # fmt: skip
    return created.txn_id


# -- the invoice state machine --------------------------------------------------------------------------


def test_invoice_state_only_moves_forward(store: Store) -> None:
    def offer(txn_id: str, status: str) -> Transition:
        with store.begin() as conn:
            return advance(conn, store.dialect, txn_id, status, now=NOW)

    assert offer("t1", "pending") == Transition("t1", None, "pending", "pending", True)
    assert offer("t1", "completed") == Transition("t1", "pending", "completed", "completed", True)
    late = offer("t1", "pending")
    assert (late.moved, late.stale, late.recorded) == (False, True, "completed")
    assert offer("t1", "expired").stale
    same = offer("t1", "mismatch")  # same rank: not a move, not stale either
    assert (same.moved, same.stale, same.recorded) == (False, False, "completed")
    assert offer("t2", "expired").moved and offer("t2", "completed").moved  # a late payment
    assert InvoiceStates(store).get("t1") == InvoiceStates(store).get("t2") == "completed"
    assert InvoiceStates(store).terminal(["t1", "t2", "t3"]) == {"t1", "t2"}
    with pytest.raises(ValueError, match="unknown invoice status"):
        offer("t1", "111")


# -- leases -------------------------------------------------------------------------------------------------


def test_a_claimed_row_is_taken_over_only_after_its_lease(rt: Runtime, wall: Clock) -> None:
    inbox = Inbox(rt.store)
    row_id = enqueue(rt, "6a1b2c3d4e5f60718293a4b5", "expired", wall()).id
    first = inbox.claim(owner="a", now=wall(), lease_s=60, max_attempts=3)
    assert first is not None and (first.id, first.state, first.attempts, first.lease_owner) == (
        row_id,
        "processing",
        1,
        "a",
    )
    assert inbox.claim(owner="b", now=wall(), lease_s=60, max_attempts=3) is None
    wall.advance(59)
    assert inbox.renew(row_id, owner="a", until=wall() + timedelta(seconds=60))  # a is alive: lease extended
    wall.advance(59)
    assert inbox.claim(owner="b", now=wall(), lease_s=60, max_attempts=3) is None
    wall.advance(2)  # a died: its lease lapses
    second = inbox.claim(owner="b", now=wall(), lease_s=60, max_attempts=3)
    assert second is not None and (second.id, second.attempts, second.lease_owner) == (row_id, 2, "b")
    assert not inbox.done(row_id, owner="a", now=wall(), action="recovery", plisio_status=None)  # fenced
    assert inbox.done(row_id, owner="b", now=wall(), action="recovery", plisio_status="expired")
    assert inbox.get(row_id).state == "done"


def test_claim_many_takes_the_oldest_due_rows_in_one_transaction(rt: Runtime, wall: Clock) -> None:
    inbox = Inbox(rt.store)
    ids = []
    for i in range(5):
        ids.append(enqueue(rt, f"6a1b2c3d4e5f60718293a4b{i}", "completed", wall()).id)
        wall.advance(1)
    first = inbox.claim_many(owner="a", now=wall(), lease_s=60, max_attempts=3, limit=3)
    assert [r.id for r in first] == ids[:3]
    assert {(r.state, r.attempts, r.lease_owner) for r in first} == {("processing", 1, "a")}
    rest = inbox.claim_many(owner="b", now=wall(), lease_s=60, max_attempts=3, limit=10)
    assert [r.id for r in rest] == ids[3:]
    assert inbox.claim_many(owner="c", now=wall(), lease_s=60, max_attempts=3, limit=10) == []
    assert inbox.renew_many(ids, owner="a", until=wall() + timedelta(seconds=60)) == 3  # only a's rows
    assert inbox.release(ids[:3], owner="b") == 0  # not b's to give back
    assert inbox.release(ids[:3], owner="a") == 3
    back = [inbox.get(i) for i in ids[:3]]
    assert {(r.state, r.attempts, r.lease_owner) for r in back} == {("pending", 0, None)}  # not an attempt


async def test_a_stopping_worker_gives_back_the_rows_it_did_not_start(rt: Runtime, wall: Clock) -> None:
    import asyncio

    stop = asyncio.Event()

    class StopAfterFirst(FakeFlows):
        async def handle_success(self, deps: FlowDeps, op: Any) -> None:
            await super().handle_success(deps, op)
            stop.set()  # SIGTERM arrives while the first row of the batch is processed

    ids = [enqueue(rt, f"6a1b2c3d4e5f60718293a4c{i}", "completed", wall()).id for i in range(4)]
    flows = StopAfterFirst()
    worker = Worker(rt.worker, handlers=flows, churn=None, schedules=False)
    done = await worker.drain(stop=stop)
    assert [(d.inbox_id, d.outcome) for d in done] == [(ids[0], "done")]
    inbox = Inbox(rt.store)
    assert [(inbox.get(i).state, inbox.get(i).attempts, inbox.get(i).lease_owner) for i in ids[1:]] == [
        ("pending", 0, None)
    ] * 3  # released at once, not left to a lapsing lease
    later = await Worker(rt.worker, handlers=flows, churn=None, schedules=False).drain()
    assert [d.inbox_id for d in later] == ids[1:] and len(flows.successes) == 4


def test_a_row_that_keeps_killing_its_worker_ends_failed(rt: Runtime, wall: Clock) -> None:
    inbox = Inbox(rt.store)
    row_id = enqueue(rt, "6a1b2c3d4e5f60718293a4b5", "expired", wall()).id
    for owner in ("a", "b"):
        assert inbox.claim(owner=owner, now=wall(), lease_s=60, max_attempts=2) is not None
        wall.advance(61)
    assert inbox.claim(owner="c", now=wall(), lease_s=60, max_attempts=2) is None
    row = inbox.get(row_id)
    assert row.state == "failed" and "stopped 2 times" in (row.error or "")
    assert inbox.retry(row_id, now=wall()).state == "pending"
    with pytest.raises(Conflict):
        inbox.retry(row_id, now=wall())


# -- verify by fetch ----------------------------------------------------------------------------------------


async def test_callback_says_expired_but_plisio_says_completed_no_recovery(
    rt: Runtime, sandbox: Sandbox, wall: Clock
) -> None:
    flows = FakeFlows()
    txn_id = await new_invoice(rt)
    await sandbox.pay(txn_id)  # really completed
    enqueue(rt, txn_id, "expired", wall())  # a signed but outdated claim
    [done] = await Worker(rt.worker, handlers=flows, churn=None, schedules=False).drain()
    assert (done.outcome, done.action, done.plisio_status) == ("done", "success", "completed")
    assert flows.failures == []
    assert flows.successes == [(txn_id, "completed")]
    assert InvoiceStates(rt.store).get(txn_id) == "completed"
    [audit] = rt.audit.query(AuditFilter(event="inbox_processed"))
    assert audit.source == "worker"
    assert {k: audit.payload[k] for k in ("status", "plisio_status", "action")} == {
        "status": "expired", "plisio_status": "completed", "action": "success",
    }  # fmt: skip


async def test_expired_then_a_late_payment_moves_forward(rt: Runtime, sandbox: Sandbox, wall: Clock) -> None:
    flows = FakeFlows()
    worker = Worker(rt.worker, handlers=flows, churn=None, schedules=False)
    txn_id = await new_invoice(rt)
    await sandbox.expire(txn_id)
    enqueue(rt, txn_id, "expired", wall())
    await worker.drain()
    enqueue(rt, txn_id, "completed", wall())  # Plisio credits a late payment
    await worker.drain()
    assert flows.failures == [(txn_id, "expired", "webhook")]
    assert flows.successes == [(txn_id, "completed")]
    assert InvoiceStates(rt.store).get(txn_id) == "completed"


# -- Plisio down: backoff, max attempts, operator retry ------------------------------------------------------


class Refuse(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)


async def test_plisio_down_backs_off_then_fails_and_an_operator_retries(
    store: Store, sandbox: Sandbox, rt: Runtime, wall: Clock
) -> None:
    down = build_runtime(store, sandbox, settings=rt.settings, now=wall, transport=Refuse())
    flows = FakeFlows()
    worker = Worker(down.worker, handlers=flows, churn=None, schedules=False)
    txn_id = await new_invoice(rt)
    await sandbox.expire(txn_id)
    row_id = enqueue(rt, txn_id, "expired", wall()).id
    inbox = Inbox(store)
    outcomes = []
    for delay in (30, 60):
        [result] = await worker.drain()
        outcomes.append(result.outcome)
        row = inbox.get(row_id)
        assert row.state == "pending" and row.available_at == wall() + timedelta(seconds=delay)
        assert (row.error or "").startswith("plisio_unreachable")
        assert await worker.drain() == []  # not before the backoff
        wall.advance(delay)
    [last] = await worker.drain()
    assert [*outcomes, last.outcome] == ["retry", "retry", "failed"]
    row = inbox.get(row_id)
    assert (row.state, row.attempts) == ("failed", 3)
    assert [r.id for r in inbox.list("failed")] == [row_id]
    assert len(rt.audit.query(AuditFilter(event="inbox_retry_scheduled"))) == 2
    assert len(rt.audit.query(AuditFilter(event="inbox_failed"))) == 1
    assert flows.failures == []

    inbox.retry(row_id, now=wall())  # `persona inbox retry`, once Plisio is back
    [done] = await Worker(rt.worker, handlers=flows, churn=None, schedules=False).drain()
    assert (done.outcome, done.action) == ("done", "recovery")
    assert flows.failures == [(txn_id, "expired", "webhook")]
    down.audit.close()


# -- the reconciler -----------------------------------------------------------------------------------------


async def test_reconciler_finds_a_failed_invoice_whose_callback_never_came(
    rt: Runtime, sandbox: Sandbox, wall: Clock
) -> None:
    flows = FakeFlows()
    worker = Worker(rt.worker, handlers=flows, churn=None, schedules=False)
    txn_id = await new_invoice(rt)
    report = await sandbox.cancel(txn_id)
    assert report["callback"]["status_code"] is None  # lost on the way
    found = await worker.reconcile()
    assert txn_id in found.enqueued
    assert found.too_old > 0  # the seeded shop's old failures are not drafted for
    [row] = [r for r in Inbox(rt.store).list() if r.txn_id == txn_id]
    assert (row.source, row.status, row.encoding) == ("reconciler", "cancelled", "reconciler")
    await worker.drain()
    assert (txn_id, "cancelled", "reconciler") in flows.failures
    again = await worker.reconcile()  # known terminal now: not enqueued twice
    assert txn_id not in again.enqueued and again.enqueued == []
    assert sum(1 for r in Inbox(rt.store).list(limit=1000) if r.txn_id == txn_id) == 1


async def test_an_unreadable_row_does_not_end_the_reconcilers_paging(
    store: Store, sandbox: Sandbox, wall: Clock
) -> None:
    """A full page with one row that does not read is still a full page: the failed invoice on the next
    page is found (before, the reconciler stopped at the first page that came back short)."""
    from tests.test_operations_rows import BrokenRows

    spoiled = BrokenRows(sandbox.transport(), {7: {"type": "invoice", "status": "cancelled"}})  # no id
    rt = build_runtime(store, sandbox, settings=settings_with(max_attempts=3, retry_backoff_s=30, lease_s=60),
                       now=wall, transport=spoiled)  # fmt: skip
    try:
        made = set()
        for n in range(51):  # one more cancelled invoice than a page holds
            txn_id = await new_invoice(rt, str(9900000000000000 + n))
            await sandbox.cancel(txn_id)
            made.add(txn_id)
        from tools.plisio.client import PlisioClient
        from tools.plisio.models import OperationStatus, OperationType
        from tools.plisio.sandbox import SANDBOX_API_KEY

        async with PlisioClient(SANDBOX_API_KEY, transport=sandbox.transport()) as plain:
            second = await plain.list_operations(page=2, limit=50, type=OperationType.INVOICE,
                                                 status=OperationStatus("cancelled"))  # fmt: skip
        on_page_two = [op.id for op in second.operations if op.id in made]
        assert on_page_two, "one of them is on the second page"
        found = await Worker(rt.worker, handlers=FakeFlows(), churn=None, schedules=False).reconcile()
        assert set(on_page_two) <= set(found.enqueued)
    finally:
        rt.audit.close()


# -- the scheduler ------------------------------------------------------------------------------------------


async def test_scheduler_runs_each_slot_once_across_workers_and_a_missed_slot_once(
    store: Store, wall: Clock
) -> None:
    ran: list[tuple[str, datetime]] = []

    def job(owner: str) -> Job:
        async def run(slot: datetime) -> str:
            ran.append((owner, slot))
            return "ok"

        return Job("churn_scan", cron_slot("0 6 * * 1"), run)

    wall.now = datetime(2026, 11, 23, 6, 0, 30, tzinfo=UTC)  # a Monday, just after 06:00
    a = Scheduler(store, [job("a")], now=wall, owner="a")
    b = Scheduler(store, [job("b")], now=wall, owner="b")
    assert [r.state for r in await a.tick()] == ["done"]
    assert await b.tick() == []
    wall.advance(86_400)  # Tuesday: still the same slot
    assert await a.tick() == [] and await b.tick() == []
    wall.now = datetime(2026, 12, 16, 9, 0, tzinfo=UTC)  # both down for three Mondays
    assert len(await b.tick()) == 1
    assert await a.tick() == []
    monday = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
    assert ran == [("a", monday), ("b", datetime(2026, 12, 14, 6, 0, tzinfo=UTC))]
    history = a.history("churn_scan")
    assert [(h.slot, h.state, h.owner) for h in history] == [
        (datetime(2026, 12, 14, 6, 0, tzinfo=UTC), "done", "b"), (monday, "done", "a"),
    ]  # fmt: skip


async def test_a_failed_slot_is_retried_after_a_delay(store: Store, wall: Clock) -> None:
    attempts: list[datetime] = []

    async def flaky(slot: datetime) -> None:
        attempts.append(slot)
        if len(attempts) == 1:
            raise RuntimeError("Plisio is down")

    scheduler = Scheduler(store, [Job("reconcile", interval_slot(300), flaky)], now=wall, retry_after_s=120)
    assert [(r.state, r.result) for r in await scheduler.tick()] == [
        ("failed", "RuntimeError: Plisio is down")
    ]
    wall.advance(60)
    assert await scheduler.tick() == []
    wall.advance(61)
    assert [r.state for r in await scheduler.tick()] == ["done"]
    assert attempts == [NOW, NOW]


async def test_worker_schedules_the_churn_scan_with_its_slot(rt: Runtime, wall: Clock) -> None:
    calls: list[tuple[FlowDeps, datetime]] = []

    async def scan(deps: FlowDeps, slot: datetime) -> str:
        calls.append((deps, slot))
        return "3 signals"

    worker = Worker(rt.worker, handlers=FakeFlows(), churn=scan)
    ran = await worker.scheduler.tick()
    assert sorted(r.name for r in ran) == ["churn_scan", "reconcile", "resolve_effects"]
    # NOW is Tuesday 24th: Monday's slot.
    assert calls == [(rt.flows, datetime(2026, 11, 23, 6, 0, tzinfo=UTC))]
    assert await worker.scheduler.tick() == []
    [audit] = rt.audit.query(AuditFilter(event="schedule_run", source="schedule", limit=1, newest=True))
    assert audit.decision == "done"
