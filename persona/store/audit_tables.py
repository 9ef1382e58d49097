"""The audit log's tables and the triggers that make it append-only.

``audit_log`` holds one row per event, chained by ``prev_hash``/``hash``. ``ts`` is stored as the
exact ISO-8601 text that was hashed (fixed width, always UTC, so it also sorts and filters
correctly as text): no driver or time-zone round trip can change what ``verify`` rehashes.
``payload`` and ``usage`` hold the canonical JSON text that was hashed, for the same reason.

``canonical_record`` (with :func:`persona.jsonutil.canonical_json` for payload and usage) defines the bytes each
record hash covers, for append and verify alike: the stored form and the hashed form are
defined once, here, next to the columns.

``mac``/``mac_kv`` key each record: an HMAC of its hash with a key only the master key yields, so
rewriting the chain (every hash recomputed) is still detected by whoever lacks the master key.

``audit_head`` is a single row (last seq, last hash) written in the same transaction as every
batch of appends; a record deleted from the tail therefore no longer matches the head. Triggers
refuse UPDATE/DELETE/TRUNCATE on ``audit_log`` (DELETE only of records a prune recorded in
``audit_pruned``) and let the head only move forward.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime
from json.encoder import encode_basestring  # what json.dumps(ensure_ascii=False) uses, in C
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Double,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite

from persona.store.metadata import add_missing_columns, metadata

GENESIS_HASH = "0" * 64
"""``prev_hash`` of record 1, and the head's hash while the log is empty."""
APPEND_ONLY_MESSAGE = "audit log is append-only"
HEAD_MESSAGE = "audit head only moves forward"
PRUNED_MESSAGE = "the record of pruned audit ranges is append-only"

audit_log = Table(
    "audit_log",
    metadata,
    # INTEGER PRIMARY KEY on SQLite makes seq the rowid: no second b-tree to maintain.
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("ts", String(32), nullable=False),
    Column("user_id", Text),
    Column("persona", Text),
    Column("conversation_id", Text),
    Column("source", Text, nullable=False),
    Column("event", Text, nullable=False),
    Column("tool", Text),
    Column("payload", Text, nullable=False),
    Column("decision", Text),
    Column("reason", Text),
    Column("model", Text),
    Column("usage", Text),
    Column("latency_ms", Double),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    # HMAC-SHA-256 of the hash with the audit MAC key of version ``mac_kv`` (see persona/audit_keys.py):
    # NULL only on records written before records were keyed.
    Column("mac", String(64)),
    Column("mac_kv", Integer),
)
Index("ix_audit_log_conversation_id", audit_log.c.conversation_id)
Index("ix_audit_log_user_id", audit_log.c.user_id)
Index("ix_audit_log_ts", audit_log.c.ts)

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)
HEAD_ID = 1

