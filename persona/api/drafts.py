"""The review queue over HTTP: list, show, approve, reject, mark sent by hand."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from persona.api.bodies import Decision
from persona.api.wire import jsonable
from persona.app import Runtime
from persona.drafts import DRAFT_STATUSES, DraftStore
from persona.events import Source
from persona.http_auth import STAFF, Auth
from persona.users import User


def router(rt: Runtime, auth: Auth) -> APIRouter:
    api = APIRouter(tags=["flows"])
    operator = Depends(auth.require(STAFF, "work the review queue, refunds and inbox"))

    @api.get("/v1/drafts", summary="Drafted customer messages (the review queue)")
    async def drafts(
        status: Annotated[str | None, Query(pattern="^(" + "|".join((*DRAFT_STATUSES, "all")) + ")$")] = None,
        _: User = operator,
    ) -> dict[str, Any]:
        found = await asyncio.to_thread(DraftStore(rt.store).find, None if status == "all" else status)
        return {"count": len(found), "drafts": [jsonable(d) for d in found]}

    @api.get("/v1/drafts/{draft_id}", summary="One draft in full: the message, its facts, delivery")
    async def draft(draft_id: str, _: User = operator) -> dict[str, Any]:
        return {"draft": jsonable(await asyncio.to_thread(DraftStore(rt.store).get, draft_id))}

    @api.post("/v1/drafts/{draft_id}/approve", summary="Approve a draft; it goes out")
    async def approve_draft(
        draft_id: str, body: Decision | None = None, user: User = operator
    ) -> dict[str, Any]:
        draft = await rt.reviews().approve(
            draft_id, by=user.email, note=body.note if body else None, source=Source.HTTP
        )
        return {"draft": jsonable(draft)}

    @api.post(
        "/v1/drafts/{draft_id}/mark-sent",
        summary="Record that the caller sent the message by hand (approving it first if it waits for review)",
    )
    async def mark_draft_sent(
        draft_id: str, body: Decision | None = None, user: User = operator
    ) -> dict[str, Any]:
        draft = await rt.reviews().mark_sent(
            draft_id, by=user.email, note=body.note if body else None, source=Source.HTTP
        )
        return {"draft": jsonable(draft)}

    @api.post("/v1/drafts/{draft_id}/reject", summary="Reject a draft; it is never sent")
    async def reject_draft(
        draft_id: str, body: Decision | None = None, user: User = operator
    ) -> dict[str, Any]:
        draft = await rt.reviews().reject(
            draft_id, by=user.email, note=body.note if body else None, source=Source.HTTP
        )
        return {"draft": jsonable(draft)}

    return api
