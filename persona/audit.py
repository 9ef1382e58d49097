"""Append, verify, query and export the hash-chained audit log.

Every record hashes (SHA-256) the canonical JSON of all its fields, ``prev_hash`` included, so
any edit, deletion, insertion or reorder breaks the chain at a nameable record; the
``audit_head`` row, moved in the same transaction as each batch, exposes a truncated tail.

Appends are group-committed: callers queue events, one writer thread takes everything queued
(up to ``max_batch``), locks the head (``BEGIN IMMEDIATE`` on SQLite, ``SELECT ... FOR UPDATE``
on PostgreSQL), chains the batch, inserts it, moves the head and commits once. One fsync then
pays for many records, the event loop never waits on the database, and several processes
writing to one database still produce one chain. Secrets are scrubbed before hashing, so what
is stored is exactly what verifies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import IO, Any

import structlog
from sqlalchemy import Connection, Select, bindparam, select

from persona.audit_chain import ChainStart, PruneMark, Scan, Segment, VerifyReport, combine, scan
from persona.audit_keys import MacKeys
from persona.audit_records import AuditEvent, AuditFilter, AuditRecord
from persona.audit_segments import (
    PARALLEL_FROM,
    ExecutorFactory,
    cores,
    rows_of,
    scan_all,
    spawned_processes,
    strays,
)  # fmt: skip
from persona.clock import as_utc
from persona.errors import AuditIntegrityError, StoreError
from persona.jsonutil import canonical_json, clean_text, hashable
from persona.store.audit_tables import (
    GENESIS_HASH,
    HEAD_ID,
    audit_head,
    audit_log,
    audit_pruned,
    canonical_record,
    record_hash,
    ts_text,
)
from persona.store.batching import BatchWriter, all_done
from persona.store.engine import Store
from tools.redaction import scrub, scrub_data

log = structlog.get_logger(__name__)

__all__ = ["AuditEvent", "AuditFilter", "AuditLog", "AuditRecord"]

_PAGE = 10_000


# -- the log ------------------------------------------------------------------------------------

_STR_FIELDS = ("user", "persona", "conversation_id", "tool", "decision", "reason", "model")
_COLUMNS = (
    audit_log.c.seq, audit_log.c.ts, audit_log.c.user_id, audit_log.c.persona, audit_log.c.conversation_id,
    audit_log.c.source, audit_log.c.event, audit_log.c.tool, audit_log.c.payload, audit_log.c.decision,
    audit_log.c.reason, audit_log.c.model, audit_log.c.usage, audit_log.c.latency_ms, audit_log.c.prev_hash,
    audit_log.c.hash,
)  # fmt: skip
_COLUMN_NAMES = tuple(column.name for column in _COLUMNS)
_FIELD_NAMES = tuple("user" if name == "user_id" else name for name in _COLUMN_NAMES)
_HEAD = select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == HEAD_ID)
_MARK = select(audit_pruned).order_by(audit_pruned.c.through_seq.desc()).limit(1)
# The writer's statements, built once: a reused statement keeps its cache key, so SQLAlchemy goes
# straight to the compiled form (rebuilding them per batch cost more CPU than SQLite's own commit).
_HEAD_LOCKED = _HEAD.with_for_update()
_INSERT = audit_log.insert()
_ADVANCE_HEAD = (
    audit_head.update()
    .where(audit_head.c.id == HEAD_ID)
    .values(
        seq=bindparam("new_seq", type_=audit_head.c.seq.type),
        hash=bindparam("new_hash", type_=audit_head.c.hash.type),
    )
)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass(slots=True)
class _Prepared:
    fields: dict[str, Any]
    """For the returned :class:`AuditRecord`."""
    hashed: tuple[Any, ...]
    """As stored and hashed, in column order from ``user_id`` to ``latency_ms``."""


_Item = tuple[AuditEvent, "Future[AuditRecord]"]


class AuditLog:
    """The audit log on a :class:`Store` (whose ``create_all`` has run)."""

    def __init__(
        self,
        store: Store,
        *,
        now: Callable[[], datetime] = _utc_now,
        redact: Callable[[Any], Any] | None = None,
        max_batch: int = 512,
        verify_workers: int | None = None,
        segment_executor: ExecutorFactory = spawned_processes,
        parallel_from: int = PARALLEL_FROM,
    ) -> None:
        """``verify_workers``: how many processes a :meth:`verify` of ``parallel_from`` records or more uses
        (None: every core this process may use); ``segment_executor`` runs them (tests pass threads)."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._workers = cores() if verify_workers is None else verify_workers
        self._segment_executor, self._parallel_from = segment_executor, parallel_from
        self._store, self._now, self._redact, self._max_batch = store, now, redact, max_batch
        self._writer = BatchWriter(self._write_batch, name="audit-writer", max_batch=max_batch)
        self._lock = threading.Lock()
        self._closed = False
        self._buffer: list[_Item] = []
        """``record()``ed events not yet handed to the writer: they go with the next flush/append."""
        self._in_flight: set[Future[AuditRecord]] = set()
        """``record()``ed events handed to the writer and not yet committed (a flush waits for them too)."""
        self._keys: MacKeys | None = None
        self._observer: Callable[[AuditEvent], None] | None = None

    def observe_with(self, observer: Callable[[AuditEvent], None]) -> None:
        """Hand every event appended or recorded from now on to ``observer`` too (the metrics); an observer
        that fails is logged and never costs a record."""
        self._observer = observer

    def _observe(self, event: AuditEvent) -> None:
        if self._observer is not None:
            try:
                self._observer(event)
            except Exception as exc:
                log.error("audit_observer_failed", error=f"{type(exc).__name__}: {exc}")

    def use_keys(self, keys: MacKeys) -> None:
        """Key every record appended from now on, and check MACs in :meth:`verify` (the runtime does this
        once the vault has the master key; after a re-key, with the new version)."""
        self._keys = keys

    @property
    def keyed(self) -> bool:
        return self._keys is not None

    # -- appending -----------------------------------------------------------------------------

    async def append(self, event: AuditEvent) -> AuditRecord:
        """Append ``event``; the record (and every one recorded before it) is committed when this returns.

        Shielded: a waiter that is cancelled stops waiting, the record is still written (a cancelled
        worker must not lose the ``tool_call_succeeded`` of an invoice that exists)."""
        return await asyncio.shield(asyncio.wrap_future(self._submit(event)))

    def record(self, event: AuditEvent) -> Future[AuditRecord]:
        """Keep ``event`` for the next commit without waiting; :meth:`flush` commits what is kept.

        For events that precede no side effect (a model request, a read-only call): the loop flushes
        before any call with a side effect runs and before a turn returns, so nothing is acted on and
        no answer is given whose audit trail is not durable, while a whole turn's records go out in a
        few transactions instead of one fsync each. Order is kept: :meth:`append` sends what is kept
        first, and the buffer is bounded (it is handed to the writer past ``max_batch`` records).
        """
        if not isinstance(event, AuditEvent):
            raise TypeError("record() takes an AuditEvent")
        future: Future[AuditRecord] = Future()
        with self._lock:
            if self._closed:
                raise StoreError("the audit log is closed; no more records can be appended")
            self._buffer.append((event, future))
            full = len(self._buffer) >= self._max_batch
        if full:
            self._hand_over()
        self._observe(event)
        return future

    def _hand_over(self) -> list[Future[AuditRecord]]:
        """Move the kept records to the writer (in order); returns every recorded one not yet committed."""
        with self._lock:
            kept, self._buffer = self._buffer, []
            for event, future in kept:
                self._writer.put(event, future)
                self._in_flight.add(future)
            waiting = list(self._in_flight)
        for _, future in kept:
            future.add_done_callback(self._landed)
        return waiting

    def _landed(self, future: Future[AuditRecord]) -> None:
        with self._lock:
            self._in_flight.discard(future)

    async def flush(self) -> None:
        """Commit every record kept so far; raise the first failure."""
        waiting = self._hand_over()
        if waiting:
            await all_done(waiting)
            for future in waiting:
                if (error := future.exception()) is not None:
                    raise error

    def send(self) -> None:
        """Hand kept records to the writer without waiting for their commit."""
        self._hand_over()

    def flush_sync(self) -> None:
        """:meth:`flush` for synchronous callers (the CLI, readers that must see what was just recorded)."""
        for future in self._hand_over():
            future.result()

    def append_sync(self, event: AuditEvent) -> AuditRecord:
        """Append from synchronous code (the CLI); shares the writer and its batches."""
        return self._submit(event).result()

    def _submit(self, event: AuditEvent) -> Future[AuditRecord]:
        if not isinstance(event, AuditEvent):
            raise TypeError("append() takes an AuditEvent")
        with self._lock:
            if self._closed:
                raise StoreError("the audit log is closed; no more records can be appended")
            kept, self._buffer = self._buffer, []
            for kept_event, kept_future in kept:  # what was recorded before goes first, in order
                self._writer.put(kept_event, kept_future)
                self._in_flight.add(kept_future)
            future = self._writer.put(event)
        for _, kept_future in kept:
            kept_future.add_done_callback(self._landed)
        self._observe(event)
        return future

    def _write_batch(self, events: list[AuditEvent]) -> list[AuditRecord | BaseException]:
        """One transaction for the batch; an event that cannot even be prepared fails alone."""
        outcomes: list[AuditRecord | BaseException] = []
        ready: list[tuple[int, _Prepared]] = []
        for event in events:
            try:
                ready.append((len(outcomes), self._prepare(event)))
                outcomes.append(StoreError("not written"))  # replaced below
            except Exception as err:
                outcomes.append(err)
        if ready:
            try:
                records = self._commit([prepared for _, prepared in ready])
            except BaseException as err:
                log.error("audit_append_failed", records=len(ready), error=type(err).__name__)
                raise
            for (index, _), record in zip(ready, records, strict=True):
                outcomes[index] = record
        return outcomes

    def _prepare(self, event: AuditEvent) -> _Prepared:
        """Redact (before hashing, so the stored record verifies) and serialise, outside the lock."""
        payload = scrub_data(hashable(event.payload))
        if self._redact is not None:
            payload = hashable(self._redact(payload))
        if not isinstance(payload, dict):
            payload = {"value": payload}
        fields: dict[str, Any] = {"event": event.event, "source": event.source}
        for name in _STR_FIELDS:
            value = getattr(event, name)
            if value is not None:
                value = scrub(clean_text(value))
                if self._redact is not None:
                    value = clean_text(str(self._redact(value)))
            fields[name] = value
        usage = None if event.usage is None else dict(event.usage)
        fields.update(payload=payload, usage=usage, latency_ms=event.latency_ms)
        texts = {
            **fields,
            "payload": canonical_json(payload),
            "usage": None if usage is None else canonical_json(usage),
        }
        return _Prepared(fields, tuple(texts[name] for name in _FIELD_NAMES[2:-2]))

    def _commit(self, batch: list[_Prepared]) -> list[AuditRecord]:
        rows: list[dict[str, Any]] = []
        records: list[AuditRecord] = []
        with self._store.begin("append to the audit log") as conn:
            head = conn.execute(_HEAD_LOCKED).first()
            if head is None:
                raise AuditIntegrityError(
                    "the audit_head row is missing, so the chain cannot be continued safely"
                    " (fix: run `persona audit verify`; if the store is new, run create_all first)"
                )
            seq, prev = int(head[0]), str(head[1])
            keys = self._keys
            for item in batch:
                seq += 1
                ts = ts_text(self._now())
                digest = record_hash(canonical_record(*(seq, ts, *item.hashed, prev)))
                row = dict(zip(_COLUMN_NAMES, (seq, ts, *item.hashed, prev, digest), strict=True))
                if keys is not None:
                    row.update(mac=keys.sign(digest), mac_kv=keys.current)
                rows.append(row)
                moment = datetime.fromisoformat(ts)
                records.append(
                    AuditRecord.model_construct(
                        **item.fields, seq=seq, ts=moment, prev_hash=prev, hash=digest
                    )
                )
                prev = digest
            conn.execute(_INSERT, rows)
            conn.execute(_ADVANCE_HEAD, {"new_seq": seq, "new_hash": prev})
        return records

    async def aclose(self) -> None:
        """Write what is queued, then stop the writer thread."""
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        self._hand_over()  # kept records are written before the writer stops
        with self._lock:
            self._closed = True
        self._writer.close()

    # -- verifying -----------------------------------------------------------------------------

    def verify(self, *, expect_head: str | None = None, roots_at: Sequence[int] = ()) -> VerifyReport:
        """Rehash every record in seq order and check its MAC, in bounded memory; name the first bad one.

        ``expect_head`` is a head hash written down earlier (e.g. printed by a previous verify): it
        must still be in the chain, which catches a tail cut off together with a rewritten head.
        ``roots_at``: tree sizes whose Merkle root to report (signed checkpoints' sizes), same pass.
        """
        with self._store.read("verify the audit log") as conn:
            head, mark = conn.execute(_HEAD).first(), conn.execute(_MARK).first()
            start = ChainStart() if mark is None else PruneMark.of(mark).start
            before, beyond = strays(conn, start, None if head is None else int(head[0]))
            scans = scan_all(
                self._store, conn, start, None if head is None else int(head[0]), expect_head=expect_head,
                keys=self._keys, roots_at=roots_at, workers=self._workers, executor=self._segment_executor,
                parallel_from=self._parallel_from,
            )  # fmt: skip
        report = combine(scans, head, expect_head, keys=self._keys, start=start, roots_at=roots_at, before=before,
                         beyond=beyond)  # fmt: skip
        if not report.ok:
            log.warning("audit_verify_failed", first_bad_seq=report.first_bad_seq, problem=report.problem)
        return report

    # -- reading -------------------------------------------------------------------------------

    def query(self, flt: AuditFilter) -> list[AuditRecord]:
        with self._store.read("query the audit log") as conn:
            return [_record(row) for row in conn.execute(_select(flt))]

    def get(self, seq: int) -> AuditRecord | None:
        with self._store.read("read the audit log") as conn:
            row = conn.execute(select(*_COLUMNS).where(audit_log.c.seq == seq)).first()
        return None if row is None else _record(row)

    def known(self, field: str) -> list[str]:
        """The distinct values of ``field`` ("event" or "tool") in the log, sorted: what a filter may name."""
        column = {"event": audit_log.c.event, "tool": audit_log.c.tool}[field]
        with self._store.read("read the audit log's event names") as conn:
            return [
                str(v)
                for (v,) in conn.execute(
                    select(column).where(column.is_not(None)).distinct().order_by(column)
                )
            ]

    def conversations_starting(self, prefix: str, limit: int) -> list[str]:
        """Conversation ids that start with ``prefix`` (an id given by its first characters)."""
        return self._store.starting(audit_log.c.conversation_id, prefix, limit, "find a conversation")

    def conversation(self, conversation_id: str) -> list[AuditRecord]:
        return self.query(AuditFilter(conversation_id=conversation_id))

    def export_jsonl(self, out: IO[str], flt: AuditFilter) -> int:
        """Write matching records as canonical JSON lines (``hash`` included); return how many.

        A whole export (no filter) of a pruned log starts with one ``{"pruned": ...}`` line: what checking
        the rest needs of the pruned records (see ``checkpoints/offline.py``)."""
        count = 0
        with self._store.read("export the audit log") as conn:
            mark = conn.execute(_MARK).first() if flt == AuditFilter() else None
            if mark is not None:
                out.write(PruneMark.of(mark).export_line() + "\n")
            for row in _stream(conn, flt):
                out.write(canonical_record(*row) + "\n")  # the 16th column is the hash
                count += 1
        return count

    def record_hashes(self, after: int = 0) -> list[str]:
        """Every stored record's chain hash in seq order (after seq ``after``): the checkpoints' Merkle leaves."""
        out: list[str] = []
        with self._store.read("read the audit log's hashes") as conn:
            while True:
                rows = conn.execute(
                    select(audit_log.c.seq, audit_log.c.hash)
                    .where(audit_log.c.seq > after)
                    .order_by(audit_log.c.seq)
                    .limit(_PAGE * 10)
                ).all()
                out.extend(str(r[1]) for r in rows)
                if len(rows) < _PAGE * 10:
                    return out
                after = int(rows[-1][0])

    def scan_after(self, size: int, prev: str, *, keyed_before: bool) -> tuple[Scan, int]:
        """Check the records after seq ``size`` up to the head, chained to ``prev`` (a signer's increment);
        returns the scan and the head's seq."""
        with self._store.read("check the newest audit records") as conn:
            head = conn.execute(_HEAD).first()
            head_seq = size if head is None else int(head[0])
            segment = Segment(size + 1, head_seq, prev, keyed_before=keyed_before, tail=False)
            found = scan(rows_of(conn, size + 1, head_seq), segment, head_seq=head_seq, expect_head=None,
                         keys=self._keys)  # fmt: skip
        return found, head_seq

    def hash_of(self, seq: int) -> str:
        """The stored hash of record ``seq`` (the genesis hash for 0, the prune's last hash at its end)."""
        if seq == 0:
            return GENESIS_HASH
        with self._store.read("read an audit record's hash") as conn:
            found = conn.execute(select(audit_log.c.hash).where(audit_log.c.seq == seq)).scalar()
            if found is None and (mark := conn.execute(_MARK).first()) is not None:
                found = mark.last_hash if int(mark.through_seq) == seq else None
        if found is None:
            raise AuditIntegrityError(
                f"audit record {seq} is missing (fix: run `persona audit verify`)", seq=seq
            )
        return str(found)

    def pruned(self) -> PruneMark | None:
        """The latest prune (the records up to it are gone), or None."""
        with self._store.read("read the audit log's pruned range") as conn:
            row = conn.execute(_MARK).first()
        return None if row is None else PruneMark.of(row)

    def head(self) -> tuple[int, str | None]:
        """(last seq, last hash); ``(0, None)`` while the log is empty."""
        with self._store.read("read the audit head") as conn:
            row = conn.execute(_HEAD).first()
        if row is None or int(row[0]) == 0:
            return 0, None
        return int(row[0]), str(row[1])


