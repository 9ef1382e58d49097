"""The audit chain check, apart from the log that writes it: rehash records in seq order, check their
MACs, and name the first one that was changed, inserted, removed, re-chained or cut off (``persona audit
verify``). The same pass builds the records' Merkle tree, so a signed checkpoint is checked without a
second read of the log."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from persona.audit_keys import MacKeys
from persona.checkpoints.merkle import TreeBuilder, leaf_hash
from persona.store.audit_tables import GENESIS_HASH, canonical_record


@dataclasses.dataclass(frozen=True)
class ChainStart:
    """Where the stored chain begins: record 1 after the genesis hash, or the first record after a pruned
    range, with what the prune kept of it (the last pruned hash, the compact range of its leaves)."""

    seq: int = 1
    prev_hash: str = GENESIS_HASH
    nodes: tuple[bytes, ...] = ()


@dataclasses.dataclass(frozen=True)
class PruneMark:
    """The latest ``persona audit prune``: records 1..``through_seq`` are gone, vouched for by ``note``."""

    through_seq: int
    last_hash: str
    nodes: tuple[bytes, ...]
    note: str
    before: str
    pruned_at: str

    @property
    def start(self) -> ChainStart:
        return ChainStart(self.through_seq + 1, self.last_hash, self.nodes)

    @classmethod
    def of(cls, row: Any) -> PruneMark:
        raw = bytes(row.nodes)
        nodes = tuple(raw[i : i + 32] for i in range(0, len(raw), 32))
        return cls(int(row.through_seq), str(row.last_hash), nodes, str(row.note), str(row.before),
                   str(row.pruned_at))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    ok: bool
    records: int
    """Stored records that verified (all of them when ``ok``)."""
    first_bad_seq: int | None
    problem: str | None
    head_hash: str | None
    keyed: int = 0
    """Records whose MAC verified."""
    unkeyed: int = 0
    """Records written before records were keyed (no MAC): only a prefix of the log may be unkeyed."""
    macs_checked: bool = False
    size: int = 0
    """Leaves of the records' Merkle tree: every record ever appended, pruned ones included."""
    roots: Mapping[int, bytes] = dataclasses.field(default_factory=dict)
    """The tree's root at each size asked for (computed past a chain problem too, for the checkpoint check)."""
    pruned: int = 0
    """Records pruned before the stored ones (their roots cannot be recomputed)."""


@dataclasses.dataclass
class _Tally:
    keyed: int = 0
    unkeyed: int = 0


def verify_rows(
    rows: Iterable[Sequence[Any]],
    head: Sequence[Any] | None,
    expect_head: str | None,
    *,
    keys: MacKeys | None = None,
    start: ChainStart = ChainStart(),
    roots_at: Collection[int] = (),
) -> VerifyReport:
    """The chain check proper: the first problem wins; ``records`` counts those before it.

    A row is ``(seq, ts, ..., prev_hash, hash, mac, mac_kv)`` in the order of ``canonical_record``."""
    head_seq = None if head is None else int(head[0])
    head_hash = None if head is None else str(head[1])
    anchored = expect_head is None or expect_head == start.prev_hash
    expected, prev, prev2 = start.seq, start.prev_hash, None
    tree = TreeBuilder(start.seq - 1, start.nodes)
    wanted, roots = set(roots_at), {}
    if tree.size in wanted:
        roots[tree.size] = tree.root()
    tally, mac_keys = _Tally(), None if keys is None else keys.keys
    sha256, digest, same = hashlib.sha256, hmac.digest, hmac.compare_digest
    problem: tuple[int, str] | None = None

    def report(first_bad: int, text: str) -> VerifyReport:
        return VerifyReport(False, first_bad - start.seq, first_bad, text, head_hash, tally.keyed, tally.unkeyed,
                            keys is not None, tree.size, roots, start.seq - 1)  # fmt: skip

    for row in rows:
        stored = row[15]
        if problem is None:
            problem = _check(row, expected, prev, prev2, head_seq, sha256)
            if problem is None:
                mac, version = row[16], row[17]
                if mac is None:
                    if tally.keyed:
                        problem = (expected, f"record {expected} has no MAC although records before it are keyed: it "
                                             "was written or rewritten by someone without the master key")  # fmt: skip
                    else:
                        tally.unkeyed += 1
                elif mac_keys is not None:
                    key = mac_keys.get(version)
                    if key is None:
                        assert keys is not None
                        problem = (expected, f"record {expected}: {keys.why_missing(version)}")
                    elif not same(digest(key, bytes.fromhex(stored), "sha256").hex(), mac):
                        problem = (expected, f"record {expected}: its MAC does not verify (key version {version}): it "
                                             "was changed or re-chained by someone without the master key")  # fmt: skip
                    else:
                        tally.keyed += 1
                else:
                    tally.keyed += 1
            if problem is None:
                if stored == expect_head:
                    anchored = True
                prev2, prev, expected = prev, stored, expected + 1
        tree.append(leaf_hash(bytes.fromhex(stored)))
        if tree.size in wanted:
            roots[tree.size] = tree.root()
    if problem is not None:
        return report(*problem)
    last = expected - 1
    if head_seq is None:
        return dataclasses.replace(
            report(last + 1, "the audit_head row is missing"), first_bad_seq=None, head_hash=None
        )
    if head_seq > last:
        return report(
            last + 1, f"the tail was truncated: the head is at seq {head_seq}, the log ends at {last}"
        )
    if head_hash != prev:
        return report(last, f"record {last}: the audit head's hash does not match it")
    if not anchored:
        return report(last + 1, f"the expected head {expect_head} is not in the chain (it ends at seq {last}):"
                                " records were removed or the chain was rewritten")  # fmt: skip
    done = report(last + 1, "")
    return dataclasses.replace(done, ok=True, first_bad_seq=None, problem=None,
                               head_hash=None if last == 0 else prev)  # fmt: skip


def _check(
    row: Sequence[Any], expected: int, prev: str, prev2: str | None, head_seq: int | None, sha256: Any
) -> tuple[int, str] | None:
    """The chain rules for one row: its place, its link, its content, the head."""
    seq, prev_hash, stored = row[0], row[14], row[15]
    if seq != expected:
        return expected, f"record {expected} is missing (the next record is {seq})"
    intact = sha256(canonical_record(*row[:15]).encode("utf-8", "surrogatepass")).hexdigest() == stored
    if prev_hash != prev:
        if prev2 is not None and prev_hash == prev2:
            return seq - 1, f"record {seq - 1} was inserted: record {seq} links to record {seq - 2}"
        if intact and seq > 1:  # record seq is self-consistent: its predecessor was rewritten
            return seq - 1, f"record {seq - 1} was rewritten: record {seq} was chained to another hash"
        return seq, f"record {seq}: prev_hash does not match the hash of record {seq - 1}"
    if not intact:
        return seq, f"record {seq}: its content does not match its hash (a field was changed)"
    if head_seq is not None and seq > head_seq:
        return (
            seq,
            f"record {seq} lies beyond the audit head (seq {head_seq}): it was not appended by the log",
        )
    return None
