"""Names and value types shared by the vault, the grants and the users (no I/O here).

``fingerprint`` is what a listing shows instead of a key; ``check_key_text`` refuses anything that
does not look like a Plisio secret key before it is sent anywhere, and registers it with the
scrubber first, so even a rejected key never reaches a log line or a message.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from persona.clock import as_utc
from persona.errors import Forbidden, VaultError
from tools.redaction import register_secret

_KEY = re.compile(r"^[\x21-\x7e]{16,256}$")


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


def connection_info(row: Any) -> ConnectionInfo:
    return ConnectionInfo(
        row.id, row.name, row.provider, row.status, row.fingerprint, as_utc(row.created_at),
        row.created_by, as_utc(row.rotated_at), as_utc(row.previous_valid_until), as_utc(row.revoked_at),
    )  # fmt: skip


def no_grant(persona: str, why: str) -> Forbidden:
    return Forbidden(
        f"persona {persona} has no active grant for Plisio: {why}"
        f" (fix: persona grants add --persona {persona} --connection <name>)"
    )