def _record(row: Sequence[Any]) -> AuditRecord:
    values = dict(zip(_FIELD_NAMES, row, strict=True))
    try:
        values["ts"] = datetime.fromisoformat(values["ts"])
        values["payload"] = json.loads(values["payload"])
        values["usage"] = None if values["usage"] is None else json.loads(values["usage"])
    except (TypeError, ValueError):
        raise AuditIntegrityError(
            f"audit record {row[0]} cannot be read back (fix: run `persona audit verify`)", seq=row[0]
        ) from None
    return AuditRecord.model_construct(**values)


def _stream(conn: Connection, flt: AuditFilter) -> Iterator[Sequence[Any]]:
    """Matching rows in seq order, a page at a time (keyset on seq): bounded memory on any driver."""
    after, remaining = flt.after_seq, flt.limit
    while remaining is None or remaining > 0:
        size = _PAGE if remaining is None else min(_PAGE, remaining)
        rows = conn.execute(_select(dataclasses.replace(flt, after_seq=after, limit=size))).all()
        yield from rows
        if len(rows) < size:
            return
        after = rows[-1][0]
        remaining = None if remaining is None else remaining - len(rows)


def _select(flt: AuditFilter) -> Select[Any]:
    stmt = select(*_COLUMNS).order_by(audit_log.c.seq)
    c = audit_log.c
    for column, value in (
        (c.user_id, flt.user), (c.persona, flt.persona), (c.conversation_id, flt.conversation_id),
        (c.event, flt.event), (c.tool, flt.tool), (c.source, flt.source),
    ):  # fmt: skip
        if value is not None:
            stmt = stmt.where(column == value)
    if flt.since is not None:
        stmt = stmt.where(c.ts >= ts_text(as_utc(flt.since)))
    if flt.until is not None:
        stmt = stmt.where(c.ts < ts_text(as_utc(flt.until)))
    if flt.after_seq is not None:
        stmt = stmt.where(c.seq > flt.after_seq)
    if flt.limit is not None and flt.newest:
        inner = stmt.order_by(None).order_by(c.seq.desc()).limit(flt.limit).subquery()
        return select(*inner.c).order_by(inner.c.seq)
    if flt.limit is not None:
        stmt = stmt.limit(flt.limit)
    return stmt
