"""Scheduled jobs (the churn scan on a cron, the reconciler on an interval), once per slot.

A slot is the scheduled time a run is for. ``schedule_runs`` has ``(name, slot)`` as its
primary key and a run starts only by inserting that row (``ON CONFLICT DO NOTHING``), so two
workers never run the same slot. Only the latest slot at or before now is ever considered:
a worker that was down for three slots runs the job once when it comes back, not three times.

A failed slot is retried after ``retry_after_s`` until the next slot supersedes it; a slot left
``running`` by a worker that died is taken over after ``stale_after_s`` (the job's own
idempotency key, e.g. ``churn_scan:<slot>``, keeps the takeover from doubling its output).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from persona.audit import AuditEvent, AuditLog
from persona.clock import as_utc
from persona.events import Source, WorkerEvent
from persona.store.engine import Store
from persona.store.flow_tables import schedule_runs
from tools.redaction import scrub

log = structlog.get_logger(__name__)

SlotOf = Callable[[datetime], datetime | None]
"""The latest slot at or before the given time (None: the job is disabled)."""
JobRun = Callable[[datetime], Awaitable[Any]]
"""Runs the job for a slot; whatever it returns is summarised into ``schedule_runs.result``."""


def cron_slot(expression: str | None) -> SlotOf:
    """Slots of a five-field cron expression, in UTC."""

    def slot(now: datetime) -> datetime | None:
        if not expression:
            return None
        from croniter import croniter

        # croniter's get_prev is strictly before its start: nudge the start so "now" itself counts.
        base = as_utc(now).astimezone(UTC) + timedelta(microseconds=1)
        found: datetime = croniter(expression, base).get_prev(datetime)
        return as_utc(found)

    return slot


def interval_slot(seconds: float) -> SlotOf:
    """Slots every ``seconds`` since the Unix epoch, so every worker computes the same ones."""

    def slot(now: datetime) -> datetime | None:
        stamp = as_utc(now).timestamp()
        return datetime.fromtimestamp(stamp - stamp % seconds, UTC)

    return slot


@dataclass(frozen=True)
class Job:
    name: str
    slot: SlotOf
    run: JobRun
    keep: timedelta | None = None
    """Prune this job's history older than this (frequent jobs); None keeps it all."""


@dataclass(frozen=True)
class SlotRun:
    name: str
    slot: datetime
    state: str  # done | failed
    result: str | None


@dataclass(frozen=True)
class ScheduleRun:
    name: str
    slot: datetime
    state: str
    owner: str
    started_at: datetime
    finished_at: datetime | None
    result: str | None


