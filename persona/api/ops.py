"""Operations over HTTP: liveness, readiness and the callback inbox (list, show a row, retry a failed one)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse, Response

from persona.api import examples as ex
from persona.api.access import requires
from persona.deps import OperatorDeps
from persona.events import Source
from persona.http_auth import READERS, STAFF, Auth
from persona.inbox import STATES, Inbox
from persona.jsonutil import jsonable
from persona.metrics import CONTENT_TYPE
from persona.operations import retry_inbox_row
from persona.readiness import assess
from persona.users import User

log = structlog.get_logger(__name__)

RowId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The inbox row's id, exactly (never a prefix).")]


def router(deps: OperatorDeps, auth: Auth) -> APIRouter:
    api = APIRouter(tags=["ops"])
    operator = requires(auth, STAFF, "work the review queue, refunds and inbox")

    @api.get(
        "/livez", summary="Liveness: 200 while the process answers (no store read)",
        responses=ex.responses(ex.HEALTH, auth=False),
    )  # fmt: skip
    async def livez() -> Response:
        return JSONResponse(ex.HEALTH)

    api.add_api_route(
        "/healthz", livez, methods=["GET"], summary="Liveness (an alias of /livez)",
        responses=ex.responses(ex.HEALTH, auth=False),
    )  # fmt: skip

    @api.get(
        "/readyz", summary="Readiness: the store answers, its schema is current, a worker beats, the backlog is young",
        responses={**ex.responses(ex.READY, auth=False), 503: ex.content(ex.UNREADY, "a check failed (it says which)")},
    )  # fmt: skip
    async def readyz() -> Response:
        found = await asyncio.to_thread(assess, deps.store, deps.settings.server.ready, deps.now)
        if not found.ready:
            failed = [name for name, check in found.checks.items() if not check.ok]
            log.warning("readiness_failed", checks=failed)
        return JSONResponse(found.document(), status_code=200 if found.ready else 503)

    reader = requires(auth, READERS, "read the metrics")

    @api.get(
        "/metrics", summary="Prometheus metrics (text exposition format); any role's token",
        responses={200: {"content": {"text/plain": {}}}, 401: ex.error(401), 403: ex.error(403)},
    )  # fmt: skip
    async def metrics(_: User = reader) -> Response:
        if deps.metrics is None:
            return JSONResponse(
                {"error": {"type": "not_found", "message": "metrics are off"}}, status_code=404
            )
        body = await asyncio.to_thread(deps.metrics.render)
        return Response(body, media_type=CONTENT_TYPE)

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
