"""Keyed audit records: each record's MAC (HMAC-SHA-256 of its hash, key derived from the master key by
HKDF, with its version) makes a re-chained history detectable by whoever lacks the master key, names the
first record rewritten, survives a master-key rotation, and upgrades a log written before records were
keyed. SQLite, and PostgreSQL when PERSONA_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from persona.audit import AuditLog
from persona.audit_keys import MacKeys, derive
from persona.clock import utcnow
from persona.masterkey import Keyring, parse_keyring
from persona.store.engine import Store
from persona.store.schema import upgrade
from tests.fixtures_store import as_before_migrations
from tests.test_audit import Clock, drop_triggers, event, fill, raw
from tests.test_audit_checkpoints import rechain
from tests.test_vault import ADMIN, make_kit

MASTER = secrets.token_bytes(32)


def keys_of(master: bytes = MASTER, version: int = 1) -> MacKeys:
    return MacKeys.of(Keyring(version, {version: master}), [])


@pytest.fixture
def keyed(store: Store) -> Iterator[AuditLog]:
    log = AuditLog(store, now=Clock())
    log.use_keys(keys_of())
    yield log
    log.close()


def test_the_mac_key_is_hkdf_of_the_master_key_and_the_mac_covers_the_hash(
    keyed: AuditLog, store: Store
) -> None:
    expected_key = HKDF(
        algorithm=SHA256(), length=32, salt=None, info=b"plisio-persona/v1|audit-mac|kv=1"
    ).derive(MASTER)
    assert derive(MASTER, 1) == expected_key and derive(MASTER, 2) != expected_key
    records = fill(keyed, 3)
    rows = raw(store, "SELECT seq, hash, mac, mac_kv FROM audit_log ORDER BY seq")
    for record, (seq, digest, mac, version) in zip(records, rows, strict=True):
        assert (seq, digest, version) == (record.seq, record.hash, 1)
        assert mac == hmac.new(expected_key, bytes.fromhex(digest), hashlib.sha256).hexdigest()
    report = keyed.verify()
    assert report.ok and report.macs_checked and (report.keyed, report.unkeyed) == (3, 0)


def test_a_rechained_rewrite_is_named_by_its_mac(keyed: AuditLog, store: Store) -> None:
    fill(keyed, 10)
    drop_triggers(store)
    raw(store, "UPDATE audit_log SET reason = 'nothing to see' WHERE seq = 4")
    rechain(store, 4)  # every later hash and the head recomputed: the plain chain passes
    assert AuditLog(store).verify().ok, "without the key, the rewrite is invisible to the chain"
    report = keyed.verify()
    assert not report.ok and report.first_bad_seq == 4 and report.records == 3
    assert report.problem == (
        "record 4: its MAC does not verify (key version 1): it was changed or re-chained by someone without the "
        "master key"
    )


def test_a_stripped_or_foreign_mac_is_detected(keyed: AuditLog, store: Store) -> None:
    fill(keyed, 6)
    drop_triggers(store)
    raw(store, "UPDATE audit_log SET mac = NULL, mac_kv = NULL WHERE seq = 5")
    report = keyed.verify()
    assert (report.ok, report.first_bad_seq) == (False, 5)
    assert "record 5 has no MAC although records before it are keyed" in str(report.problem)
    raw(
        store,
        "UPDATE audit_log SET mac = :m, mac_kv = 1 WHERE seq = 5",
        m=keys_of(secrets.token_bytes(32)).sign("00" * 32),
    )
    assert keyed.verify().first_bad_seq == 5
    raw(store, "UPDATE audit_log SET mac_kv = 9 WHERE seq = 2")
    report = keyed.verify()
    assert report.first_bad_seq == 2 and "MAC key version 9 is neither in the master keyring" in str(
        report.problem
    )


def test_another_master_key_fails_every_mac(keyed: AuditLog, store: Store) -> None:
    fill(keyed, 3)
    other = AuditLog(store)
    other.use_keys(keys_of(secrets.token_bytes(32)))
    report = other.verify()
    assert (report.ok, report.first_bad_seq) == (False, 1) and "MAC does not verify" in str(report.problem)
    other.close()


def test_a_log_written_before_records_were_keyed_upgrades_in_place(store: Store) -> None:
    drop_triggers(store)
    for column in ("mac", "mac_kv"):  # the table as it was before this release
        raw(store, f"ALTER TABLE audit_log DROP COLUMN {column}")
    as_before_migrations(store)
    upgrade(store, now=utcnow)  # the baseline adopts it: columns added, triggers back
    old = AuditLog(store, now=Clock())
    fill(old, 4)  # an unkeyed writer
    old.close()
    new = AuditLog(store, now=Clock())
    new.use_keys(keys_of())
    fill(new, 3)
    report = new.verify()
    assert report.ok and (report.unkeyed, report.keyed) == (4, 3)
    new.close()


def test_rekey_moves_new_records_to_the_new_key_and_old_ones_still_verify(
    store: Store, tmp_path: Path
) -> None:
    kit = make_kit(store, tmp_path)
    try:
        kit.rt.audit.append_sync(event(1))
        assert raw(store, "SELECT DISTINCT mac_kv FROM audit_log") == [(1,)]
        report = kit.rt.vault.rekey(ADMIN)
        assert report.to_version == 2 and report.dropped == (1,)
        assert set(parse_keyring(kit.key_file.read_text(), "test").keys) == {2}, (
            "version 1 is gone from the file"
        )
        kit.rt.audit.append_sync(event(2))
        assert raw(store, "SELECT key_version, master_version FROM audit_mac_keys") == [(1, 2)]
        assert {v for (v,) in raw(store, "SELECT mac_kv FROM audit_log")} == {1, 2}
        fresh = kit.rt.vault.audit_keys()  # what a process started after the rotation has
        assert fresh.current == 2 and set(fresh.keys) == {1, 2}
        checker = AuditLog(store)
        checker.use_keys(fresh)
        result = checker.verify()
        assert (
            result.ok and result.unkeyed == 0 and result.keyed == len(raw(store, "SELECT seq FROM audit_log"))
        )
        # The sealed key of version 1 is altered: the records keyed with it can no longer be checked.
        drop_triggers(store)
        raw(store, "UPDATE audit_mac_keys SET ciphertext = :c", c=secrets.token_bytes(48))
        broken = AuditLog(store)
        broken.use_keys(kit.rt.vault.audit_keys())
        result = broken.verify()
        assert result.first_bad_seq == 1
        assert "the sealed MAC key version 1 in audit_mac_keys does not open: the row was altered" in str(
            result.problem
        )
        checker.close()
        broken.close()
    finally:
        kit.rt.audit.close()
