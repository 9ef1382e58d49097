"""The audit chain check, apart from the log that writes it: rehash records in seq order, check their
MACs, and name the first one that was changed, inserted, removed, re-chained or cut off (``persona audit
verify``). The same pass builds the records' Merkle tree, so a signed checkpoint is checked without a
second read of the log."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from persona.audit_keys import MacKeys
from persona.checkpoints.merkle import ProofError, RangeBuilder, TreeBuilder, leaf_hash
from persona.jsonutil import canonical_json
from persona.store.audit_tables import GENESIS_HASH, canonical_record

_hmac: Callable[[bytes, bytes, str], bytes] = hmac.digest
with contextlib.suppress(ImportError):  # the C function hmac.digest wraps: verify calls it once per record
    from _hashlib import hmac_digest as _hmac


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

    def export_line(self) -> str:
        """The first line of a whole export of a pruned log."""
        return canonical_json({"pruned": {"last_hash": self.last_hash, "nodes": [n.hex() for n in self.nodes],
                                          "note": self.note, "through_seq": self.through_seq}})  # fmt: skip

    @classmethod
    def of(cls, row: Any) -> PruneMark:
        try:
            raw = bytes(row.nodes)
            nodes = tuple(raw[i : i + 32] for i in range(0, len(raw), 32))
            mark = cls(int(row.through_seq), str(row.last_hash), nodes, str(row.note), str(row.before),
                       str(row.pruned_at))  # fmt: skip
            TreeBuilder(mark.through_seq, nodes)  # a compact range of that many leaves, or ProofError
        except (TypeError, ValueError):
            raise ProofError(
                "the audit_pruned row was altered: it does not describe a pruned range"
            ) from None
        return mark


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
    ranges: Mapping[int, tuple[bytes, ...]] = dataclasses.field(default_factory=dict)
    """The tree's compact range at each size asked for: what a prune keeps of the records it deletes."""


@dataclasses.dataclass(frozen=True)
class Segment:
    """A run of records one scan checks: seq ``first`` to ``last`` (None: to the end of the table), with what
    the records before it left (their last two hashes as stored, whether one of them is keyed)."""

    first: int
    last: int | None
    prev: str
    prev2: str | None = None
    keyed_before: bool = False
    tail: bool = True
    """The log's last segment: a shortfall at its end is the head's to name (a cut tail)."""


@dataclasses.dataclass(frozen=True)
class Scan:
    """What one segment's scan found; :func:`combine` joins the scans of a log, in order."""

    problem: tuple[int, str] | None
    expected: int
    """The seq after the last record that verified."""
    prev: str
    """The hash of the last record that verified."""
    keyed: int
    unkeyed: int
    anchored: bool
    """The expected head was among the records that verified."""
    nodes: tuple[tuple[int, bytes], ...]
    """The compact range of the segment's leaves (one per row, from the stored hash)."""
    snapshots: Mapping[int, tuple[tuple[int, bytes], ...]]
    """The compact range at each tree size asked for that falls inside the segment."""


