"""Calls held for a person's approval: effects that were ``held``, seen the way a person reads them.

An approval is not a table of its own: it is an effect of the ledger (:mod:`persona.effects`) that the
policy held. Approving moves it ``held -> claimed`` in one conditional UPDATE together with the daily
reservation (so two approvers racing cannot both win), the dispatcher executes exactly the stored
arguments, and the effect ends ``applied`` (executed), ``failed`` or ``unknown``. An approval whose
process died between approving and the answer stays ``approved`` until the sweep looks its order number
up: executed if Plisio has the invoice, failed if not (never re-sent on its own: ask again).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from persona.effects.ledger import Effect, EffectLedger, State, approval_status
from persona.effects.seal import SealState
from persona.errors import NotFound

STATUSES = ("pending", "approved", "executed", "failed", "unknown", "rejected")
_STATES = {approval_status(state): state for state in State}


@dataclass(frozen=True)
class Approval:
    id: str
    status: str
    persona: str
    user_id: str
    conversation_id: str
    tool_call_id: str | None
    tool: str
    arguments: dict[str, Any]
    arguments_hash: str
    reason: str
    amount: Decimal | None
    created_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    decision_note: str | None
    result: str | None
    order_number: str
    seal: str | None
    """A pending call's seal: intact, broken, unsealed or uncheckable (:mod:`persona.effects.seal`); None
    once decided (approving re-values the amount, so only a pending row is compared with its seal)."""


class ApprovalStore:
    def __init__(self, ledger: EffectLedger) -> None:
        self._ledger = ledger

    @staticmethod
    def status(effect: Effect) -> str:
        return approval_status(effect.state)

    def view(self, effect: Effect) -> Approval:
        return Approval(
            id=effect.id, status=approval_status(effect.state), persona=effect.persona, user_id=effect.user_id,
            conversation_id=effect.conversation_id, tool_call_id=effect.model_call_id, tool=effect.tool,
            arguments=effect.arguments, arguments_hash=effect.arguments_hash, reason=effect.reason or "",
            amount=effect.amount, created_at=effect.created_at, decided_by=effect.decided_by,
            decided_at=effect.decided_at, decision_note=effect.decision_note, result=effect.result,
            order_number=effect.order_number, seal=self.seal_of(effect),
        )  # fmt: skip

    def seal_of(self, effect: Effect) -> str | None:
        if effect.state is not State.HELD:
            return None
        seal = self._ledger.seal
        if seal is None:
            return SealState.UNCHECKABLE.value
        return seal.check(effect.held(), effect.seal, effect.seal_kv).state.value

    def effect(self, approval_id: str) -> Effect:
        """The held (or once held) effect behind an approval id."""
        try:
            effect = self._ledger.get(approval_id)
        except NotFound:
            effect = None
        if effect is None or not effect.needs_approval:
            raise NotFound(f"no approval with id {approval_id!r}; `persona approvals list` shows them")
        return effect

    def get(self, approval_id: str) -> Approval:
        return self.view(self.effect(approval_id))

    def ids_starting(self, prefix: str, limit: int) -> list[str]:
        """Ids of approvals that start with ``prefix`` (taken literally), in order, at most ``limit``."""
        return self._ledger.ids_starting(prefix, limit, approvals=True)

    def find(self, status: str | None = "pending", limit: int = 100) -> list[Approval]:
        """Approvals, newest first; ``status`` is one of :data:`STATUSES` or None for all."""
        if status is not None and status not in _STATES:
            raise NotFound(f"no approval status {status!r}; use one of: {', '.join(STATUSES)}, all")
        states = None if status is None else [_STATES[status]]
        return [self.view(e) for e in self._ledger.find(states, approvals=True, limit=limit)]
