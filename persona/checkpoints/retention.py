"""Retention: ``persona audit prune --before DATE`` removes old records only by signing for them first.

A prune (1) runs the whole of ``persona audit verify`` (chain, MACs, the latest checkpoint and any earlier
prune) and refuses if anything is bad: pruning would erase the evidence; (2) from that same pass, takes the
root of the log and the compact range of the records to delete (one hash per set bit of their count: all
that every later root, inclusion and consistency proof needs of them); (3) signs a checkpoint of the log
with the extension line ``persona-pruned <through seq> <hash of that record>`` and writes it beside the
others as ``<size>-pruned.checkpoint``; only then (4) deletes records 1..through in the transaction that
keeps, in ``audit_pruned``, the last hash (the next record's ``prev_hash``), the compact range and the
signed note; and (5) appends an ``audit_pruned`` record.

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
from persona.checkpoints.note import Checkpoint, NoteSigner, NoteVerifier
from persona.checkpoints.signed import PRUNED_SUFFIX, CheckpointDir, extension_line
from persona.checkpoints.verification import bad as bad_of
from persona.checkpoints.verification import check_log
from persona.errors import AuditIntegrityError, Conflict
from persona.events import OperatorEvent, Source
from persona.store.audit_tables import audit_log, audit_pruned, ts_text
from persona.store.engine import Store


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
    through, size = int(through), audit.head()[0]
    key = NoteVerifier.from_vkey(signer.vkey)
    found, report = check_log(audit, checkpoint=folder.latest(), folder=folder.path, verifier=lambda: key,
                              also_at=(through, size))  # fmt: skip
    bad = bad_of(found)
    if bad or through not in report.ranges or size not in report.roots:
        raise AuditIntegrityError(
            f"the audit log does not verify, so nothing was pruned (pruning would erase the evidence): "
            f"{bad[0] if bad else 'the records to prune could not be read'} (fix: investigate with "
            "`persona audit verify` first)"
        )
    with store.read("read the last record to prune") as conn:
        last_hash = str(conn.execute(select(audit_log.c.hash).where(audit_log.c.seq == through)).scalar_one())
    signed = Checkpoint(signer.name, size, report.roots[size], (extension_line(through, last_hash),))
    note = signer.sign(signed)
    path = folder.write(note, size, PRUNED_SUFFIX)  # kept outside the database before anything is deleted
    with store.begin("prune the audit log") as conn:
        conn.execute(audit_pruned.insert().values(
            through_seq=through, last_hash=last_hash, nodes=b"".join(report.ranges[through]), note=note,
            before=ts_text(before), pruned_at=ts_text(now()),
        ))  # fmt: skip
        removed = conn.execute(delete(audit_log).where(audit_log.c.seq <= through)).rowcount
    audit.append_sync(AuditEvent(
        event=OperatorEvent.AUDIT_PRUNED, source=Source.CLI, user=by, reason=f"records {done + 1}..{through} pruned",
        payload={"from_seq": done + 1, "through_seq": through, "before": before.isoformat(), "checkpoint": path.name},
    ))  # fmt: skip
    return Pruned(through, int(removed), signed, path)
