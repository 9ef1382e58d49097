"""Operations over HTTP: health and the callback inbox (list, show a row, retry a failed one)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text

from persona.api import examples as ex
from persona.api.access import requires
from persona.deps import OperatorDeps
from persona.errors import StoreError
from persona.events import Source
from persona.http_auth import STAFF, Auth
from persona.inbox import STATES, Inbox
from persona.jsonutil import jsonable
from persona.operations import retry_inbox_row
from persona.users import User

log = structlog.get_logger(__name__)

RowId = Annotated[int, Path(ge=1, description="The inbox row's id, exactly (never a prefix).")]


def router(deps: OperatorDeps, auth: Auth) -> APIRouter:
    api = APIRouter(tags=["ops"])
    operator = requires(auth, STAFF, "work the review queue, refunds and inbox")

    @api.get(
        "/healthz", summary="200 when the store answers, else 503",
        responses={**ex.responses(ex.HEALTH, auth=False), 503: ex.content(ex.UNHEALTHY, "the store is unreachable")},
    )  # fmt: skip
    async def healthz() -> Response:
        try:
            await asyncio.to_thread(_ping, deps)
        except StoreError as exc:
            log.warning("healthz_store_unavailable", error=str(exc))
            return JSONResponse(ex.UNHEALTHY, status_code=503)
        return JSONResponse(ex.HEALTH)

    @api.get(
        "/v1/inbox", tags=["inbox"], summary="Callback inbox rows, newest first (e.g. ?state=poison)",
        responses=ex.responses(ex.INBOX_ROWS, 422),
    )  # fmt: skip
    async def inbox(
        state: Annotated[str, Query(pattern="^(" + "|".join((*STATES, "all")) + ")$")] = "all",
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        _: User = operator,
    ) -> dict[str, Any]:
        rows = await asyncio.to_thread(Inbox(deps.store).list, state, limit=limit)
        return {"count": len(rows), "rows": [jsonable(r) for r in rows]}

    @api.get(
        "/v1/inbox/{row_id}", tags=["inbox"], summary="One inbox row: the callback's fields, state, error",
        responses=ex.responses(ex.INBOX_ROW, 404, 422),
    )  # fmt: skip
    async def inbox_row(row_id: RowId, _: User = operator) -> dict[str, Any]:
        return {"row": jsonable(await asyncio.to_thread(Inbox(deps.store).get, row_id))}

    @api.post(
        "/v1/inbox/{row_id}/retry", tags=["inbox"],
        summary="Queue a failed (or poison) row again, attempts reset (`persona inbox retry`)",
        responses=ex.responses(ex.INBOX_RETRIED, 404, 409, 422),
    )  # fmt: skip
    async def inbox_retry(row_id: RowId, user: User = operator) -> dict[str, Any]:
        return {"row": jsonable(await retry_inbox_row(deps, row_id, by=user.email, source=Source.HTTP))}

    return api


def _ping(deps: OperatorDeps) -> None:
    with deps.store.read("check the store") as conn:
        conn.execute(text("SELECT 1"))
