"""Worker heartbeats: each worker process touches its row every few seconds, so readiness can tell a
service whose worker is alive from one whose callbacks pile up unprocessed.

A crashed worker just stops beating; a clean stop marks its row. Rows of workers gone for a day are
pruned by the next beat of any worker, so the table stays as small as the fleet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update

from persona.clock import as_utc
from persona.store.engine import Store
from persona.store.service_tables import worker_heartbeats as beats

KEEP = timedelta(days=1)
"""Rows whose last beat is older than this are removed."""


@dataclass(frozen=True)
class Beat:
    owner: str
    started_at: datetime
    beat_at: datetime
    stopped_at: datetime | None


class Heartbeats:
    """The ``worker_heartbeats`` table."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def beat(self, owner: str, now: datetime) -> None:
        """Record that ``owner`` is alive at ``now`` (its first beat inserts the row)."""
        with self.store.begin("record the worker's heartbeat") as conn:
            touched = conn.execute(
                update(beats).where(beats.c.owner == owner).values(beat_at=now, stopped_at=None)
            ).rowcount
            if not touched:
                conn.execute(beats.insert().values(owner=owner, started_at=now, beat_at=now))
            conn.execute(delete(beats).where(beats.c.beat_at < now - KEEP))

    def stopped(self, owner: str, now: datetime) -> None:
        with self.store.begin("record the worker's stop") as conn:
            conn.execute(update(beats).where(beats.c.owner == owner).values(beat_at=now, stopped_at=now))

    def latest(self) -> datetime | None:
        """The most recent beat of a worker that has not stopped (None: no worker is running)."""
        with self.store.read("read the worker heartbeats") as conn:
            found = conn.execute(
                select(func.max(beats.c.beat_at)).where(beats.c.stopped_at.is_(None))
            ).scalar()
        return as_utc(found)

    def list(self) -> list[Beat]:
        with self.store.read("read the worker heartbeats") as conn:
            rows = conn.execute(select(beats).order_by(beats.c.beat_at.desc())).all()
        return [Beat(r.owner, as_utc(r.started_at), as_utc(r.beat_at), as_utc(r.stopped_at)) for r in rows]


__all__ = ["KEEP", "Beat", "Heartbeats"]
