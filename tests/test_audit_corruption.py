"""The corruption suite of `persona audit verify` (in the spirit of transparency-dev's proof probes): an
insider with write access to the database flips a bit in each field of a record, deletes, inserts, swaps
or duplicates records, cuts the tail, rewrites from record k with the chain and head recomputed, empties
the table, forges a checkpoint, rolls the log back under an older checkpoint, or deletes records as if
pruned. Each is detected by the one verify a person runs (chain + MACs + prune + latest checkpoint), naming
the first bad record or the bad checkpoint. Also: pruning as it is meant to be done. SQLite, and
PostgreSQL when PERSONA_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from persona.audit import AuditFilter, AuditLog
from persona.checkpoints import merkle
from persona.checkpoints.ledger import LiveTree, current, sign_current, tree
from persona.checkpoints.note import CheckpointError, NoteSigner, NoteVerifier
from persona.checkpoints.offline import verify_export
from persona.checkpoints.retention import prune
from persona.checkpoints.signed import CheckpointDir, extension_line
from persona.checkpoints.verification import Finding, verify_log
from persona.errors import AuditIntegrityError, Conflict
from persona.store.engine import Store
from tests.test_audit import T0, Clock, drop_triggers, event, fill, forge, hash_of, raw
from tests.test_audit_checkpoints import ORIGIN, rechain
from tests.test_audit_keys import keys_of


@dataclass
class Log:
    audit: AuditLog
    store: Store
    signer: NoteSigner
    folder: CheckpointDir

    def verify(self, checkpoint: Path | None = None, signer: NoteSigner | None = None) -> list[Finding]:
        key = NoteVerifier.from_vkey((signer or self.signer).vkey)
        return verify_log(self.audit, checkpoint=checkpoint or self.folder.latest(), folder=self.folder.path,
                          verifier=lambda: key)  # fmt: skip

    def bad(self, **kw: Any) -> list[str]:
        return [f"{f.title}: {f.detail}" for f in self.verify(**kw) if f.level == "bad"]


@pytest.fixture(params=[1, 3], ids=["one-pass", "3-segments"])
def log(request: pytest.FixtureRequest, store: Store, tmp_path: Path) -> Iterator[Log]:
    """A keyed log of 10 records with a checkpoint; verified in one pass, or in 3 segments (records 1-3, 4-6,
    7-) scanned by threads standing in for processes, so every probe also lands on a segment boundary."""
    audit = AuditLog(store, now=Clock(), verify_workers=request.param, parallel_from=1,
                     segment_executor=lambda n: ThreadPoolExecutor(n))  # fmt: skip
    audit.use_keys(keys_of())
    made = Log(
        audit, store, NoteSigner(ORIGIN, Ed25519PrivateKey.generate()), CheckpointDir(tmp_path / "cps")
    )
    fill(audit, 10)
    sign_current(audit, made.signer, made.folder)
    yield made
    audit.close()


def test_an_untouched_log_verifies_on_every_count(log: Log) -> None:
    found = log.verify()
    assert [f.level for f in found] == ["ok", "ok", "ok"]
    assert found[1].title == "every record's MAC verifies" and found[2].title.endswith(
        "000000000010.checkpoint"
    )


def flip_text(value: str) -> str:
    return chr(ord(value[0]) ^ 1) + value[1:]


def flip_float(value: float) -> float:
    (bits,) = struct.unpack("<q", struct.pack("<d", value))
    return float(struct.unpack("<d", struct.pack("<q", bits ^ 1))[0])


FIELDS: dict[str, Callable[[Any], Any]] = {
    "ts": flip_text, "user_id": flip_text, "persona": flip_text, "conversation_id": flip_text,
    "source": flip_text, "event": flip_text, "tool": flip_text, "payload": flip_text, "decision": flip_text,
    "reason": flip_text, "model": flip_text, "usage": flip_text, "latency_ms": flip_float,
    "prev_hash": flip_text, "hash": flip_text, "mac": flip_text, "mac_kv": lambda v: v ^ 1,
    "seq": lambda v: v ^ 64,
}  # fmt: skip


@pytest.mark.parametrize("column", sorted(FIELDS))
def test_a_bit_flipped_in_any_field_of_a_record_is_named(log: Log, column: str) -> None:
    (value,) = raw(log.store, f"SELECT {column} FROM audit_log WHERE seq = 4")[0]  # noqa: S608
    drop_triggers(log.store)
    raw(log.store, f"UPDATE audit_log SET {column} = :v WHERE seq = 4", v=FIELDS[column](value))  # noqa: S608
    bad = log.bad()
    assert bad, f"a flipped bit in {column} went unnoticed"
    assert bad[0].startswith("audit chain broken at record 4: "), bad


def rewrite_from(store: Store, k: int) -> None:
    raw(store, "UPDATE audit_log SET reason = 'approved by the CFO' WHERE seq = :k", k=k)
    rechain(store, k)


def swap(store: Store) -> None:
    raw(store, "UPDATE audit_log SET seq = 1000 WHERE seq = 4")
    raw(store, "UPDATE audit_log SET seq = 4 WHERE seq = 5")
    raw(store, "UPDATE audit_log SET seq = 5 WHERE seq = 1000")


def duplicate(store: Store) -> None:
    """Record 4 again as record 11, chained and the head moved (its MAC copied: the key is not at hand)."""
    raw(store, "INSERT INTO audit_log (seq, ts, user_id, persona, conversation_id, source, event, tool, payload,"
               " decision, reason, model, usage, latency_ms, prev_hash, hash, mac, mac_kv) SELECT 11, ts, user_id,"
               " persona, conversation_id, source, event, tool, payload, decision, reason, model, usage, latency_ms,"
               " prev_hash, hash, mac, mac_kv FROM audit_log WHERE seq = 4")  # fmt: skip
    rechain(store, 11)


def insert(store: Store) -> None:
    """A forged record 5 chained to record 4, the later ones moved up a place (their MAC is their own)."""
    for seq in range(10, 4, -1):
        raw(store, "UPDATE audit_log SET seq = :n WHERE seq = :o", n=seq + 1, o=seq)
    forge(store, 5, hash_of(store, 4))
    raw(store, "UPDATE audit_head SET seq = 11, hash = :h", h=hash_of(store, 11))


ATTACKS: dict[str, tuple[Callable[[Store], None], str]] = {
    "delete": (lambda s: raw(s, "DELETE FROM audit_log WHERE seq = 4"), "audit chain broken at record 4: record 4 "
               "is missing"),
    "delete-renumber-rechain": (
        lambda s: (raw(s, "DELETE FROM audit_log WHERE seq = 4"),
                   [raw(s, "UPDATE audit_log SET seq = :n WHERE seq = :o", n=q - 1, o=q) for q in range(5, 11)],
                   rechain(s, 4)),
        "audit chain broken at record 4: record 4: its MAC does not verify"),
    "insert": (insert, "audit chain broken at record 5: record 5 has no MAC although records before it are keyed"),
    "swap": (swap, "audit chain broken at record 4: "),
    "duplicate": (duplicate, "audit chain broken at record 11: record 11: its MAC does not verify"),
    "cut-tail": (lambda s: (raw(s, "DELETE FROM audit_log WHERE seq > 6"), rechain(s, 7)),
                 "checkpoint 000000000010.checkpoint does not match the log: the log has 6 records, and the "
                 "checkpoint signed 10"),
    "rewrite-from-3": (lambda s: rewrite_from(s, 3), "audit chain broken at record 3: record 3: its MAC does not "
                       "verify"),
    "empty": (lambda s: (raw(s, "DELETE FROM audit_log"), rechain(s, 1)),
              "checkpoint 000000000010.checkpoint does not match the log: the log has 0 records"),
    "mac-garbage": (lambda s: raw(s, "UPDATE audit_log SET mac = 'é' WHERE seq = 4"),
                    "audit chain broken at record 4: record 4: its MAC is not a MAC"),
    "row-before-the-start": (
        lambda s: raw(s, "INSERT INTO audit_log (seq, ts, user_id, persona, conversation_id, source, event, tool,"
                         " payload, decision, reason, model, usage, latency_ms, prev_hash, hash, mac, mac_kv) SELECT 0,"
                         " ts, user_id, persona, conversation_id, source, 'refund_approved', tool, payload, decision,"
                         " reason, model, usage, latency_ms, prev_hash, hash, mac, mac_kv FROM audit_log WHERE seq = 1"),
        "audit chain broken at record 0: record 0 lies before the start of the log (record 1)"),
    "row-beyond-the-head": (
        lambda s: raw(s, "INSERT INTO audit_log (seq, ts, user_id, persona, conversation_id, source, event, tool,"
                         " payload, decision, reason, model, usage, latency_ms, prev_hash, hash, mac, mac_kv) SELECT 11,"
                         " ts, user_id, persona, conversation_id, source, event, tool, payload, decision, reason,"
                         " model, usage, latency_ms, hash, hash, mac, mac_kv FROM audit_log WHERE seq = 10"),
        "audit chain broken at record 11: record 11 lies beyond the audit head (seq 10)"),
    "mac-stripped": (lambda s: raw(s, "UPDATE audit_log SET mac = NULL, mac_kv = NULL"),
                     "checkpoint 000000000010.checkpoint does not match the log: records from 1 on were keyed when "
                     "it was signed, and records up to 10 carry no MAC now"),
    "mac-stripped-rechain": (
        lambda s: (raw(s, "UPDATE audit_log SET mac = NULL, mac_kv = NULL"), rewrite_from(s, 2)),
        "checkpoint 000000000010.checkpoint does not match the log: the first 10 records are not the ones"),
}  # fmt: skip


@pytest.mark.parametrize("how", sorted(ATTACKS))
def test_each_attack_on_the_records_is_named(log: Log, how: str) -> None:
    attack, expected = ATTACKS[how]
    drop_triggers(log.store)
    attack(log.store)
    bad = log.bad()
    assert bad and bad[0].startswith(expected), bad


def test_a_forged_checkpoint_and_a_rollback_under_an_older_one_are_named(log: Log, tmp_path: Path) -> None:
    mallory = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    forged = tmp_path / "forged.checkpoint"
    forged.write_text(mallory.sign(current(log.audit, ORIGIN)), encoding="utf-8")
    assert log.bad(checkpoint=forged)[0].startswith(
        "checkpoint forged.checkpoint does not match the log: "
        + str(forged)
        + ": the note has no signature by"
    )
    assert log.bad(signer=mallory)[0].startswith("checkpoint 000000000010.checkpoint does not match the log")
    # An older checkpoint exists; the database is rolled back to it: the newer one, still kept, finds it short.
    drop_triggers(log.store)
    raw(log.store, "DELETE FROM audit_log WHERE seq > 6")
    rechain(log.store, 7)
    older = CheckpointDir(tmp_path / "older")
    older.write(log.signer.sign(current(log.audit, ORIGIN)), 6)
    assert log.bad(checkpoint=older.latest()) == [], "the rolled-back log matches the older checkpoint..."
    assert log.bad()[0].startswith(
        "checkpoint 000000000010.checkpoint does not match the log: the log has 6 records"
    ), "...but not the newer one"


# -- pruning -------------------------------------------------------------------------------------


def prune_before(log: Log, seconds: float) -> Any:
    return prune(log.audit, log.store, log.signer, log.folder, before=T0 + timedelta(seconds=seconds), by="ops@x",
                 now=lambda: T0 + timedelta(days=400))  # fmt: skip


def test_a_prune_signs_for_the_range_first_and_what_remains_still_verifies(log: Log) -> None:
    done = prune_before(log, 5.5)  # the Clock stamps record n at T0 + n s
    assert (done.through_seq, done.removed, done.checkpoint.size) == (5, 5, 10)
    assert done.path.name == "000000000010-pruned.checkpoint", "beside the plain checkpoint of the same size"
    mark = log.audit.pruned()
    assert mark is not None and done.checkpoint.extensions == (extension_line(5, mark.last_hash),)
    assert [r[0] for r in raw(log.store, "SELECT seq FROM audit_log ORDER BY seq")] == list(range(6, 12))
    (record,) = raw(log.store, "SELECT event, user_id, payload FROM audit_log WHERE seq = 11")
    assert record[:2] == ("audit_pruned", "ops@x") and '"through_seq":5' in record[2]
    found = log.verify()
    assert [f.level for f in found] == ["ok", "ok", "ok", "ok"], found
    assert found[2].title == "records 1..5 were pruned" and "checkpoint of 10 records" in found[2].detail
    # Checkpoints signed before the prune still verify (their size is past the range), later ones too.
    assert log.bad(checkpoint=log.folder.path / "000000000010.checkpoint") == []
    fill(log.audit, 3)
    later, _ = sign_current(log.audit, log.signer, log.folder)
    assert later.size == 14 and log.bad() == []
    whole = tree(log.audit)
    merkle.verify_inclusion(7, 14, whole.leaf(7), whole.inclusion_proof(7), later.root)
    merkle.verify_consistency(10, 14, whole.consistency_proof(10, 14), current_root(log, 10), later.root)
    with pytest.raises(AuditIntegrityError, match="record 3 was pruned"):
        whole.inclusion_proof(2)
    with pytest.raises(Conflict, match="no audit record before"):
        prune_before(log, 5.5)
    again = prune_before(log, 8.5)  # a second prune extends the first
    assert (again.through_seq, again.removed) == (8, 3) and log.bad() == []


def test_the_export_of_a_pruned_log_verifies_offline_with_its_prune_checkpoint(log: Log) -> None:
    prune_before(log, 5.5)
    latest, _ = sign_current(log.audit, log.signer, log.folder)
    out = io.StringIO()
    assert log.audit.export_jsonl(out, AuditFilter()) == 6  # records 6..11
    lines = out.getvalue().splitlines(keepends=True)
    header = json.loads(lines[0])["pruned"]
    assert header["through_seq"] == 5 and len(header["nodes"]) == 2  # 5 = 4 + 1: two perfect subtrees
    key = NoteVerifier.from_vkey(log.signer.vkey)
    assert verify_export(lines, latest, key) == 6
    with pytest.raises(AuditIntegrityError, match="needs --pubkey"):
        verify_export(lines, latest)
    widened = json.dumps({"pruned": {**header, "through_seq": 6}}) + "\n"
    with pytest.raises(AuditIntegrityError, match="records another range"):
        verify_export([widened, *lines[1:]], latest, key)
    edited = lines[3].replace('"decision":"allow"', '"decision":"deny"')
    with pytest.raises(AuditIntegrityError, match="record 8: its content does not match its hash"):
        verify_export([*lines[:3], edited, *lines[4:]], latest, key)
    before = CheckpointDir(log.folder.path).path / "000000000010.checkpoint"
    assert verify_export(lines, key.open(before.read_text()), key) == 6, "sizes past the range still check"


def current_root(log: Log, size: int) -> bytes:
    (path,) = [p for p in log.folder.path.iterdir() if p.name == f"{size:012d}.checkpoint"]
    return NoteVerifier.from_vkey(log.signer.vkey).open(path.read_text()).root


def test_a_log_that_does_not_verify_is_not_pruned(log: Log) -> None:
    drop_triggers(log.store)
    rewrite_from(log.store, 2)
    with pytest.raises(AuditIntegrityError, match="does not verify, so nothing was pruned"):
        prune_before(log, 5.5)
    assert len(raw(log.store, "SELECT seq FROM audit_log")) == 10


def test_a_deletion_nobody_signed_for_or_a_widened_range_is_named(log: Log) -> None:
    prune_before(log, 3.5)
    drop_triggers(log.store)
    raw(log.store, "DELETE FROM audit_log WHERE seq <= 5")  # two more records, "pruned" by hand
    raw(log.store, "UPDATE audit_pruned SET through_seq = 5, last_hash = (SELECT prev_hash FROM audit_log WHERE "
                   "seq = 6)")  # fmt: skip
    bad = log.bad()
    assert bad[0].startswith("records 1..5 were pruned without a valid signed checkpoint: records 1..5 were "
                             "deleted, but the signed prune checkpoint records another range"), bad  # fmt: skip
    mallory = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    raw(log.store, "UPDATE audit_pruned SET note = :n", n=mallory.sign(current(log.audit, ORIGIN)))
    assert "the checkpoint kept for that prune does not verify" in log.bad()[0]
    with pytest.raises(
        AuditIntegrityError,
        match=r"nothing was pruned \(pruning would erase the evidence\): records 1\.\.5 were pruned without",
    ):
        prune_before(log, 8.5)  # the next routine prune does not launder the forged one
    raw(log.store, "UPDATE audit_pruned SET nodes = :n", n=b"\x00" * 5)
    assert log.bad()[0].startswith("the audit log cannot be checked: "), "an altered compact range is named"


def test_a_long_log_is_verified_by_spawned_processes_as_by_one_pass(store: Store) -> None:
    """The real thing: the segments after the first are scanned in ``spawn``-ed processes that open the same
    database; the report equals one pass's, and a rewrite in the last segment is named the same way."""
    audit = AuditLog(store, now=Clock(), verify_workers=2, parallel_from=1)
    audit.use_keys(keys_of())
    try:
        fill(audit, 12)
        whole = tree(audit)
        one = AuditLog(store, verify_workers=1)
        one.use_keys(keys_of())
        assert audit.verify(roots_at=(5, 12)) == one.verify(roots_at=(5, 12))
        assert audit.verify(roots_at=(12,)).roots[12] == whole.root()
        drop_triggers(store)
        rewrite_from(store, 10)
        split = audit.verify()
        assert (split.first_bad_seq, split.problem) == (10, one.verify().problem)
        one.close()
    finally:
        audit.close()


