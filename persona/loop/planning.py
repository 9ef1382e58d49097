"""Planning one model step: ids, the server's call numbers, the tool-call budget and the loop guard.

Nothing here runs a tool. Each call of the step leaves with a unique, bounded id (the model's own when
it is usable, kept only for the wire), the server's sequence number of the call in the conversation
(the key of its side effect, if it has one), and either a place in the run list or a ready answer
(budget spent, loop guard). Split out by step as openai-agents splits ``run_internal/tool_planning.py``
from ``tool_execution.py`` and ``turn_resolution.py``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from persona.calls import error_content
from persona.jsonutil import canonical_json
from persona.llm import ToolCall
from persona.settings import StopReason

MAX_CALL_ID = 64
_CALL_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass(frozen=True)
class Planned:
    call: ToolCall
    notices: list[str]
    seq: int


@dataclass
class StepPlan:
    calls: list[Planned]
    """Every call of the step, in the model's order, with its final id."""
    runnable: list[Planned] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)
    """Calls answered without running (budget, loop guard), by id."""
    guarded: list[Planned] = field(default_factory=list)
    """Calls the loop guard stopped (the turn audits them)."""
    stop: tuple[StopReason, str] | None = None


def calls_so_far(messages: Sequence[dict[str, Any]]) -> int:
    """Tool calls already in the conversation: the next call's sequence number."""
    return sum(len(m.get("tool_calls") or ()) for m in messages if m.get("role") == "assistant")


def normalize(calls: Sequence[ToolCall], first_seq: int) -> list[Planned]:
    """Give every call a unique, bounded id and string arguments; note what had to be repaired."""
    out: list[Planned] = []
    used: set[str] = set()
    for index, call in enumerate(calls):
        notices: list[str] = []
        call_id = call.id
        if not call_id or call_id in used or not _CALL_ID.match(call_id):
            new_id = f"call_{uuid.uuid4().hex[:16]}"
            why = (
                "no" if not call_id else "a duplicate" if call_id in used else "an unusable (too long or odd)"
            )
            notices.append(f"the tool call had {why} id; assigned {new_id}")
            call_id = new_id
        used.add(call_id)
        args = call.arguments
        if isinstance(args, dict):
            notices.append("arguments arrived as a JSON object instead of a JSON string; accepted")
        elif args is not None and not isinstance(args, str):
            args = json.dumps(args, default=str)
        out.append(Planned(ToolCall(call_id, call.name or "", args, call.extra), notices, first_seq + index))
    return out


class Guard:
    """The turn's budget and repeat counter, across its steps."""

    def __init__(self, max_tool_calls: int, repeats: int) -> None:
        self.max_tool_calls, self.repeats = max_tool_calls, repeats
        self.seen: Counter[str] = Counter()
        self.trips = 0

    def plan(self, calls: list[Planned], used: int) -> StepPlan:
        plan = StepPlan(calls)
        budget = self.max_tool_calls - used
        for planned in calls:
            call = planned.call
            assert call.id is not None
            key = f"{call.name}|{canonical_json(parse_loose(call.arguments))}"
            self.seen[key] += 1
            if budget <= 0:
                plan.answers[call.id] = error_content(
                    "limit_reached", "not executed: the turn's tool-call limit is reached"
                )
                plan.stop = ("max_tool_calls", f"the limit of {self.max_tool_calls} tool calls")
                continue
            if self.seen[key] > self.repeats:
                self.trips += 1
                plan.answers[call.id] = error_content(
                    "loop_guard",
                    f"not executed: this exact call was already made {self.seen[key] - 1} times in this turn; "
                    "use the earlier result or change the arguments",
                )
                plan.guarded.append(planned)
                if self.trips >= 2:
                    plan.stop = ("loop_guard", "a repeated tool call (loop guard)")
                continue
            budget -= 1
            plan.runnable.append(planned)
        return plan


def arg_text(args: Any) -> str:
    if isinstance(args, str):
        return args
    return json.dumps(args if args is not None else {}, ensure_ascii=False, default=str)


def parse_loose(args: Any) -> Any:
    if isinstance(args, str):
        try:
            return json.loads(args)
        except ValueError:
            return args
    return args
