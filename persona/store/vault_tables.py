"""Tables of the credentials vault, the grants and the HTTP users.

``connections`` describes a stored Plisio key (never the key: a 12-hex fingerprint of it).
``credential_blobs`` holds the key encrypted, once for the connection (persona ``*``) and once per
grant, each bound by its AES-GCM associated data to (connection, persona, slot, key version), so
a ciphertext copied onto another row does not decrypt. ``master_key_checks`` holds one sealed
constant per master-key version: it tells a wrong master key apart from a tampered row.
``api_tokens`` stores SHA-256 hashes of tokens, never a token.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from persona.store.metadata import metadata

connections = Table(
    "connections",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("provider", String(16), nullable=False),  # plisio
    Column("status", String(16), nullable=False),  # active | revoked
    Column("fingerprint", String(12), nullable=False),  # first 12 hex of SHA-256 of the key
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(254), nullable=False),
    Column("rotated_at", DateTime(timezone=True)),
    Column("previous_valid_until", DateTime(timezone=True)),  # callbacks signed with the old key
    Column("revoked_at", DateTime(timezone=True)),
    UniqueConstraint("name", name="uq_connections_name"),
)

credential_blobs = Table(
    "credential_blobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("connection_id", String(32), nullable=False),
    Column("slot", String(16), nullable=False),  # current | pending | previous
    Column("persona", String(64), nullable=False),  # a persona name, or "*" for the connection itself
    Column("nonce", LargeBinary, nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("key_version", Integer, nullable=False),  # master-key version that sealed it
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("connection_id", "slot", "persona", name="uq_credential_blobs_row"),
)

master_key_checks = Table(
    "master_key_checks",
    metadata,
    Column("key_version", Integer, primary_key=True, autoincrement=False),
    Column("nonce", LargeBinary, nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

grants = Table(
    "grants",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("connection_id", String(32), nullable=False),
    Column("persona", String(64), nullable=False),
    Column("tools", Text, nullable=False),  # JSON list: tool names and/or "@read"
    Column("max_amount", Numeric(24, 8)),  # in the persona's invoice_policy currency
    Column("daily_total", Numeric(24, 8)),
    Column("status", String(16), nullable=False),  # active | revoked
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(254), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Column("revoked_by", String(254)),
)
Index("ix_grants_persona_status", grants.c.persona, grants.c.status)

users = Table(
    "users",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("email", String(254), nullable=False),
    Column("role", String(16), nullable=False),  # admin | operator | viewer
    Column("status", String(16), nullable=False),  # active | disabled
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(254), nullable=False),
    UniqueConstraint("email", name="uq_users_email"),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), nullable=False),
    Column("token_hash", String(64), nullable=False),  # SHA-256 hex of the token
    Column("prefix", String(8), nullable=False),  # first 8 characters, to recognise it in a list
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    UniqueConstraint("token_hash", name="uq_api_tokens_hash"),
)
Index("ix_api_tokens_user", api_tokens.c.user_id)

__all__ = ["api_tokens", "connections", "credential_blobs", "grants", "master_key_checks", "users"]
