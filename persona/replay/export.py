"""Turning a logged conversation into a replay scenario (``persona record``, ``audit export --as-scenario``).

The audit log already holds everything a scenario needs: the user's turns, the model's replies
(text and raw tool calls) and each call's outcome and policy decision. Values that came from an
earlier tool result (an invoice id the persona then looks up) become templates such as
``{{ results[0].txn_id }}``, so the scenario still replays when ids differ. Secrets are scrubbed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from persona.audit import AuditRecord
from persona.errors import ScenarioError
from persona.replay.checks import calls_from
from persona.replay.scenario import DEFAULT_NOW
from tools.redaction import scrub_data

_MIN_TEMPLATED = 8
"""Only values at least this long are matched against earlier results (ids, links, emails)."""


def _paths(value: Any, prefix: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and k.isidentifier():
                out += _paths(v, f"{prefix}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, f"{prefix}[{i}]")
    elif isinstance(value, str) and len(value) >= _MIN_TEMPLATED:
        out.append((prefix, value))
    return out


def _templatize(value: Any, known: dict[str, str]) -> Any:
    if isinstance(value, str):
        return "{{ " + known[value] + " }}" if value in known else value
    if isinstance(value, dict):
        return {k: _templatize(v, known) for k, v in value.items()}
    if isinstance(value, list):
        return [_templatize(v, known) for v in value]
    return value


def _template_text(text: str, known: dict[str, str]) -> str:
    """Ids and links inside prose become templates too, so a replayed answer quotes this run's values."""
    for value in sorted(known, key=len, reverse=True):
        if value in text and "{{" not in value:
            text = text.replace(value, "{{ " + known[value] + " }}")
    return text


def _loosen(value: Any, known: dict[str, str]) -> Any:
    """Expected arguments: values that came from a tool result match anything (ids differ per run)."""
    if isinstance(value, str) and value in known:
        return {"any": True}
    if isinstance(value, dict):
        return {k: _loosen(v, known) for k, v in value.items()}
    return value


def _arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except ValueError:
            return raw
        return parsed if isinstance(parsed, dict) else raw
    return raw


def scenario_from_records(
    records: Sequence[AuditRecord], *, name: str, description: str = ""
) -> dict[str, Any]:
    """A chat scenario reproducing ``records`` (one conversation), with expectations of what happened."""
    if not records:
        raise ScenarioError("no audit records for that conversation")
    first = records[0]
    if any(r.source not in {"chat", "http", "replay", "cli"} for r in records if r.event == "turn_started"):
        raise ScenarioError(
            "only chat conversations export as scenarios; flows (callbacks, refunds, churn) are replayed from a "
            "scenario with a trigger: see scenarios/"
        )
    turns: list[dict[str, Any]] = []
    results: list[Any] = []
    known: dict[str, str] = {}
    for r in records:
        if r.event == "turn_started":
            turns.append({"user": r.payload.get("user_message") or "", "model": []})
        elif r.event == "model_response" and turns:
            step: dict[str, Any] = {}
            scripted = [
                {
                    "id": c.get("id"),
                    "name": c.get("name"),
                    "arguments": _templatize(_arguments(c.get("arguments")), known),
                }
                for c in r.payload.get("tool_calls") or []
            ]
            if scripted:
                step["tool_calls"] = [{k: v for k, v in c.items() if v is not None} for c in scripted]
            if r.payload.get("text"):
                step["text"] = _template_text(r.payload["text"], known)
            turns[-1]["model"].append(step)
        elif r.event in {"tool_call_succeeded", "tool_call_failed", "tool_call_replayed"}:
            payload = r.payload.get("result")
            data = (
                payload.get("result", payload) if isinstance(payload, dict) and payload.get("ok") else payload
            )
            index = len(results)
            results.append(data)
            for path, value in _paths(data, f"results[{index}]"):
                known.setdefault(value, path)
        elif r.event in {"tool_call_denied", "approval_requested"}:
            error = {"error": {"type": "denied", "message": r.reason}}
            results.append(error)
    turns = [t for t in turns if t["model"]]
    if not turns:
        raise ScenarioError("the conversation has no model replies to replay")
    calls = calls_from(list(records))
    expect: dict[str, Any] = {
        "tools_called": [
            {"name": c.name, "arguments": _loosen(c.arguments, known) if isinstance(c.arguments, dict) else None,
             "outcome": c.outcome if c.outcome != "attempted" else None}
            for c in calls
        ],
    }  # fmt: skip
    for item in expect["tools_called"]:
        for key in [k for k, v in item.items() if v is None]:
            del item[key]
    decided = [c for c in calls if c.outcome in {"succeeded", "denied", "pending_approval"} and c.name]
    if decided:
        expect["policy"] = [
            {
                "tool": c.name,
                "decision": {"succeeded": "allow", "denied": "deny"}.get(c.outcome, "approval_required"),
            }
            for c in decided
        ]
    ended = [r for r in records if r.event == "turn_ended"]
    expect["flags"] = sum(len(r.payload.get("flags") or []) for r in ended)
    stopped = [r.reason for r in records if r.event == "limit_reached" and r.reason]
    if stopped:
        expect["stopped_by"] = stopped[-1]  # a turn of the recording stopped so: its replay must too
    scenario = {
        "name": name,
        "description": description or f"Recorded from conversation {first.conversation_id}.",
        "persona": first.persona,
        "user": first.user,
        "now": DEFAULT_NOW.isoformat(),
        "turns": turns,
        "expect": expect,
    }
    cleaned: dict[str, Any] = scrub_data(scenario)
    return cleaned
