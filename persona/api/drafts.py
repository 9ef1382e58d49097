"""The review queue over HTTP: list, show, approve, reject, re-send, mark sent by hand."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, Any

from fastapi import APIRouter, Query

from persona.api import examples as ex
from persona.api.access import requires
from persona.api.bodies import Decision
from persona.deps import ReviewQueues
from persona.drafts import DRAFT_STATUSES, Draft
from persona.errors import NotConfigured
from persona.events import Source
from persona.http_auth import STAFF, Auth
from persona.jsonutil import jsonable
from persona.users import User

MARK_SENT_HINT = (
    "or, if you sent the message yourself, POST /v1/drafts/{id}/mark-sent (`persona drafts mark-sent`)"
)


def router(reviews: ReviewQueues, auth: Auth) -> APIRouter:
    api = APIRouter(tags=["drafts"])
    operator = requires(auth, STAFF, "work the review queue, refunds and inbox")

    @api.get(
        "/v1/drafts", summary="Drafted customer messages (the review queue)",
        responses=ex.responses(ex.DRAFTS, 422),
    )  # fmt: skip
    async def drafts(
        status: Annotated[
            str | None,
            Query(
                pattern="^(" + "|".join((*DRAFT_STATUSES, "all")) + ")$",
                description="Only drafts in this status (default: every one).",
            ),
        ] = None,
        _: User = operator,
    ) -> dict[str, Any]:
        found = await asyncio.to_thread(reviews().drafts.find, None if status == "all" else status)
        return {"count": len(found), "drafts": [jsonable(d) for d in found]}

    @api.get(
        "/v1/drafts/{draft_id}", summary="One draft in full: the message, its facts, delivery",
        responses=ex.responses(ex.DRAFT, 404),
    )  # fmt: skip
    async def draft(draft_id: str, _: User = operator) -> dict[str, Any]:
        return {"draft": jsonable(await asyncio.to_thread(reviews().drafts.get, draft_id))}

    @api.post(
        "/v1/drafts/{draft_id}/approve", summary="Approve a draft; it goes out",
        responses=ex.responses(ex.DRAFT_SENT, 404, 409, 503),
    )  # fmt: skip
    async def approve_draft(
        draft_id: str, body: Decision | None = None, user: User = operator
    ) -> dict[str, Any]:
        draft = await _hinted(
            reviews().approve(draft_id, by=user.email, note=body.note if body else None, source=Source.HTTP),
            draft_id,
        )  # fmt: skip
        return {"draft": jsonable(draft)}

    @api.post(
        "/v1/drafts/{draft_id}/send",
        summary="Deliver an approved draft again (after a failed delivery), as `persona drafts send`",
        responses=ex.responses(ex.DRAFT_SENT, 404, 409, 503),
    )
    async def send_draft(draft_id: str, user: User = operator) -> dict[str, Any]:
        draft = await _hinted(reviews().send(draft_id, by=user.email, source=Source.HTTP), draft_id)
        return {"draft": jsonable(draft)}

    @api.post(
        "/v1/drafts/{draft_id}/mark-sent",
        summary="Record that the caller sent the message by hand (approving it first if it waits for review)",
        responses=ex.responses(ex.DRAFT_MARKED_SENT, 404, 409),
    )
    async def mark_draft_sent(
        draft_id: str, body: Decision | None = None, user: User = operator
    ) -> dict[str, Any]:
        draft = await reviews().mark_sent(
            draft_id, by=user.email, note=body.note if body else None, source=Source.HTTP
        )
        return {"draft": jsonable(draft)}

    @api.post(
        "/v1/drafts/{draft_id}/reject", summary="Reject a draft; it is never sent",
        responses=ex.responses(ex.DRAFT_REJECTED, 404, 409),
    )  # fmt: skip
    async def reject_draft(
        draft_id: str, body: Decision | None = None, user: User = operator
    ) -> dict[str, Any]:
        draft = await reviews().reject(
            draft_id, by=user.email, note=body.note if body else None, source=Source.HTTP
        )
        return {"draft": jsonable(draft)}

    return api


async def _hinted(work: Awaitable[Draft], draft_id: str) -> Draft:
    """``work``, with the way out a caller without an outbound channel has added to its 503."""
    try:
        return await work
    except NotConfigured as exc:
        raise NotConfigured(f"{exc}; {MARK_SENT_HINT.replace('{id}', draft_id)}") from exc
