"""The console's actions (POST forms): each calls the domain function the API route of the same name
calls, with the signed-in user and ``source=web``, then redirects to the page it came from (303).

A refusal of the domain (a draft already decided, no outbound channel, a four-eyes rule, Plisio
down) is a page with its status and message, and nothing changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from persona.api.errors import status_of
from persona.errors import PersonaError
from persona.events import Source
from persona.http_auth import ADMIN, STAFF
from persona.web.console import Console
from persona.web.sessions import Session
from tools.errors import PlisioError, ToolsError
from tools.redaction import scrub

log = structlog.get_logger(__name__)

MAX_NOTE = 2000
WEB = Source.WEB


async def _note(request: Request) -> str | None:
    """The form's note, trimmed; refused (nothing done) past the API's limit."""
    value = (await request.form()).get("note")
    text = value.strip() if isinstance(value, str) else ""
    if len(text) > MAX_NOTE:
        raise PersonaError(f"note: {len(text)} characters; at most {MAX_NOTE} (fix: shorten it)")
    return text or None


def router(console: Console) -> APIRouter:
    web = APIRouter(include_in_schema=False)
    ops, reviews = console.deps.operator, console.deps.reviews
    operator = Depends(console.gate(STAFF, "work the review queue, refunds and inbox"))
    approver = Depends(console.gate(ADMIN, "decide approvals"))

    async def act(
        request: Request, session: Session, work: Callable[[str | None], Awaitable[Any]], back: str, done: str
    ) -> Response:
        try:
            result = await work(await _note(request))
        except (PersonaError, ToolsError) as exc:
            status = (
                status_of(exc)[0]
                if isinstance(exc, PersonaError)
                else 502
                if isinstance(exc, PlisioError)
                else 400
            )
            log.info("web_action_refused", path=request.url.path, user=session.user.email, status=status)
            return console.refusal(request, session, status, "Not done", scrub(str(exc)))
        if getattr(result, "status", None) == "send_failed":  # decided, but the receiver did not take it
            done = "send_failed"
        log.info("web_action", path=request.url.path, user=session.user.email, done=done)
        return RedirectResponse(f"{back}?done={done}", status_code=303)

    @web.post("/drafts/{draft_id}/approve")
    async def approve_draft(request: Request, draft_id: str, session: Session = operator) -> Response:
        by = session.user.email
        return await act(request, session, lambda note: reviews().approve(draft_id, by=by, note=note, source=WEB),
                         f"/drafts/{draft_id}", "approved")  # fmt: skip

    @web.post("/drafts/{draft_id}/reject")
    async def reject_draft(request: Request, draft_id: str, session: Session = operator) -> Response:
        by = session.user.email
        return await act(request, session, lambda note: reviews().reject(draft_id, by=by, note=note, source=WEB),
                         f"/drafts/{draft_id}", "rejected")  # fmt: skip

    @web.post("/drafts/{draft_id}/mark-sent")
    async def mark_sent(request: Request, draft_id: str, session: Session = operator) -> Response:
        by = session.user.email
        return await act(request, session,
                         lambda note: reviews().mark_sent(draft_id, by=by, note=note, source=WEB),
                         f"/drafts/{draft_id}", "marked_sent")  # fmt: skip

    @web.post("/drafts/{draft_id}/send")
    async def send_draft(request: Request, draft_id: str, session: Session = operator) -> Response:
        by = session.user.email
        return await act(request, session, lambda _: reviews().send(draft_id, by=by, source=WEB),
                         f"/drafts/{draft_id}", "sent")  # fmt: skip

    @web.post("/approvals/{approval_id}/approve")
    async def approve(request: Request, approval_id: str, session: Session = approver) -> Response:
        by = session.user.email
        return await act(request, session,
                         lambda note: ops.dispatcher.approve(approval_id, by=by, note=note, source=WEB),
                         "/approvals", "executed")  # fmt: skip

    @web.post("/approvals/{approval_id}/reject")
    async def reject(request: Request, approval_id: str, session: Session = approver) -> Response:
        by = session.user.email
        return await act(request, session,
                         lambda note: ops.dispatcher.reject(approval_id, by=by, note=note, source=WEB),
                         "/approvals", "refused")  # fmt: skip

    @web.post("/inbox/{row_id}/retry")
    async def retry(request: Request, row_id: int, session: Session = operator) -> Response:
        from persona.operations import retry_inbox_row

        if not 0 <= row_id < 2**63:
            return console.refusal(request, session, 404, "Not done", f"no inbox row with id {row_id}")
        by = session.user.email
        return await act(
            request, session, lambda _: retry_inbox_row(ops, row_id, by=by, source=WEB), "/inbox", "retried"
        )

    return web
