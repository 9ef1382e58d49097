"""Console sign-in: an API token exchanged for a session cookie, and the CSRF token of its forms.

The cookie's value is 32 random bytes; only its SHA-256 is stored, with the token it came from,
so revoking that token or disabling the user ends the session at the next request, on every
instance (the rows are in the shared store). Each session has its own CSRF token, which every form
carries and every POST must echo (the synchronizer-token pattern of OWASP's CSRF cheat sheet; the
SameSite=Strict cookie is the second layer, not the only one).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update

from persona.clock import as_utc
from persona.store.engine import Store
from persona.store.web_tables import web_sessions
from persona.users import User, Users


@dataclass(frozen=True)
class Session:
    user: User
    csrf: str
    expires_at: datetime

    def form_ok(self, sent: str | None) -> bool:
        """Whether a form's CSRF field is this session's (compared in constant time)."""
        return sent is not None and hmac.compare_digest(sent.encode(), self.csrf.encode())


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class WebSessions:
    def __init__(self, store: Store, users: Users, now: Callable[[], datetime], ttl: timedelta) -> None:
        self.store, self.users, self.now, self.ttl = store, users, now, ttl

    def start(self, token: str) -> tuple[str, Session] | None:
        """A new session for the user of ``token`` (the cookie value and the session), or None."""
        found = self.users.identify(token)
        if found is None:
            return None
        user, token_id = found
        cookie, csrf, now = secrets.token_urlsafe(32), secrets.token_urlsafe(32), self.now()
        expires = now + self.ttl
        with self.store.begin("start a console session") as conn:
            conn.execute(delete(web_sessions).where(web_sessions.c.expires_at < now))  # keep the table small
            conn.execute(
                web_sessions.insert().values(
                    id_hash=_hash(cookie), user_id=user.id, token_id=token_id, csrf=csrf,
                    created_at=now, expires_at=expires,
                )
            )  # fmt: skip
        return cookie, Session(user, csrf, expires)

    def get(self, cookie: str | None) -> Session | None:
        """The live session of a cookie: not expired, not ended, its token valid, its user active."""
        if not cookie or len(cookie) > 128:
            return None
        with self.store.read("read a console session") as conn:
            row = conn.execute(
                select(web_sessions).where(
                    web_sessions.c.id_hash == _hash(cookie), web_sessions.c.ended_at.is_(None)
                )
            ).first()
        if row is None:
            return None
        expires = as_utc(row.expires_at)
        if expires <= self.now():
            return None
        user = self.users.by_token_id(row.token_id)
        if user is None or user.id != row.user_id:
            return None
        return Session(user, row.csrf, expires)

    def end(self, cookie: str) -> bool:
        with self.store.begin("end a console session") as conn:
            ended = conn.execute(
                update(web_sessions)
                .where(web_sessions.c.id_hash == _hash(cookie), web_sessions.c.ended_at.is_(None))
                .values(ended_at=self.now())
            ).rowcount
        return ended == 1