class Scheduler:
    """Runs each due job's latest slot at most once across all workers sharing the store."""

    def __init__(
        self,
        store: Store,
        jobs: Sequence[Job],
        *,
        now: Callable[[], datetime],
        owner: str | None = None,
        audit: AuditLog | None = None,
        retry_after_s: float = 300.0,
        stale_after_s: float = 3600.0,
    ) -> None:
        self.store, self.jobs, self.now, self.audit = store, list(jobs), now, audit
        self.owner = owner or f"scheduler-{uuid.uuid4().hex[:8]}"
        self.retry_after = timedelta(seconds=retry_after_s)
        self.stale_after = timedelta(seconds=stale_after_s)
        self._settled: dict[str, datetime] = {}
        """Per job, a slot known to be done: later ticks skip it without touching the store."""

    async def tick(self) -> list[SlotRun]:
        """Run every job whose latest slot nobody has run (or whose run failed or was abandoned)."""
        ran: list[SlotRun] = []
        for job in self.jobs:
            now = as_utc(self.now())
            slot = job.slot(now)
            if slot is None or self._settled.get(job.name) == slot:
                continue
            if not await asyncio.to_thread(self.claim, job, slot, now):
                continue
            done = await self._run(job, slot)
            if done.state == "done":
                self._settled[job.name] = slot
            ran.append(done)
        return ran

    async def _run(self, job: Job, slot: datetime) -> SlotRun:
        log.info("schedule_started", job=job.name, slot=slot.isoformat(), owner=self.owner)
        try:
            outcome = await job.run(slot)
            state, result = "done", _summary(outcome)
        except Exception as exc:  # a failing job must not stop the worker; the slot is retried later
            state, result = "failed", scrub(f"{type(exc).__name__}: {exc}")[:1000]
            log.warning("schedule_failed", job=job.name, slot=slot.isoformat(), error=result)
        await asyncio.to_thread(self.finish, job.name, slot, state, result)
        if self.audit is not None:
            try:
                await self.audit.append(
                    AuditEvent(event=WorkerEvent.SCHEDULE_RUN, source=Source.SCHEDULE, decision=state, reason=result,
                               payload={"job": job.name, "slot": slot.isoformat(), "owner": self.owner})
                )  # fmt: skip
            except Exception as exc:
                log.error("schedule_audit_failed", job=job.name, error=f"{type(exc).__name__}: {exc}")
        log.info("schedule_finished", job=job.name, slot=slot.isoformat(), state=state)
        return SlotRun(job.name, slot, state, result)

    # -- storage -------------------------------------------------------------------------

    def claim(self, job: Job, slot: datetime, now: datetime) -> bool:
        """Take ``(job, slot)``: a new row, or a failed one past its retry delay, or an abandoned one."""
        insert = postgresql.insert if self.store.dialect == "postgresql" else sqlite.insert
        t = schedule_runs.c
        with self.store.read("read a schedule slot") as conn:  # most ticks end here, without a write lock
            seen = conn.execute(
                select(t.state, t.started_at, t.finished_at).where(t.name == job.name, t.slot == slot)
            ).first()
        if seen is not None:
            if seen.state == "done":
                self._settled[job.name] = slot
                return False
            failed_due = seen.state == "failed" and as_utc(seen.finished_at) <= now - self.retry_after
            abandoned = seen.state == "running" and as_utc(seen.started_at) <= now - self.stale_after
            if not (failed_due or abandoned):
                return False
        with self.store.begin("claim a schedule slot") as conn:
            if job.keep is not None:
                conn.execute(delete(schedule_runs).where(t.name == job.name, t.slot < slot - job.keep))
            inserted = conn.execute(
                insert(schedule_runs)
                .values(name=job.name, slot=slot, state="running", owner=self.owner, started_at=now)
                .on_conflict_do_nothing()
                .returning(t.name)  # rowcount of an INSERT is not reliable on every driver
            ).first()
            if inserted is not None:
                return True
            retake = or_(
                and_(t.state == "failed", t.finished_at <= now - self.retry_after),
                and_(t.state == "running", t.started_at <= now - self.stale_after),
            )
            taken = conn.execute(
                update(schedule_runs)
                .where(t.name == job.name, t.slot == slot, retake)
                .values(state="running", owner=self.owner, started_at=now, finished_at=None, result=None)
            ).rowcount
        return taken == 1

    def finish(self, name: str, slot: datetime, state: str, result: str | None) -> None:
        t = schedule_runs.c
        with self.store.begin("finish a schedule slot") as conn:
            conn.execute(
                update(schedule_runs)
                .where(t.name == name, t.slot == slot, t.owner == self.owner)
                .values(state=state, finished_at=as_utc(self.now()), result=result)
            )

    def history(self, name: str | None = None, limit: int = 20) -> list[ScheduleRun]:
        t = schedule_runs.c
        query = select(schedule_runs).order_by(t.slot.desc()).limit(limit)
        if name:
            query = query.where(t.name == name)
        with self.store.read("read the schedule history") as conn:
            return [
                ScheduleRun(r.name, as_utc(r.slot), r.state, r.owner, as_utc(r.started_at),
                            None if r.finished_at is None else as_utc(r.finished_at), r.result)
                for r in conn.execute(query)
            ]  # fmt: skip


def _summary(outcome: Any) -> str | None:
    if outcome is None:
        return None
    text = outcome if isinstance(outcome, str) else repr(outcome)
    return scrub(text)[:1000]
