"""Response examples for the OpenAPI schema (and so for ``/docs``): real answers, trimmed.

Each was taken from the route itself, in ``examples.json`` beside this file; tests/test_api_docs.py
checks that each has exactly the keys the route returns. FastAPI drops every null from the OpenAPI
document it generates, so there null fields are missing. URLs are loopback: the page links nowhere.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

ERRORS: dict[int, tuple[str, str, str]] = {
    401: ("unauthorized", "a valid API token is required (Authorization: Bearer <token>; `persona users token EMAIL` issues one)", "no, an unknown, revoked or disabled token"),
    403: ("forbidden", "role viewer may not work the review queue, refunds and inbox (it needs: admin, operator)", "the token's role may not do this"),
    404: ("not_found", "no draft with id 'd0c5e1f2a3b4'; `persona drafts list` shows them", "no such id"),
    409: ("conflict", "draft d0c5e1f2a3b4 is sent; only approved drafts are sent", "the thing is in a state that does not allow this"),
    422: ("validation_error", "query.status: unknown value 'bogus' (fix: use one of pending_review, approved, sending, sent, send_failed, rejected, obsolete, all)", "a bad parameter or body (the message names the valid values)"),
    502: ("plisio_unreachable", "Plisio could not be reached (GET /operations): connect refused", "Plisio (or the model) failed"),
    503: ("not_configured", "no outbound channel is configured ... set outbound.webhook_url in config.yaml", "not configured here (the message says how to fix it)"),
}  # fmt: skip


def content(example: Any, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"example": example}}}


def error(status: int) -> dict[str, Any]:
    kind, message, why = ERRORS[status]
    return content({"error": {"type": kind, "message": message}}, why)


def responses(ok: Any, *errors: int, auth: bool = True) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route: the 200 example, and an example of each error it can answer."""
    statuses = sorted({*errors, *((401, 403) if auth else ())})
    return {200: content(ok), **{status: error(status) for status in statuses}}


_EXAMPLES: dict[str, dict[str, Any]] = json.loads(
    resources.files("persona.api").joinpath("examples.json").read_text(encoding="utf-8")
)

CHAT: dict[str, Any] = _EXAMPLES["CHAT"]
HEALTH: dict[str, Any] = {"status": "ok"}
READY: dict[str, Any] = {
    "status": "ready",
    "checks": {
        "store": {"ok": True, "detail": "answers"},
        "schema": {"ok": True, "detail": "revision 0002"},
        "worker": {"ok": True, "detail": "last heartbeat 2 s ago"},
        "backlog": {"ok": True, "detail": "no callback is waiting"},
    },
}
UNREADY: dict[str, Any] = {
    "status": "unready",
    "checks": {
        **READY["checks"],
        "worker": {"ok": False, "detail": "the last worker heartbeat was 95 s ago (limit 30 s)"},
    },
}
DRAFT: dict[str, Any] = _EXAMPLES["DRAFT"]
DRAFTS: dict[str, Any] = _EXAMPLES["DRAFTS"]
DRAFT_SENT: dict[str, Any] = _EXAMPLES["DRAFT_SENT"]
DRAFT_MARKED_SENT: dict[str, Any] = _EXAMPLES["DRAFT_MARKED_SENT"]
DRAFT_REJECTED: dict[str, Any] = _EXAMPLES["DRAFT_REJECTED"]
REFUND: dict[str, Any] = _EXAMPLES["REFUND"]
REFUNDS: dict[str, Any] = _EXAMPLES["REFUNDS"]
CHURN_REPORT: dict[str, Any] = _EXAMPLES["CHURN_REPORT"]
CHURN_REPORTS: dict[str, Any] = _EXAMPLES["CHURN_REPORTS"]
CHURN_RUNS: dict[str, Any] = _EXAMPLES["CHURN_RUNS"]
APPROVAL: dict[str, Any] = _EXAMPLES["APPROVAL"]
APPROVALS: dict[str, Any] = _EXAMPLES["APPROVALS"]
APPROVAL_EXECUTED: dict[str, Any] = _EXAMPLES["APPROVAL_EXECUTED"]
APPROVAL_REJECTED: dict[str, Any] = _EXAMPLES["APPROVAL_REJECTED"]
EFFECT: dict[str, Any] = _EXAMPLES["EFFECT"]
EFFECTS: dict[str, Any] = _EXAMPLES["EFFECTS"]
AUDIT_RECORD: dict[str, Any] = _EXAMPLES["AUDIT_RECORD"]
AUDIT_RECORDS: dict[str, Any] = _EXAMPLES["AUDIT_RECORDS"]
AUDIT_VERIFY: dict[str, Any] = _EXAMPLES["AUDIT_VERIFY"]
CONVERSATION: dict[str, Any] = _EXAMPLES["CONVERSATION"]
INBOX_ROW: dict[str, Any] = _EXAMPLES["INBOX_ROW"]
INBOX_ROWS: dict[str, Any] = _EXAMPLES["INBOX_ROWS"]
INBOX_RETRIED: dict[str, Any] = _EXAMPLES["INBOX_RETRIED"]
