"""Tables of the dispatcher and the HTTP API: the effects ledger and idempotent chat requests.

The audit tables live in ``audit_tables.py``; all share ``metadata`` from ``metadata.py``.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from persona.store.metadata import add_missing_columns, metadata

effects = Table(
    "effects",
    metadata,
    Column("id", String(16), primary_key=True),
    # The key, chosen by the server: ("chat:<conversation>", "<call seq>") or ("recovery:<txn>", "fresh_link").
    Column("namespace", String(200), nullable=False),
    Column("slot", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # held | claimed | applied | failed | unknown | rejected
    Column("tool", String(64), nullable=False),
    Column("persona", String(64), nullable=False),
    Column("user_id", String(254), nullable=False),
    Column("conversation_id", String(64), nullable=False),
    Column("source", String(32), nullable=False),
    Column("model_call_id", String(64)),  # the model's id, for the wire only (bounded by the loop)
    Column("arguments", Text, nullable=False),  # canonical JSON of the validated arguments
    Column("arguments_hash", String(64), nullable=False),  # over normalised values: "240" == "240.00"
    Column("order_number", String(64), nullable=False),  # derived from the key: one invoice per effect
    Column(
        "amount", Numeric(24, 8)
    ),  # in the policy currency; counts against the daily total unless released
    Column("currency", String(8)),
    Column("day", String(10)),  # UTC date of the reservation, ISO
    Column("needs_approval", Integer, nullable=False),  # 1: it was held for a person (an approval)
    Column("reason", Text),  # the policy decision's reason, then the outcome's
    Column("result", Text),  # the tool message handed back (bounded JSON)
    Column("attempts", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("decided_by", String(254)),
    Column("decided_at", DateTime(timezone=True)),
    Column("decision_note", Text),
    # A held call's seal: HMAC of what the approver decides on (persona/effects/seal.py), and its key version.
    Column("seal", String(64)),
    Column("seal_kv", Integer),
    UniqueConstraint("namespace", "slot", name="uq_effects_key"),
)
Index("ix_effects_state_updated", effects.c.state, effects.c.updated_at)
Index("ix_effects_persona_day", effects.c.persona, effects.c.day)
Index("ix_effects_namespace_hash", effects.c.namespace, effects.c.arguments_hash)

_SEAL_COLUMNS = (("seal", "VARCHAR(64)"), ("seal_kv", "INTEGER"))
"""Added to an ``effects`` table created before approvals were sealed; its held rows stay unsealed."""


def install(conn: Connection) -> None:
    add_missing_columns(conn, "effects", _SEAL_COLUMNS)


chat_requests = Table(
    "chat_requests",
    metadata,
    Column("user_id", String(254), primary_key=True),
    Column("idempotency_key", String(255), primary_key=True),
    Column("body_hash", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # running | done
    Column("response", Text),  # JSON, once done
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
