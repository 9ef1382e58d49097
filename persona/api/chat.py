"""``POST /v1/chat``: one turn of a persona conversation, idempotent under ``Idempotency-Key``."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import OrderedDict
from datetime import timedelta
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Header
from fastapi.responses import JSONResponse, Response

from persona.api.bodies import ChatRequest
from persona.api.wire import call_view, jsonable
from persona.app import Runtime
from persona.chat_requests import ChatRequests, body_hash, check_key, conversation_for
from persona.errors import Forbidden
from persona.events import Source
from persona.http_auth import STAFF, Auth
from persona.llm import ChatModel
from persona.users import User

log = structlog.get_logger(__name__)

MAX_CONVERSATIONS = 1000


@dataclasses.dataclass
class _Conversation:
    persona: str
    user: str
    history: list[dict[str, Any]]
    lock: asyncio.Lock


class Conversations:
    """Chat history per conversation id, in this process's memory (bounded, oldest dropped)."""

    def __init__(self, limit: int = MAX_CONVERSATIONS) -> None:
        self._items: OrderedDict[str, _Conversation] = OrderedDict()
        self._limit = limit

    def get(self, conversation_id: str, persona: str, user: str) -> _Conversation:
        found = self._items.get(conversation_id)
        if found is None:
            found = _Conversation(persona, user, [], asyncio.Lock())
            self._items[conversation_id] = found
            while len(self._items) > self._limit:
                self._items.popitem(last=False)
        elif (found.persona, found.user) != (persona, user):
            raise Forbidden(f"conversation {conversation_id!r} belongs to another persona or user")
        self._items.move_to_end(conversation_id)
        return found


def router(rt: Runtime, auth: Auth) -> APIRouter:
    api = APIRouter(tags=["chat"])
    chatter = Depends(auth.require(STAFF, "chat with personas"))
    conversations = Conversations()
    requests = ChatRequests(
        rt.store, rt.now, timedelta(seconds=max(p.limits.wall_clock_s for p in rt.settings.personas.values()) * 2)
        if rt.settings.personas else timedelta(hours=1),
    )  # fmt: skip

    @api.post(
        "/v1/chat", summary="One turn of a persona conversation",
        responses={409: {"description": "Idempotency-Key reused with another body, or its request still runs"}},
    )  # fmt: skip
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
        ctx = rt.context(body.persona, user.email, conversation_id=conversation_id, source=Source.HTTP)
        convo = conversations.get(conversation_id, body.persona, user.email)
        model, owned = _chat_model(rt, body.persona, user.email)
        try:
            async with convo.lock:
                result = await run_turn(
                    model=model, dispatcher=rt.dispatcher, ctx=ctx, system_prompt=rt.system_prompt(ctx),
                    history=list(convo.history), user_message=body.message,
                )  # fmt: skip
                convo.history.extend(result.messages)
        finally:
            closer = getattr(model, "aclose", None)
            if owned and closer is not None:
                await closer()
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


def new_conversation_id() -> str:
    return f"conv_{uuid.uuid4().hex[:16]}"


def _chat_model(rt: Runtime, persona: str, user: str) -> tuple[ChatModel, bool]:
    """The injected model (tests, replay) or the configured LLM; True when we must close it."""
    rt.settings.chat_persona(persona)  # NotFound (or a flow-only persona refused) before anything else
    if rt.model_factory is not None:
        return rt.model_factory("chat", persona, {"user": user}), False
    return rt.chat_model(persona), True
