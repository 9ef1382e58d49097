"""Checking an exported audit log against a signed checkpoint, with no database and no master key.

An export (``persona audit export``, every record) is one canonical JSON object per line, ``hash``
included. Record ``n`` verifies when: its ``seq`` is ``n``; SHA-256 of its line with the member
``,"hash":"<hash>"`` taken out is its ``hash``; its ``prev_hash`` is the previous record's ``hash`` (the
first one's is 64 zeros). The records' hashes, as bytes, are the leaves of an RFC 6962 tree
(``SHA-256(0x00 || hash)``); the checkpoint's root must be the root of the first ``size`` of them.

The export of a pruned log starts with ``{"pruned": {"last_hash", "nodes", "note", "through_seq"}}``:
records 1..through_seq are gone, the chain resumes with ``prev_hash == last_hash``, and ``nodes`` (hex) are
the roots of the perfect subtrees that make up the first through_seq leaves, largest first. ``note`` is the
signed checkpoint the prune wrote: its extension line ``persona-pruned <through_seq> <last_hash>`` names the
range, and its root must be the export's root at its size. The README spells this out for a script in
any language.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from persona.checkpoints import merkle
from persona.checkpoints.merkle import ProofError
from persona.checkpoints.note import Checkpoint, CheckpointError, NoteVerifier
from persona.store.audit_tables import GENESIS_HASH


def verify_export(lines: Iterable[str], checkpoint: Checkpoint, verifier: NoteVerifier | None = None) -> int:
    """Raise :class:`ProofError` naming the first bad record; return how many records verified.

    ``verifier`` checks the signed note of a pruned export's first line (required when there is one)."""
    seq_next, prev, tree = 1, GENESIS_HASH, merkle.TreeBuilder()
    signed = [(checkpoint, "the checkpoint")]
    roots: dict[int, bytes] = {0: tree.root()}
    count = 0
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\n")
        try:
            record = json.loads(line)
        except ValueError:
            raise ProofError(f"line {number} of the export is not an audit record", seq=number) from None
        if number == 1 and isinstance(record, dict) and "pruned" in record:
            prune, seq_next, prev, tree = _pruned(record["pruned"], verifier)
            if prune.origin != checkpoint.origin:
                raise CheckpointError(f"the prune's checkpoint is of another log ({prune.origin!r})")
            signed.append((prune, "the prune's checkpoint"))
            roots = {tree.size: tree.root()}
            continue
        try:
            digest, seq, prev_hash = str(record["hash"]), record["seq"], record["prev_hash"]
        except (KeyError, TypeError):
            raise ProofError(f"line {number} of the export is not an audit record", seq=number) from None
        if seq != seq_next:
            raise ProofError(f"record {seq_next} is missing (line {number} holds record {seq})", seq=seq_next)
        body = line.replace(f',"hash":"{digest}"', "", 1)
        if hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest() != digest:
            raise ProofError(
                f"record {seq}: its content does not match its hash (a field was changed)", seq=seq
            )
        if prev_hash != prev:
            raise ProofError(f"record {seq}: prev_hash does not match the hash of record {seq - 1}", seq=seq)
        prev, seq_next, count = digest, seq_next + 1, count + 1
        tree.append(merkle.leaf_hash(bytes.fromhex(digest)))
        if any(tree.size == cp.size for cp, _ in signed):
            roots[tree.size] = tree.root()
    for cp, what in signed:
        if tree.size < cp.size:
            raise ProofError(f"the export has {tree.size} records, and {what} signed {cp.size}: records were "
                             "removed, or the export is not complete (export without filters)")  # fmt: skip
        if cp.size not in roots:
            raise ProofError(f"{what} ({cp.size} records) predates the range this export was pruned of")
        if roots[cp.size] != cp.root:
            raise ProofError(
                f"the first {cp.size} records are not the ones {what} signed: a record before {cp.size + 1} was "
                "changed, removed, inserted or re-chained"
            )
    return count


def _pruned(header: Any, verifier: NoteVerifier | None) -> tuple[Checkpoint, int, str, merkle.TreeBuilder]:
    from persona.checkpoints.signed import extension_line

    try:
        through, last, nodes, note = (int(header["through_seq"]), str(header["last_hash"]),
                                      [bytes.fromhex(n) for n in header["nodes"]], str(header["note"]))  # fmt: skip
    except (KeyError, TypeError, ValueError):
        raise ProofError("the export's first line names a pruned range it does not describe") from None
    if verifier is None:
        raise CheckpointError(
            "the export is of a pruned log: its prune checkpoint needs --pubkey to be checked"
        )
    signed = verifier.open(note)
    if extension_line(through, last) not in signed.extensions:
        raise CheckpointError(
            f"the export says records 1..{through} were pruned, and the prune's signed checkpoint records "
            f"another range ({', '.join(signed.extensions) or 'none'})"
        )
    return signed, through + 1, last, merkle.TreeBuilder(through, nodes)
