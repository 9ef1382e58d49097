"""Names and value types shared by the vault, the grants and the users (no I/O here).

``fingerprint`` is what a listing shows instead of a key; ``check_key_text`` refuses anything that
does not look like a Plisio secret key before it is sent anywhere, and registers it with the
scrubber first, so even a rejected key never reaches a log line or a message.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from persona.errors import Forbidden, VaultError
from tools.redaction import register_secret

_KEY = re.compile(r"^[\x21-\x7e]{16,256}$")


class VaultEvent:
    """Audit event names of credential, grant and user changes."""

    CONNECTION_CREATED = "connection_created"
    CONNECTION_ROTATED = "connection_rotated"
    CONNECTION_REVOKED = "connection_revoked"
    MASTER_KEY_ROTATED = "master_key_rotated"
    GRANT_ADDED = "grant_added"
    GRANT_REMOVED = "grant_removed"
    USER_ADDED = "user_added"
    USER_TOKEN_ISSUED = "user_token_issued"  # noqa: S105  (an event name)
    USER_DISABLED = "user_disabled"
    TAMPER = "credential_tamper_detected"


@dataclass(frozen=True)
class Actor:
    """Who causes a vault operation, for the audit record (never taken from a request body)."""

    source: str
    user: str | None = None
    conversation_id: str | None = None


@dataclass(frozen=True)
class ConnectionInfo:
    id: str
    name: str
    provider: str
    status: str
    fingerprint: str
    created_at: datetime
    created_by: str
    rotated_at: datetime | None
    previous_valid_until: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class RekeyReport:
    from_versions: tuple[int, ...]
    to_version: int
    rows: int
    dropped: tuple[int, ...]


def fingerprint(key: str) -> str:
    """First 12 hex digits of SHA-256 of the key: enough to recognise it, useless to use it."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def check_key_text(key: str) -> str:
    key = key.strip()
    register_secret(key)
    if not _KEY.fullmatch(key):
        raise VaultError(
            "that does not look like a Plisio secret key (16-256 printable characters, no spaces);"
            " nothing was stored (fix: copy the secret key from the Plisio dashboard, API settings)"
        )
    return key


def aware(moment: datetime | None) -> datetime | None:
    """SQLite gives naive datetimes back; they were stored as UTC."""
    return moment if moment is None or moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def connection_info(row: Any) -> ConnectionInfo:
    return ConnectionInfo(
        row.id, row.name, row.provider, row.status, row.fingerprint, aware(row.created_at) or row.created_at,
        row.created_by, aware(row.rotated_at), aware(row.previous_valid_until), aware(row.revoked_at),
    )  # fmt: skip


def no_grant(persona: str, why: str) -> Forbidden:
    return Forbidden(
        f"persona {persona} has no active grant for Plisio: {why}"
        f" (fix: persona grants add --persona {persona} --connection <name>)"
    )
