"""Calls held for a person's approval, over HTTP (admins only)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from persona.api.bodies import Decision
from persona.api.wire import call_view, jsonable
from persona.app import Runtime
from persona.events import Source
from persona.http_auth import ADMIN, Auth
from persona.users import User


def router(rt: Runtime, auth: Auth) -> APIRouter:
    api = APIRouter(tags=["approvals"])
    approver = Depends(auth.require(ADMIN, "decide approvals"))

    @api.get("/v1/approvals", summary="Calls held for a person's approval")
    async def approvals(
        status: Annotated[
            str, Query(pattern="^(pending|approved|rejected|executed|failed|unknown|all)$")
        ] = "pending",
        _: User = approver,
    ) -> dict[str, Any]:
        found = await asyncio.to_thread(rt.approvals.find, None if status == "all" else status)
        return {"count": len(found), "approvals": [jsonable(a) for a in found]}

    @api.post("/v1/approvals/{approval_id}/approve", summary="Approve; it executes once")
    async def approve(
        approval_id: str, body: Decision | None = None, user: User = approver
    ) -> dict[str, Any]:
        approval, done = await rt.dispatcher.approve(
            approval_id, by=user.email, note=body.note if body else None, source=Source.HTTP
        )
        return {"approval": jsonable(approval), "call": call_view(done)}

    @api.post("/v1/approvals/{approval_id}/reject", summary="Reject; it never executes")
    async def reject(approval_id: str, body: Decision | None = None, user: User = approver) -> dict[str, Any]:
        approval = await rt.dispatcher.reject(
            approval_id, by=user.email, note=body.note if body else None, source=Source.HTTP
        )
        return {"approval": jsonable(approval)}

    return api
