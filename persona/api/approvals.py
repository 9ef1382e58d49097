"""Calls held for a person's approval, over HTTP (admins only)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query

from persona.api import examples as ex
from persona.api.access import requires
from persona.api.bodies import Decision
from persona.approvals import STATUSES
from persona.deps import OperatorDeps
from persona.events import Source
from persona.http_auth import ADMIN, Auth
from persona.jsonutil import jsonable
from persona.users import User
from persona.wire import call_view


def router(deps: OperatorDeps, auth: Auth) -> APIRouter:
    api = APIRouter(tags=["approvals"])
    approver = requires(auth, ADMIN, "decide approvals")

    @api.get(
        "/v1/approvals",
        summary="Calls held for a person's approval",
        responses=ex.responses(ex.APPROVALS, 422),
    )
    async def approvals(
        status: Annotated[
            str,
            Query(
                pattern="^(" + "|".join((*STATUSES, "all")) + ")$",
                description="Only approvals in this status.",
            ),
        ] = "pending",
        _: User = approver,
    ) -> dict[str, Any]:
        found = await asyncio.to_thread(deps.dispatcher.approvals.find, None if status == "all" else status)
        return {"count": len(found), "approvals": [jsonable(a) for a in found]}

    @api.get(
        "/v1/approvals/{approval_id}", summary="One approval: the held call, its arguments, who decided",
        responses=ex.responses(ex.APPROVAL, 404),
    )  # fmt: skip
    async def approval(approval_id: str, _: User = approver) -> dict[str, Any]:
        return {"approval": jsonable(await asyncio.to_thread(deps.dispatcher.approvals.get, approval_id))}

    @api.post(
        "/v1/approvals/{approval_id}/approve", summary="Approve; it executes once",
        responses=ex.responses(ex.APPROVAL_EXECUTED, 403, 404, 409),
    )  # fmt: skip
    async def approve(
        approval_id: str, body: Decision | None = None, user: User = approver
    ) -> dict[str, Any]:
        approval, done = await deps.dispatcher.approve(
            approval_id, by=user.email, note=body.note if body else None, source=Source.HTTP
        )
        return {"approval": jsonable(approval), "call": call_view(done)}

    @api.post(
        "/v1/approvals/{approval_id}/reject", summary="Reject; it never executes",
        responses=ex.responses(ex.APPROVAL_REJECTED, 404, 409),
    )  # fmt: skip
    async def reject(approval_id: str, body: Decision | None = None, user: User = approver) -> dict[str, Any]:
        approval = await deps.dispatcher.reject(
            approval_id, by=user.email, note=body.note if body else None, source=Source.HTTP
        )
        return {"approval": jsonable(approval)}

    return api
