"""The worker: inbox rows -> invoice state machine -> verify-by-fetch -> flow; plus schedules.

For each claimed row the worker:

1. re-checks the fields (a retried poison row may still be poison);
2. drops it as ``stale`` if the invoice is already recorded at a higher rank (a late
   ``pending`` after ``completed``, an old ``expired`` replayed after a late payment);
3. for a status that would start recovery, re-reads the operation from Plisio and acts on
   THAT status (a callback saying ``expired`` for an invoice Plisio now calls ``completed``
   starts no recovery);
4. moves the invoice state forward and runs the flow the status calls for, by code:
   recovery statuses -> ``handle_failure``; ``completed``/``mismatch`` -> ``handle_success``.

A failure (Plisio unreachable, a flow error) puts the row back to ``pending`` with
exponential backoff (``retry_backoff_s`` doubled per attempt, at most an hour); after
``max_attempts`` it is ``failed``, listed by ``persona inbox list`` and retryable with
``persona inbox retry``. The reconciler enqueues failed invoices that no callback told us
about, ignoring those that ended more than ``reconcile_max_age`` ago (3 days by default), so a
first start on a long-lived shop does not draft messages for long-abandoned payments.
On a schedule too (``effects.resolve_every_s``), the effects sweep looks up side effects whose
answer was lost, so an invoice made by a process that died is found and one never made is released.
Audit checkpoints are signed every ``audit.checkpoint_every_s``, once ``audit.checkpoint_every_records``
records were appended since the last one, and at stop; each new one is POSTed to
``audit.checkpoint_webhook_url`` when that is set (see the worker's ``checkpoints``, a
:class:`~persona.checkpoints.publisher.CheckpointPublisher`).
A worker killed mid-flow leaves its row ``processing``; when the
lease lapses another worker takes it, and the flow's idempotency key (``recovery:<txn_id>``)
turns the second attempt into a continuation, never a second draft.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import structlog

from persona.audit import AuditEvent
from persona.checkpoints.publisher import CheckpointPublisher
from persona.deps import FlowDeps, WorkerDeps
from persona.events import Source, WorkerEvent
from persona.heartbeats import Heartbeats
from persona.inbox import Callback, Inbox, InboxRow, UnusableCallback, parse_callback
from persona.invoices import SUCCESS_STATUSES, InvoiceStates, Transition, advance, rank
from persona.jsonutil import rfc3339
from persona.scheduler import Job, Scheduler, cron_slot, interval_slot
from persona.store import schema
from tools.errors import PlisioError
from tools.plisio.models import Operation, OperationStatus, OperationType
from tools.redaction import scrub

log = structlog.get_logger(__name__)

PAGE_SIZE = 50
MAX_BACKOFF_S = 3600.0
_FROM_SETTINGS: Any = object()
"""Sentinel: take ``worker.reconcile_max_age_h`` from the settings (a first start on a shop with a long
history must not draft recovery messages for months-old abandoned payments)."""


class FlowHandlers(Protocol):
    """What the worker calls; ``persona.flows.recovery`` is the real one, tests pass a fake."""

    async def handle_failure(self, deps: FlowDeps, op: Operation, *, trigger: str) -> object: ...

    async def handle_success(self, deps: FlowDeps, op: Operation) -> object: ...


ChurnScan = Callable[[FlowDeps, datetime], Awaitable[object]]


def recovery_handlers() -> FlowHandlers:
    from persona.flows import recovery

    return recovery


async def churn_scan(deps: FlowDeps, slot: datetime) -> object:
    from persona.flows.churn import scan

    report = await scan(deps, trigger="schedule", slot=slot)
    return f"churn report {report.id}"


@dataclass(frozen=True)
class Processed:
    """The outcome of one claimed row: ``done``, ``retry``, ``failed``, ``poison`` or ``lease_lost``."""

    inbox_id: int
    txn_id: str | None
    outcome: str
    action: str | None = None
    plisio_status: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Reconciled:
    seen: int
    enqueued: list[str]
    """The invoices queued for the recovery flow (with ``dry_run``: that would be)."""
    too_old: int = 0
    since: datetime | None = None
    """The cutoff used: failures before it were counted in ``too_old`` and left alone."""
    operations: tuple[Operation, ...] = ()
    """The invoices of ``enqueued``, as Plisio listed them."""


class _UnknownStatus(Exception):
    pass


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """Processes the inbox and runs the schedules of one process. Several may share a store."""

    def __init__(
        self,
        deps: WorkerDeps,
        *,
        handlers: FlowHandlers | None = None,
        churn: ChurnScan | None = churn_scan,
        now: Callable[[], datetime] | None = None,
        owner: str | None = None,
        schedules: bool = True,
        reconcile_max_age: timedelta | None = _FROM_SETTINGS,
    ) -> None:
        self.deps = deps
        self.settings = deps.settings.worker
        self.handlers = handlers or recovery_handlers()
        self.now = now or deps.now
        self.owner = owner or worker_id()
        if reconcile_max_age is _FROM_SETTINGS:
            hours = self.settings.reconcile_max_age_h
            reconcile_max_age = None if hours is None else timedelta(hours=hours)
        self.reconcile_max_age = reconcile_max_age
        self.inbox = Inbox(deps.store)
        self.heartbeats = Heartbeats(deps.store)
        self.states = InvoiceStates(deps.store)
        self.recovery_statuses = frozenset(deps.settings.flows.recovery.statuses)
        jobs = [Job("reconcile", interval_slot(self.settings.reconcile_every_s), self._reconcile_job,
                    keep=timedelta(days=1)),
                Job("resolve_effects", interval_slot(deps.settings.effects.resolve_every_s), self._resolve_job,
                    keep=timedelta(days=1))]  # fmt: skip
        self.checkpoints = CheckpointPublisher(
            deps.audit, deps.settings, now=self.now, poll_interval_s=self.settings.poll_interval_s,
            enabled=schedules, transport=deps.checkpoint_transport,
        )  # fmt: skip
        audit = deps.settings.audit
        if audit.checkpoint_every_s:
            jobs.append(Job("audit_checkpoint", interval_slot(audit.checkpoint_every_s),
                            self.checkpoints.on_schedule, keep=timedelta(days=1)))  # fmt: skip
        if churn is not None and deps.settings.flows.churn.schedule:
            scan = churn
            jobs.append(
                Job(
                    "churn_scan", cron_slot(deps.settings.flows.churn.schedule), lambda s: scan(deps.flows, s)
                )
            )
        self.scheduler = Scheduler(
            deps.store, jobs if schedules else [], now=self.now, owner=self.owner, audit=deps.audit,
            retry_after_s=max(self.settings.retry_backoff_s, 60.0), stale_after_s=max(self.settings.lease_s, 3600.0),
        )  # fmt: skip

    # -- the loop --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set: run due schedules, sign and deliver audit checkpoints that are due (see
        :meth:`CheckpointPublisher.step`), drain the inbox, wait ``poll_interval_s``. On the way out: a last
        checkpoint and its delivery (:meth:`CheckpointPublisher.finish`)."""
        log.info("worker_started", owner=self.owner)
        beating = asyncio.create_task(self._beat(stop), name="persona-worker-heartbeat")
        try:
            while not stop.is_set():
                try:
                    await self.scheduler.tick()
                    await self.checkpoints.step()
                    await self.drain(stop=stop)
                except Exception as exc:  # the store may be down: keep polling, never die
                    log.error("worker_iteration_failed", error=scrub(f"{type(exc).__name__}: {exc}"))
                    if self.deps.metrics is not None:
                        self.deps.metrics.iterations_failed.inc()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.poll_interval_s)
            await self.checkpoints.finish()
        finally:
            if not stop.is_set():  # cancelled: no last beat
                beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
        log.info("worker_stopped", owner=self.owner)

    async def _beat(self, stop: asyncio.Event) -> None:
        """Record every ``heartbeat_s`` that this worker lives (apart from the loop: a long batch is not a
        dead worker), and its stop at the end. A failed beat is logged and tried again at the next."""
        while True:
            stopping = stop.is_set()
            try:
                if stopping:
                    await asyncio.to_thread(self.heartbeats.stopped, self.owner, self.now())
                else:
                    await asyncio.to_thread(self.heartbeats.beat, self.owner, self.now())
            except Exception as exc:  # the store may be down: readiness will say so
                log.warning("worker_heartbeat_failed", error=scrub(f"{type(exc).__name__}: {exc}"))
            if stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.heartbeat_s)

    async def drain(self, *, limit: int = 1000, stop: asyncio.Event | None = None) -> list[Processed]:
        """Process due rows until none is left (or ``limit``): what a test or one poll does."""
        done: list[Processed] = []
        while len(done) < limit and not (stop is not None and stop.is_set()):
            batch = await self._process_batch(min(self.settings.claim_batch, limit - len(done)), stop)
            if not batch:
                break
            done.extend(batch)
        return done

    async def process_next(self) -> Processed | None:
        """Claim and process one row (None when nothing is due)."""
        batch = await self._process_batch(1, None)
        return batch[0] if batch else None

    async def _process_batch(self, size: int, stop: asyncio.Event | None) -> list[Processed]:
        """Claim up to ``size`` rows in one transaction and process them in order, their leases renewed
        together while the batch runs. Rows not started when ``stop`` is set are released at once."""
        rows = await asyncio.to_thread(
            self.inbox.claim_many, owner=self.owner, now=self.now(), lease_s=self.settings.lease_s,
            max_attempts=self.settings.max_attempts, limit=size,
        )  # fmt: skip
        if not rows:
            return []
        if self.deps.metrics is not None:
            self.deps.metrics.batches.inc()
        held = {row.id for row in rows}  # claimed and not finished: their leases are renewed
        unstarted = [row.id for row in rows]
        heartbeat = asyncio.create_task(self._keep_leases(held))
        out: list[Processed] = []
        try:
            for row in rows:
                if stop is not None and stop.is_set():
                    break
                unstarted.remove(row.id)
                log.info(
                    "inbox_claimed",
                    inbox_id=row.id,
                    txn_id=row.txn_id,
                    status=row.status,
                    attempt=row.attempts,
                )
                try:
                    out.append(await self._process(row))
                except Exception as exc:
                    out.append(await self._after_error(row, exc))
                held.discard(row.id)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self._flush_audit()
            if unstarted:  # stopping before these started: give them back. A row cut off mid-flow is
                # not: its lease lapses and the claim counts as an attempt, as for a crashed worker.
                with contextlib.suppress(Exception):
                    released = await asyncio.to_thread(self.inbox.release, unstarted, owner=self.owner)
                    log.info("inbox_released", owner=self.owner, rows=len(unstarted), released=released)
        return out

    async def _keep_leases(self, held: set[int]) -> None:
        """Renew the batch's leases while a long flow runs, so only a dead worker's leases lapse."""
        lease = self.settings.lease_s
        while True:
            await asyncio.sleep(lease / 3)
            until = self.now() + timedelta(seconds=lease)
            ids = sorted(held)
            try:
                kept = await asyncio.to_thread(self.inbox.renew_many, ids, owner=self.owner, until=until)
                if kept < len(ids):
                    log.warning("inbox_lease_lost", owner=self.owner, held=len(ids), renewed=kept)
            except Exception as exc:
                log.warning("inbox_lease_renew_failed", rows=len(ids), error=f"{type(exc).__name__}: {exc}")

    # -- one row ---------------------------------------------------------------------------

    async def _process(self, row: InboxRow) -> Processed:
        try:
            callback = parse_callback(row.fields)
        except UnusableCallback as exc:
            await asyncio.to_thread(
                self.inbox.poison, row.id, owner=self.owner, now=self.now(), error=str(exc)
            )
            await self._audit(WorkerEvent.POISON, str(exc), {"inbox_id": row.id, "txn_id": row.txn_id})
            return Processed(row.id, row.txn_id, "poison", error=str(exc))
        trigger = "reconciler" if row.source == "reconciler" else "webhook"
        op: Operation | None = None
        if callback.status in self.recovery_statuses:
            # Before asking Plisio: a failure that arrives after a later state is stale, no call needed.
            # (Any other status needs no pre-read: the conditional advance below finds it stale.)
            recorded = await asyncio.to_thread(self.states.get, callback.txn_id)
            if recorded is not None and (rank(callback.status) or 0) < (rank(recorded) or 0):
                return await self._done(row, callback, "stale", None, recorded)
            op = await self.deps.plisio.get_operation(callback.txn_id)
            if op.status is None or rank(op.status) is None:
                raise _UnknownStatus(f"Plisio reports status {op.status!r} for {callback.txn_id}")
        effective = op.status if op is not None and op.status else callback.status
        moved = await asyncio.to_thread(self._advance, callback.txn_id, effective, row.id)
        if moved.stale:
            action = "stale"
        elif effective in self.recovery_statuses and op is not None:
            await self.handlers.handle_failure(self.deps.flows, op, trigger=trigger)
            action = "recovery"
        elif effective in SUCCESS_STATUSES:
            await self.handlers.handle_success(self.deps.flows, op or _operation(callback, effective))
            action = "success"
        elif effective == OperationStatus.CANCELLED_DUPLICATE:
            action = "superseded"
        elif effective in self.recovery_statuses or (rank(effective) or 0) >= 3:
            action = "no_recovery"  # a failure status left out of flows.recovery.statuses
        else:
            action = "recorded"
        return await self._done(
            row, callback, action, None if op is None else op.status, moved.previous, moved
        )

    def _advance(self, txn_id: str, status: str, inbox_id: int) -> Transition:
        with self.deps.store.begin("advance an invoice's state") as conn:
            return advance(conn, self.deps.store.dialect, txn_id, status, now=self.now(), inbox_id=inbox_id)

    async def _done(
        self, row: InboxRow, callback: Callback, action: str, plisio_status: str | None, previous: str | None,
        moved: Transition | None = None,
    ) -> Processed:  # fmt: skip
        held = await asyncio.to_thread(
            self.inbox.done,
            row.id,
            owner=self.owner,
            now=self.now(),
            action=action,
            plisio_status=plisio_status,
        )
        if not held:
            log.warning("inbox_lease_lost", inbox_id=row.id, owner=self.owner, action=action)
            return Processed(row.id, callback.txn_id, "lease_lost", action, plisio_status)
        payload = {
            "inbox_id": row.id, "txn_id": callback.txn_id, "status": callback.status, "plisio_status": plisio_status,
            "action": action, "from": previous, "to": moved.recorded if moved else previous, "attempt": row.attempts,
            "trigger": "reconciler" if row.source == "reconciler" else "webhook",
        }  # fmt: skip
        await self._audit(WorkerEvent.PROCESSED, None, payload, decision=action, wait=False)
        log.info(WorkerEvent.PROCESSED, **payload)
        return Processed(row.id, callback.txn_id, "done", action, plisio_status)

    async def _after_error(self, row: InboxRow, exc: Exception) -> Processed:
        """Back off and retry; after ``max_attempts`` the row is failed (an operator can retry it)."""
        kind = "plisio_unreachable" if isinstance(exc, PlisioError) else type(exc).__name__
        error = scrub(f"{kind}: {exc}")[:1000]
        now = self.now()
        payload: dict[str, Any] = {"inbox_id": row.id, "txn_id": row.txn_id, "attempt": row.attempts}
        try:
            if row.attempts >= self.settings.max_attempts or isinstance(exc, _UnknownStatus):
                await asyncio.to_thread(self.inbox.fail, row.id, owner=self.owner, now=now, error=error)
                await self._audit(WorkerEvent.FAILED, error, payload, decision="failed")
                log.warning(WorkerEvent.FAILED, error=error, **payload)
                return Processed(row.id, row.txn_id, "failed", error=error)
            delay = min(self.settings.retry_backoff_s * 2 ** (row.attempts - 1), MAX_BACKOFF_S)
            at = now + timedelta(seconds=delay)
            await asyncio.to_thread(self.inbox.retry_later, row.id, owner=self.owner, at=at, error=error)
            await self._audit(
                WorkerEvent.RETRY, error, {**payload, "retry_at": at.isoformat()}, decision="retry"
            )
            log.warning(WorkerEvent.RETRY, error=error, retry_in_s=delay, **payload)
            return Processed(row.id, row.txn_id, "retry", error=error)
        except Exception as again:  # the store is down too: the lease will lapse and the row come back
            log.error("inbox_update_failed", inbox_id=row.id, error=f"{type(again).__name__}: {again}")
            return Processed(row.id, row.txn_id, "lease_lost", error=error)

    async def _audit(
        self, event: str, reason: str | None, payload: dict[str, Any], decision: str | None = None,
        *, wait: bool = True,
    ) -> None:  # fmt: skip
        """``wait=False``: kept and committed with the batch's flush (the row's state is already
        durable in the inbox; one commit per batch instead of one per row)."""
        record = AuditEvent(
            event=event, source=Source.WORKER, reason=reason, decision=decision, payload=payload
        )
        try:
            if wait:
                await self.deps.audit.append(record)
            else:
                self.deps.audit.record(record)
        except Exception as exc:
            log.error("worker_audit_failed", audit_event=event, error=f"{type(exc).__name__}: {exc}")

    async def _flush_audit(self) -> None:
        try:
            await self.deps.audit.flush()
        except Exception as exc:
            log.error("worker_audit_failed", audit_event="batch", error=f"{type(exc).__name__}: {exc}")

    # -- the effects sweep -----------------------------------------------------------------

    async def _resolve_job(self, slot: datetime) -> str:
        """Effects whose answer was lost (or whose process died between claim and outcome): look them up."""
        resolved = await self.deps.effects.sweep(source=Source.WORKER)
        states = [e.state.value for e in resolved]
        return f"{len(resolved)} effect(s) looked up: " + (
            ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))) or "none due"
        )

    # -- the reconciler --------------------------------------------------------------------

    async def _reconcile_job(self, slot: datetime) -> str:
        found = await self.reconcile()
        return f"seen {found.seen}, enqueued {len(found.enqueued)}"

    def reconcile_since(self) -> datetime | None:
        """The oldest failure the scheduled reconciler acts on: ``reconcile_max_age`` ago, and never before the
        store was first initialised (a first start leaves the shop's history alone)."""
        floor = schema.initialised_at(self.deps.store)
        aged = None if self.reconcile_max_age is None else self.now() - self.reconcile_max_age
        return max((t for t in (floor, aged) if t is not None), default=None)

    async def reconcile(self, *, since: datetime | Literal["scheduled"] | None = "scheduled",
                        dry_run: bool = False) -> Reconciled:  # fmt: skip
        """Find failed invoices whose callback never came: newest first, ``reconcile_pages`` pages per status,
        failed at ``since`` or later (by default :meth:`reconcile_since`; an operator may ask for earlier).
        ``dry_run``: enqueue nothing, report what would be."""
        seen, too_old, enqueued, chosen = 0, 0, [], []
        cutoff = await asyncio.to_thread(self.reconcile_since) if since == "scheduled" else since
        for status in self.deps.settings.flows.recovery.statuses:
            for page in range(1, self.settings.reconcile_pages + 1):
                found = await self.deps.plisio.list_operations(
                    page=page, limit=PAGE_SIZE, type=OperationType.INVOICE, status=OperationStatus(status)
                )
                ops = [op for op in found.operations if op.status == status and op.type in (None, "invoice")]
                seen += len(ops)
                recent = [op for op in ops if cutoff is None or _failed_at(op, cutoff) >= cutoff]
                too_old += len(ops) - len(recent)
                ops = recent
                known = await asyncio.to_thread(self.states.terminal, [op.id for op in ops])
                for op in ops:
                    if op.id in known or op.id in enqueued:
                        continue
                    if dry_run or await asyncio.to_thread(self._enqueue, op, status):
                        enqueued.append(op.id)
                        chosen.append(op)
                last_page = found.meta.page_count and page >= found.meta.page_count
                if len(found.operations) + len(found.skipped) < PAGE_SIZE or last_page:  # unread rows count
                    break
        if dry_run:
            log.info("reconcile_dry_run", seen=seen, too_old=too_old, would_enqueue=len(enqueued))
            return Reconciled(seen, enqueued, too_old, since=cutoff, operations=tuple(chosen))
        payload = {
            "seen": seen,
            "too_old": too_old,
            "enqueued": enqueued,
            "since": cutoff and rfc3339(cutoff),
        }
        await self._audit(WorkerEvent.RECONCILED, None, payload)
        log.info(WorkerEvent.RECONCILED, seen=seen, too_old=too_old, enqueued=len(enqueued))
        return Reconciled(seen, enqueued, too_old, since=cutoff, operations=tuple(chosen))

    def _enqueue(self, op: Operation, status: str) -> bool:
        fields = {"txn_id": op.id, "status": status, "source": "reconciler"}
        callback = Callback(txn_id=op.id, status=status, fields=fields)
        body = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
        recorded = self.inbox.record(
            source="reconciler", body=body, encoding="reconciler", fields=fields, callback=callback, error=None,
            now=self.now(),
        )  # fmt: skip
        return not recorded.duplicate


def _failed_at(op: Operation, default: datetime) -> datetime:
    """When the invoice ended (or was created); ``default`` when Plisio says neither."""
    stamp = op.finished_at_utc or op.created_at_utc
    return default if stamp is None else datetime.fromtimestamp(stamp, UTC)


def _operation(callback: Callback, status: str) -> Operation:
    """A minimal Operation for the success handler, from a verified callback (no re-read needed)."""
    return Operation(id=callback.txn_id, type="invoice", status=status)
