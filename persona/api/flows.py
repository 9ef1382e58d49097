"""Refund requests over HTTP (triaged by the written policy)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from persona.api.bodies import RefundRequest
from persona.api.wire import jsonable
from persona.app import Runtime
from persona.http_auth import STAFF, Auth
from persona.users import User


def router(rt: Runtime, auth: Auth) -> APIRouter:
    api = APIRouter(tags=["flows"])
    operator = Depends(auth.require(STAFF, "work the review queue, refunds and inbox"))

    @api.post("/v1/refund-requests", summary="Triage a refund request by the written policy")
    async def refund_request(body: RefundRequest, user: User = operator) -> dict[str, Any]:
        from persona.flows.refunds import triage

        outcome = await triage(
            rt, txn_id=body.invoice_id, reason=body.reason, requested_by=user.email, trigger="http"
        )
        result: dict[str, Any] = jsonable(outcome)
        return result

    return api
