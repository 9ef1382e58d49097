"""A safe first start: on a new store the scheduled reconciler leaves the shop's earlier failures alone (no
drafts, no fresh invoices nobody asked for); an operator lists them with a dry run and asks for them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest

from persona.app import Runtime
from persona.inbox import Inbox
from persona.store.engine import Store
from persona.store.schema import initialised_at, prepare
from persona.worker import Worker
from tests.conftest import NOW
from tests.fixtures_store import LONG_AGO
from tests.harness import build_runtime
from tests.test_webhooks import FakeFlows
from tools.plisio.sandbox import Sandbox

pytestmark = pytest.mark.anyio


@pytest.fixture
def fresh(store_url: str, sandbox: Sandbox) -> Iterator[Runtime]:
    """A runtime on a store first started now (the test clock's NOW)."""
    store = Store.open(store_url)
    prepare(store, now=lambda: NOW)
    runtime = build_runtime(store, sandbox, now=lambda: NOW)
    yield runtime
    runtime.audit.close()
    store.close()


async def test_a_first_start_leaves_earlier_failures_alone(fresh: Runtime, sandbox: Sandbox) -> None:
    flows = FakeFlows()
    worker = Worker(fresh.worker, handlers=flows, churn=None, schedules=False)
    assert initialised_at(fresh.store) == NOW and worker.reconcile_since() == NOW
    found = await worker.reconcile()
    assert found.seen > 0 and found.too_old == found.seen and found.enqueued == []
    assert found.since == NOW and Inbox(fresh.store).list() == []

    created = await fresh.plisio.client.create_invoice(
        order_number="1", order_name="After the start", currency="BTC", source_amount=Decimal("100"),
        callback_url="http://127.0.0.1:9/lost",
    )  # fmt: skip
    await sandbox.cancel(created.txn_id)  # fails after the first start: the reconciler's business
    assert (await worker.reconcile()).enqueued == [created.txn_id]


async def test_an_operator_lists_then_asks_for_older_failures(fresh: Runtime) -> None:
    worker = Worker(fresh.worker, handlers=FakeFlows(), churn=None, schedules=False)
    month = NOW - timedelta(days=30)
    listed = await worker.reconcile(since=month, dry_run=True)
    assert listed.enqueued and [op.id for op in listed.operations] == listed.enqueued
    assert Inbox(fresh.store).list() == [], "a dry run queues nothing"
    done = await worker.reconcile(since=month)
    assert done.enqueued == listed.enqueued
    assert {r.txn_id for r in Inbox(fresh.store).list(limit=1000)} == set(listed.enqueued)


async def test_a_store_in_use_for_long_reconciles_its_last_days(store: Store, sandbox: Sandbox) -> None:
    rt = build_runtime(store, sandbox, now=lambda: NOW)
    try:
        worker = Worker(rt.worker, handlers=FakeFlows(), churn=None, schedules=False)
        assert initialised_at(store) == LONG_AGO
        assert worker.reconcile_since() == NOW - timedelta(hours=72)  # worker.reconcile_max_age_h
    finally:
        rt.audit.close()
