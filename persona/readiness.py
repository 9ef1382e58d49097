"""Readiness: whether this instance should be sent traffic, and if not, which check says no.

Liveness (``/livez``, and ``/healthz`` as its alias) only says the process answers; a load balancer restarts
what fails it. Readiness (``/readyz``) asks what an operator would: the store answers, its schema is this
release's, a worker is beating when one is expected (callbacks acknowledged and never processed are the
failure this catches), and the oldest waiting callback is younger than the configured bound. Each check
names its limit; none reveals a URL, a key or a row (the endpoint needs no token).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from persona.errors import StoreError
from persona.heartbeats import Heartbeats
from persona.inbox import Inbox
from persona.settings import ReadinessSettings
from persona.store import schema
from persona.store.engine import Store

log = structlog.get_logger(__name__)

WAITING = ("pending", "processing")
"""Inbox states of a callback not yet handled."""


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


@dataclass(frozen=True)
class Readiness:
    checks: dict[str, Check] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return all(check.ok for check in self.checks.values())

    def document(self) -> dict[str, object]:
        """The ``/readyz`` body."""
        return {
            "status": "ready" if self.ready else "unready",
            "checks": {name: {"ok": c.ok, "detail": c.detail} for name, c in self.checks.items()},
        }


def assess(store: Store, settings: ReadinessSettings, now: Callable[[], datetime]) -> Readiness:
    """Run every check (blocking: call it in a thread). A store that fails the first fails them all."""
    checks: dict[str, Check] = {}
    try:
        found = schema.status(store)
    except StoreError as exc:
        log.warning("readiness_store_unavailable", error=str(exc))
        detail = "the store does not answer (the service log says why)"
        return Readiness({name: Check(False, detail) for name in ("store", "schema", "worker", "backlog")})
    checks["store"] = Check(True, "answers")
    if found.state == "current":
        checks["schema"] = Check(True, f"revision {found.head}")
    else:
        checks["schema"] = Check(
            False, f"revision {found.revision}, this release needs {found.head} ({found.state})"
        )
        return Readiness(checks)  # the other checks read tables a stale schema may lack
    moment = now()
    try:
        checks["worker"] = _worker(store, settings, moment)
        checks["backlog"] = _backlog(store, settings, moment)
    except StoreError as exc:
        log.warning("readiness_store_unavailable", error=str(exc))
        checks.setdefault("worker", Check(False, "the store failed the read"))
        checks.setdefault("backlog", Check(False, "the store failed the read"))
    return Readiness(checks)


def _worker(store: Store, settings: ReadinessSettings, moment: datetime) -> Check:
    if not settings.expect_worker:
        return Check(True, "not expected (server.ready.expect_worker: false)")
    latest = Heartbeats(store).latest()
    limit = settings.worker_max_silence_s
    if latest is None:
        return Check(False, f"no worker is running on this store (none has beaten; limit {limit:g} s)")
    silence = (moment - latest).total_seconds()
    if silence > limit:
        return Check(False, f"the last worker heartbeat was {silence:.0f} s ago (limit {limit:g} s)")
    return Check(True, f"last heartbeat {max(silence, 0):.0f} s ago")


def _backlog(store: Store, settings: ReadinessSettings, moment: datetime) -> Check:
    depth = Inbox(store).depth()
    waiting = [depth[state] for state in WAITING if state in depth]
    limit = settings.backlog_max_age_s
    if not waiting:
        return Check(True, "no callback is waiting")
    count = sum(n for n, _ in waiting)
    age = (moment - min(oldest for _, oldest in waiting)).total_seconds()
    if age > limit:
        return Check(False, f"{count} callback(s) waiting, the oldest for {age:.0f} s (limit {limit:g} s)")
    return Check(True, f"{count} callback(s) waiting, the oldest for {max(age, 0):.0f} s")


__all__ = ["WAITING", "Check", "Readiness", "assess"]
