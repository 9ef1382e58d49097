"""The effects table: one row per intended side effect, its state, its reservation against the daily total.

Every transition is one conditional statement (``UPDATE ... WHERE state IN (...)``), so two processes
racing on one effect cannot both move it, and a claim checks the day's total and reserves in the same
transaction. An effect's amount counts against its persona's daily total while it is ``claimed``,
``unknown`` or ``applied``; only a definite "not applied" (``failed``, ``rejected``) releases it.
"""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, func, select, text, update

from persona.effects.keys import EffectKey, order_number
from persona.effects.seal import Held, Seal
from persona.errors import Conflict, NotFound
from persona.store.engine import Store, is_conflict
from persona.store.tables import effects
from tools.redaction import scrub


class State(StrEnum):
    HELD = "held"
    CLAIMED = "claimed"
    APPLIED = "applied"
    FAILED = "failed"
    UNKNOWN = "unknown"
    REJECTED = "rejected"


RESERVING = (State.CLAIMED, State.UNKNOWN, State.APPLIED)
"""States whose amount counts against the daily total."""
UNRESOLVED = (State.CLAIMED, State.UNKNOWN)
"""Sent, or maybe sent, with no final answer yet: the sweep looks these up."""


@dataclass(frozen=True)
class Effect:
    id: str
    namespace: str
    slot: str
    state: State
    tool: str
    persona: str
    user_id: str
    conversation_id: str
    source: str
    model_call_id: str | None
    arguments: dict[str, Any]
    arguments_hash: str
    order_number: str
    amount: Decimal | None
    currency: str | None
    day: str | None
    needs_approval: bool
    reason: str | None
    result: str | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    decision_note: str | None
    seal: str | None = None
    seal_kv: int | None = None

    @property
    def key(self) -> EffectKey:
        return EffectKey(self.namespace, self.slot)

    def held(self) -> Held:
        """What this call's seal binds, as stored now."""
        return Held(self.id, self.key, self.order_number, self.tool, self.persona, self.user_id, self.conversation_id,
                    self.model_call_id, self.arguments_hash, self.amount, self.currency, self.reason)  # fmt: skip


def _effect(row: Any) -> Effect:
    values = {name: getattr(row, name) for name in Effect.__dataclass_fields__}
    values["state"] = State(values["state"])
    values["arguments"] = json.loads(values["arguments"])
    values["needs_approval"] = bool(values["needs_approval"])
    return Effect(**values)


@dataclass(frozen=True)
class Intent:
    """What is about to be done, by whom, under which key: the row a claim or a hold writes."""

    key: EffectKey
    tool: str
    persona: str
    user: str
    conversation_id: str
    source: str
    model_call_id: str | None
    arguments_json: str
    arguments_hash: str
    reason: str
    amount: Decimal | None = None
    currency: str | None = None

    def held(self, effect_id: str) -> Held:
        """What the seal of this intent, held as ``effect_id``, binds (the reason as it is stored: scrubbed)."""
        return Held(effect_id, self.key, order_number(self.key), self.tool, self.persona, self.user,
                    self.conversation_id, self.model_call_id, self.arguments_hash, self.amount, self.currency,
                    scrub(self.reason))  # fmt: skip


@dataclass(frozen=True)
class Claim:
    """The answer to a claim: ``claimed`` (go ahead), ``exists`` (someone has this key) or ``over_cap``."""

    status: str
    effect: Effect | None
    spent: Decimal = Decimal(0)
    """Today's reserved total before this claim (for the over-cap message)."""


