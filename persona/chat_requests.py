"""Idempotent ``POST /v1/chat``: the same ``Idempotency-Key`` and body gets the stored answer, not a new turn.

A client that timed out and retries must not run the turn (and its invoices) again. The key is scoped to
the user who sent it. One row per (user, key): ``running`` while the first request works, then ``done``
with the response. The same key with another body is refused (409), so is a retry while the first is
still running; a request that failed leaves no row, so a retry runs it again. A ``running`` row older
than ``stale_after`` (a server killed mid-turn) may be taken over. Inspired by the IETF draft
"The Idempotency-Key HTTP Header Field" and Stripe's idempotent requests.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update

from persona.clock import as_utc
from persona.errors import Conflict, PersonaError
from persona.store.engine import Store, is_conflict
from persona.store.tables import chat_requests

_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


class BadIdempotencyKey(PersonaError):
    """The header's value cannot be a key."""


def conversation_for(user: str, key: str) -> str:
    """The conversation a keyed request without one runs in: the same for its retries, so a retry of a
    turn that failed after its invoice was made finds that invoice's effect instead of making another."""
    return "conv_k" + hashlib.sha256(f"{user}\x1f{key}".encode()).hexdigest()[:15]


def body_hash(body: Any) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_key(key: str) -> str:
    if not _KEY.match(key):
        raise BadIdempotencyKey(
            "the Idempotency-Key header must be 1 to 255 visible ASCII characters (no spaces); "
            "send a fresh random value (e.g. a UUID) per logical request and the same one on its retries"
        )
    return key


class ChatRequests:
    def __init__(self, store: Store, now: Callable[[], datetime], stale_after: timedelta) -> None:
        self._store, self._now, self._stale_after = store, now, stale_after

    def begin(self, user: str, key: str, digest: str) -> dict[str, Any] | None:
        """Claim ``key`` for this request: None to go ahead, or the stored response of the first one."""
        now = self._now()
        try:
            with self._store.begin("claim an idempotency key") as conn:
                row = conn.execute(
                    select(chat_requests).where(
                        chat_requests.c.user_id == user, chat_requests.c.idempotency_key == key
                    )
                ).first()
                if row is None:
                    conn.execute(
                        chat_requests.insert().values(
                            user_id=user, idempotency_key=key, body_hash=digest, state="running",
                            created_at=now, updated_at=now,
                        )
                    )  # fmt: skip
                    return None
                if row.body_hash != digest:
                    raise Conflict(
                        "this Idempotency-Key was used with another request body; "
                        "use a new key for a new request"
                    )
                if row.state == "done":
                    stored: dict[str, Any] = json.loads(row.response)
                    return stored
                if as_utc(row.updated_at) > now - self._stale_after:
                    raise Conflict(
                        "a request with this Idempotency-Key is still running; retry after it has answered"
                    )
                taken = conn.execute(  # two retries of a dead request: one takes it over
                    update(chat_requests)
                    .where(
                        chat_requests.c.user_id == user,
                        chat_requests.c.idempotency_key == key,
                        chat_requests.c.state == "running",
                        chat_requests.c.updated_at == row.updated_at,
                    )
                    .values(updated_at=now)
                ).rowcount
                if taken != 1:
                    raise Conflict(
                        "a request with this Idempotency-Key is still running; retry after it has answered"
                    )
                return None
        except Conflict:
            raise
        except Exception as exc:
            if is_conflict(exc):  # two first requests at once: the other one is running
                raise Conflict(
                    "a request with this Idempotency-Key is still running; retry after it has answered"
                ) from None
            raise

    def finish(self, user: str, key: str, response: dict[str, Any]) -> None:
        with self._store.begin("store an idempotent response") as conn:
            conn.execute(
                update(chat_requests)
                .where(chat_requests.c.user_id == user, chat_requests.c.idempotency_key == key)
                .values(state="done", response=json.dumps(response, default=str), updated_at=self._now())
            )

    def abandon(self, user: str, key: str) -> None:
        """The request failed: forget the key, so its retry runs (its effects answer from the ledger)."""
        with self._store.begin("release an idempotency key") as conn:
            conn.execute(
                delete(chat_requests).where(
                    chat_requests.c.user_id == user,
                    chat_requests.c.idempotency_key == key,
                    chat_requests.c.state == "running",
                )
            )
