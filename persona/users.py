"""Users of the HTTP API, their roles and their API tokens.

A token is ``pp_`` + 32 random bytes (urlsafe base64), shown once when issued; only its SHA-256
is stored, with its first 8 characters to recognise it in a listing. Looking a token up by its
hash needs no constant-time comparison: the hash of a guess says nothing about the real token.
Roles: ``admin`` (connections, grants, approvals: everything), ``operator`` (chat, drafts,
refund requests, inbox), ``viewer`` (the audit log).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from persona.audit import AuditEvent, AuditLog
from persona.clock import as_utc
from persona.errors import Conflict, NotFound, PersonaError
from persona.events import VaultEvent
from persona.store.engine import Store
from persona.store.vault_tables import api_tokens, users
from persona.vault import Actor
from tools.redaction import register_secret

ROLES = ("admin", "operator", "viewer")
TOKEN_PREFIX = "pp_"  # noqa: S105  (a marker, not a secret)
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,190}$")
_TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class User:
    id: str
    email: str
    role: str
    status: str
    created_at: datetime
    created_by: str
    tokens: int = 0
    """Active tokens (in listings)."""
    last_used_at: datetime | None = None


def _user(row: Any, tokens: int = 0, used: datetime | None = None) -> User:
    created = as_utc(row.created_at)
    return User(row.id, row.email, row.role, row.status, created, row.created_by, tokens, used)


def normalise_email(text: str) -> str:
    """The one spelling of an identity: ``text`` stripped and case-folded, refused unless it is an email.

    Every identity that enters (``persona users add``, every CLI ``--by`` / ``--user``, the four-eyes check)
    goes through here, so ``Bob@Example.com`` and `` bob@example.com`` are one person, never two. Case-folding
    the whole address, the local part too, is acceptable although RFC 5321 lets a mail server treat the local
    part as case-sensitive: here the address names a person of this deployment (an identity key), it is not
    used to deliver mail, no mainstream provider tells ``Bob`` from ``bob`` anyway, and the one cost, that two
    mailboxes differing only in case cannot both be users, is much smaller than letting one person count as
    two approvers."""
    email = text.strip().casefold()
    if not _EMAIL.fullmatch(email):
        raise PersonaError(f"{text.strip()!r} is not an email address")
    return email


def identity_key(text: str) -> str:
    """How two recorded identities are compared (the four-eyes rule): stripped and case-folded, like
    :func:`normalise_email`, but without requiring an email (a flow's system user is not one)."""
    return text.strip().casefold()


def same_identity(a: str, b: str) -> bool:
    return identity_key(a) == identity_key(b)


def find_user(store: Store, email: str) -> User | None:
    """The user ``email`` names (normalised first), or None; raises for text that is not an email."""
    with store.read("read users") as conn:
        row = conn.execute(select(users).where(users.c.email == normalise_email(email))).first()
    return None if row is None else _user(row)


def any_users(store: Store) -> bool:
    """Whether any user exists yet (before one does, the CLI is the single local operator)."""
    with store.read("read users") as conn:
        return conn.execute(select(users.c.id).limit(1)).first() is not None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Users:
    """Add, list, disable users; issue and check API tokens."""

    def __init__(self, store: Store, audit: AuditLog, now: Callable[[], datetime]) -> None:
        self.store, self.audit, self.now = store, audit, now

    def _record(self, event: str, actor: Actor, reason: str, **payload: object) -> None:
        self.audit.append_sync(
            AuditEvent(
                event=event, source=actor.source, user=actor.user, reason=reason, payload=dict(payload)
            )
        )

    def add(self, email: str, role: str, actor: Actor) -> User:
        email = normalise_email(email)
        if role not in ROLES:
            raise PersonaError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        with self.store.begin("add a user") as conn:
            if conn.execute(select(users.c.id).where(users.c.email == email)).first() is not None:
                raise Conflict(f"user {email} exists")
            conn.execute(
                users.insert().values(
                    id=f"user_{secrets.token_hex(6)}", email=email, role=role, status="active",
                    created_at=self.now(), created_by=actor.user or actor.source,
                )
            )  # fmt: skip
        user = self.get(email)
        self._record(
            VaultEvent.USER_ADDED, actor, f"{email} added as {role}", email=email, role=role, user_id=user.id
        )
        return user

    def get(self, email: str) -> User:
        found = find_user(self.store, email)
        if found is None:
            raise NotFound(f"no user {normalise_email(email)!r} (`persona users list` shows them)")
        return found

    def list(self) -> list[User]:
        active = api_tokens.c.revoked_at.is_(None)
        query = (
            select(
                users,
                func.count(api_tokens.c.id).label("tokens"),
                func.max(api_tokens.c.last_used_at).label("used"),
            )
            .select_from(users.outerjoin(api_tokens, (api_tokens.c.user_id == users.c.id) & active))
            .group_by(*users.c)
            .order_by(users.c.created_at)
        )
        with self.store.read("read users") as conn:
            return [_user(r, int(r.tokens), as_utc(r.used)) for r in conn.execute(query)]

    def issue_token(self, email: str, actor: Actor) -> str:
        """A new token for ``email``: returned once, stored only as a hash."""
        user = self.get(email)
        if user.status != "active":
            raise Conflict(f"user {user.email} is disabled; a disabled user gets no token")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        register_secret(token)
        token_id = f"tok_{secrets.token_hex(6)}"
        with self.store.begin("issue a token") as conn:
            conn.execute(
                api_tokens.insert().values(
                    id=token_id, user_id=user.id, token_hash=token_hash(token), prefix=token[:8],
                    created_at=self.now(),
                )
            )  # fmt: skip
        self._record(VaultEvent.USER_TOKEN_ISSUED, actor, f"API token issued to {user.email}",
                     email=user.email, token_id=token_id, prefix=token[:8])  # fmt: skip
        return token

    def disable(self, email: str, actor: Actor) -> User:
        """Disable a user: every one of their tokens is refused from the next request on."""
        user = self.get(email)
        if user.status == "disabled":
            raise Conflict(f"user {user.email} is already disabled")
        now = self.now()
        with self.store.begin("disable a user") as conn:
            conn.execute(update(users).where(users.c.id == user.id).values(status="disabled"))
            revoked = conn.execute(
                update(api_tokens)
                .where(api_tokens.c.user_id == user.id, api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            ).rowcount
        self._record(VaultEvent.USER_DISABLED, actor, f"{user.email} disabled", email=user.email,
                     tokens_revoked=revoked)  # fmt: skip
        return self.get(email)

    def authenticate(self, token: str) -> User | None:
        """The active user a token belongs to, or None (unknown, revoked, or the user is disabled)."""
        found = self.identify(token)
        return None if found is None else found[0]

    def identify(self, token: str) -> tuple[User, str] | None:
        """:meth:`authenticate`, with the id of the token (a console session is tied to it)."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        digest = token_hash(token)
        with self.store.read("check a token") as conn:
            row = conn.execute(
                select(users, api_tokens.c.id.label("token_id"), api_tokens.c.last_used_at)
                .join(api_tokens, api_tokens.c.user_id == users.c.id)
                .where(api_tokens.c.token_hash == digest, api_tokens.c.revoked_at.is_(None))
            ).first()
        if row is None or row.status != "active":
            return None
        register_secret(token)  # only real tokens: guesses must not grow the scrubber's list
        now = self.now()
        last = as_utc(row.last_used_at)
        if last is None or now - last > _TOUCH_EVERY:  # at most one write a minute per token
            with self.store.begin("note a token's use") as conn:
                conn.execute(
                    update(api_tokens).where(api_tokens.c.id == row.token_id).values(last_used_at=now)
                )
        return _user(row), str(row.token_id)

    def by_token_id(self, token_id: str) -> User | None:
        """The active user of a token that is still valid (not revoked), or None."""
        with self.store.read("check a token") as conn:
            row = conn.execute(
                select(users)
                .join(api_tokens, api_tokens.c.user_id == users.c.id)
                .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
            ).first()
        return None if row is None or row.status != "active" else _user(row)
