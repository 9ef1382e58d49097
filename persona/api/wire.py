"""JSON shapes shared by the API and the console: money as strings, one view of a tool call."""

from __future__ import annotations

import dataclasses
import json
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from pydantic import BaseModel


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
