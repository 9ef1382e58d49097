"""Tables of the review console: sign-in sessions (one per browser, tied to the API token it came from)."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, String, Table

from persona.store.metadata import metadata

web_sessions = Table(
    "web_sessions",
    metadata,
    Column(
        "id_hash", String(64), primary_key=True
    ),  # SHA-256 hex of the cookie value; the value is never stored
    Column("user_id", String(32), nullable=False),
    Column(
        "token_id", String(32), nullable=False
    ),  # revoking the token (or disabling the user) ends the session
    Column("csrf", String(64), nullable=False),  # the form token every POST of this session must carry
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),  # signed out
)
Index("ix_web_sessions_expires", web_sessions.c.expires_at)

__all__ = ["web_sessions"]
