"""The durable callback inbox: written before the 2xx, claimed by workers under a lease.

Why a table and not a queue: the receiver must be able to say "stored" in the same breath as
"200", on SQLite or PostgreSQL, without another moving part. Rows are deduplicated by the raw
body hash and by ``<txn_id>|<status>`` with ``INSERT ... ON CONFLICT DO NOTHING``; workers
claim them with a lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; ``BEGIN IMMEDIATE``
serialises claims on SQLite) that a crashed worker lets run out, after which another worker
takes the row. Every state change after the claim is fenced on the lease owner, so a worker
that lost its lease cannot overwrite the work of the one that took over.

States: ``pending`` -> ``processing`` -> ``done`` | ``pending`` (retry with backoff) |
``failed`` (attempts exhausted, retryable by an operator) | ``poison`` (signed but unusable).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from sqlalchemy import Connection, and_, bindparam, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from persona.clock import as_utc
from persona.errors import Conflict, NotFound
from persona.invoices import rank
from persona.store.batching import BatchWriter
from persona.store.engine import Store
from persona.store.inbox_tables import inbox

STATES = ("pending", "processing", "done", "failed", "poison")
RETRYABLE = ("failed", "poison")
_TXN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NUMERIC_FIELDS = ("amount", "source_amount", "pending_amount", "invoice_sum", "invoice_total_sum",
                   "invoice_commission", "source_rate")  # fmt: skip
_ABSENT = ("", "null")


class UnusableCallback(ValueError):
    """A correctly signed callback we cannot act on (no txn_id, unknown status, a bad number)."""


@dataclass(frozen=True)
class Callback:
    """The parts of a callback the worker acts on, checked; ``fields`` keeps everything received."""

    txn_id: str
    status: str
    fields: dict[str, str]

    @property
    def dedupe_key(self) -> str:
        return f"{self.txn_id}|{self.status}"


def parse_callback(fields: Mapping[str, str]) -> Callback:
    """Check the fields the worker relies on; raise :class:`UnusableCallback` saying which and why."""
    txn_id = fields.get("txn_id", "")
    if not txn_id:
        raise UnusableCallback("the callback has no txn_id")
    if not _TXN_ID.fullmatch(txn_id):
        raise UnusableCallback(f"txn_id {txn_id[:40]!r} is not a Plisio id (letters, digits, - and _)")
    status = fields.get("status", "")
    if not status:
        raise UnusableCallback("the callback has no status")
    if rank(status) is None:
        raise UnusableCallback(f"unknown status {status[:40]!r}")
    for name in _NUMERIC_FIELDS:
        value = fields.get(name)
        if value is None or value in _ABSENT:
            continue
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise UnusableCallback(f"{name} {value[:40]!r} is not a number") from None
        if not number.is_finite() or number < 0:
            raise UnusableCallback(f"{name} {value[:40]!r} is not a finite, non-negative number")
    return Callback(txn_id=txn_id, status=status, fields=dict(fields))


@dataclass(frozen=True)
class InboxRow:
    id: int
    source: str
    txn_id: str | None
    status: str | None
    encoding: str
    state: str
    attempts: int
    fields: dict[str, str]
    received_at: datetime
    available_at: datetime
    lease_owner: str | None
    lease_until: datetime | None
    finished_at: datetime | None
    plisio_status: str | None
    action: str | None
    error: str | None


@dataclass(frozen=True)
class Recorded:
    """The receiver's answer: the row's id, whether it already existed, its state."""

    id: int
    duplicate: bool
    state: str


def _row(row: Any) -> InboxRow:
    values = {k: getattr(row, k) for k in InboxRow.__dataclass_fields__}
    values["fields"] = json.loads(values["fields"])
    for key in ("received_at", "available_at", "lease_until", "finished_at"):
        values[key] = as_utc(values[key])
    return InboxRow(**values)


_ROW_COLUMNS = [getattr(inbox.c, name) for name in InboxRow.__dataclass_fields__]


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _due() -> Any:
    now = bindparam("now", type_=inbox.c.available_at.type)
    return or_(
        and_(inbox.c.state == "pending", inbox.c.available_at <= now),
        and_(inbox.c.state == "processing", inbox.c.lease_until <= now),
    )


@functools.cache
def _due_probe() -> Any:
    return select(inbox.c.id).where(_due()).limit(1)


@functools.cache
def _due_rows() -> Any:
    """Due rows, oldest first; built once with parameters so the compiled-statement cache serves it."""
    return (
        select(inbox.c.id, inbox.c.state, inbox.c.attempts)
        .where(_due())
        .order_by(inbox.c.available_at, inbox.c.id)
        .limit(bindparam("limit"))
        .with_for_update(skip_locked=True)
    )


@functools.cache
def _take() -> Any:
    return (
        update(inbox)
        .where(inbox.c.id.in_(bindparam("ids", expanding=True)))
        .values(
            state="processing", lease_owner=bindparam("owner", type_=inbox.c.lease_owner.type),
            lease_until=bindparam("until", type_=inbox.c.lease_until.type),
            attempts=inbox.c.attempts + 1,
        )
    )  # fmt: skip


@functools.cache
def _insert(dialect: str) -> Any:
    """``INSERT .. ON CONFLICT DO NOTHING RETURNING id``, built once: values go as parameters, so
    SQLAlchemy's compiled-statement cache serves every callback (a ``.values(...)`` per row would not)."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(inbox).on_conflict_do_nothing().returning(inbox.c.id)


