"""Operations over HTTP: health, the audit log, the callback inbox."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from persona.api.wire import jsonable
from persona.app import Runtime
from persona.audit import AuditFilter
from persona.errors import StoreError
from persona.http_auth import READERS, STAFF, Auth
from persona.inbox import STATES, Inbox
from persona.users import User

log = structlog.get_logger(__name__)


def router(rt: Runtime, auth: Auth) -> APIRouter:
    api = APIRouter(tags=["ops"])
    operator = Depends(auth.require(STAFF, "work the review queue, refunds and inbox"))
    reader = Depends(auth.require(READERS, "read the audit log"))

    @api.get("/healthz", summary="200 when the store answers, else 503")
    async def healthz() -> Response:
        try:
            await asyncio.to_thread(_ping, rt)
        except StoreError as exc:
            log.warning("healthz_store_unavailable", error=str(exc))
            return JSONResponse(
                {"status": "unavailable", "reason": "the store is unreachable"}, status_code=503
            )
        return JSONResponse({"status": "ok"})

    @api.get("/v1/audit", summary="Audit records (the filters of `persona audit list`)")
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

    @api.get("/v1/inbox", summary="Callback inbox rows (e.g. ?state=poison)")
    async def inbox(
        state: Annotated[str, Query(pattern="^(" + "|".join((*STATES, "all")) + ")$")] = "all",
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        _: User = operator,
    ) -> dict[str, Any]:
        rows = await asyncio.to_thread(Inbox(rt.store).list, state, limit=limit)
        return {"count": len(rows), "rows": [jsonable(r) for r in rows]}

    return api


def _ping(rt: Runtime) -> None:
    with rt.store.read("check the store") as conn:
        conn.execute(text("SELECT 1"))
