"""The audit log against an insider who can write the database: with a signed checkpoint kept outside
it, a full rewrite (every later hash and the head recomputed), a cut tail with the head moved back, a
delete-renumber-recompute and an emptied table are all caught, though the plain chain check passes them.
A checkpoint signed by another key, or an older checkpoint after the log went back, is refused too.
Runs on SQLite, and on PostgreSQL when PERSONA_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from persona.audit import _COLUMN_NAMES, AuditLog
from persona.checkpoints.ledger import check, current, sign_current
from persona.checkpoints.merkle import ProofError
from persona.checkpoints.note import CheckpointError, NoteSigner, NoteVerifier
from persona.checkpoints.signed import CheckpointDir, open_file
from persona.store.audit_tables import GENESIS_HASH, canonical_record
from persona.store.engine import Store
from tests.test_audit import Clock, drop_triggers, event, fill, raw

ORIGIN = "persona.test/audit"


@pytest.fixture
def audit(store: Store) -> Iterator[AuditLog]:
    log = AuditLog(store, now=Clock())
    yield log
    log.close()


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner(ORIGIN, Ed25519PrivateKey.generate())


def rechain(store: Store, first: int) -> None:
    """Recompute every hash from record ``first`` on, and the head: what an attacker who knows the
    (unkeyed) algorithm does after an edit, so that the chain check alone passes."""
    cols = ", ".join(_COLUMN_NAMES)
    rows = raw(store, f"SELECT {cols} FROM audit_log WHERE seq >= :s ORDER BY seq", s=first)  # noqa: S608
    prev = (
        GENESIS_HASH
        if first == 1
        else raw(store, "SELECT hash FROM audit_log WHERE seq = :s", s=first - 1)[0][0]
    )
    for row in rows:
        values = [*row[:14], prev]
        digest = hashlib.sha256(canonical_record(*values).encode("utf-8", "surrogatepass")).hexdigest()
        raw(
            store, "UPDATE audit_log SET prev_hash = :p, hash = :h WHERE seq = :s", p=prev, h=digest, s=row[0]
        )
        prev = digest
    last = raw(store, "SELECT max(seq) FROM audit_log")[0][0] or 0
    raw(store, "UPDATE audit_head SET seq = :s, hash = :h", s=last, h=prev if last else GENESIS_HASH)


def attack(store: Store, how: str) -> None:
    drop_triggers(store)
    if how == "rewrite":
        raw(store, "UPDATE audit_log SET reason = 'nothing to see' WHERE seq = 3")
        rechain(store, 3)
    elif how == "cut-tail":
        raw(store, "DELETE FROM audit_log WHERE seq > 6")
        rechain(store, 7)
    elif how == "delete-renumber":
        raw(store, "DELETE FROM audit_log WHERE seq = 4")
        for seq in range(5, 11):
            raw(store, "UPDATE audit_log SET seq = :n WHERE seq = :o", n=seq - 1, o=seq)
        rechain(store, 4)
    elif how == "insert":
        raw(store, "UPDATE audit_log SET seq = seq + 100 WHERE seq >= 5")
        for seq in range(105, 111):
            raw(store, "UPDATE audit_log SET seq = :n WHERE seq = :o", n=seq - 99, o=seq)
        raw(store, "INSERT INTO audit_log (seq, ts, user_id, persona, conversation_id, source, event, tool, payload,"
                   " decision, reason, model, usage, latency_ms, prev_hash, hash) SELECT 5, ts, user_id, persona,"
                   " conversation_id, source, 'approval_granted', tool, payload, decision, reason, model, usage,"
                   " latency_ms, prev_hash, hash FROM audit_log WHERE seq = 4")  # fmt: skip
        rechain(store, 5)
    elif how == "empty":
        raw(store, "DELETE FROM audit_log")
        rechain(store, 1)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["rewrite", "cut-tail", "delete-renumber", "insert", "empty"])
def test_a_rechained_history_passes_the_chain_but_not_the_checkpoint(
    audit: AuditLog, store: Store, signer: NoteSigner, tmp_path: Path, how: str
) -> None:
    fill(audit, 10)
    _, path = sign_current(audit, signer, CheckpointDir(tmp_path))
    signed = open_file(path, NoteVerifier.from_vkey(signer.vkey))
    assert signed.size == 10 and check(audit, signed) == 10
    attack(store, how)
    assert audit.verify().ok, "the unkeyed chain alone cannot tell"
    with pytest.raises(ProofError, match=r"records were removed|not the ones the checkpoint signed"):
        check(audit, signed)


def test_records_after_the_checkpoint_may_follow_and_the_next_one_extends_it(
    audit: AuditLog, signer: NoteSigner, tmp_path: Path
) -> None:
    folder = CheckpointDir(tmp_path)
    fill(audit, 5)
    first, first_path = sign_current(audit, signer, folder)
    for i in range(5, 9):
        audit.append_sync(event(i))
    assert check(audit, first) == 9, "a later record does not invalidate an earlier checkpoint"
    second, second_path = sign_current(audit, signer, folder)
    assert folder.latest() == second_path != first_path and second.size == 9
    (tmp_path / "zz-planted.checkpoint").write_text("not ours", encoding="utf-8")
    assert folder.latest() == second_path, "only the files the directory writes count"
    assert sign_current(audit, signer, folder)[1] == second_path, "the same tree: the same file"


def test_a_forged_or_rolled_back_checkpoint_is_refused(
    audit: AuditLog, store: Store, signer: NoteSigner, tmp_path: Path
) -> None:
    fill(audit, 6)
    verifier = NoteVerifier.from_vkey(signer.vkey)
    mallory = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    forged = tmp_path / "forged.checkpoint"
    forged.write_text(mallory.sign(current(audit, ORIGIN)), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"forged\.checkpoint: the note has no signature by"):
        open_file(forged, verifier)
    _, path = sign_current(audit, signer, CheckpointDir(tmp_path / "real"))
    newer = open_file(path, verifier)
    # The database is restored from an older backup (a rollback): the newer checkpoint finds it short.
    drop_triggers(store)
    raw(store, "DELETE FROM audit_log WHERE seq > 3")
    rechain(store, 4)
    with pytest.raises(ProofError, match="the log has 3 records, and the checkpoint signed 6"):
        check(audit, newer)


def test_a_checkpoint_file_is_never_overwritten(audit: AuditLog, signer: NoteSigner, tmp_path: Path) -> None:
    fill(audit, 2)
    folder = CheckpointDir(tmp_path)
    _, path = sign_current(audit, signer, folder)
    path.write_text(path.read_text(encoding="utf-8").replace("\n2\n", "\n2 \n"), encoding="utf-8")
    with pytest.raises(CheckpointError, match="never overwritten"):
        folder.write(signer.sign(current(audit, ORIGIN)), 2)
    with pytest.raises(CheckpointError, match="does not verify, so no checkpoint was signed"):
        sign_current(audit, signer, folder)  # the latest one is altered: the signer stops and says so


@pytest.mark.slow
def test_the_command_line_signs_checks_and_names_a_rewrite(tmp_path: Path) -> None:
    from tests.harness import run_cli, write_config

    cfg = write_config(tmp_path)
    warned = " ".join(run_cli(cfg, "audit", "verify").stdout.split())
    assert "no signed checkpoint" in warned and "would pass" in warned
    vkey = run_cli(cfg, "audit", "pubkey").stdout.strip()
    assert vkey.startswith("plisio-persona/audit+") and NoteVerifier.from_vkey(vkey)
    key_file = tmp_path / "audit-signing.key"
    assert key_file.stat().st_mode & 0o777 == 0o600 and "PRIVATE+KEY+" in key_file.read_text()
    assert key_file.read_text().strip() not in run_cli(cfg, "audit", "pubkey").stdout

    store = Store.open(f"sqlite:///{tmp_path / 'persona.sqlite3'}")
    log = AuditLog(store, now=Clock())
    try:
        fill(log, 6)
        log.flush_sync()
        written = run_cli(cfg, "audit", "checkpoint").stdout
        assert "checkpoint 6 records" in written and "checkpoints/000000000006.checkpoint" in written
        ok = " ".join(run_cli(cfg, "audit", "verify").stdout.split())
        assert "✓ audit chain intact" in ok and "✓ consistent with checkpoint 000000000006.checkpoint" in ok
        import json

        from persona.checkpoints import merkle

        proof = json.loads(run_cli(cfg, "audit", "prove", "3").stdout)
        assert (proof["seq"], proof["tree_size"]) == (3, 6)
        merkle.verify_inclusion(2, 6, bytes.fromhex(proof["leaf_hash"]), [bytes.fromhex(p) for p in proof["proof"]],
                                bytes.fromhex(proof["root"]))  # fmt: skip
        assert "after checkpoint" in run_cli(cfg, "audit", "prove", "7", check=1).stderr
        export = tmp_path / "audit.jsonl"
        run_cli(cfg, "audit", "export", "--out", str(export))
        cp_file = tmp_path / "checkpoints" / "000000000006.checkpoint"
        elsewhere = tmp_path / "auditor"
        elsewhere.mkdir()
        offline = run_cli(elsewhere / "no-config.yaml", "audit", "verify", "--export", str(export),
                          "--checkpoint", str(cp_file), "--pubkey", vkey)  # fmt: skip
        assert "✓ export verified offline: 6 records chained" in " ".join(offline.stdout.split())
        needs = run_cli(elsewhere / "no-config.yaml", "audit", "verify", "--export", str(export), check=2)
        assert "--export needs --checkpoint FILE and --pubkey KEY" in " ".join(needs.stderr.split())
        drop_triggers(store)
        raw(store, "UPDATE audit_log SET reason = 'edited' WHERE seq = 2")
        rechain(store, 2)
    finally:
        log.close()
        store.close()
    broken = " ".join(run_cli(cfg, "audit", "verify", check=1).stdout.split())
    assert "✓ audit chain intact" in broken, "the rechained log fools the chain check..."
    assert "✗ checkpoint 000000000006.checkpoint does not match the log" in broken, "...not the checkpoint"
    other = NoteSigner("plisio-persona/audit", Ed25519PrivateKey.generate()).vkey
    refused = " ".join(run_cli(cfg, "audit", "verify", "--pubkey", other, check=1).stdout.split())
    assert "no signature by plisio-persona/audit" in refused
    bad = " ".join(run_cli(cfg, "audit", "verify", "--pubkey", "nonsense", check=1).stdout.split())
    assert "a verifier key reads" in bad


def test_an_export_verifies_offline_and_a_rewrite_of_it_does_not(
    audit: AuditLog, store: Store, signer: NoteSigner, tmp_path: Path
) -> None:
    import io

    from persona.audit import AuditFilter
    from persona.checkpoints.offline import verify_export

    fill(audit, 7)
    _, path = sign_current(audit, signer, CheckpointDir(tmp_path))
    signed = open_file(path, NoteVerifier.from_vkey(signer.vkey))
    audit.append_sync(event(7))
    out = io.StringIO()
    audit.export_jsonl(out, AuditFilter())
    lines = out.getvalue().splitlines(keepends=True)
    assert verify_export(lines, signed) == 8
    changed = [*lines]
    changed[2] = changed[2].replace('"in scope"', '"nothing to see"')
    with pytest.raises(ProofError, match="record 3: its content does not match its hash"):
        verify_export(changed, signed)
    with pytest.raises(ProofError, match="the export has 5 records, and the checkpoint signed 7"):
        verify_export(lines[:5], signed)
    with pytest.raises(ProofError, match="record 4 is missing"):
        verify_export([*lines[:3], *lines[4:]], signed)
    attack(store, "rewrite")  # rechained: every line verifies on its own, the checkpoint does not
    out = io.StringIO()
    audit.export_jsonl(out, AuditFilter())
    with pytest.raises(ProofError, match="not the ones the checkpoint signed"):
        verify_export(out.getvalue().splitlines(keepends=True), signed)


@pytest.mark.anyio
async def test_the_worker_signs_checkpoints_on_its_schedule_and_when_it_stops(
    store: Store, tmp_path: Path
) -> None:
    import asyncio

    from persona.checkpoints.signing import skey_of
    from persona.worker import Worker
    from tests.harness import build_runtime, repo_settings
    from tools.plisio.sandbox import Sandbox

    key = skey_of("persona.test/audit", Ed25519PrivateKey.generate())
    base = repo_settings(PERSONA_AUDIT_SIGNING_KEY=key)
    audit_settings = base.audit.model_copy(
        update={"checkpoint_every_s": 10.0, "checkpoint_dir": str(tmp_path / "cps")}
    )
    rt = build_runtime(store, Sandbox(seed=7), settings=base.model_copy(update={"audit": audit_settings}))
    folder = CheckpointDir(tmp_path / "cps")
    verifier = NoteVerifier.from_vkey(NoteSigner.from_skey(key).vkey)
    try:
        for i in range(3):
            rt.audit.append_sync(event(i))
        worker = Worker(rt.worker, churn=None)
        assert "audit_checkpoint" in [r.name for r in await worker.scheduler.tick()]
        first = folder.latest()
        assert first is not None and check(rt.audit, open_file(first, verifier)) >= 3
        signed = worker.checkpoints.checkpoint()
        assert signed.startswith("checkpoint of")  # the tick's own records came after it
        assert worker.checkpoints.checkpoint() == "no new records since the last checkpoint"
        rt.audit.append_sync(event(9))
        stop = asyncio.Event()
        stop.set()  # the loop ends at once: the stop itself signs what came since
        await worker.run(stop)
        last = folder.latest()
        assert last is not None and last != first
        assert open_file(last, verifier).size == rt.audit.head()[0]
    finally:
        await rt.aclose()
