"""Chat history in the store, so every instance (``persona serve`` replicas, ``persona chat``) sees the same.

A conversation belongs to the (persona, user) that stored its first turn; anyone else is refused. Its turns
are kept as whole units (the user's message through the final answer, tool calls and results between), so
what the model gets back is cut at a user message and never holds a tool result without its call.

Two turns of one conversation must not interleave, nor both run: a turn may call tools that move money,
so the second must be refused before it starts, not after. Within a process turns queue on an asyncio lock
per conversation; across instances a turn first claims the conversation in the store (``busy_by`` with a
lease, so a crashed instance's claim lapses) and another instance's turn meanwhile gets :class:`Conflict`
before it calls the model. The append is also a version check (the turn count, as HTTP's ``If-Match``), in
case a lease lapsed under a turn that ran too long. A conversation row exists from its first claimed turn,
so its owner is fixed before anything runs; a first turn that failed leaves an empty conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import delete, or_, select, update

from persona.audit import AuditFilter, AuditLog
from persona.errors import Conflict, Forbidden, PersonaError
from persona.store.chat_tables import chat_conversations, chat_turns
from persona.store.engine import Store, is_conflict

log = structlog.get_logger(__name__)

Message = dict[str, Any]


@dataclass(frozen=True)
class HistoryLimits:
    """How much of a conversation is kept and how much of it the model gets back."""

    max_messages: int = 60
    """Messages of earlier turns sent with a new one (whole turns, newest first)."""
    max_chars: int = 200_000
    """Characters of JSON of earlier turns sent with a new one (about 50k tokens)."""
    max_turn_chars: int = 256_000
    """A turn stored larger than this keeps only the user's message and the answer."""
    keep_turns: int = 200
    """Turns kept per conversation; older ones are deleted (the audit log keeps everything)."""


@dataclass(frozen=True)
class Conversation:
    id: str
    persona: str
    user: str
    turns: int
    """Turns stored so far: 0 for a new conversation. The next append stores turn ``turns + 1``."""
    history: tuple[Message, ...] = ()
    """What the model gets back of the earlier turns (bounded by :class:`HistoryLimits`)."""
    claim: str | None = None
    """The claim this turn holds on the conversation (:meth:`Conversations.turn`)."""


_ID = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9_.:-]{1,64}$")


def check_id(conversation_id: str) -> None:
    """A conversation id is a path segment in links and a key in the store: refuse one that cannot be."""
    if not _ID.fullmatch(conversation_id):
        raise PersonaError(
            f"conversation id {conversation_id[:80]!r} is not usable (fix: 1-64 letters, digits, _ . : or -, "
            "not . or ..)"
        )


def audited(audit: AuditLog) -> Callable[[str], bool]:
    """``used_elsewhere`` for :class:`Conversations`: whether the audit log already holds the id."""
    return lambda conversation_id: bool(audit.query(AuditFilter(conversation_id=conversation_id, limit=1)))


def new_conversation_id() -> str:
    return f"conv_{uuid.uuid4().hex[:16]}"


