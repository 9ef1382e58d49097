"""Values as JSON, the same for the CLI (``--json``), the API and the console: every time RFC 3339 in UTC with
``Z``, money as a decimal string (never a float), dataclasses and pydantic models as objects.

The audit export keeps the ``+00:00`` text its hashes cover; everything else speaks this.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any


def rfc3339(moment: datetime, *, precise: bool = True) -> str:
    """UTC, ``Z``; microseconds when ``precise`` (JSON), whole seconds in tables. A naive time is UTC."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    text = aware.astimezone(UTC).isoformat(timespec="microseconds" if precise else "seconds")
    return text.removesuffix("+00:00") + "Z"


def jsonable(value: Any) -> Any:
    """JSON-native data: times as RFC 3339, decimals as strings (no float rounding), dataclasses as objects."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "model_dump"):
        return jsonable(value.model_dump(mode="python"))
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
