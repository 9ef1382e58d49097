"""Calls held for a person's approval, and their resolution: each approved call executes once.

A pending row stores the validated arguments; approving moves it pending -> approved in
one conditional UPDATE (so two approvers racing cannot both win), the dispatcher executes
exactly those arguments, and the row ends executed or failed with the result.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update

from persona.errors import Conflict, NotFound
from persona.store.engine import Store
from persona.store.tables import approvals


@dataclass(frozen=True)
class Approval:
    id: str
    status: str
    persona: str
    user_id: str
    conversation_id: str
    tool_call_id: str
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


def _row(r: Any) -> Approval:
    return Approval(
        id=r.id, status=r.status, persona=r.persona, user_id=r.user_id, conversation_id=r.conversation_id,
        tool_call_id=r.tool_call_id, tool=r.tool, arguments=json.loads(r.arguments), arguments_hash=r.arguments_hash,
        reason=r.reason, amount=r.amount_usd, created_at=r.created_at, decided_by=r.decided_by,
        decided_at=r.decided_at, decision_note=r.decision_note, result=r.result,
    )  # fmt: skip


class ApprovalStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    def request(
        self,
        *,
        persona: str,
        user: str,
        conversation_id: str,
        tool_call_id: str,
        tool: str,
        arguments_json: str,
        arguments_hash: str,
        reason: str,
        amount: Decimal | None,
        now: datetime,
    ) -> Approval:
        """Store a pending approval; the same call asked twice returns the existing row."""
        with self._store.begin("store an approval") as conn:
            found = conn.execute(
                select(approvals).where(
                    approvals.c.conversation_id == conversation_id, approvals.c.tool_call_id == tool_call_id
                )
            ).first()
            if found is not None:
                return _row(found)
            approval_id = uuid.uuid4().hex[:12]
            conn.execute(
                approvals.insert().values(
                    id=approval_id, status="pending", persona=persona, user_id=user, conversation_id=conversation_id,
                    tool_call_id=tool_call_id, tool=tool, arguments=arguments_json, arguments_hash=arguments_hash,
                    reason=reason, amount_usd=amount, created_at=now,
                )
            )  # fmt: skip
        return self.get(approval_id)

    def get(self, approval_id: str) -> Approval:
        with self._store.read("read approvals") as conn:
            row = conn.execute(select(approvals).where(approvals.c.id == approval_id)).first()
        if row is None:
            raise NotFound(f"no approval with id {approval_id!r}; `persona approvals list` shows them")
        return _row(row)

    def find(self, status: str | None = "pending", limit: int = 100) -> list[Approval]:
        query = select(approvals).order_by(approvals.c.created_at.desc()).limit(limit)
        if status:
            query = query.where(approvals.c.status == status)
        with self._store.read("read approvals") as conn:
            return [_row(r) for r in conn.execute(query)]

    def decide(
        self, approval_id: str, *, approve: bool, by: str, note: str | None, now: datetime
    ) -> Approval:
        """pending -> approved | rejected, exactly once."""
        current = self.get(approval_id)
        with self._store.begin("decide an approval") as conn:
            changed = conn.execute(
                update(approvals)
                .where(approvals.c.id == approval_id, approvals.c.status == "pending")
                .values(
                    status="approved" if approve else "rejected",
                    decided_by=by,
                    decided_at=now,
                    decision_note=note,
                )
            ).rowcount
        if changed != 1:
            raise Conflict(
                f"approval {approval_id} is already {self.get(approval_id).status}"
                f" (decided by {current.decided_by or 'someone else'}); nothing was done"
            )
        return self.get(approval_id)

    def finish(self, approval_id: str, *, ok: bool, result: str) -> None:
        with self._store.begin("finish an approval") as conn:
            conn.execute(
                update(approvals)
                .where(approvals.c.id == approval_id, approvals.c.status == "approved")
                .values(status="executed" if ok else "failed", result=result)
            )
