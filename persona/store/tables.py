"""Tables of the dispatcher and the loop: approvals, stored tool results, the spend ledger.

The audit tables live in ``audit_tables.py``; all share ``metadata`` from ``metadata.py``.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, Numeric, String, Table, Text, UniqueConstraint

from persona.store.metadata import metadata

approvals = Table(
    "approvals",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("status", String(16), nullable=False),  # pending | approved | rejected | executed | failed
    Column("persona", String(64), nullable=False),
    Column("user_id", String(254), nullable=False),
    Column("conversation_id", String(64), nullable=False),
    Column("tool_call_id", String(128), nullable=False),
    Column("tool", String(64), nullable=False),
    Column("arguments", Text, nullable=False),  # canonical JSON of the validated arguments
    Column("arguments_hash", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("amount_usd", Numeric(24, 8)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("decided_by", String(254)),
    Column("decided_at", DateTime(timezone=True)),
    Column("decision_note", Text),
    Column("result", Text),
    UniqueConstraint("conversation_id", "tool_call_id", name="uq_approvals_call"),
)
Index("ix_approvals_status", approvals.c.status)

tool_results = Table(
    "tool_results",
    metadata,
    Column("conversation_id", String(64), primary_key=True),
    Column("tool_call_id", String(128), primary_key=True),
    Column("tool", String(64), nullable=False),
    Column("arguments_hash", String(64), nullable=False),
    Column("ok", Integer, nullable=False),
    Column("content", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

spend_ledger = Table(
    "spend_ledger",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("persona", String(64), nullable=False),
    Column("day", String(10), nullable=False),  # UTC date, ISO
    Column("amount_usd", Numeric(24, 8), nullable=False),
    Column("conversation_id", String(64), nullable=False),
    Column("tool_call_id", String(128), nullable=False),
    Column("status", String(16), nullable=False),  # reserved | committed | released
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("conversation_id", "tool_call_id", name="uq_spend_call"),
)
Index("ix_spend_persona_day", spend_ledger.c.persona, spend_ledger.c.day)