def test_the_signers_live_tree_reads_only_new_records_and_keeps_its_view_of_the_prefix(log: Log) -> None:
    live = LiveTree(log.audit)
    first = live.current(log.signer, log.folder)
    assert (first.size, first.root) == (10, current(log.audit, ORIGIN).root)
    assert first.extensions == ("persona-keyed-from 1",)
    fill(log.audit, 5)
    assert live.current(log.signer, log.folder).root == current(log.audit, ORIGIN).root
    prune_before(log, 3.5)  # pruning deletes leaves the tree already holds: the same head
    assert live.current(log.signer, log.folder).root == current(log.audit, ORIGIN).root
    drop_triggers(log.store)
    rewrite_from(log.store, 8)  # a rewrite under a running signer: it keeps signing what it saw
    assert live.current(log.signer, log.folder).root != current(log.audit, ORIGIN).root


def test_a_signer_never_launders_a_rewrite_into_a_newer_checkpoint(log: Log) -> None:
    drop_triggers(log.store)
    raw(log.store, "UPDATE audit_log SET mac = NULL, mac_kv = NULL")
    rewrite_from(log.store, 3)  # MACs gone, chain and head recomputed: waiting for the next checkpoint
    with pytest.raises(CheckpointError, match="does not verify, so no checkpoint was signed"):
        sign_current(log.audit, log.signer, log.folder)
    fresh = LiveTree(log.audit)
    with pytest.raises(CheckpointError, match="no checkpoint was signed"):
        fresh.current(log.signer, log.folder)
    assert [p.name for p in log.folder.path.iterdir()] == ["000000000010.checkpoint"]


def test_a_running_signer_checks_each_new_record_before_it_signs(log: Log) -> None:
    live = LiveTree(log.audit)
    live.current(log.signer, log.folder)
    fill(log.audit, 3)
    drop_triggers(log.store)
    raw(log.store, "UPDATE audit_log SET mac = NULL, mac_kv = NULL WHERE seq = 12")
    with pytest.raises(CheckpointError, match="record 12 has no MAC although records before it are keyed"):
        live.current(log.signer, log.folder)


def test_records_appended_during_a_segmented_verify_are_no_strays(store: Store) -> None:
    """The head is read first; a record the writer appends while the segments are scanned (here: when the
    executor is started) is past that head but within the head's reach by then: no false alarm."""
    audit = AuditLog(store, now=Clock(), verify_workers=2, parallel_from=1,
                     segment_executor=lambda n: (audit.append_sync(event(99)), ThreadPoolExecutor(n))[1])  # fmt: skip
    audit.use_keys(keys_of())
    try:
        fill(audit, 6)
        report = audit.verify()
        assert report.ok and report.records == 6, report
        assert audit.head()[0] == 7
    finally:
        audit.close()
