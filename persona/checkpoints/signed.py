"""Signed checkpoints as they are kept: the directory of files, a file opened and its signature checked, the
extensions a checkpoint carries (MACs from, a prune's range), and a verify pass held to one.

A floor below :mod:`.ledger` (signing), :mod:`.retention` (pruning) and :mod:`.verification` (the whole
check), which all read checkpoints this way.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from persona.audit_chain import PruneMark, VerifyReport
from persona.checkpoints.merkle import ProofError
from persona.checkpoints.note import Checkpoint, CheckpointError, NoteVerifier

SUFFIX = ".checkpoint"
PRUNED_SUFFIX = "-pruned.checkpoint"
"""A prune's checkpoint: kept beside the others under a name of its own (the worker may have signed a plain
checkpoint of the same size), never taken for the latest."""
_NAME = re.compile(r"[0-9]{12}\.checkpoint")
"""The files this directory writes: other files beside them are never taken for the latest."""


KEYED_FROM = "persona-keyed-from"
"""Checkpoint extension ``persona-keyed-from <seq>``: records from that seq on carry MACs. Verify holds the log
to it, so stripping every MAC (and re-chaining) cannot pass for a log that was never keyed."""


def keyed_from(checkpoint: Checkpoint) -> int | None:
    for line in checkpoint.extensions:
        name, _, value = line.partition(" ")
        if name == KEYED_FROM and value.isdigit():
            return int(value)
    return None


EXTENSION = "persona-pruned"


def extension_line(through_seq: int, last_hash: str) -> str:
    return f"{EXTENSION} {through_seq} {last_hash}"


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


def open_file(path: Path, verifier: NoteVerifier) -> Checkpoint:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read the checkpoint {path}: {exc}") from None
    try:
        return verifier.open(text)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


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


def prune_checkpoint(mark: PruneMark, verifier: NoteVerifier) -> Checkpoint:
    """The signed checkpoint the latest prune wrote, if the signing key signed it and it names the range the
    database says was pruned; else :class:`CheckpointError` (records were deleted nobody signed for)."""
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
    return signed
