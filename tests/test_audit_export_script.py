"""The README's export algorithm is precise enough for another language: ``tests/export_check.mjs``, 40-odd
lines of Node.js written from the README alone (no code of ours), checks a real export against a real signed
checkpoint, and refuses an edited record, a removed one and a checkpoint signed by another key."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from persona.audit import AuditFilter, AuditLog
from persona.checkpoints.ledger import sign_current
from persona.checkpoints.note import NoteSigner
from persona.checkpoints.signed import CheckpointDir
from persona.store.engine import Store
from tests.test_audit import Clock, fill
from tests.test_audit_keys import keys_of

SCRIPT = Path(__file__).with_name("export_check.mjs")


def check(export: Path, checkpoint: Path, vkey: str) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node is not None, "node is needed for this cross-check (Debian: apt-get install nodejs)"
    return subprocess.run([node, str(SCRIPT), str(export), str(checkpoint), vkey], capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def signer_with_plus() -> NoteSigner:
    """A key whose base64 holds a "+" (about one key in two): the verifier key must be split at its first two."""
    while (
        "+"
        not in (signer := NoteSigner("plisio-persona/audit", Ed25519PrivateKey.generate())).vkey.split(
            "+", 2
        )[2]
    ):
        pass
    return signer


def test_a_script_in_another_language_checks_an_export(store: Store, tmp_path: Path) -> None:
    audit = AuditLog(store, now=Clock())
    audit.use_keys(keys_of())
    signer = signer_with_plus()
    try:
        fill(audit, 11)
        signed, path = sign_current(audit, signer, CheckpointDir(tmp_path / "cps"))
        assert signed.extensions == ("persona-keyed-from 1",), "an extension line the script must pass over"
        fill(audit, 2)  # records after the checkpoint may follow
        out = io.StringIO()
        audit.export_jsonl(out, AuditFilter())
    finally:
        audit.close()
    lines = out.getvalue().splitlines(keepends=True)
    export = tmp_path / "audit.jsonl"
    export.write_text("".join(lines), encoding="utf-8")
    done = check(export, path, signer.vkey)
    assert done.returncode == 0 and done.stdout.strip() == (
        "ok: 13 records chained; the first 11 are the ones plisio-persona/audit signed"
    ), done.stderr

    export.write_text(
        "".join([*lines[:4], lines[4].replace('"decision":"allow"', '"decision":"deny"'), *lines[5:]])
    )
    assert "FAIL: record 5 changed" in check(export, path, signer.vkey).stderr
    export.write_text("".join(lines[:6] + lines[7:]))
    assert "FAIL: record 7 is missing" in check(export, path, signer.vkey).stderr
    export.write_text("".join(lines))
    other = NoteSigner("plisio-persona/audit", Ed25519PrivateKey.generate()).vkey
    assert check(export, path, other).returncode == 1