class Conversations:
    """Open, check and extend stored conversations. ``fresh_hint`` ends a refusal: how to start anew."""

    def __init__(
        self,
        store: Store,
        now: Callable[[], datetime],
        *,
        fresh_hint: str,
        limits: HistoryLimits | None = None,
        lease: timedelta = timedelta(minutes=10),
        used_elsewhere: Callable[[str], bool] | None = None,
    ) -> None:
        self._store, self._now, self._hint, self._lease = store, now, fresh_hint, lease
        self._used_elsewhere = used_elsewhere
        """Whether an id chat has not stored is already taken (a flow's conversation in the audit log): a
        new conversation may not continue it."""
        self._limits = limits or HistoryLimits()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    # -- async API: what the chat routes use ------------------------------------------------

    @contextlib.asynccontextmanager
    async def turn(
        self, conversation_id: str, persona: str, user: str, *, lease: timedelta | None = None
    ) -> AsyncIterator[Conversation]:
        """Hold the conversation for one turn, in this process and in the store; yields it as stored when the
        turn may start. :class:`Forbidden` for someone else's, :class:`Conflict` while another instance runs
        a turn of it. ``lease``: how long the claim holds if this process dies mid-turn."""
        lock = self._locks.get(conversation_id)
        if lock is None:
            lock = self._locks[conversation_id] = asyncio.Lock()
        async with lock:
            await self.open(conversation_id, persona, user)  # the owner check, before claiming anything
            claim = uuid.uuid4().hex
            claiming = asyncio.ensure_future(
                asyncio.to_thread(self.claim, conversation_id, persona, user, claim, lease or self._lease)
            )
            try:
                await asyncio.shield(claiming)
            except asyncio.CancelledError:  # the claim's thread runs on: once it lands, let it go again
                await asyncio.wait([claiming])
                if not claiming.cancelled() and claiming.exception() is None:
                    await asyncio.to_thread(self.release, conversation_id, claim)
                raise
            try:
                convo = await self.open(conversation_id, persona, user)  # as stored now that it is ours
                yield dataclasses.replace(convo, claim=claim)
            finally:
                await asyncio.to_thread(self.release, conversation_id, claim)

    async def open(self, conversation_id: str, persona: str, user: str) -> Conversation:
        return await asyncio.to_thread(self.load, conversation_id, persona, user)

    async def append(self, convo: Conversation, messages: Sequence[Message]) -> Conversation:
        return await asyncio.to_thread(self.add_turn, convo, messages)

    # -- the store --------------------------------------------------------------------------

    def load(self, conversation_id: str, persona: str, user: str) -> Conversation:
        """The conversation with its recent history; a new id is an empty one. :class:`Forbidden` for
        someone else's."""
        check_id(conversation_id)
        with self._store.read("read a conversation") as conn:
            row = conn.execute(
                select(chat_conversations).where(chat_conversations.c.id == conversation_id)
            ).first()
            if row is None:
                if self._used_elsewhere is not None and self._used_elsewhere(conversation_id):
                    raise Forbidden(
                        f"conversation {conversation_id} was not started in chat (its records belong to a flow or "
                        f"to a run before chat history was stored); {self._hint}"
                    )
                return Conversation(conversation_id, persona, user, 0)
            self._check_owner(conversation_id, row.persona, row.user_id, persona, user)
            texts = conn.execute(
                select(chat_turns.c.messages)
                .where(chat_turns.c.conversation_id == conversation_id)
                .order_by(chat_turns.c.turn.desc())
                .limit(self._limits.max_messages // 2 + 1)  # a turn has two messages at least
            ).scalars()
            turns = [json.loads(text) for text in texts]
        history = fit(list(reversed(turns)), self._limits)
        return Conversation(conversation_id, persona, user, int(row.turns), tuple(history))

    def add_turn(self, convo: Conversation, messages: Sequence[Message]) -> Conversation:
        """Store ``messages`` as turn ``convo.turns + 1``; :class:`Conflict` if another turn took it."""
        number, now = convo.turns + 1, self._now()
        text = json.dumps(bounded_turn(list(messages), self._limits), ensure_ascii=False, default=str)
        try:
            with self._store.begin("store a chat turn") as conn:
                if not _advance(conn, convo.id, convo.turns, convo.claim, now):
                    if convo.claim is not None or convo.turns != 0:
                        raise self._busy(convo.id)
                    conn.execute(  # a turn stored without a claim (tools, tests): the first creates the row
                        chat_conversations.insert().values(
                            id=convo.id, persona=convo.persona, user_id=convo.user, turns=1,
                            created_at=now, updated_at=now,
                        )
                    )  # fmt: skip
                conn.execute(
                    chat_turns.insert().values(
                        conversation_id=convo.id, turn=number, messages=text, created_at=now
                    )
                )
                _prune(conn, convo.id, number - self._limits.keep_turns)
        except Conflict:
            raise
        except Exception as exc:
            if is_conflict(exc):  # two first turns of one new id at once: the other one was first
                raise self._busy(convo.id) from None
            raise
        log.info("chat_turn_stored", conversation_id=convo.id, turn=number, messages=len(messages))
        return Conversation(convo.id, convo.persona, convo.user, number, convo.history)

    def claim(self, conversation_id: str, persona: str, user: str, claim: str, lease: timedelta) -> None:
        """Mark the conversation busy with ``claim`` until the lease ends (creating it for its first turn);
        :class:`Conflict` while another claim holds."""
        now = self._now()
        try:
            with self._store.begin("claim a conversation for a turn") as conn:
                taken = conn.execute(
                    update(chat_conversations)
                    .where(
                        chat_conversations.c.id == conversation_id,
                        or_(chat_conversations.c.busy_by.is_(None), chat_conversations.c.busy_until < now),
                    )
                    .values(busy_by=claim, busy_until=now + lease)
                ).rowcount
                if taken == 1:
                    return
                exists = conn.execute(
                    select(chat_conversations.c.id).where(chat_conversations.c.id == conversation_id)
                ).first()
                if exists is not None:
                    raise self._running(conversation_id)
                conn.execute(
                    chat_conversations.insert().values(
                        id=conversation_id, persona=persona, user_id=user, turns=0, busy_by=claim,
                        busy_until=now + lease, created_at=now, updated_at=now,
                    )
                )  # fmt: skip
        except Conflict:
            raise
        except Exception as exc:
            if is_conflict(exc):  # two first turns of one new id at once: the other one claimed it first
                raise self._running(conversation_id) from None
            raise

    def release(self, conversation_id: str, claim: str) -> None:
        with self._store.begin("release a conversation") as conn:
            conn.execute(
                update(chat_conversations)
                .where(chat_conversations.c.id == conversation_id, chat_conversations.c.busy_by == claim)
                .values(busy_by=None, busy_until=None)
            )

    # -- refusals ---------------------------------------------------------------------------

    def _check_owner(
        self, conversation_id: str, owner_persona: str, owner: str, persona: str, user: str
    ) -> None:
        if owner != user:
            raise Forbidden(f"conversation {conversation_id} belongs to another user; {self._hint}")
        if owner_persona != persona:
            raise Forbidden(
                f"conversation {conversation_id} is with the {owner_persona} persona, not {persona}; "
                f"continue it with {owner_persona}, or {self._hint}"
            )

    def _running(self, conversation_id: str) -> Conflict:
        log.warning("chat_turn_refused_busy", conversation_id=conversation_id)
        return Conflict(
            f"conversation {conversation_id} is busy: a turn of it is running (here or on another instance); "
            "nothing of this turn ran: send the message again when that turn has answered"
        )

    def _busy(self, conversation_id: str) -> Conflict:
        log.warning("chat_turn_conflict", conversation_id=conversation_id)
        return Conflict(
            f"conversation {conversation_id} is busy: another turn of it was stored first, so this turn "
            "was not added to its history; send the message again to continue after that turn"
        )


def _advance(conn: Any, conversation_id: str, turns: int, claim: str | None, now: datetime) -> bool:
    """Move the version from ``turns`` to ``turns + 1`` (while ``claim`` still holds, when given); False if
    another turn moved it first or took the claim over."""
    query = update(chat_conversations).where(
        chat_conversations.c.id == conversation_id, chat_conversations.c.turns == turns
    )
    if claim is not None:
        query = query.where(chat_conversations.c.busy_by == claim)
    moved = conn.execute(query.values(turns=turns + 1, updated_at=now)).rowcount
    return bool(moved == 1)


def _prune(conn: Any, conversation_id: str, upto: int) -> None:
    if upto > 0:
        conn.execute(
            delete(chat_turns).where(
                chat_turns.c.conversation_id == conversation_id, chat_turns.c.turn <= upto
            )
        )


def fit(turns: Sequence[Sequence[Message]], limits: HistoryLimits) -> list[Message]:
    """The newest whole turns within the bounds (a turn too large for them goes in compacted, if that fits)."""
    kept: list[Sequence[Message]] = []
    count = chars = 0
    for turn in reversed(turns):
        for candidate in (turn, compact(turn)):
            size = _chars(candidate)
            if count + len(candidate) <= limits.max_messages and chars + size <= limits.max_chars:
                kept.append(candidate)
                count, chars = count + len(candidate), chars + size
                break
        else:
            break
    return [message for turn in reversed(kept) for message in turn]


def bounded_turn(messages: list[Message], limits: HistoryLimits) -> list[Message]:
    """What is stored of a turn: all of it, or (too large) its user message and answer, clipped."""
    if _chars(messages) <= limits.max_turn_chars:
        return messages
    half = limits.max_turn_chars // 2
    return [{**m, "content": _clip(m.get("content"), half)} for m in compact(messages)]


def compact(turn: Sequence[Message]) -> list[Message]:
    """The turn without its tool exchange: the user's message and the final answer (no dangling calls)."""
    if len(turn) <= 2:
        return list(turn)
    return [turn[0], {"role": "assistant", "content": turn[-1].get("content") or ""}]


def _clip(content: Any, limit: int) -> Any:
    return content[:limit] + "…" if isinstance(content, str) and len(content) > limit else content


def _chars(messages: Sequence[Message]) -> int:
    return sum(len(json.dumps(m, ensure_ascii=False, default=str)) for m in messages)
