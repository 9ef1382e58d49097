"""The worker's checkpoint duty: sign the audit log's tree head when due, hand each new one to the sink.

:class:`CheckpointPublisher` signs a checkpoint into ``audit.checkpoint_dir`` every
``audit.checkpoint_every_s`` (the worker's scheduler job calls :meth:`CheckpointPublisher.on_schedule`),
once ``audit.checkpoint_every_records`` records were appended since the last one (the worker's loop calls
:meth:`CheckpointPublisher.step`), and when the worker stops (:meth:`CheckpointPublisher.finish`); each new
one is POSTed to ``audit.checkpoint_webhook_url`` when that is set (see ``sinks``). It takes the audit log,
the settings and the clock it needs, never the runtime.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import structlog

from persona.audit import AuditLog
from persona.checkpoints.ledger import LiveTree
from persona.checkpoints.sinks import WebhookSink
from persona.errors import PersonaError
from persona.settings import Settings
from tools.redaction import scrub

log = structlog.get_logger(__name__)

CHECKPOINT_RETRY_S = 30.0
"""After a failed checkpoint delivery (or a failed every-N-records checkpoint) the publisher tries again on a
later loop iteration, no sooner than this (``worker.poll_interval_s`` if that is longer)."""


class CheckpointPublisher:
    """Signs audit checkpoints when they are due and delivers each new one to the sink, once.

    ``enabled`` False (a worker without schedules) signs nothing on its own and delivers nothing;
    ``transport`` None means the network for the sink (tests inject one)."""

    def __init__(
        self,
        audit: AuditLog,
        settings: Settings,
        *,
        now: Callable[[], datetime],
        poll_interval_s: float,
        enabled: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.audit = audit
        self.settings = settings
        self.now = now
        every_s, every_records = settings.audit.checkpoint_every_s, settings.audit.checkpoint_every_records
        self._checkpointing = enabled and bool(every_s or every_records)
        """This worker signs checkpoints (on the schedule, every N records, and when it stops)."""
        self._every_records = every_records if enabled else None
        self._sink = WebhookSink.from_settings(settings, transport=transport) if enabled else None
        self._retry = timedelta(seconds=max(CHECKPOINT_RETRY_S, poll_interval_s))
        self._latest_checkpoint: tuple[int, Path] | None = None
        self._tree = LiveTree(audit)
        """The tree head kept between checkpoints: each reads only the records appended since."""
        self._looked = False
        """Whether the checkpoint directory was listed (once); ``checkpoint()`` keeps the latest up to date."""
        self._delivered: int | None = None
        """The largest checkpoint size this worker delivered to the sink."""
        self._delivery_not_before: datetime | None = None
        self._count_not_before: datetime | None = None
        self._delivery: asyncio.Task[int | None] | None = None

    async def on_schedule(self, slot: datetime) -> str:
        """The ``audit_checkpoint`` scheduler job: :meth:`checkpoint` in a thread."""
        return await asyncio.to_thread(self.checkpoint)

    def checkpoint(self, *, min_new: int = 1) -> str:
        """Sign the audit log's tree head into ``audit.checkpoint_dir`` if at least ``min_new`` records were
        appended since the latest checkpoint there (any number when there is none)."""
        from persona.checkpoints.ledger import sign_current
        from persona.checkpoints.signed import CheckpointDir
        from persona.checkpoints.signing import load_signer

        self.audit.flush_sync()
        folder = CheckpointDir(self.settings.checkpoint_path())
        latest = folder.latest()
        if latest is not None:
            self._remember(folder.size_of(latest), latest)
            if self.audit.head()[0] - folder.size_of(latest) < min_new:
                return "no new records since the last checkpoint"
        signed, path = sign_current(self.audit, load_signer(self.settings), folder, self._tree)
        self._remember(signed.size, path)
        log.info("audit_checkpoint_written", size=signed.size, path=str(path))
        return f"checkpoint of {signed.size} records: {path.name}"

    def _remember(self, size: int, path: Path) -> None:
        known = self._latest_checkpoint
        if known is None or size >= known[0]:
            self._latest_checkpoint = (size, path)
        self._looked = True

    def latest(self) -> tuple[int, Path] | None:
        """(size, file) of the latest checkpoint this worker knows of: the directory is listed the first
        time only; after that :meth:`checkpoint` keeps it current (a loop iteration lists nothing)."""
        if not self._looked:
            from persona.checkpoints.signed import CheckpointDir

            folder = CheckpointDir(self.settings.checkpoint_path())
            latest = folder.latest()
            if latest is not None:
                self._remember(folder.size_of(latest), latest)
            self._looked = True
        return self._latest_checkpoint

    def _due(self, not_before: datetime | None) -> bool:
        return not_before is None or self.now() >= not_before

    async def step(self) -> None:
        """A loop iteration's checkpoint work; never raises (a failure is logged and tried again later).

        Signs a checkpoint when ``audit.checkpoint_every_records`` records were appended since the latest
        one (one read of the log's head), then starts delivering the latest checkpoint to
        ``audit.checkpoint_webhook_url`` in the background if this worker has not delivered it yet."""
        every = self._every_records
        if every is not None and self._due(self._count_not_before):
            try:
                known = self._latest_checkpoint if self._looked else await asyncio.to_thread(self.latest)
                head = (await asyncio.to_thread(self.audit.head))[0]
                if head - (known[0] if known is not None else 0) >= every:
                    await asyncio.to_thread(self.checkpoint, min_new=every)
                self._count_not_before = None
            except Exception as exc:
                self._count_not_before = self.now() + self._retry
                log.error("audit_checkpoint_failed", error=scrub(f"{type(exc).__name__}: {exc}"))
        if self._sink is None or not self._due(self._delivery_not_before):
            return
        if self._delivery is not None and not self._delivery.done():
            return
        if self._looked and not self._undelivered():
            return  # the common case: nothing new, no task
        self._delivery = asyncio.create_task(self.deliver())

    def _undelivered(self) -> tuple[int, Path] | None:
        known = self._latest_checkpoint
        if known is None or (self._delivered is not None and known[0] <= self._delivered):
            return None
        return known

    async def delivered(self) -> int | None:
        """Wait for the background delivery :meth:`step` started, if any; the size it delivered."""
        task, self._delivery = self._delivery, None
        return await task if task is not None else None

    async def deliver(self) -> int | None:
        """POST the latest checkpoint to ``audit.checkpoint_webhook_url`` unless this worker delivered it
        already. Returns the size delivered, or None (nothing to deliver, or a failure: logged as
        ``audit_checkpoint_delivery_failed`` and tried again no sooner than :data:`CHECKPOINT_RETRY_S`).
        Writes no audit record: a record per delivery would make the log grow for ever."""
        if self._sink is None:
            return None
        pending: tuple[int, Path] | None = None
        try:
            await asyncio.to_thread(self.latest)
            pending = self._undelivered()
            if pending is None:
                return None
            size, path = pending
            note = await asyncio.to_thread(path.read_text, encoding="utf-8")
            status_code = await self._sink.deliver(note, size=size)
        except Exception as exc:
            self._delivery_not_before = self.now() + self._retry
            error = str(exc) if isinstance(exc, PersonaError) else f"{type(exc).__name__}: {exc}"
            log.warning("audit_checkpoint_delivery_failed", size=pending[0] if pending else None,
                        error=self._sink.scrub(error), retry_in_s=self._retry.total_seconds())  # fmt: skip
            return None
        self._delivery_not_before = None
        self._delivered = max(size, self._delivered or 0)
        log.info("audit_checkpoint_delivered", size=size, status_code=status_code)
        return size

    async def finish(self) -> None:
        """When the worker stops: wait for a delivery under way, sign what came since the latest checkpoint,
        and deliver it once, whatever the retry schedule says. Never raises."""
        if self._delivery is not None:
            await self._delivery  # bounded by audit.checkpoint_timeout_s
        if self._checkpointing:
            try:  # the last records before a shutdown get their checkpoint too
                await asyncio.to_thread(self.checkpoint)
            except Exception as exc:
                log.error("audit_checkpoint_failed", error=scrub(f"{type(exc).__name__}: {exc}"))
        if self._sink is not None:
            await self.deliver()  # once more, whatever the retry schedule says
