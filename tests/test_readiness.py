"""Liveness and readiness: /livez answers while the process does; /readyz turns unready on a stale schema, a
dead worker and an old backlog, and says which check failed without revealing the store."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from persona.app import Runtime
from persona.clock import utcnow
from persona.heartbeats import Heartbeats
from persona.inbox import Callback, Inbox
from persona.server import create_app
from persona.settings import ReadinessSettings
from persona.store.engine import Store
from persona.store.schema import prepare
from persona.worker import Worker
from tests.harness import build_runtime, repo_settings
from tests.test_server import client
from tools.plisio.sandbox import Sandbox

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, at: datetime = T0) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def rt(store: Store, sandbox: Sandbox, clock: Clock) -> Iterator[Runtime]:
    runtime = build_runtime(store, sandbox, now=clock)
    yield runtime
    runtime.audit.close()


async def ready(rt: Runtime) -> tuple[int, dict[str, Any]]:
    async with client(create_app(rt, start_worker=False)) as http:
        answer = await http.get("/readyz")
        return answer.status_code, answer.json()


def enqueue(rt: Runtime, txn: str, at: datetime) -> None:
    fields = {"txn_id": txn, "status": "expired"}
    Inbox(rt.store).record(
        source="callback", body=txn.encode(), encoding="form", fields=fields,
        callback=Callback(txn_id=txn, status="expired", fields=fields), error=None, now=at,
    )  # fmt: skip


async def test_liveness_needs_nothing_but_the_process(rt: Runtime) -> None:
    rt.store.engine.dispose()
    async with client(create_app(rt, start_worker=False)) as http:
        for path in ("/livez", "/healthz"):
            answer = await http.get(path)
            assert (answer.status_code, answer.json()) == (200, {"status": "ok"})


async def test_ready_with_a_beating_worker_and_no_backlog(rt: Runtime, clock: Clock) -> None:
    Heartbeats(rt.store).beat("w1", clock.at - timedelta(seconds=3))
    status, body = await ready(rt)
    assert status == 200 and body["status"] == "ready"
    assert body["checks"]["worker"] == {"ok": True, "detail": "last heartbeat 3 s ago"}
    assert body["checks"]["backlog"] == {"ok": True, "detail": "no callback is waiting"}


async def test_no_worker_or_a_silent_one_is_unready(rt: Runtime, clock: Clock) -> None:
    status, body = await ready(rt)
    assert status == 503 and body["status"] == "unready"
    assert body["checks"]["worker"]["detail"].startswith("no worker is running on this store")
    Heartbeats(rt.store).beat("w1", clock.at - timedelta(seconds=95))
    status, body = await ready(rt)
    assert status == 503
    assert body["checks"]["worker"] == {
        "ok": False,
        "detail": "the last worker heartbeat was 95 s ago (limit 30 s)",
    }
    Heartbeats(rt.store).stopped("w1", clock.at)
    assert (await ready(rt))[1]["checks"]["worker"]["detail"].startswith("no worker is running")


async def test_a_store_without_workers_by_design_is_ready_without_one(store: Store, sandbox: Sandbox) -> None:
    settings = repo_settings()
    server = settings.server.model_copy(update={"ready": ReadinessSettings(expect_worker=False)})
    runtime = build_runtime(store, sandbox, settings=settings.model_copy(update={"server": server}))
    try:
        status, body = await ready(runtime)
        assert status == 200 and body["checks"]["worker"]["ok"]
    finally:
        runtime.audit.close()


async def test_an_old_backlog_is_unready(rt: Runtime, clock: Clock) -> None:
    Heartbeats(rt.store).beat("w1", clock.at)
    enqueue(rt, "T-young", clock.at - timedelta(seconds=10))
    assert (await ready(rt))[0] == 200
    enqueue(rt, "T-old", clock.at - timedelta(seconds=400))
    status, body = await ready(rt)
    assert status == 503
    assert body["checks"]["backlog"] == {
        "ok": False,
        "detail": "2 callback(s) waiting, the oldest for 400 s (limit 300 s)",
    }


async def test_a_stale_schema_is_unready_and_names_the_revisions(rt: Runtime, clock: Clock) -> None:
    Heartbeats(rt.store).beat("w1", clock.at)
    with rt.store.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    status, body = await ready(rt)
    assert status == 503 and set(body["checks"]) == {"store", "schema"}
    assert body["checks"]["schema"]["detail"].startswith("revision 0001, this release needs 0002 (behind)")


async def test_a_store_that_does_not_answer_is_unready_and_says_no_more(rt: Runtime, tmp_path: Path) -> None:
    broken = Store.open(f"sqlite:///{tmp_path / 'gone' / 'db.sqlite3'}")
    prepare(broken, now=utcnow)
    broken.engine.dispose()
    shutil.rmtree(tmp_path / "gone")
    rt.store = broken  # the runtime's store vanishes under it
    status, body = await ready(rt)
    assert status == 503 and all(not c["ok"] for c in body["checks"].values())
    assert "gone" not in str(body) and "sqlite" not in str(body)


async def test_a_running_worker_beats_and_marks_its_stop(rt: Runtime) -> None:
    runner = Worker(rt.worker, schedules=False, owner="w-test")
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    for _ in range(100):
        if Heartbeats(rt.store).list():
            break
        await asyncio.sleep(0.02)
    [beat] = Heartbeats(rt.store).list()
    assert beat.owner == "w-test" and beat.stopped_at is None
    stop.set()
    await asyncio.wait_for(task, 10)
    [beat] = Heartbeats(rt.store).list()
    assert beat.stopped_at is not None
    assert Heartbeats(rt.store).latest() is None


def test_old_heartbeats_are_pruned(store: Store) -> None:
    beats = Heartbeats(store)
    beats.beat("gone", T0 - timedelta(days=2))
    beats.beat("here", T0)
    assert [b.owner for b in beats.list()] == ["here"]