class EffectLedger:
    """``seal`` signs calls held for approval (:mod:`persona.effects.seal`); a ledger built to read or to
    claim without one refuses to hold a call, and its approvals cannot be checked."""

    def __init__(self, store: Store, now: Callable[[], datetime], seal: Seal | None = None) -> None:
        self._store, self._now, self.seal = store, now, seal

    # -- reads -----------------------------------------------------------------------------

    def get(self, effect_id: str) -> Effect:
        with self._store.read("read effects") as conn:
            row = conn.execute(select(effects).where(effects.c.id == effect_id)).first()
        if row is None:
            raise NotFound(f"no effect with id {effect_id!r}; `persona effects list` shows them")
        return _effect(row)

    def ids_starting(self, prefix: str, limit: int, *, approvals: bool = False) -> list[str]:
        """Ids of effects (``approvals``: only held ones, once or still) that start with ``prefix`` (taken
        literally), in order, at most ``limit``."""
        held = (effects.c.needs_approval == 1,) if approvals else ()
        return self._store.starting(effects.c.id, prefix, limit, "read effects", *held)

    def by_key(self, key: EffectKey) -> Effect | None:
        with self._store.read("read effects") as conn:
            return self._by_key(conn, key)

    def find(
        self, states: Iterable[State] | None = None, *, approvals: bool = False, limit: int = 100
    ) -> list[Effect]:
        query = select(effects).order_by(effects.c.created_at.desc()).limit(limit)
        if states is not None:
            query = query.where(effects.c.state.in_([s.value for s in states]))
        if approvals:
            query = query.where(effects.c.needs_approval == 1)
        with self._store.read("read effects") as conn:
            return [_effect(r) for r in conn.execute(query)]

    def unresolved(self, *, updated_before: datetime, limit: int = 100) -> list[Effect]:
        """``claimed`` or ``unknown`` effects untouched since ``updated_before``: the sweep's work."""
        query = (
            select(effects)
            .where(effects.c.state.in_([s.value for s in UNRESOLVED]), effects.c.updated_at <= updated_before)
            .order_by(effects.c.updated_at)
            .limit(limit)
        )
        with self._store.read("read effects") as conn:
            return [_effect(r) for r in conn.execute(query)]

    def spent(self, persona: str, day: str) -> Decimal:
        with self._store.read("read the daily total") as conn:
            return self._spent(conn, persona, day)

    # -- writes ----------------------------------------------------------------------------

    def hold(self, intent: Intent, *, dedupe: bool = False) -> tuple[Effect, bool]:
        """Store a call held for a person's approval (reserves nothing yet). Returns (effect, created)."""
        try:
            with self._store.begin("hold a call for approval") as conn:
                self._lock(conn, intent.persona)
                found = self._existing(conn, intent, dedupe)
                if found is not None and found.state is not State.FAILED:
                    return found, False
                if found is None:
                    effect_id = self._insert(conn, intent, State.HELD, day=None, needs_approval=True)
                elif not self._reuse(conn, found, intent, State.HELD, day=None):
                    return self._get(conn, found.id), False
                else:
                    effect_id = found.id
        except Exception as exc:
            if not is_conflict(exc):
                raise
            found = self.by_key(intent.key)
            assert found is not None
            return found, False
        return self.get(effect_id), True

    def claim(self, intent: Intent, *, day: str, cap: Decimal | None, dedupe: bool = False) -> Claim:
        """Check ``spent + amount <= cap`` and reserve, in one transaction; a ``failed`` key is claimed again
        (a definite failure left nothing at Plisio, and the order number is the same). With ``dedupe``, an
        effect of the same persona and user with the same tool and arguments in the namespace that is not
        void is the one this claim finds (checked under the same lock, so two processes cannot both miss)."""
        try:
            with self._store.begin("claim an effect") as conn:
                self._lock(conn, intent.persona)
                found = self._existing(conn, intent, dedupe)
                if found is not None and found.state is not State.FAILED:
                    return Claim("exists", found)
                spent = self._spent(conn, intent.persona, day)
                if intent.amount is not None and cap is not None and spent + intent.amount > cap:
                    return Claim("over_cap", found, spent)
                if found is None:
                    effect_id = self._insert(conn, intent, State.CLAIMED, day=day, needs_approval=False)
                elif not self._reuse(conn, found, intent, State.CLAIMED, day=day):
                    return Claim("exists", self._get(conn, found.id))
                else:
                    effect_id = found.id
        except Exception as exc:
            if not is_conflict(exc):
                raise
            return Claim("exists", self.by_key(intent.key))
        return Claim("claimed", self.get(effect_id), spent)

    def _existing(self, conn: Connection, intent: Intent, dedupe: bool) -> Effect | None:
        found = self._by_key(conn, intent.key)
        if found is not None or not dedupe:
            return found
        row = conn.execute(
            select(effects)
            .where(
                effects.c.namespace == intent.key.namespace,
                effects.c.arguments_hash == intent.arguments_hash,
                effects.c.tool == intent.tool,
                effects.c.persona == intent.persona,
                effects.c.user_id == intent.user,
                effects.c.state.not_in([State.FAILED.value, State.REJECTED.value]),
            )
            .order_by(effects.c.created_at.desc())
            .limit(1)
        ).first()
        return None if row is None else _effect(row)

    def _reuse(
        self, conn: Connection, found: Effect, intent: Intent, state: State, *, day: str | None
    ) -> bool:
        """A definitely failed effect asked for again: the same key (so the same order number), the new
        request's arguments and decision. False when someone else moved it first."""
        held = state is State.HELD
        changed = conn.execute(
            update(effects)
            .where(effects.c.id == found.id, effects.c.state == State.FAILED.value)
            .values(
                state=state.value, tool=intent.tool, user_id=intent.user, conversation_id=intent.conversation_id,
                source=intent.source, model_call_id=intent.model_call_id, arguments=intent.arguments_json,
                arguments_hash=intent.arguments_hash, amount=intent.amount, currency=intent.currency, day=day,
                needs_approval=int(held), reason=scrub(intent.reason), result=None, decided_by=None,
                decided_at=None, decision_note=None, attempts=effects.c.attempts + (0 if held else 1),
                updated_at=self._now(), **self._sealed(intent, state, found.id),
            )
        ).rowcount  # fmt: skip
        return bool(changed == 1)

    def approve(
        self,
        effect_id: str,
        *,
        by: str,
        note: str | None,
        reason: str,
        amount: Decimal | None,
        currency: str | None,
        day: str,
        cap: Decimal | None,
        checked: Effect,
        refused: bool = False,
    ) -> Claim:
        """``held -> claimed`` with the reservation, in one transaction; over the cap, or ``refused`` (the
        policy or the grant says no at execution), it ends ``failed`` instead. ``checked`` is the row whose
        seal the caller verified: the update applies only while the row still holds that call."""
        now = self._now()
        with self._store.begin("approve a held call") as conn:
            found = self._get(conn, effect_id)
            if found.state is not State.HELD:
                raise Conflict(
                    f"approval {effect_id} is already {approval_status(found.state)}"
                    f" (decided by {found.decided_by or 'nobody'}); nothing was done"
                )
            self._lock(conn, found.persona)
            spent = self._spent(conn, found.persona, day)
            over = refused or (amount is not None and cap is not None and spent + amount > cap)
            changed = conn.execute(
                update(effects)
                .where(effects.c.id == effect_id, effects.c.state == State.HELD.value, *self._as_checked(checked))
                .values(
                    state=(State.FAILED if over else State.CLAIMED).value, amount=amount, currency=currency,
                    day=day, reason=reason, decided_by=by, decided_at=now, decision_note=note,
                    attempts=effects.c.attempts + (0 if over else 1), updated_at=now,
                )
            ).rowcount  # fmt: skip
            if changed != 1:
                raise Conflict(
                    f"approval {effect_id} was decided by someone else, or its row changed, meanwhile; "
                    "nothing was done"
                )
        return Claim("over_cap" if over else "claimed", self.get(effect_id), spent)

    def reject(self, effect_id: str, *, by: str, note: str | None) -> Effect:
        now = self._now()
        with self._store.begin("reject a held call") as conn:
            found = self._get(conn, effect_id)
            changed = conn.execute(
                update(effects)
                .where(effects.c.id == effect_id, effects.c.state == State.HELD.value)
                .values(state=State.REJECTED.value, decided_by=by, decided_at=now, decision_note=note, updated_at=now)
            ).rowcount  # fmt: skip
        if changed != 1:
            raise Conflict(
                f"approval {effect_id} is already {approval_status(found.state)}"
                f" (decided by {found.decided_by or 'nobody'}); nothing was done"
            )
        return self.get(effect_id)

    def mark(
        self,
        effect_id: str,
        state: State,
        *,
        result: str | None = None,
        reason: str | None = None,
        only_from: Iterable[State] = UNRESOLVED,
    ) -> bool:
        """Move an effect to ``state`` if it is still in one of ``only_from``; True if this call moved it."""
        values: dict[str, Any] = {"state": state.value, "updated_at": self._now()}
        if result is not None:
            values["result"] = scrub(result)
        if reason is not None:
            values["reason"] = scrub(reason)
        with self._store.begin("record an effect's outcome") as conn:
            changed = conn.execute(
                update(effects)
                .where(effects.c.id == effect_id, effects.c.state.in_([s.value for s in only_from]))
                .values(**values)
            ).rowcount
        return bool(changed == 1)

    def touch(self, effect_id: str) -> None:
        """An unresolved effect that could not be looked up now goes to the back of the sweep's queue."""
        with self._store.begin("postpone an effect's lookup") as conn:
            conn.execute(
                update(effects)
                .where(effects.c.id == effect_id, effects.c.state.in_([s.value for s in UNRESOLVED]))
                .values(updated_at=self._now())
            )

    # -- internals -------------------------------------------------------------------------

    def _insert(
        self, conn: Connection, intent: Intent, state: State, *, day: str | None, needs_approval: bool
    ) -> str:
        effect_id = uuid.uuid4().hex[:12]
        now = self._now()
        conn.execute(
            effects.insert().values(
                id=effect_id, namespace=intent.key.namespace, slot=intent.key.slot, state=state.value,
                tool=intent.tool, persona=intent.persona, user_id=intent.user, conversation_id=intent.conversation_id,
                source=intent.source, model_call_id=intent.model_call_id, arguments=intent.arguments_json,
                arguments_hash=intent.arguments_hash, order_number=order_number(intent.key), amount=intent.amount,
                currency=intent.currency, day=day, needs_approval=int(needs_approval), reason=scrub(intent.reason),
                result=None, attempts=0 if state is State.HELD else 1, created_at=now, updated_at=now,
                **self._sealed(intent, state, effect_id),
            )
        )  # fmt: skip
        return effect_id

    def _sealed(self, intent: Intent, state: State, effect_id: str) -> dict[str, Any]:
        """A held call's seal columns; a claimed one has none (nobody approves it later)."""
        if state is not State.HELD:
            return {"seal": None, "seal_kv": None}
        if self.seal is None:
            raise RuntimeError("this EffectLedger has no seal and cannot hold a call for approval")
        seal, version = self.seal.sign(intent.held(effect_id))
        return {"seal": seal, "seal_kv": version}

    @staticmethod
    def _as_checked(checked: Effect) -> tuple[Any, ...]:
        """Conditions under which a row still holds the call whose seal was checked."""
        c = effects.c
        return (
            c.seal == checked.seal, c.seal_kv == checked.seal_kv, c.arguments_hash == checked.arguments_hash,
            c.tool == checked.tool, c.persona == checked.persona, c.user_id == checked.user_id,
            c.order_number == checked.order_number, c.namespace == checked.namespace, c.slot == checked.slot,
            c.conversation_id == checked.conversation_id,
        )  # fmt: skip

    def _get(self, conn: Connection, effect_id: str) -> Effect:
        row = conn.execute(select(effects).where(effects.c.id == effect_id)).first()
        if row is None:
            raise NotFound(
                f"no approval or effect with id {effect_id!r}; `persona approvals list` shows them"
            )
        return _effect(row)

    def _by_key(self, conn: Connection, key: EffectKey) -> Effect | None:
        row = conn.execute(
            select(effects).where(effects.c.namespace == key.namespace, effects.c.slot == key.slot)
        ).first()
        return None if row is None else _effect(row)

    def _spent(self, conn: Connection, persona: str, day: str) -> Decimal:
        total = conn.execute(
            select(func.coalesce(func.sum(effects.c.amount), 0)).where(
                effects.c.persona == persona,
                effects.c.day == day,
                effects.c.state.in_([s.value for s in RESERVING]),
            )
        ).scalar_one()
        return Decimal(str(total))

    def _lock(self, conn: Connection, persona: str) -> None:
        """Serialise claims of one persona (SQLite's BEGIN IMMEDIATE already does): the total stays true."""
        if self._store.dialect == "postgresql":
            conn.execute(
                text("SELECT pg_advisory_xact_lock(:k)"), {"k": zlib.crc32(f"effects:{persona}".encode())}
            )


def approval_status(state: State) -> str:
    """How an approval reads to a person: pending, approved (executing), executed, failed, rejected, unknown."""
    return {
        State.HELD: "pending",
        State.CLAIMED: "approved",
        State.APPLIED: "executed",
        State.FAILED: "failed",
        State.UNKNOWN: "unknown",
        State.REJECTED: "rejected",
    }[state]
