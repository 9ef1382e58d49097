"""Retention: ``persona audit prune --before DATE`` removes old records only by signing for them first.

A prune (1) refuses a log that does not verify, or that does not match its latest checkpoint (pruning would
erase the evidence); (2) appends an ``audit_pruned`` record; (3) signs a checkpoint of the whole log, that
record included, with the extension line ``persona-pruned <through seq> <hash of that record>`` and writes it
to the checkpoint directory; only then (4) deletes records 1..through in the transaction that keeps, in
``audit_pruned``, what verifying the rest needs of them: the last hash (the next record's ``prev_hash``) and
the compact range of their Merkle leaves (one hash per set bit of ``through``), so every later root,
inclusion and consistency proof is still computed exactly.

``persona audit verify`` then checks the signed note of the latest prune: its extension must name the range
the database says was pruned, and its root must be the root the stored records give with the kept range. A
deletion nobody signed for (or a forged range) fails there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete, func, select

from persona.audit import AuditEvent, AuditLog
from persona.audit_chain import PruneMark, VerifyReport
from persona.checkpoints import merkle
from persona.checkpoints.ledger import CheckpointDir, check_report, open_file
from persona.checkpoints.note import Checkpoint, CheckpointError, NoteSigner, NoteVerifier
from persona.errors import AuditIntegrityError, Conflict
from persona.store.audit_tables import audit_log, audit_pruned, ts_text
from persona.store.engine import Store

EXTENSION = "persona-pruned"


def extension_line(through_seq: int, last_hash: str) -> str:
    return f"{EXTENSION} {through_seq} {last_hash}"


@dataclass(frozen=True)
class Pruned:
    through_seq: int
    removed: int
    checkpoint: Checkpoint
    path: Path


def prune(
    audit: AuditLog,
    store: Store,
    signer: NoteSigner,
    folder: CheckpointDir,
    *,
    before: datetime,
    by: str,
    now: Callable[[], datetime],
) -> Pruned:
    """Prune the records stamped before ``before`` (see the module docstring for the order of the steps)."""
    audit.flush_sync()
    mark = audit.pruned()
    done = 0 if mark is None else mark.through_seq
    with store.read("find the records to prune") as conn:
        through = conn.execute(
            select(func.max(audit_log.c.seq)).where(audit_log.c.ts < ts_text(before))
        ).scalar()
    if through is None or int(through) <= done:
        raise Conflict(f"no audit record before {before.isoformat()} is left to prune")
    through = int(through)
    _refuse_unless_verified(audit, folder, NoteVerifier.from_vkey(signer.vkey))
    audit.append_sync(AuditEvent(
        event="audit_pruned", source="cli", user=by, reason=f"records {done + 1}..{through} pruned",
        payload={"from_seq": done + 1, "through_seq": through, "before": before.isoformat()},
    ))  # fmt: skip
    stored = [bytes.fromhex(h) for h in audit.record_hashes()]
    kept = merkle.TreeBuilder(done, () if mark is None else mark.nodes)
    for digest in stored[: through - done]:
        kept.append(merkle.leaf_hash(digest))
    nodes = kept.nodes
    for digest in stored[through - done :]:
        kept.append(merkle.leaf_hash(digest))
    last_hash = stored[through - done - 1].hex()
    signed = Checkpoint(signer.name, kept.size, kept.root(), (extension_line(through, last_hash),))
    note = signer.sign(signed)
    path = folder.write(note, signed.size)  # kept outside the database before anything is deleted
    with store.begin("prune the audit log") as conn:
        conn.execute(audit_pruned.insert().values(
            through_seq=through, last_hash=last_hash, nodes=b"".join(nodes), note=note,
            before=ts_text(before), pruned_at=ts_text(now()),
        ))  # fmt: skip
        removed = conn.execute(delete(audit_log).where(audit_log.c.seq <= through)).rowcount
    return Pruned(through, int(removed), signed, path)


def _refuse_unless_verified(audit: AuditLog, folder: CheckpointDir, verifier: NoteVerifier) -> None:
    latest = folder.latest()
    signed = None if latest is None else open_file(latest, verifier)
    report = audit.verify(roots_at=() if signed is None else (signed.size,))
    try:
        if not report.ok:
            raise AuditIntegrityError(f"record {report.first_bad_seq}: {report.problem}")
        if signed is not None:
            check_report(report, signed)
    except AuditIntegrityError as exc:
        raise AuditIntegrityError(
            f"the audit log does not verify, so nothing was pruned (pruning would erase the evidence): {exc} "
            "(fix: investigate with `persona audit verify` first)"
        ) from None


def check_prune(report: VerifyReport, mark: PruneMark, verifier: NoteVerifier) -> Checkpoint:
    """The latest prune is one the signing key recorded, and the stored records still give its root."""
    try:
        signed = verifier.open(mark.note)
    except CheckpointError as exc:
        raise CheckpointError(
            f"records 1..{mark.through_seq} were deleted, and the checkpoint kept for that prune does not verify: "
            f"{exc}"
        ) from None
    if extension_line(mark.through_seq, mark.last_hash) not in signed.extensions:
        raise CheckpointError(
            f"records 1..{mark.through_seq} were deleted, but the signed prune checkpoint records another range "
            f"({', '.join(signed.extensions) or 'none'}): the pruned range was altered"
        )
    check_report(report, signed)
    return signed
