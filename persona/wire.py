"""A dispatched call as the API, the CLI and the console show it (values through :func:`persona.jsonutil.jsonable`)."""

from __future__ import annotations

import json
from typing import Any

from persona.jsonutil import jsonable


def call_view(call: Any) -> dict[str, Any]:
    """A dispatched call as the API shows it: outcome, decision, the tool's result parsed."""
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
