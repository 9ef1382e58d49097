"""Refunds and churn over HTTP: triage a request, read the decisions, scan for churn, read the reports.

The same calls as ``persona refunds`` and ``persona churn`` (:mod:`persona.flows.refunds`,
:mod:`persona.flows.churn`), audited with source ``http`` and the token's user.
"""

from __future__ import annotations

import asyncio
from datetime import UTC
from typing import Annotated, Any

from fastapi import APIRouter, Query

from persona.api import examples as ex
from persona.api.access import requires
from persona.api.bodies import ChurnScan, RefundRequest
from persona.deps import FlowDeps
from persona.http_auth import STAFF, Auth
from persona.jsonutil import jsonable
from persona.users import User

Limit = Annotated[int, Query(ge=1, le=1000, description="At most this many, newest first.")]


def router(deps: FlowDeps, auth: Auth) -> APIRouter:
    api = APIRouter()
    operator = requires(auth, STAFF, "work the review queue, refunds and inbox")
    _refunds(api, deps, operator)
    _churn(api, deps, operator)
    return api


def _refunds(api: APIRouter, deps: FlowDeps, operator: Any) -> None:
    from persona.flows import refunds

    @api.post(
        "/v1/refund-requests", tags=["refunds"], summary="Triage a refund request by the written policy",
        responses=ex.responses(ex.REFUND, 404, 422, 502),
    )  # fmt: skip
    async def refund_request(body: RefundRequest, user: User = operator) -> dict[str, Any]:
        outcome = await refunds.triage(
            deps, txn_id=body.invoice, reason=body.reason, requested_by=user.email, trigger="http"
        )
        result: dict[str, Any] = jsonable(outcome)
        return result

    @api.get(
        "/v1/refunds", tags=["refunds"], summary="Refund decisions, newest first (`persona refunds list`)",
        responses=ex.responses(ex.REFUNDS, 422),
    )  # fmt: skip
    async def refund_decisions(limit: Limit = 50, _: User = operator) -> dict[str, Any]:
        found = await asyncio.to_thread(refunds.list_decisions, deps, limit)
        return {"count": len(found), "refunds": [jsonable(o) for o in found]}

    @api.get(
        "/v1/refunds/{decision_id}", tags=["refunds"],
        summary="One refund decision: clause, facts used, cost estimate, explanation (`persona refunds show`)",
        responses=ex.responses(ex.REFUND, 404),
    )  # fmt: skip
    async def refund_decision(decision_id: str, _: User = operator) -> dict[str, Any]:
        found: dict[str, Any] = jsonable(await asyncio.to_thread(refunds.get_decision, deps, decision_id))
        return found


def _churn(api: APIRouter, deps: FlowDeps, operator: Any) -> None:
    from persona.flows import churn

    def view(report: churn.ChurnReport) -> dict[str, Any]:
        data: dict[str, Any] = jsonable(report)
        data["headline"] = churn.headline(report.signals)
        return data

    @api.post(
        "/v1/churn/scan", tags=["churn"],
        summary="Scan the invoice history for churn signals and store a report (`persona churn scan`)",
        responses=ex.responses(ex.CHURN_REPORT, 409, 422, 502),
    )  # fmt: skip
    async def churn_scan(body: ChurnScan | None = None, user: User = operator) -> dict[str, Any]:
        slot = None if body is None or body.slot is None else body.slot
        if slot is not None and slot.tzinfo is None:
            slot = slot.replace(tzinfo=UTC)
        return view(await churn.scan(deps, trigger="http", slot=slot, requested_by=user.email))

    @api.get(
        "/v1/churn", tags=["churn"], summary="Churn reports, newest first (`persona churn reports`)",
        responses=ex.responses(ex.CHURN_REPORTS, 422),
    )  # fmt: skip
    async def churn_reports(limit: Limit = 20, _: User = operator) -> dict[str, Any]:
        found = await asyncio.to_thread(churn.list_reports, deps, limit)
        return {"count": len(found), "reports": [view(r) for r in found]}

    @api.get(
        "/v1/churn/runs", tags=["churn"], summary="The scan schedule and the history of scans (`persona churn runs`)",
        responses=ex.responses(ex.CHURN_RUNS, 422),
    )  # fmt: skip
    async def churn_runs(limit: Limit = 20, _: User = operator) -> dict[str, Any]:
        found = await asyncio.to_thread(churn.scan_runs, deps, limit)
        schedule = deps.settings.flows.churn.schedule
        upcoming = None if not schedule else churn.next_slot(schedule, deps.now())
        return {
            "schedule": schedule,
            "next_slot": jsonable(upcoming),
            "count": len(found),
            "runs": jsonable(found),
        }

    @api.get(
        "/v1/churn/{report_id}", tags=["churn"], summary="One churn report: its summary and the signals behind it",
        responses=ex.responses(ex.CHURN_REPORT, 404),
    )  # fmt: skip
    async def churn_report(report_id: str, _: User = operator) -> dict[str, Any]:
        return view(await asyncio.to_thread(churn.get_report, deps, report_id))
