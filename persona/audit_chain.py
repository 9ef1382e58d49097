"""The audit chain check, apart from the log that writes it: rehash records in seq order and name the
first one that was changed, inserted, removed or cut off (``persona audit verify``)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from persona.store.audit_tables import GENESIS_HASH, canonical_record


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    ok: bool
    records: int
    """Records that verified (all of them when ``ok``)."""
    first_bad_seq: int | None
    problem: str | None
    head_hash: str | None


def verify_rows(
    rows: Iterable[Sequence[Any]], head: Sequence[Any] | None, expect_head: str | None
) -> VerifyReport:
    """The chain check proper: the first problem wins; ``records`` counts those before it."""
    head_seq = None if head is None else int(head[0])
    head_hash = None if head is None else str(head[1])
    anchored = expect_head is None or expect_head == GENESIS_HASH
    expected, prev, prev2 = 1, GENESIS_HASH, None
    sha256 = hashlib.sha256

    def bad(seq: int, problem: str) -> VerifyReport:
        return VerifyReport(False, seq - 1, seq, problem, head_hash)

    for row in rows:
        seq, prev_hash, stored = row[0], row[14], row[15]
        if seq != expected:
            return bad(expected, f"record {expected} is missing (the next record is {seq})")
        intact = sha256(canonical_record(*row[:15]).encode("utf-8", "surrogatepass")).hexdigest() == stored
        if prev_hash != prev:
            if prev2 is not None and prev_hash == prev2:
                return bad(seq - 1, f"record {seq - 1} was inserted: record {seq} links to record {seq - 2}")
            if intact and seq > 1:  # record seq is self-consistent: its predecessor was rewritten
                return bad(
                    seq - 1, f"record {seq - 1} was rewritten: record {seq} was chained to another hash"
                )
            return bad(seq, f"record {seq}: prev_hash does not match the hash of record {seq - 1}")
        if not intact:
            return bad(seq, f"record {seq}: its content does not match its hash (a field was changed)")
        if head_seq is not None and seq > head_seq:
            return bad(
                seq,
                f"record {seq} lies beyond the audit head (seq {head_seq}): it was not appended by the log",
            )
        if stored == expect_head:
            anchored = True
        prev2, prev, expected = prev, stored, expected + 1
    last = expected - 1
    if head_seq is None:
        return VerifyReport(False, last, None, "the audit_head row is missing", None)
    if head_seq > last:
        return bad(last + 1, f"the tail was truncated: the head is at seq {head_seq}, the log ends at {last}")
    if head_hash != prev:
        return bad(last, f"record {last}: the audit head's hash does not match it")
    if not anchored:
        return bad(
            last + 1,
            f"the expected head {expect_head} is not in the chain (it ends at seq {last}):"
            " records were removed or the chain was rewritten",
        )
    return VerifyReport(True, last, None, None, None if last == 0 else prev)