audit_mac_keys = Table(
    "audit_mac_keys",
    metadata,
    # The MAC keys of master-key versions a rotation dropped, sealed (AES-GCM) under the current master
    # key, so records keyed before a `persona connections rekey` still verify after it.
    Column("key_version", Integer, primary_key=True, autoincrement=False),
    Column("master_version", Integer, nullable=False),
    Column("nonce", LargeBinary, nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
)

audit_pruned = Table(
    "audit_pruned",
    metadata,
    # One row per `persona audit prune`: records 1..through_seq are gone; what verifying the rest needs of
    # them is kept here (the last hash, the compact range of their Merkle leaves), and ``note`` is the signed
    # checkpoint that recorded the prune (its extension line names through_seq and last_hash).
    Column("through_seq", BigInteger, primary_key=True, autoincrement=False),
    Column("last_hash", String(64), nullable=False),
    Column("nodes", LargeBinary, nullable=False),
    Column("note", Text, nullable=False),
    Column("before", String(32), nullable=False),
    Column("pruned_at", String(32), nullable=False),
)

_KEYED_COLUMNS = (("mac", "VARCHAR(64)"), ("mac_kv", "INTEGER"))
"""Added to an ``audit_log`` created before records were keyed (until migrations exist)."""

_SQLITE_TRIGGERS = (
    f"""CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}: UPDATE refused'); END""",
    "DROP TRIGGER IF EXISTS audit_log_no_delete",  # before pruning existed: refused every DELETE
    f"""CREATE TRIGGER IF NOT EXISTS audit_log_no_delete_unpruned BEFORE DELETE ON audit_log
    WHEN OLD.seq > (SELECT coalesce(max(through_seq), 0) FROM audit_pruned)
    BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}: DELETE refused'); END""",  # noqa: S608 - constants
    f"""CREATE TRIGGER IF NOT EXISTS audit_head_forward_only BEFORE UPDATE ON audit_head
    WHEN NEW.seq <= OLD.seq OR NEW.id <> OLD.id
    BEGIN SELECT RAISE(ABORT, '{HEAD_MESSAGE}'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_head_no_delete BEFORE DELETE ON audit_head
    BEGIN SELECT RAISE(ABORT, '{HEAD_MESSAGE}: DELETE refused'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_pruned_no_update BEFORE UPDATE ON audit_pruned
    BEGIN SELECT RAISE(ABORT, '{PRUNED_MESSAGE}: UPDATE refused'); END""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_pruned_no_delete BEFORE DELETE ON audit_pruned
    BEGIN SELECT RAISE(ABORT, '{PRUNED_MESSAGE}: DELETE refused'); END""",
)

_PG_FUNCTIONS = (
    f"""CREATE OR REPLACE FUNCTION audit_pruned_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION USING MESSAGE = '{PRUNED_MESSAGE}: ' || TG_OP || ' refused';
        RETURN NULL;
    END $$""",
    f"""CREATE OR REPLACE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' AND OLD.seq <= (SELECT coalesce(max(through_seq), 0) FROM audit_pruned) THEN
            RETURN OLD;  -- a range `persona audit prune` recorded (and signed) first
        END IF;
        RAISE EXCEPTION USING MESSAGE = '{APPEND_ONLY_MESSAGE}: ' || TG_OP || ' refused';
        RETURN NULL;
    END $$""",  # noqa: S608 - constants
    f"""CREATE OR REPLACE FUNCTION audit_head_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP <> 'UPDATE' THEN
            RAISE EXCEPTION USING MESSAGE = '{HEAD_MESSAGE}: ' || TG_OP || ' refused';
        END IF;
        IF NEW.seq <= OLD.seq OR NEW.id <> OLD.id THEN
            RAISE EXCEPTION '{HEAD_MESSAGE}';
        END IF;
        RETURN NEW;
    END $$""",
)

# (trigger name, table, DDL): created only when absent, so a restart takes no table lock.
_PG_TRIGGERS = (
    (
        "audit_log_append_only",
        "audit_log",
        "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log"
        " FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change()",
    ),
    (
        "audit_log_no_truncate",
        "audit_log",
        "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log"
        " FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change()",
    ),
    (
        "audit_head_forward_only",
        "audit_head",
        "CREATE TRIGGER audit_head_forward_only BEFORE UPDATE OR DELETE ON audit_head"
        " FOR EACH ROW EXECUTE FUNCTION audit_head_forward_only()",
    ),
    (
        "audit_head_no_truncate",
        "audit_head",
        "CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head"
        " FOR EACH STATEMENT EXECUTE FUNCTION audit_head_forward_only()",
    ),
    (
        "audit_pruned_append_only",
        "audit_pruned",
        "CREATE TRIGGER audit_pruned_append_only BEFORE UPDATE OR DELETE ON audit_pruned"
        " FOR EACH ROW EXECUTE FUNCTION audit_pruned_refuse_change()",
    ),
    (
        "audit_pruned_no_truncate",
        "audit_pruned",
        "CREATE TRIGGER audit_pruned_no_truncate BEFORE TRUNCATE ON audit_pruned"
        " FOR EACH STATEMENT EXECUTE FUNCTION audit_pruned_refuse_change()",
    ),
)


def install(conn: Connection, dialect: str) -> None:
    """Install the triggers and the head row, idempotently, inside the caller's transaction."""
    add_missing_columns(conn, "audit_log", _KEYED_COLUMNS)
    if dialect == "sqlite":
        for ddl in _SQLITE_TRIGGERS:
            conn.exec_driver_sql(ddl)
        conn.execute(
            sqlite.insert(audit_head)
            .values(id=HEAD_ID, seq=0, hash=GENESIS_HASH)
            .on_conflict_do_nothing(index_elements=["id"])
        )
        return
    for ddl in _PG_FUNCTIONS:
        conn.exec_driver_sql(ddl)
    for name, table, ddl in _PG_TRIGGERS:
        exists = conn.execute(
            text("SELECT 1 FROM pg_trigger WHERE tgrelid = CAST(:t AS regclass) AND tgname = :n"),
            {"t": table, "n": name},
        ).first()
        if exists is None:
            conn.exec_driver_sql(ddl)
    conn.execute(
        postgresql.insert(audit_head)
        .values(id=HEAD_ID, seq=0, hash=GENESIS_HASH)
        .on_conflict_do_nothing(index_elements=["id"])
    )


# -- the hashed form of a record: the same bytes when appending and when verifying ---------------


def _enc(value: Any) -> str:
    """One scalar as canonical JSON; odd types (only a tampered row has them) go through json."""
    kind = type(value)
    if kind is str:
        return str(encode_basestring(value))
    if value is None:
        return "null"
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def canonical_record(
    seq: Any, ts: Any, user: Any, persona: Any, conversation_id: Any, source: Any, event: Any, tool: Any,
    payload: Any, decision: Any, reason: Any, model: Any, usage: Any, latency_ms: Any, prev_hash: Any,
    hash_: Any = None,
) -> str:  # fmt: skip
    """The canonical JSON of a record; ``payload``/``usage`` are their canonical JSON text as stored.

    Equal to ``json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` of
    the record with ``ts`` as ISO-8601 text, built by hand because ``verify`` runs it per row.
    ``hash_`` is included only for export (the hash input never contains the hash).
    """
    p = payload if type(payload) is str else _enc(payload)
    u = usage if type(usage) is str else _enc(usage)
    h = "" if hash_ is None else f',"hash":{_enc(hash_)}'
    return (
        f'{{"conversation_id":{_enc(conversation_id)},"decision":{_enc(decision)},"event":{_enc(event)}{h}'
        f',"latency_ms":{_enc(latency_ms)},"model":{_enc(model)},"payload":{p},"persona":{_enc(persona)}'
        f',"prev_hash":{_enc(prev_hash)},"reason":{_enc(reason)},"seq":{_enc(seq)},"source":{_enc(source)}'
        f',"tool":{_enc(tool)},"ts":{_enc(ts)},"usage":{u},"user":{_enc(user)}}}'
    )


def record_hash(canonical: str) -> str:
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def ts_text(moment: datetime) -> str:
    """The stored and hashed form of a time: UTC, ISO-8601, microseconds, fixed width."""
    if moment.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware (UTC)")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
