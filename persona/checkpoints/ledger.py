"""Checkpoints of the audit log: sign the current tree, keep checkpoints in a directory, check the log.

The tree's leaves are the records' chain hashes in seq order (``leaf = SHA-256(0x00 || hash)``), so a
checkpoint commits to every field of every record before it. Checking the log against a checkpoint of
``size`` records recomputes the root of its first ``size`` leaves: a changed, removed, inserted or
re-chained record (even with every later hash and the head recomputed), a cut tail or an emptied table
all give another root or too few records.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from persona.audit import AuditLog
from persona.checkpoints import merkle
from persona.checkpoints.note import Checkpoint, CheckpointError, NoteSigner, NoteVerifier
from persona.checkpoints.signed import KEYED_FROM, SUFFIX, CheckpointDir, check_report, keyed_from, open_file
from persona.checkpoints.verification import bad as bad_of
from persona.checkpoints.verification import check_log
from persona.store.audit_tables import GENESIS_HASH


def leaves(audit: AuditLog) -> list[bytes]:
    """The stored records' leaves (after a pruned range, see :func:`tree`)."""
    return [merkle.leaf_hash(bytes.fromhex(h)) for h in audit.record_hashes()]


def tree(audit: AuditLog) -> merkle.Tree:
    """The whole log's tree: the stored records after the compact range a prune kept of the others."""
    mark = audit.pruned()
    if mark is None:
        return merkle.Tree(leaves(audit))
    return merkle.Tree(leaves(audit), pruned=mark.through_seq, nodes=mark.nodes)


def current(audit: AuditLog, origin: str) -> Checkpoint:
    whole = tree(audit)
    return Checkpoint(origin, whole.size, whole.root())


class LiveTree:
    """The signer's view of the log: it signs only what verifies, and between checkpoints reads only what was
    appended since.

    The first checkpoint a signer makes runs the whole of ``persona audit verify`` (chain, MACs, the latest
    checkpoint, any prune) and refuses to sign a log that does not verify: a rewrite is never laundered into
    a newer checkpoint. After that the records appended since are checked (chain and MACs, from the last hash
    it holds) and added to its tree; records it has already taken in are never reread, so a rewrite under a
    running signer cannot make it sign another root either."""

    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit
        self._tree: merkle.TreeBuilder | None = None
        self._last = GENESIS_HASH
        self._keyed_from: int | None = None

    def current(self, signer: NoteSigner, where: CheckpointDir) -> Checkpoint:
        if self._tree is None:
            self._start(NoteVerifier.from_vkey(signer.vkey), where)
        else:
            self._extend()
        assert self._tree is not None
        marks = () if self._keyed_from is None else (f"{KEYED_FROM} {self._keyed_from}",)
        return Checkpoint(signer.name, self._tree.size, self._tree.root(), marks)

    def _start(self, verifier: NoteVerifier, where: CheckpointDir) -> None:
        size = self._audit.head()[0]
        latest = where.latest()
        found, report = check_log(self._audit, checkpoint=latest, folder=where.path, verifier=lambda: verifier,
                                  also_at=(size,))  # fmt: skip
        bad = bad_of(found)
        if bad or size not in report.ranges:
            raise CheckpointError(
                "the audit log does not verify, so no checkpoint was signed: "
                f"{bad[0] if bad else 'its records could not be read'} (fix: investigate with `persona audit verify`)"
            )
        earlier = None if latest is None else keyed_from(open_file(latest, verifier))
        first_keyed = report.pruned + report.unkeyed + 1 if report.keyed else None
        self._keyed_from = earlier or (
            first_keyed if first_keyed is not None and first_keyed <= size else None
        )
        self._tree = merkle.TreeBuilder(size, report.ranges[size])
        self._last = self._audit.hash_of(size)

    def _extend(self) -> None:
        assert self._tree is not None
        size = self._tree.size
        found, _ = self._audit.scan_after(size, self._last, keyed_before=self._keyed_from is not None)
        if found.problem is not None:
            raise CheckpointError(
                f"record {found.problem[0]}: {found.problem[1]}: no checkpoint was signed (fix: investigate with "
                "`persona audit verify`)"
            )
        for height, node in found.nodes:
            self._tree.append_node(height, node)
        if self._keyed_from is None and found.keyed:
            self._keyed_from = size + found.unkeyed + 1
        self._last = found.prev


def check(audit: AuditLog, checkpoint: Checkpoint) -> int:
    """Raise :class:`ProofError` unless the log's first ``checkpoint.size`` records are the signed ones;
    returns the log's size."""
    report = audit.verify(roots_at=(checkpoint.size,))
    check_report(report, checkpoint)
    return report.size


def sign_current(
    audit: AuditLog, signer: NoteSigner, where: CheckpointDir, live: LiveTree | None = None
) -> tuple[Checkpoint, Path]:
    """Sign the log as it is now, if it verifies (see :class:`LiveTree`), and keep the checkpoint in ``where``;
    a checkpoint of this very tree that is there already is the answer instead."""
    checkpoint = (live or LiveTree(audit)).current(signer, where)
    there = where.path / f"{checkpoint.size:012d}{SUFFIX}"
    if there.exists():
        with contextlib.suppress(CheckpointError):  # anything else there: write() refuses to overwrite it
            kept = open_file(there, NoteVerifier.from_vkey(signer.vkey))
            if (kept.size, kept.root) == (checkpoint.size, checkpoint.root):
                return kept, there
    return checkpoint, where.write(signer.sign(checkpoint), checkpoint.size)
