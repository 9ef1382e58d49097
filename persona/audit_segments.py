"""Verifying a long audit log on every core: the log cut into consecutive segments, each scanned apart.

Every check of a record needs only the record before it (its stored hash, whether it is keyed), and the
Merkle tree of a run of records is a compact range that joins the ranges before it
(:class:`~persona.checkpoints.merkle.RangeBuilder`). So segment ``i`` starts from the stored hashes of the
two records before it, its own process scans it (hashing is CPU-bound: threads would share one core),
and :func:`~persona.audit_chain.combine` joins the scans in order. A stored hash that lies at a boundary
is itself checked by the segment before it, so the first problem found is the one a single pass finds.

The process running ``verify`` scans the first segment itself; the others run in ``spawn``-ed processes
that open the same database (a file or a server: an in-memory SQLite is always scanned in one pass).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import structlog
from sqlalchemy import Connection, func, select

from persona.audit_chain import ChainStart, Scan, Segment, scan
from persona.audit_keys import MacKeys
from persona.store.audit_tables import HEAD_ID, audit_head, audit_log
from persona.store.engine import Store
from tools.redaction import scrub

log = structlog.get_logger(__name__)

PARALLEL_FROM = 100_000
"""Below this many records one pass is as quick as starting another process."""
MAX_WORKERS = 8
PAGE = 10_000

COLUMNS = (
    audit_log.c.seq, audit_log.c.ts, audit_log.c.user_id, audit_log.c.persona, audit_log.c.conversation_id,
    audit_log.c.source, audit_log.c.event, audit_log.c.tool, audit_log.c.payload, audit_log.c.decision,
    audit_log.c.reason, audit_log.c.model, audit_log.c.usage, audit_log.c.latency_ms, audit_log.c.prev_hash,
    audit_log.c.hash, audit_log.c.mac, audit_log.c.mac_kv,
)  # fmt: skip
"""What a scan reads: the record as hashed (``canonical_record``'s order), then its MAC."""

ExecutorFactory = Callable[[int], Executor]


def cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def spawned_processes(workers: int) -> Executor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))


def rows_of(conn: Connection, first: int, last: int | None) -> Iterator[Sequence[Any]]:
    """The rows from seq ``first`` (to ``last``, or the end), a page at a time (keyset on seq)."""
    after = first - 1
    while True:
        stmt = select(*COLUMNS).where(audit_log.c.seq > after).order_by(audit_log.c.seq).limit(PAGE)
        if last is not None:
            stmt = stmt.where(audit_log.c.seq <= last)
        rows = conn.execute(stmt).all()
        yield from rows
        if len(rows) < PAGE:
            return
        after = rows[-1][0]


def segments(conn: Connection, start: ChainStart, head_seq: int, parts: int) -> list[Segment]:
    """``parts`` segments from ``start`` to the head, each starting from the stored hashes before it."""
    span = head_seq - start.seq + 1
    firsts = [start.seq + span * i // parts for i in range(parts)] + [head_seq + 1]
    out = [Segment(start.seq, firsts[1] - 1, start.prev_hash, tail=parts == 1)]
    for i, first in enumerate(firsts[1:-1], start=1):
        before = conn.execute(
            select(audit_log.c.seq, audit_log.c.hash, audit_log.c.mac)
            .where(audit_log.c.seq < first, audit_log.c.seq >= start.seq)
            .order_by(audit_log.c.seq.desc())
            .limit(2)
        ).all()
        prev = str(before[0][1]) if before else start.prev_hash
        prev2 = str(before[1][1]) if len(before) > 1 else start.prev_hash if len(before) == 1 else None
        out.append(Segment(first, firsts[i + 1] - 1, prev, prev2, bool(before) and before[0][2] is not None,
                           tail=i == parts - 1))  # fmt: skip
    return out


def strays(conn: Connection, start: ChainStart, head_seq: int | None) -> tuple[tuple[int, str] | None, ...]:
    """Rows no scan reads: stored before the log's start (or inside a pruned range), or past its head. A row
    past the head the head has reached since (an append during the verify) is no stray."""
    seq = audit_log.c.seq
    low = conn.execute(select(func.min(seq)).where(seq < start.seq)).scalar()
    below = None if low is None else (int(low), (
        f"record {low} lies before the start of the log (record {start.seq}"
        + (", after the pruned range" if start.seq > 1 else "") + "): it was not appended by the log"))  # fmt: skip
    beyond = None
    if head_seq is not None:
        now = conn.execute(select(audit_head.c.seq).where(audit_head.c.id == HEAD_ID)).scalar()
        reached = max(head_seq, int(now or 0))
        high = conn.execute(select(func.min(seq)).where(seq > reached)).scalar()
        if high is not None:
            beyond = (int(high), f"record {high} lies beyond the audit head (seq {reached}): it was not appended "
                                 "by the log")  # fmt: skip
    return below, beyond


def scan_segment(
    url: str,
    segment: Segment,
    head_seq: int | None,
    expect_head: str | None,
    keys: MacKeys | None,
    roots_at: Collection[int],
) -> Scan:
    """One segment, in a process of its own: open the database, scan, close."""
    from persona.log import configure

    configure("warning", stream=sys.stderr)
    store = Store.open(url)
    try:
        with store.read("verify a segment of the audit log") as conn:
            return scan(rows_of(conn, segment.first, segment.last), segment, head_seq=head_seq,
                        expect_head=expect_head, keys=keys, roots_at=roots_at)  # fmt: skip
    finally:
        store.close()


def scan_all(
    store: Store,
    conn: Connection,
    start: ChainStart,
    head_seq: int | None,
    *,
    expect_head: str | None,
    keys: MacKeys | None,
    roots_at: Collection[int],
    workers: int,
    executor: ExecutorFactory = spawned_processes,
    parallel_from: int = PARALLEL_FROM,
) -> list[Scan]:
    """The scans of the whole log, in order: one pass, or ``workers`` segments from ``parallel_from`` records."""
    span = 0 if head_seq is None else head_seq - start.seq + 1
    if workers < 2 or span < max(parallel_from, workers) or not store.shareable:
        return [scan(rows_of(conn, start.seq, head_seq), Segment(start.seq, head_seq, start.prev_hash),
                     head_seq=head_seq, expect_head=expect_head, keys=keys, roots_at=roots_at)]  # fmt: skip
    assert head_seq is not None
    parts = segments(conn, start, head_seq, min(workers, MAX_WORKERS))
    url = store.url_for_another_process()
    try:
        with executor(len(parts) - 1) as pool:
            futures: list[Future[Scan]] = [
                pool.submit(scan_segment, url, part, head_seq, expect_head, keys, roots_at)
                for part in parts[1:]
            ]
            first = scan(rows_of(conn, parts[0].first, parts[0].last), parts[0], head_seq=head_seq,
                         expect_head=expect_head, keys=keys, roots_at=roots_at)  # fmt: skip
            return [first, *(future.result() for future in futures)]
    except (BrokenExecutor, OSError) as exc:  # no processes to be had here: the one pass still answers
        log.warning("audit_verify_one_pass", reason=scrub(f"{type(exc).__name__}: {exc}"))
        return scan_all(store, conn, start, head_seq, expect_head=expect_head, keys=keys, roots_at=roots_at,
                        workers=1)  # fmt: skip
