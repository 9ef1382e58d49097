"""Checking an exported audit log against a signed checkpoint, with no database and no master key.

An export (``persona audit export``, every record) is one canonical JSON object per line, ``hash``
included. Record ``n`` verifies when: its ``seq`` is ``n``; SHA-256 of its line with the member
``,"hash":"<hash>"`` taken out is its ``hash``; its ``prev_hash`` is the previous record's ``hash`` (the
first one's is 64 zeros). The records' hashes, as bytes, are the leaves of an RFC 6962 tree
(``SHA-256(0x00 || hash)``); the checkpoint's root must be the root of the first ``size`` of them. The
README spells this out for a script in any language.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from persona.checkpoints import merkle
from persona.checkpoints.merkle import ProofError
from persona.checkpoints.note import Checkpoint
from persona.store.audit_tables import GENESIS_HASH


def verify_export(lines: Iterable[str], checkpoint: Checkpoint) -> int:
    """Raise :class:`ProofError` naming the first bad record; return how many records verified."""
    prev, leaves = GENESIS_HASH, []
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\n")
        try:
            record = json.loads(line)
            digest, seq, prev_hash = str(record["hash"]), record["seq"], record["prev_hash"]
        except (ValueError, KeyError, TypeError):
            raise ProofError(f"line {number} of the export is not an audit record", seq=number) from None
        if seq != number:
            raise ProofError(f"record {number} is missing (line {number} holds record {seq})", seq=number)
        body = line.replace(f',"hash":"{digest}"', "", 1)
        if hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest() != digest:
            raise ProofError(
                f"record {seq}: its content does not match its hash (a field was changed)", seq=seq
            )
        if prev_hash != prev:
            raise ProofError(f"record {seq}: prev_hash does not match the hash of record {seq - 1}", seq=seq)
        prev = digest
        leaves.append(merkle.leaf_hash(bytes.fromhex(digest)))
    merkle.check_prefix(leaves, checkpoint.size, checkpoint.root, what="the export",
                        short="records were removed, or the export is not complete (export without filters)")  # fmt: skip
    return len(leaves)
