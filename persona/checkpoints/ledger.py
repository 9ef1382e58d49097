"""Checkpoints of the audit log: sign the current tree, keep checkpoints in a directory, check the log.

The tree's leaves are the records' chain hashes in seq order (``leaf = SHA-256(0x00 || hash)``), so a
checkpoint commits to every field of every record before it. Checking the log against a checkpoint of
``size`` records recomputes the root of its first ``size`` leaves: a changed, removed, inserted or
re-chained record (even with every later hash and the head recomputed), a cut tail or an emptied table
all give another root or too few records.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from persona.audit import AuditLog
from persona.audit_chain import VerifyReport
from persona.checkpoints import merkle
from persona.checkpoints.merkle import ProofError
from persona.checkpoints.note import Checkpoint, CheckpointError, NoteSigner, NoteVerifier
from persona.store.audit_tables import GENESIS_HASH

SUFFIX = ".checkpoint"
PRUNED_SUFFIX = "-pruned.checkpoint"
"""A prune's checkpoint: kept beside the others under a name of its own (the worker may have signed a plain
checkpoint of the same size), never taken for the latest."""
_NAME = re.compile(r"[0-9]{12}\.checkpoint")
"""The files this directory writes: other files beside them are never taken for the latest."""


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


KEYED_FROM = "persona-keyed-from"
"""Checkpoint extension ``persona-keyed-from <seq>``: records from that seq on carry MACs. Verify holds the log
to it, so stripping every MAC (and re-chaining) cannot pass for a log that was never keyed."""


def keyed_from(checkpoint: Checkpoint) -> int | None:
    for line in checkpoint.extensions:
        name, _, value = line.partition(" ")
        if name == KEYED_FROM and value.isdigit():
            return int(value)
    return None


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
        from persona.checkpoints.verification import bad as bad_of
        from persona.checkpoints.verification import check_log

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


def check_report(report: VerifyReport, checkpoint: Checkpoint) -> None:
    """The checkpoint half of a verify: the root the pass computed at the checkpoint's size is the signed one."""
    if report.size < checkpoint.size:
        raise ProofError(
            f"the log has {report.size} records, and the checkpoint signed {checkpoint.size}: records were "
            "removed (a cut tail, an emptied table, or the database rolled back)"
        )
    if checkpoint.size < report.pruned:
        raise ProofError(
            f"the checkpoint of {checkpoint.size} records predates the pruned range 1..{report.pruned}: check it "
            "against an export taken before the prune (the prune's own checkpoint vouches for the range)"
        )
    got = report.roots.get(checkpoint.size)
    if got != checkpoint.root:
        raise ProofError(
            f"the first {checkpoint.size} records are not the ones the checkpoint signed: a record before "
            f"{checkpoint.size + 1} was changed, removed, inserted or re-chained"
        )


@dataclass(frozen=True)
class CheckpointDir:
    """A directory of signed checkpoints, one file per tree size; files are never overwritten."""

    path: Path

    def write(self, note: str, size: int, suffix: str = SUFFIX) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / f"{size:012d}{suffix}"
        if target.exists():
            if target.read_text(encoding="utf-8") != note:
                raise CheckpointError(
                    f"{target} exists with other content: checkpoints are never overwritten"
                )
            return target
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(note)
        return target

    def latest(self) -> Path | None:
        if not self.path.is_dir():
            return None
        found = sorted(p for p in self.path.iterdir() if _NAME.fullmatch(p.name))
        return found[-1] if found else None

    @staticmethod
    def size_of(path: Path) -> int:
        return int(path.name.split(".", 1)[0])


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


def open_file(path: Path, verifier: NoteVerifier) -> Checkpoint:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read the checkpoint {path}: {exc}") from None
    try:
        return verifier.open(text)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
