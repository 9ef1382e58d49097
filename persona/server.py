"""The HTTP face of the service: Plisio callbacks in, chat and operator endpoints, health.

``create_app(rt, start_worker=...)`` builds the FastAPI app around a :class:`Runtime`, so tests
assemble it around a test runtime (an injected ``model_factory``, the in-process sandbox) and
``persona serve`` around the configured one. Domain errors become ``{"error": {"type",
"message"}}`` with a fitting status; an unexpected exception becomes a plain 500 whose details
stay in the server log, never in the response.

Every ``/v1`` endpoint needs ``Authorization: Bearer <API token>`` (see :mod:`persona.http_auth`
for the roles); ``/healthz`` and ``/webhooks/plisio`` (signed by Plisio) do not, nor do the OpenAPI
pages (the schema, no data). Who did something is the token's user, never a field of the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import structlog
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text
from starlette.exceptions import HTTPException

from persona.app import Runtime
from persona.audit import AuditFilter
from persona.chat_requests import ChatRequests, body_hash, check_key, conversation_for
from persona.drafts import DRAFT_STATUSES
from persona.errors import (
    ConfigError,
    Conflict,
    Forbidden,
    ModelError,
    NotConfigured,
    NotFound,
    PersonaError,
    StoreError,
    StoreUnavailable,
    Unauthorized,
)
from persona.events import Source
from persona.http_auth import ADMIN, READERS, STAFF, Auth
from persona.inbox import STATES, Inbox
from persona.llm import ChatModel
from persona.users import User, Users
from persona.webhooks import Receiver, SecretsSource
from tools.errors import PlisioError, ToolsError
from tools.redaction import scrub

if TYPE_CHECKING:
    from persona.worker import Worker

log = structlog.get_logger(__name__)

_ERRORS: Sequence[tuple[type[Exception], int, str]] = (
    (Unauthorized, 401, "unauthorized"),
    (NotFound, 404, "not_found"),
    (Forbidden, 403, "forbidden"),
    (Conflict, 409, "conflict"),
    (ConfigError, 422, "config_error"),
    (NotConfigured, 503, "not_configured"),
    (StoreUnavailable, 503, "store_unavailable"),
    (StoreError, 500, "store_error"),
    (ModelError, 502, "model_error"),
    (PersonaError, 400, "error"),
)
MAX_CONVERSATIONS = 1000


def jsonable(value: Any) -> Any:
    """JSON-ready data: Decimal as a string (money never becomes a float), datetimes as ISO 8601."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, BaseModel):
        return jsonable(value.model_dump(mode="python"))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _error(status: int, kind: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": scrub(message), **extra}}, status_code=status)


# -- request bodies --------------------------------------------------------------------------------


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    persona: str = Field(min_length=1, max_length=64)
    message: str = Field(min_length=1, max_length=20_000)
    conversation_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")


class RefundRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    invoice_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The Plisio txn_id.")
    reason: str = Field(min_length=1, max_length=2000)


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(None, max_length=2000, description="Why (recorded in the audit log).")


# -- chat conversations ----------------------------------------------------------------------------


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


# -- the app ---------------------------------------------------------------------------------------


def create_app(
    rt: Runtime,
    *,
    start_worker: bool,
    secrets: SecretsSource | None = None,
    worker: Callable[[Runtime], Worker] | None = None,
) -> FastAPI:
    """The app around ``rt``. ``start_worker`` runs a worker (``worker(rt)``, default ``Worker(rt)``)
    in the app's lifespan, stopped when the server shuts down."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not start_worker:
            yield
            return
        from persona.worker import Worker

        runner = worker(rt) if worker is not None else Worker(rt)
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop), name="persona-worker")
        try:
            yield
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, timeout=30)

    app = FastAPI(
        title="plisio-persona",
        summary="LLM personas operating a Plisio account; Plisio callback receiver.",
        version="0.1.0",
        lifespan=lifespan,
    )
    receiver = Receiver(rt, secrets=secrets)
    conversations = Conversations()
    auth = Auth(Users(rt.store, rt.audit, rt.now))
    chatter = Depends(auth.require(STAFF, "chat with personas"))
    operator = Depends(auth.require(STAFF, "work the review queue, refunds and inbox"))
    reader = Depends(auth.require(READERS, "read the audit log"))
    approver = Depends(auth.require(ADMIN, "decide approvals"))
    _install_errors(app)

    @app.post(
        "/webhooks/plisio",
        tags=["webhooks"],
        summary="Plisio status callback (form-encoded, or JSON with ?json=true)",
        responses={200: {"description": "stored, duplicate or poison"}, 400: {}, 401: {}, 413: {}, 415: {},
                   503: {"description": "not stored; Plisio should retry"}},
    )  # fmt: skip
    async def plisio_webhook(request: Request) -> Response:
        return await receiver(request)

    @app.get("/healthz", tags=["ops"], summary="200 when the store answers, else 503")
    async def healthz() -> Response:
        try:
            await asyncio.to_thread(_ping, rt)
        except StoreError as exc:
            log.warning("healthz_store_unavailable", error=str(exc))
            return JSONResponse(
                {"status": "unavailable", "reason": "the store is unreachable"}, status_code=503
            )
        return JSONResponse({"status": "ok"})

    requests = ChatRequests(
        rt.store, rt.now, timedelta(seconds=max(p.limits.wall_clock_s for p in rt.settings.personas.values()) * 2)
        if rt.settings.personas else timedelta(hours=1),
    )  # fmt: skip

    @app.post(
        "/v1/chat", tags=["chat"], summary="One turn of a persona conversation",
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

        conversation_id = body.conversation_id or _new_conversation_id()
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
                "tool_calls": [_call(c) for c in result.calls],
                "usage": jsonable(result.usage),
                "steps": result.steps,
                "stopped_by": result.stopped_by,
                "flags": list(result.flags),
            }
        )
        return answer

    @app.get("/v1/audit", tags=["ops"], summary="Audit records (the filters of `persona audit list`)")
    async def audit(
        user: str | None = None,
        persona: str | None = None,
        conversation: Annotated[str | None, Query(alias="conversation_id")] = None,
        event: str | None = None,
        tool: str | None = None,
        source: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after_seq: Annotated[int | None, Query(ge=0)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        _: User = reader,
    ) -> dict[str, Any]:
        flt = AuditFilter(
            user=user, persona=persona, conversation_id=conversation, event=event, tool=tool, source=source,
            since=since, until=until, limit=limit, after_seq=after_seq, newest=after_seq is None,
        )  # fmt: skip
        records = await asyncio.to_thread(rt.audit.query, flt)
        return {"count": len(records), "records": [r.model_dump(mode="json") for r in records]}

    @app.get("/v1/drafts", tags=["flows"], summary="Drafted customer messages (the review queue)")
    async def drafts(
        status: Annotated[str | None, Query(pattern="^(" + "|".join((*DRAFT_STATUSES, "all")) + ")$")] = None,
        _: User = operator,
    ) -> dict[str, Any]:
        from persona.drafts import DraftStore

        found = await asyncio.to_thread(DraftStore(rt.store).find, None if status == "all" else status)
        return {"count": len(found), "drafts": [jsonable(d) for d in found]}

    @app.get(
        "/v1/drafts/{draft_id}", tags=["flows"], summary="One draft in full: the message, its facts, delivery"
    )
    async def draft(draft_id: str, _: User = operator) -> dict[str, Any]:
        from persona.drafts import DraftStore

        return {"draft": jsonable(await asyncio.to_thread(DraftStore(rt.store).get, draft_id))}

    @app.post("/v1/refund-requests", tags=["flows"], summary="Triage a refund request by the written policy")
    async def refund_request(body: RefundRequest, user: User = operator) -> dict[str, Any]:
        from persona.flows.refunds import triage

        outcome = await triage(
            rt, txn_id=body.invoice_id, reason=body.reason, requested_by=user.email, trigger="http"
        )
        result: dict[str, Any] = jsonable(outcome)
        return result

    @app.get("/v1/inbox", tags=["ops"], summary="Callback inbox rows (e.g. ?state=poison)")
    async def inbox(
        state: Annotated[str, Query(pattern="^(" + "|".join((*STATES, "all")) + ")$")] = "all",
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        _: User = operator,
    ) -> dict[str, Any]:
        rows = await asyncio.to_thread(Inbox(rt.store).list, state, limit=limit)
        return {"count": len(rows), "rows": [jsonable(r) for r in rows]}

    @app.post("/v1/drafts/{draft_id}/approve", tags=["flows"], summary="Approve a draft; it goes out")
    async def approve_draft(
        draft_id: str, body: Decision | None = None, user: User = operator
    ) -> dict[str, Any]:
        draft = await rt.reviews().approve(
            draft_id, by=user.email, note=body.note if body else None, source=Source.HTTP
        )
        return {"draft": jsonable(draft)}

    @app.post(
        "/v1/drafts/{draft_id}/mark-sent", tags=["flows"],
        summary="Record that the caller sent the message by hand (approving it first if it waits for review)",
    )  # fmt: skip
    async def mark_draft_sent(
        draft_id: str, body: Decision | None = None, user: User = operator
    ) -> dict[str, Any]:
        draft = await rt.reviews().mark_sent(
            draft_id, by=user.email, note=body.note if body else None, source=Source.HTTP
        )
        return {"draft": jsonable(draft)}

    @app.post("/v1/drafts/{draft_id}/reject", tags=["flows"], summary="Reject a draft; it is never sent")
    async def reject_draft(
        draft_id: str, body: Decision | None = None, user: User = operator
    ) -> dict[str, Any]:
        draft = await rt.reviews().reject(
            draft_id, by=user.email, note=body.note if body else None, source=Source.HTTP
        )
        return {"draft": jsonable(draft)}

    @app.get("/v1/approvals", tags=["approvals"], summary="Calls held for a person's approval")
    async def approvals(
        status: Annotated[
            str, Query(pattern="^(pending|approved|rejected|executed|failed|unknown|all)$")
        ] = "pending",
        _: User = approver,
    ) -> dict[str, Any]:
        found = await asyncio.to_thread(rt.approvals.find, None if status == "all" else status)
        return {"count": len(found), "approvals": [jsonable(a) for a in found]}

    @app.post("/v1/approvals/{approval_id}/approve", tags=["approvals"], summary="Approve; it executes once")
    async def approve(
        approval_id: str, body: Decision | None = None, user: User = approver
    ) -> dict[str, Any]:
        approval, done = await rt.dispatcher.approve(
            approval_id, by=user.email, note=body.note if body else None, source=Source.HTTP
        )
        return {"approval": jsonable(approval), "call": _call(done)}

    @app.post("/v1/approvals/{approval_id}/reject", tags=["approvals"], summary="Reject; it never executes")
    async def reject(approval_id: str, body: Decision | None = None, user: User = approver) -> dict[str, Any]:
        approval = await rt.dispatcher.reject(
            approval_id, by=user.email, note=body.note if body else None, source=Source.HTTP
        )
        return {"approval": jsonable(approval)}

    return app


def _ping(rt: Runtime) -> None:
    with rt.store.read("check the store") as conn:
        conn.execute(text("SELECT 1"))


def _new_conversation_id() -> str:
    import uuid

    return f"conv_{uuid.uuid4().hex[:16]}"


def _chat_model(rt: Runtime, persona: str, user: str) -> tuple[ChatModel, bool]:
    """The injected model (tests, replay) or the configured LLM; True when we must close it."""
    rt.settings.chat_persona(persona)  # NotFound (or a flow-only persona refused) before anything else
    if rt.model_factory is not None:
        return rt.model_factory("chat", persona, {"user": user}), False
    return rt.chat_model(persona), True


def _call(call: Any) -> dict[str, Any]:
    try:
        content: Any = json.loads(call.content)
    except (TypeError, ValueError):
        content = call.content
    decision = call.decision
    return {
        "id": call.call_id,
        "tool": call.tool,
        "outcome": jsonable(call.outcome),
        "approval_id": call.approval_id,
        "effect_id": call.effect_id,
        "decision": None if decision is None else {
            "verdict": jsonable(decision.verdict), "clause": decision.clause, "reason": decision.reason,
        },
        "result": content,
    }  # fmt: skip


def _install_errors(app: FastAPI) -> None:
    async def persona_error(request: Request, exc: Exception) -> Response:
        for kind, status, name in _ERRORS:
            if isinstance(exc, kind):
                if status >= 500:
                    log.warning("http_error", path=request.url.path, type=name, error=str(exc))
                response = _error(status, name, str(exc))
                if status == 401:
                    response.headers["WWW-Authenticate"] = "Bearer"
                return response
        return _error(400, "error", str(exc))

    async def tools_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, PlisioError):
            return _error(502, exc.kind, exc.message)
        return _error(400, "bad_request", str(exc))

    async def validation_error(request: Request, exc: Exception) -> Response:
        errors = exc.errors() if isinstance(exc, RequestValidationError) else []
        fields = [{"field": ".".join(str(p) for p in e.get("loc", ())), "message": str(e.get("msg", ""))}
                  for e in errors]  # fmt: skip
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields) or "invalid request"
        return _error(422, "validation_error", summary, fields=fields)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "error"
        return _error(status, "http_error", str(detail))

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("http_unexpected_error", path=request.url.path, error=scrub(f"{type(exc).__name__}: {exc}"))
        return _error(500, "internal_error", "internal error; the details are in the server log")

    app.add_exception_handler(PersonaError, persona_error)
    app.add_exception_handler(ToolsError, tools_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