def scan(
    rows: Iterable[Sequence[Any]],
    segment: Segment,
    *,
    head_seq: int | None,
    expect_head: str | None,
    keys: MacKeys | None,
    roots_at: Collection[int] = (),
) -> Scan:
    """Check one segment's rows: the first problem wins; leaves are kept past it (the checkpoint check).

    A row is ``(seq, ts, ..., prev_hash, hash, mac, mac_kv)`` in the order of ``canonical_record``."""
    expected, prev, prev2 = segment.first, segment.prev, segment.prev2
    keyed = unkeyed = 0
    seen_keyed, anchored = segment.keyed_before, False
    tree = RangeBuilder(segment.first - 1)
    wanted, snapshots = set(roots_at), {}
    if tree.end in wanted:
        snapshots[tree.end] = tree.nodes
    mac_keys = None if keys is None else keys.keys
    canonical, sha, mac_of, same = canonical_record, hashlib.sha256, _hmac, hmac.compare_digest
    problem: tuple[int, str] | None = None
    for row in rows:
        stored = row[15]
        if problem is None:
            digest = sha(canonical(*row[:15]).encode("utf-8", "surrogatepass")).digest()
            if (
                row[0] != expected
                or row[14] != prev
                or digest.hex() != stored
                or (head_seq is not None and expected > head_seq)
            ):
                problem = _check(row, expected, prev, prev2, head_seq, sha)
            else:
                mac = row[16]
                if mac is None:
                    if seen_keyed:
                        problem = (expected, f"record {expected} has no MAC although records before it are keyed: it "
                                             "was written or rewritten by someone without the master key")  # fmt: skip
                    else:
                        unkeyed += 1
                elif mac_keys is not None:
                    key = mac_keys.get(row[17])
                    if type(mac) is not str or len(mac) != 64 or not mac.isascii():
                        problem = (
                            expected,
                            f"record {expected}: its MAC is not a MAC (altered in the database)",
                        )
                    elif key is None:
                        assert keys is not None
                        problem = (expected, f"record {expected}: {keys.why_missing(row[17])}")
                    elif not same(mac_of(key, digest, "sha256").hex(), mac):
                        problem = (expected, f"record {expected}: its MAC does not verify (key version {row[17]}): "
                                             "it was changed or re-chained by someone without the master key")  # fmt: skip
                    else:
                        keyed += 1
                        seen_keyed = True
                else:
                    keyed += 1
                    seen_keyed = True
            if problem is None:
                if stored == expect_head:
                    anchored = True
                prev2, prev, expected = prev, stored, expected + 1
                tree.append(sha(b"\x00" + digest).digest())
            else:
                tree.append(leaf_hash(_raw(stored)))
        else:  # past the first problem: only the leaves, for the checkpoint's root
            tree.append(leaf_hash(_raw(stored)))
        if tree.end in wanted:
            snapshots[tree.end] = tree.nodes
    if problem is None and not segment.tail and segment.last is not None and expected <= segment.last:
        problem = (expected, f"record {expected} is missing (no record follows record {expected - 1})")
    return Scan(problem, expected, prev, keyed, unkeyed, anchored, tree.nodes, snapshots)


def combine(
    scans: Sequence[Scan],
    head: Sequence[Any] | None,
    expect_head: str | None,
    *,
    keys: MacKeys | None,
    start: ChainStart,
    roots_at: Collection[int],
    before: tuple[int, str] | None = None,
    beyond: tuple[int, str] | None = None,
) -> VerifyReport:
    """Join the scans of consecutive segments: the first problem wins (``records`` counts those before it),
    then the head's checks; the Merkle tree is the pruned prefix's with every segment's range appended.

    ``before``/``beyond``: a row stored before the log's start or past its head (no scan reads those)."""
    head_seq = None if head is None else int(head[0])
    head_hash = None if head is None else str(head[1])
    tree = TreeBuilder(start.seq - 1, start.nodes)
    wanted, roots, ranges = set(roots_at), {}, {}
    if tree.size in wanted:
        roots[tree.size], ranges[tree.size] = tree.root(), tree.nodes
    problem: tuple[int, str] | None = None
    keyed = unkeyed = 0
    anchored = expect_head is None or expect_head == start.prev_hash
    expected, prev, joined = start.seq, start.prev_hash, True
    for part in scans:
        if problem is None:
            keyed, unkeyed = keyed + part.keyed, unkeyed + part.unkeyed
            anchored = anchored or part.anchored
            expected, prev, problem = part.expected, part.prev, part.problem
        for size, nodes in part.snapshots.items():
            if joined and size not in roots:
                with contextlib.suppress(ProofError):  # pieces that do not join (gaps): no root, a mismatch
                    there = _joined(tree.copy(), nodes)
                    roots[size], ranges[size] = there.root(), there.nodes
        if joined:
            try:
                _joined(tree, part.nodes)
            except ProofError:
                joined = False
    size = tree.size if joined else start.seq - 1 + sum(sum(1 << h for h, _ in part.nodes) for part in scans)

    def report(first_bad: int, text: str) -> VerifyReport:
        return VerifyReport(False, first_bad - start.seq, first_bad, text, head_hash, keyed, unkeyed,
                            keys is not None, size, roots, start.seq - 1, ranges)  # fmt: skip

    if before is not None:
        return report(*before)
    if problem is not None:
        return report(*problem)
    if beyond is not None:
        return report(*beyond)
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


def _joined(tree: TreeBuilder, nodes: Sequence[tuple[int, bytes]]) -> TreeBuilder:
    for height, node in nodes:
        tree.append_node(height, node)
    return tree


def _raw(stored: Any) -> bytes:
    """A stored hash as bytes; a value that is not one (only a tampered row has it) hashes as its text."""
    try:
        return bytes.fromhex(stored)
    except (TypeError, ValueError):
        return hashlib.sha256(str(stored).encode("utf-8", "surrogatepass")).digest()


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
