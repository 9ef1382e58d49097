"""Flow runs: one row per unit of flow work, keyed so that the same work is never done twice."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from persona.store.engine import Store, is_conflict
from persona.store.flow_tables import flow_runs


@dataclass(frozen=True)
class FlowRun:
    id: str
    flow: str
    key: str
    state: str
    trigger: str
    conversation_id: str | None
    started_at: datetime
    finished_at: datetime | None
    summary: str | None
    error: str | None


def _run(row: Any) -> FlowRun:
    return FlowRun(**{k: getattr(row, k) for k in FlowRun.__dataclass_fields__})


class FlowRuns:
    def __init__(self, store: Store, now: Callable[[], datetime]) -> None:
        self._store, self._now = store, now

    def start(self, flow: str, key: str, trigger: str, *, retry_failed: bool = True) -> tuple[FlowRun, bool]:
        """Claim ``key``. Returns (run, True) when this caller should do the work.

        An existing ``done`` run is never redone. A ``running`` run belongs to someone else
        (or to a crashed worker whose inbox lease expired: the caller decides via ``resume``).
        A ``failed`` run is restarted when ``retry_failed``.
        """
        now = self._now()
        run_id = uuid.uuid4().hex[:16]
        try:
            with self._store.begin("start a flow run") as conn:
                conn.execute(
                    flow_runs.insert().values(
                        id=run_id, flow=flow, key=key, state="running", trigger=trigger, started_at=now
                    )
                )
        except Exception as exc:  # the unique key exists: someone started this work before
            if not is_conflict(exc):
                raise
            existing = self.get(key)
            assert existing is not None
            if existing.state == "failed" and retry_failed:
                with self._store.begin("restart a flow run") as conn:
                    changed = conn.execute(
                        update(flow_runs)
                        .where(flow_runs.c.key == key, flow_runs.c.state == "failed")
                        .values(
                            state="running", started_at=now, finished_at=None, error=None, trigger=trigger
                        )
                    ).rowcount
                current = self.get(key)
                assert current is not None
                return current, changed == 1
            return existing, False
        created = self.get(key)
        assert created is not None
        return created, True

    def resume(self, key: str) -> FlowRun | None:
        """A ``running`` run left behind by a crashed worker: take it over (the caller holds the inbox lease)."""
        run = self.get(key)
        return run if run is not None and run.state == "running" else None

    def attach(self, key: str, conversation_id: str) -> None:
        with self._store.begin("update a flow run") as conn:
            conn.execute(
                update(flow_runs).where(flow_runs.c.key == key).values(conversation_id=conversation_id)
            )

    def finish(self, key: str, *, state: str, summary: str | None = None, error: str | None = None) -> None:
        with self._store.begin("finish a flow run") as conn:
            conn.execute(
                update(flow_runs)
                .where(flow_runs.c.key == key)
                .values(state=state, finished_at=self._now(), summary=summary, error=error)
            )

    def get(self, key: str) -> FlowRun | None:
        with self._store.read("read flow runs") as conn:
            row = conn.execute(select(flow_runs).where(flow_runs.c.key == key)).first()
        return None if row is None else _run(row)

    def recent(self, flow: str | None = None, limit: int = 50) -> list[FlowRun]:
        query = select(flow_runs).order_by(flow_runs.c.started_at.desc()).limit(limit)
        if flow:
            query = query.where(flow_runs.c.flow == flow)
        with self._store.read("read flow runs") as conn:
            return [_run(r) for r in conn.execute(query)]