class Inbox:
    """Inbox reads and writes. Synchronous (SQLAlchemy Core); async callers use a thread."""

    def __init__(self, store: Store) -> None:
        self._store = store

    # -- writing (receiver, reconciler) ------------------------------------------------------

    def record(
        self,
        *,
        source: Literal["callback", "reconciler"],
        body: bytes,
        encoding: str,
        fields: Mapping[str, str],
        callback: Callback | None,
        error: str | None,
        now: datetime,
    ) -> Recorded:
        """Store a callback in ONE transaction; a duplicate (same body, or same txn_id+status) is not stored.

        ``callback`` None means poison: stored with ``error`` and no dedupe key, never claimed.
        """
        with self._store.begin("record a Plisio callback in the inbox") as conn:
            return self.record_in(
                conn, source=source, body=body, encoding=encoding, fields=fields, callback=callback, error=error,
                now=now,
            )  # fmt: skip

    def record_in(
        self,
        conn: Connection,
        *,
        source: Literal["callback", "reconciler"],
        body: bytes,
        encoding: str,
        fields: Mapping[str, str],
        callback: Callback | None,
        error: str | None,
        now: datetime,
    ) -> Recorded:
        """:meth:`record` inside the caller's transaction (the group-commit writer batches many)."""
        digest = body_hash(body)
        dedupe = callback.dedupe_key if callback is not None else None
        state = "pending" if callback is not None else "poison"
        params = {
            "source": source, "body_hash": digest, "dedupe_key": dedupe, "txn_id": _clip(fields.get("txn_id"), 64),
            "status": _clip(fields.get("status"), 64), "encoding": encoding, "body": body,
            "fields": json.dumps(dict(fields), ensure_ascii=False), "state": state, "attempts": 0,
            "received_at": now, "available_at": now, "error": error,
            "finished_at": None if callback is not None else now,
        }  # fmt: skip
        new_id = conn.execute(_insert(self._store.dialect), params).scalar_one_or_none()
        if new_id is not None:
            return Recorded(int(new_id), False, state)
        match = inbox.c.body_hash == digest
        if dedupe is not None:
            match = or_(match, inbox.c.dedupe_key == dedupe)
        existing = conn.execute(select(inbox.c.id, inbox.c.state).where(match).limit(1)).one()
        return Recorded(int(existing.id), True, str(existing.state))

    # -- claiming and finishing (worker) -----------------------------------------------------

    def claim(self, *, owner: str, now: datetime, lease_s: float, max_attempts: int) -> InboxRow | None:
        """Take the next due row: :meth:`claim_many` with ``limit=1``."""
        rows = self.claim_many(owner=owner, now=now, lease_s=lease_s, max_attempts=max_attempts, limit=1)
        return rows[0] if rows else None

    def claim_many(
        self, *, owner: str, now: datetime, lease_s: float, max_attempts: int, limit: int
    ) -> list[InboxRow]:
        """Take up to ``limit`` due rows (pending and available, or processing with a lapsed lease), oldest
        first, in ONE transaction: a busy worker pays one write per batch instead of one per row.

        A row whose lease lapsed ``max_attempts`` times (its worker keeps dying on it) is marked failed
        instead of being handed out again. On PostgreSQL rows another worker is claiming are skipped
        (``FOR UPDATE SKIP LOCKED``); SQLite has one writer at a time anyway.
        """
        with self._store.read("look for due inbox rows") as conn:  # no write lock while idle
            if conn.execute(_due_probe(), {"now": now}).first() is None:
                return []
        with self._store.begin("claim inbox rows") as conn:
            for _ in range(100):
                found = conn.execute(_due_rows(), {"now": now, "limit": limit}).all()
                if not found:
                    return []
                worn = [r for r in found if r.state == "processing" and r.attempts >= max_attempts]
                for r in worn:
                    conn.execute(
                        update(inbox).where(inbox.c.id == r.id).values(
                            state="failed", finished_at=now, lease_owner=None, lease_until=None,
                            error=f"its worker stopped {r.attempts} times while processing it (crashed?)",
                        )
                    )  # fmt: skip
                ids = [int(r.id) for r in found if r not in worn]
                if not ids:
                    continue
                conn.execute(_take(), {"ids": ids, "owner": owner, "until": now + timedelta(seconds=lease_s)})
                rows = conn.execute(select(*_ROW_COLUMNS).where(inbox.c.id.in_(ids))).all()
                return sorted((_row(r) for r in rows), key=lambda r: ids.index(r.id))
        return []

    def release(self, row_ids: list[int], *, owner: str) -> int:
        """Give back claimed rows this worker did not start (it is stopping): pending again at once,
        the claim not counted as an attempt. Returns how many were still ours."""
        return self._fenced_many(
            row_ids, owner, "release inbox rows",
            state="pending", lease_owner=None, lease_until=None, attempts=inbox.c.attempts - 1,
        )  # fmt: skip

    def renew_many(self, row_ids: list[int], *, owner: str, until: datetime) -> int:
        """Extend the leases we still hold on ``row_ids``; returns how many were still ours."""
        return self._fenced_many(row_ids, owner, "renew inbox leases", lease_until=until)

    def _fenced_many(self, row_ids: list[int], owner: str, what: str, /, **values: Any) -> int:
        """Update the rows of ``row_ids`` this owner still holds (processing, its lease); how many."""
        if not row_ids:
            return 0
        held = and_(inbox.c.id.in_(row_ids), inbox.c.lease_owner == owner, inbox.c.state == "processing")
        with self._store.begin(what) as conn:
            return int(conn.execute(update(inbox).where(held).values(**values)).rowcount)

    def renew(self, row_id: int, *, owner: str, until: datetime) -> bool:
        """Extend a lease we still hold; False when another worker has taken the row."""
        return self.renew_many([row_id], owner=owner, until=until) == 1

    def done(self, row_id: int, *, owner: str, now: datetime, action: str, plisio_status: str | None) -> bool:
        return self._fenced(
            row_id, owner, state="done", finished_at=now, action=action, plisio_status=plisio_status,
            error=None, lease_owner=None, lease_until=None,
        )  # fmt: skip

    def retry_later(self, row_id: int, *, owner: str, at: datetime, error: str) -> bool:
        return self._fenced(
            row_id, owner, state="pending", available_at=at, error=error, lease_owner=None, lease_until=None
        )

    def fail(self, row_id: int, *, owner: str, now: datetime, error: str) -> bool:
        return self._fenced(
            row_id, owner, state="failed", finished_at=now, error=error, lease_owner=None, lease_until=None
        )

    def poison(self, row_id: int, *, owner: str, now: datetime, error: str) -> bool:
        return self._fenced(
            row_id, owner, state="poison", finished_at=now, error=error, lease_owner=None, lease_until=None
        )

    def _fenced(self, row_id: int, owner: str, **values: Any) -> bool:
        return self._fenced_many([row_id], owner, "update an inbox row", **values) == 1

    # -- operators ---------------------------------------------------------------------------

    def get(self, row_id: int) -> InboxRow:
        with self._store.read("read the inbox") as conn:
            return self._get(conn, row_id)

    def _get(self, conn: Connection, row_id: int) -> InboxRow:
        row = conn.execute(select(*_ROW_COLUMNS).where(inbox.c.id == row_id)).first()
        if row is None:
            raise NotFound(f"no inbox row with id {row_id}; `persona inbox list` shows them")
        return _row(row)

    def list(self, state: str | None = None, *, limit: int = 50) -> list[InboxRow]:
        """Newest first; ``state`` None (or ``all``) lists every state."""
        query = select(*_ROW_COLUMNS).order_by(inbox.c.id.desc()).limit(limit)
        if state and state != "all":
            query = query.where(inbox.c.state == state)
        with self._store.read("read the inbox") as conn:
            return [_row(r) for r in conn.execute(query)]

    def counts(self) -> dict[str, int]:
        from sqlalchemy import func

        with self._store.read("read the inbox") as conn:
            rows = conn.execute(select(inbox.c.state, func.count()).group_by(inbox.c.state))
            return {str(state): int(n) for state, n in rows}

    def depth(self) -> dict[str, tuple[int, datetime]]:
        """Per state: how many rows, and when the oldest of them arrived (readiness and metrics)."""
        from sqlalchemy import func

        query = select(inbox.c.state, func.count(), func.min(inbox.c.received_at)).group_by(inbox.c.state)
        with self._store.read("read the inbox") as conn:
            return {str(state): (int(n), as_utc(oldest)) for state, n, oldest in conn.execute(query)}

    def retry(self, row_id: int, *, now: datetime) -> InboxRow:
        """Queue a failed (or poison) row again, attempts reset; anything else is a Conflict."""
        with self._store.begin("retry an inbox row") as conn:
            changed = conn.execute(
                update(inbox)
                .where(inbox.c.id == row_id, inbox.c.state.in_(RETRYABLE))
                .values(
                    state="pending", attempts=0, available_at=now, error=None, finished_at=None,
                    lease_owner=None, lease_until=None,
                )
            ).rowcount  # fmt: skip
            row = self._get(conn, row_id)
        if changed != 1:
            raise Conflict(f"inbox row {row_id} is {row.state}; only failed or poison rows can be retried")
        return row


def _clip(value: str | None, size: int) -> str | None:
    return None if value is None else value[:size]


class InboxWriter:
    """Group commit for callbacks: concurrent requests share one transaction (one fsync) per batch.

    Each caller still waits until ITS row is committed before Plisio gets the 2xx; what changes is that
    fifty simultaneous callbacks cost one durable commit instead of fifty, and SQLite's single write
    lock is taken once per batch instead of contended per request.
    """

    def __init__(self, inbox: Inbox, store: Store, *, max_batch: int = 256) -> None:
        self._inbox, self._store = inbox, store
        self._writer: BatchWriter[dict[str, Any], Recorded] = BatchWriter(
            self._write, name="inbox-writer", max_batch=max_batch
        )

    async def record(self, **item: Any) -> Recorded:
        """:meth:`Inbox.record`, committed together with whatever other callbacks arrived meanwhile."""
        return await asyncio.wrap_future(self._writer.put(item))

    def _write(self, items: list[dict[str, Any]]) -> list[Recorded | BaseException]:
        with self._store.begin("record Plisio callbacks in the inbox") as conn:
            return [self._inbox.record_in(conn, **item) for item in items]

    def close(self) -> None:
        self._writer.close()
