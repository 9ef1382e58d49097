"""``persona audit verify`` as one function: the chain, the MACs, the latest prune and a signed checkpoint,
checked in one pass over the log, each outcome a :class:`Finding` (what the CLI prints, what tests read)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from persona.audit import AuditLog
from persona.audit_chain import PruneMark, VerifyReport
from persona.checkpoints.merkle import ProofError
from persona.checkpoints.note import Checkpoint, CheckpointError, NoteVerifier
from persona.checkpoints.signed import check_report, keyed_from, open_file, prune_checkpoint
from persona.errors import AuditIntegrityError


@dataclass(frozen=True)
class Finding:
    level: Literal["ok", "warn", "bad"]
    title: str
    detail: str = ""


def bad(found: Sequence[Finding]) -> list[str]:
    """The bad findings as one line each: what a refusal (to sign, to prune) quotes first."""
    return [f"{f.title}: {f.detail}" for f in found if f.level == "bad"]


def verify_log(
    audit: AuditLog,
    *,
    checkpoint: Path | None,
    folder: Path,
    verifier: Callable[[], NoteVerifier],
    expect_head: str | None = None,
) -> list[Finding]:
    """Every finding, in order; the log verifies when none is ``bad``. ``checkpoint`` None: no checkpoint was
    found in ``folder``; ``verifier`` is asked for only when a checkpoint or a prune needs it."""
    return check_log(audit, checkpoint=checkpoint, folder=folder, verifier=verifier, expect_head=expect_head)[
        0
    ]


def check_log(
    audit: AuditLog,
    *,
    checkpoint: Path | None,
    folder: Path,
    verifier: Callable[[], NoteVerifier],
    expect_head: str | None = None,
    also_at: Sequence[int] = (),
) -> tuple[list[Finding], VerifyReport]:
    """:func:`verify_log`, and the report of its pass (with roots and compact ranges ``also_at`` those sizes)."""
    try:
        mark = audit.pruned()
    except AuditIntegrityError as exc:
        return [Finding("bad", "the audit log cannot be checked", str(exc))], VerifyReport(
            False, 0, None, str(exc), None
        )
    found: list[Finding] = []
    signed: Checkpoint | None = None
    sizes: list[int] = list(also_at)
    problems: dict[str, AuditIntegrityError] = {}
    key: NoteVerifier | None = None
    if checkpoint is not None or mark is not None:
        try:
            key = verifier()
        except AuditIntegrityError as exc:
            problems["key"] = exc
    if key is not None and checkpoint is not None:
        try:
            signed = open_file(checkpoint, key)
            sizes.append(signed.size)
        except AuditIntegrityError as exc:
            problems["checkpoint"] = exc
    if key is not None and mark is not None:
        with contextlib.suppress(AuditIntegrityError):  # _prune below names the problem
            sizes.append(key.open(mark.note).size)
    try:
        report = audit.verify(expect_head=expect_head, roots_at=sizes)
    except AuditIntegrityError as exc:  # what a prune kept is unreadable: no pass can start from it
        report = VerifyReport(False, 0, None, f"the pruned range's row cannot be used: {exc}", None)
        return [Finding("bad", "the audit log cannot be checked", str(report.problem))], report
    if report.ok:
        span = f" (seq {report.pruned + 1}..{report.pruned + report.records})" if report.pruned else ""
        found.append(
            Finding("ok", "audit chain intact", f"{report.records} records{span}, head {report.head_hash}")
        )
        found.append(_keys(report))
    else:
        where = "" if report.first_bad_seq is None else f" at record {report.first_bad_seq}"
        found.append(Finding("bad", f"audit chain broken{where}", str(report.problem)))
    if mark is not None:
        found.append(_prune(report, mark, key, problems.get("key")))
    if checkpoint is None:
        found.append(Finding(
            "warn", f"no signed checkpoint in {folder}",
            "a rewrite of the whole chain (every hash and the head recomputed) would pass; run `persona audit "
            "checkpoint` and keep the checkpoints outside the database's reach",
        ))  # fmt: skip
        return found, report
    try:
        if (problem := problems.get("key") or problems.get("checkpoint")) is not None:
            raise problem
        assert signed is not None
        assert key is not None
        check_report(report, signed)
        since = keyed_from(signed)
        if since is not None and report.unkeyed and report.pruned + report.unkeyed >= since:
            raise ProofError(
                f"records from {since} on were keyed when it was signed, and records up to "
                f"{report.pruned + report.unkeyed} carry no MAC now: MACs were stripped"
            )
    except AuditIntegrityError as exc:
        found.append(Finding("bad", f"checkpoint {checkpoint.name} does not match the log", str(exc)))
        return found, report
    found.append(Finding(
        "ok", f"consistent with checkpoint {checkpoint.name}",
        f"the first {signed.size} of {report.size} records are the ones {key.name} ({key.key_id.hex()}) signed",
    ))  # fmt: skip
    return found, report


def _keys(report: VerifyReport) -> Finding:
    if not report.macs_checked:
        return Finding("warn", "MACs not checked", "no master key in this process")
    if report.unkeyed == 0:
        return Finding("ok", "every record's MAC verifies", f"{report.keyed} keyed with the master key")
    return Finding(
        "warn", f"{report.unkeyed} record(s) carry no MAC",
        f"the first {report.unkeyed}, written before records were keyed; {report.keyed} keyed record(s) verify. Only "
        "a checkpoint vouches for the unkeyed ones",
    )  # fmt: skip


def _prune(
    report: VerifyReport, mark: PruneMark, key: NoteVerifier | None, problem: Exception | None
) -> Finding:
    title = f"records 1..{mark.through_seq} were pruned"
    if key is None:
        return Finding("bad", title, f"and nothing here can check the prune's signed checkpoint: {problem}")
    try:
        vouch = prune_checkpoint(mark, key)
    except CheckpointError as exc:
        return Finding("bad", title + " without a valid signed checkpoint", str(exc))
    signed = f"vouched for by the checkpoint of {vouch.size} records {key.name} signed"
    try:
        check_report(report, vouch)
    except AuditIntegrityError as exc:
        return Finding("bad", title, f"{signed}, which the log no longer matches: {exc}")
    return Finding("ok", title, f"those stamped before {mark.before} (on {mark.pruned_at}), {signed}")
