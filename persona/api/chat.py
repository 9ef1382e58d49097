"""``POST /v1/chat``: one turn of a persona conversation, idempotent under ``Idempotency-Key``."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, Response

from persona.api import examples as ex
from persona.api.access import requires
from persona.api.bodies import ChatRequest
from persona.calls import call_context
from persona.chat_requests import ChatRequests, body_hash, check_key, conversation_for
from persona.conversations import Conversations, audited, new_conversation_id
from persona.deps import ChatDeps
from persona.events import Source
from persona.http_auth import STAFF, Auth
from persona.jsonutil import jsonable
from persona.users import User
from persona.wire import call_view

log = structlog.get_logger(__name__)


def router(deps: ChatDeps, auth: Auth) -> APIRouter:
    api = APIRouter(tags=["chat"])
    chatter = requires(auth, STAFF, "chat with personas")
    settings = deps.settings
    conversations = Conversations(
        deps.store,
        deps.now,
        fresh_hint="start a new one without conversation_id",
        used_elsewhere=audited(deps.audit),
    )
    requests = ChatRequests(
        deps.store, deps.now, timedelta(seconds=max(p.limits.wall_clock_s for p in settings.personas.values()) * 2)
        if settings.personas else timedelta(hours=1),
    )  # fmt: skip

    busy = "Idempotency-Key reused with another body or its request still runs, or a turn of the conversation runs"
    answers = ex.responses(ex.CHAT, 404, 422, 502)
    answers[409] = ex.content({"error": {"type": "conflict", "message": "conversation conv_32042ed05c314a93 is "
                               "busy: a turn of it is running (here or on another instance); nothing of this turn "
                               "ran: send the message again when that turn has answered"}}, busy)  # fmt: skip

    @api.post("/v1/chat", summary="One turn of a persona conversation", responses=answers)
    async def chat(
        body: ChatRequest,
        user: User = chatter,
        idempotency_key: Annotated[
            str | None,
            Header(
                description="Send the same value on a retry: the stored answer comes back, the turn "
                "(and its invoices) does not run again. Same key, other body: 409."
            ),
        ] = None,
    ) -> Response:
        key = None if idempotency_key is None else check_key(idempotency_key)
        digest = body_hash(body.model_dump())
        if key is not None:
            stored = await asyncio.to_thread(requests.begin, user.email, key, digest)
            if stored is not None:
                log.info(
                    "chat_idempotent_replay", user=user.email, conversation_id=stored.get("conversation_id")
                )
                return JSONResponse(stored, headers={"Idempotent-Replayed": "true"})
        if key is not None and body.conversation_id is None:
            body = body.model_copy(update={"conversation_id": conversation_for(user.email, key)})
        try:
            answer = await _turn(body, user)
        except BaseException:
            if key is not None:
                await asyncio.to_thread(requests.abandon, user.email, key)
            raise
        if key is not None:
            await asyncio.to_thread(requests.finish, user.email, key, answer)
        return JSONResponse(answer)

    async def _turn(body: ChatRequest, user: User) -> dict[str, Any]:
        from persona.loop import run_turn

        conversation_id = body.conversation_id or new_conversation_id()
        ctx = call_context(
            settings, body.persona, user.email, conversation_id=conversation_id, source=Source.HTTP
        )
        settings.chat_persona(body.persona)  # NotFound (or a flow-only persona) before the history
        lease = timedelta(seconds=ctx.persona.limits.wall_clock_s * 2)  # a turn never runs longer than this
        async with conversations.turn(conversation_id, body.persona, user.email, lease=lease) as convo:
            result = await run_turn(
                model=deps.models(body.persona, user.email), dispatcher=deps.dispatcher, ctx=ctx,
                system_prompt=deps.prompts.for_call(ctx, today=deps.now().date()), history=convo.history,
                user_message=body.message,
            )  # fmt: skip
            await conversations.append(convo, result.messages)  # Conflict (409): another instance was first
        answer: dict[str, Any] = jsonable(
            {
                "text": result.text,
                "conversation_id": conversation_id,
                "tool_calls": [call_view(c) for c in result.calls],
                "usage": jsonable(result.usage),
                "steps": result.steps,
                "stopped_by": result.stopped_by,
                "flags": list(result.flags),
            }
        )
        return answer

    return api
