"""What a replay observed (from the audit log, the stores and the sandbox) and how it meets expectations.

Observations come from the same records an auditor reads, not from the runner's own
bookkeeping: if the audit log does not show it, it did not happen. Every failed expectation
is one precise sentence: what was expected, what happened instead.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from typing import Any

from persona.audit import AuditRecord
from persona.replay.scenario import Expectations, ToolExpect

_FINAL = {
    "tool_call_succeeded": "succeeded",
    "tool_call_failed": "failed",
    "tool_call_denied": "denied",
    "tool_call_replayed": "replayed",
    "approval_requested": "pending_approval",
}
_DECISION = {"succeeded": "allow", "denied": "deny", "pending_approval": "approval_required"}


@dataclass
class Call:
    id: str
    name: str
    arguments: Any
    outcome: str = "attempted"
    clause: str | None = None
    decision: str | None = None

    def show(self) -> str:
        args = json.dumps(self.arguments, ensure_ascii=False, sort_keys=True, default=str)
        return f"{self.name} {args[:160]} -> {self.outcome}"


@dataclass
class Observed:
    calls: list[Call] = field(default_factory=list)
    steps: int = 0
    final_text: str = ""
    stops: list[tuple[str, str]] = field(default_factory=list)
    """Each turn that ended on a limit or a model failure: its reason and what the user was told."""
    flags: int = 0
    plisio_paths: list[str] = field(default_factory=list)
    approvals_pending: int = 0
    drafts: list[Any] = field(default_factory=list)
    refund: Any = None
    churn_signals: dict[str, Any] | None = None


def _parse(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def calls_from(records: list[AuditRecord]) -> list[Call]:
    """Every tool call attempt, with its final outcome and policy decision, in order."""
    by_id: dict[str, Call] = {}
    order: list[str] = []
    for r in records:
        call_id = r.payload.get("tool_call_id")
        if not call_id or (not r.tool and r.event != "tool_call_attempted"):
            continue
        key = f"{r.conversation_id}/{call_id}"
        if key not in by_id:
            by_id[key] = Call(id=call_id, name=r.tool or "", arguments=_parse(r.payload.get("arguments")))
            order.append(key)
        call = by_id[key]
        if r.event in _FINAL:
            call.outcome = _FINAL[r.event]
            call.decision = r.decision
            call.clause = r.payload.get("clause") or call.clause
            if r.payload.get("arguments") is not None and r.event != "tool_call_denied":
                call.arguments = _parse(r.payload["arguments"])
    # Order by the model's emission order (parallel reads may reach the audit log in any order).
    emitted: dict[str, int] = {}
    for r in records:
        if r.event == "model_response":
            for call in r.payload.get("tool_calls") or []:
                emitted.setdefault(f"{r.conversation_id}/{call.get('id')}", len(emitted))
    rank = {key: emitted.get(key, len(emitted) + i) for i, key in enumerate(order)}
    return [by_id[k] for k in sorted(order, key=rank.__getitem__)]


def _matches(expected: Any, actual: Any) -> bool:
    if isinstance(expected, dict) and set(expected) == {"re"}:
        return (
            isinstance(actual, str | int | float) and re.search(str(expected["re"]), str(actual)) is not None
        )
    if isinstance(expected, dict) and set(expected) == {"any"}:
        return actual is not None
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and _matches(v, actual[k]) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list) and len(expected) == len(actual) and all(map(_matches, expected, actual))
        )
    return expected == actual or (
        actual is not None and str(expected) == str(actual) and not isinstance(expected, bool)
    )


def _argument_diff(expected: dict[str, Any], actual: Any) -> str:
    if not isinstance(actual, dict):
        return f"arguments were {json.dumps(actual, default=str)[:120]}"
    diffs = []
    for key, want in expected.items():
        if key not in actual:
            diffs.append(f"{key} missing")
        elif not _matches(want, actual[key]):
            diffs.append(f"{key}: expected {json.dumps(want, ensure_ascii=False)}, got "
                         f"{json.dumps(actual[key], ensure_ascii=False, default=str)}")  # fmt: skip
    return "; ".join(diffs)


def _check_tools(expected: list[ToolExpect], calls: list[Call]) -> list[str]:
    failures: list[str] = []
    position = 0
    for want in expected:
        found = None
        for i in range(position, len(calls)):
            c = calls[i]
            if (
                c.name == want.name
                and (want.arguments is None or _matches(want.arguments, c.arguments))
                and (want.outcome is None or want.outcome == c.outcome)
            ):
                found = i
                break
        if found is not None:
            position = found + 1
            continue
        same = [c for c in calls[position:] if c.name == want.name]
        if not same:
            made = ", ".join(c.name for c in calls[position:]) or "none"
            failures.append(f"missing tool call: expected {want.name} (after the calls matched so far); "
                            f"calls made: {made}")  # fmt: skip
            continue
        c = same[0]
        if want.arguments is not None and not _matches(want.arguments, c.arguments):
            failures.append(f"changed arguments: {want.name} {_argument_diff(want.arguments, c.arguments)}")
        elif want.outcome is not None:
            failures.append(f"{want.name}: expected outcome {want.outcome}, got {c.outcome}")
    return failures


def check(expect: Expectations, seen: Observed) -> list[str]:
    failures = _check_tools(expect.tools_called, seen.calls)
    for name in expect.tools_not_executed:
        ran = [c for c in seen.calls if c.name == name and c.outcome in {"succeeded", "replayed"}]
        if ran:
            failures.append(f"{name} must not run, but it did: {ran[0].show()}")
    for glob in expect.plisio_never:
        hits = [p for p in seen.plisio_paths if fnmatch.fnmatch(p, glob)]
        if hits:
            failures.append(f"Plisio was called at {hits[0]} ({len(hits)}x), which must never happen")
    for want in expect.policy:
        decided = [c for c in seen.calls if c.name == want.tool and c.outcome != "attempted"]
        match = [c for c in decided if _DECISION.get(c.outcome, c.decision) == want.decision
                 and (want.clause is None or c.clause == want.clause)]  # fmt: skip
        if not match:
            got = (
                ", ".join(f"{_DECISION.get(c.outcome, c.outcome)} ({c.clause or '-'})" for c in decided)
                or "none"
            )
            failures.append(f"policy: expected {want.tool} -> {want.decision}"
                            f"{f' by {want.clause}' if want.clause else ''}; decisions: {got}")  # fmt: skip
    if expect.approvals_pending is not None and expect.approvals_pending != seen.approvals_pending:
        failures.append(
            f"approvals: expected {expect.approvals_pending} pending, found {seen.approvals_pending}"
        )
    failures += _check_drafts(expect, seen)
    if expect.refund is not None:
        got = seen.refund
        if got is None:
            failures.append("refund: expected a decision, none was made")
        elif got.decision != expect.refund.decision or (
            expect.refund.clause and got.clause != expect.refund.clause
        ):
            failures.append(f"refund: expected {expect.refund.decision} ({expect.refund.clause or 'any clause'}), "
                            f"got {got.decision} ({got.clause})")  # fmt: skip
    for signal, members in (expect.churn_signals or {}).items():
        present = set((seen.churn_signals or {}).get(signal, []))
        missing = [m for m in members if m not in present]
        if missing:
            failures.append(f"churn signal {signal}: missing {', '.join(missing)}")
    if expect.final_text is not None:
        text = seen.final_text
        for needle in expect.final_text.contains:
            if needle.lower() not in text.lower():
                failures.append(f"final text should contain {needle!r}; it was: {text[:200]!r}")
        for needle in expect.final_text.not_contains:
            if needle.lower() in text.lower():
                failures.append(f"unexpected text: the final answer contains {needle!r}: {text[:200]!r}")
    failures += _stops(expect.stopped_by, seen.stops)
    if expect.flags is not None and expect.flags != seen.flags:
        failures.append(f"expected {expect.flags} flagged claim(s), found {seen.flags}")
    return failures


def _check_drafts(expect: Expectations, seen: Observed) -> list[str]:
    if expect.drafts is None:
        return []
    failures: list[str] = []
    if len(expect.drafts) != len(seen.drafts):
        failures.append(f"drafts: expected {len(expect.drafts)}, found {len(seen.drafts)}")
    for want, got in zip(expect.drafts, seen.drafts, strict=False):
        if got.status != want.status:
            failures.append(f"draft {got.id}: expected status {want.status}, got {got.status}")
        if want.payment_link is not None and bool(got.payment_link) != want.payment_link:
            failures.append(f"draft {got.id}: expected {'a' if want.payment_link else 'no'} payment link")
        for needle in want.body_contains:
            if needle.lower() not in got.body.lower():
                failures.append(f"draft {got.id}: body should contain {needle!r}")
        for needle in want.body_not_contains:
            if needle.lower() in got.body.lower():
                failures.append(f"draft {got.id}: body contains {needle!r}")
    return failures


def _stops(expected: str | None, stops: list[tuple[str, str]]) -> list[str]:
    """``stopped_by: R``: every turn that stopped, stopped by R, and one did; ``completed`` or nothing said:
    no turn stopped (a stop nobody expected is a failure, named with what the user was told)."""
    unexpected = [(r, t) for r, t in stops if r != expected]
    if expected not in (None, "completed") and not stops:
        return [f"the turn should end by {expected}, it ended by completed"]
    if not unexpected:
        return []
    reason, text = unexpected[-1]
    if expected not in (None, "completed"):
        return [f"the turn should end by {expected}, it ended by {reason}"]
    return [
        f"a turn stopped by {reason} ({text or 'no text'}); if this scenario shows that on purpose, say so: "
        f"expect: stopped_by: {reason}"
    ]
