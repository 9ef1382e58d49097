"""Resolving a step or a turn: tool messages in call order, the stop text, the claim check.

What the model is told last must be true: an answer that says an invoice was created when no create
call succeeded in this conversation is flagged, in the reply and in the audit log.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from persona.calls import Dispatched, Outcome
from persona.loop.planning import Planned

_CLAIM = re.compile(
    r"\b(invoice|payment link)\b[^.\n]{0,60}\b(created|issued|generated|sent|is ready)\b"
    r"|\b(created|issued|generated)\b[^.\n]{0,40}\b(invoice|payment link)\b",
    re.I,
)
_NEGATION = re.compile(
    r"\b(not|n't|no|unable|failed|cannot|couldn't|awaiting|pending|approval|denied|refused|would|will|can)\b",
    re.I,
)
CLAIM_FLAG = "the answer says an invoice was created, but no plisio_create_invoice call succeeded"


def tool_messages(calls: Sequence[Planned], answers: dict[str, str]) -> list[dict[str, Any]]:
    """One tool message per call, in the order the model made them, bound by ``tool_call_id``."""
    out = []
    for planned in calls:
        assert planned.call.id is not None
        out.append({"role": "tool", "tool_call_id": planned.call.id, "content": answers[planned.call.id]})
    return out


def stop_text(what: str, reason: str, calls: Sequence[Dispatched]) -> str:
    done = [c for c in calls if c.outcome in (Outcome.SUCCEEDED, Outcome.REPLAYED)]
    pending = [c for c in calls if c.outcome is Outcome.PENDING_APPROVAL]
    unknown = [c for c in calls if c.outcome is Outcome.UNKNOWN]
    parts = [f"I stopped before finishing: this turn reached {what}."]
    if done:
        parts.append(f"Completed tool calls: {', '.join(c.tool for c in done)}.")
    if pending:
        parts.append(f"Awaiting approval: {', '.join(str(c.approval_id) for c in pending)}.")
    if unknown:
        parts.append(
            f"Sent, outcome not confirmed yet (being looked up): {', '.join(str(c.effect_id) for c in unknown)}."
        )
    if reason != "model_error":
        parts.append("Nothing else was executed. Ask me to continue, or raise the limit in config.yaml.")
    return " ".join(parts)


def claims_creation(text: str) -> bool:
    return any(not _NEGATION.search(m.group(0)) for m in _CLAIM.finditer(text))


def created(calls: Sequence[Dispatched], messages: Sequence[dict[str, Any]]) -> bool:
    """Did a create call succeed in this turn, or earlier in the conversation?"""
    if any(c.tool == "plisio_create_invoice" and c.outcome is Outcome.SUCCEEDED for c in calls):
        return True
    names: dict[str, str] = {}
    for m in messages:
        for call in m.get("tool_calls") or ():
            names[call["id"]] = call["function"]["name"]
        is_create = names.get(m.get("tool_call_id", "")) == "plisio_create_invoice"
        if m.get("role") == "tool" and is_create and str(m.get("content", "")).startswith('{"ok":true'):
            return True
    return False
