"""Scripted models for replay: a scenario's steps, filled in from the conversation as it happens.

Scripted arguments may refer to what the run has produced so far with Jinja2 templates:
``{{ facts.txn_id }}`` (the flow's facts projection), ``{{ results[0].txn_id }}`` (the first
tool result of the conversation), ``{{ trigger.txn_id }}``. A template that does not resolve
ends the turn with a model error naming the step, like any other script mistake.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2

from persona.errors import ModelError, ScriptUnfinished
from persona.llm import ChatModel, ScriptedChatModel, ScriptStep, ToolCall
from persona.replay.scenario import ModelStep, Scenario, Turn

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701 - not HTML


def tool_results(messages: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Each tool message's payload, in order: the result object when ok, else the whole payload."""
    out: list[Any] = []
    for m in messages:
        if m.get("role") != "tool":
            continue
        try:
            payload = json.loads(str(m.get("content")))
        except ValueError:
            payload = m.get("content")
        out.append(
            payload.get("result", payload) if isinstance(payload, dict) and payload.get("ok") else payload
        )
    return out


def _fill(value: Any, context: Mapping[str, Any]) -> Any:
    if isinstance(value, str) and "{{" in value:
        return _ENV.from_string(value).render(**context)
    if isinstance(value, dict):
        return {k: _fill(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, context) for v in value]
    return value


def to_step(step: ModelStep, index: int) -> ScriptStep:
    calls = []
    for n, call in enumerate(step.tool_calls, 1):
        args = call.arguments
        raw = args if isinstance(args, str) or args is None else json.dumps(args, ensure_ascii=False)
        calls.append(ToolCall(id=call.id or f"replay_{index}_{n}", name=call.name, arguments=raw))
    return ScriptStep(text=step.text, tool_calls=tuple(calls))


def scripted_turn(turn: Turn, *, name: str, base: Mapping[str, Any], label: str) -> ScriptedChatModel:
    """The scripted model for one turn; ``base`` holds ``facts``/``trigger`` for templates."""
    steps = [to_step(s, i) for i, s in enumerate(turn.model, 1)]
    position = {"n": 0}

    def render(step: ScriptStep, messages: Sequence[Mapping[str, Any]]) -> ScriptStep:
        position["n"] += 1
        context = {**base, "results": tool_results(messages)}
        try:
            calls = tuple(
                ToolCall(c.id, c.name, json.dumps(_fill(json.loads(c.arguments), context), ensure_ascii=False)
                         if isinstance(c.arguments, str) and "{{" in c.arguments and _is_json(c.arguments)
                         else _fill(c.arguments, context))
                for c in step.tool_calls
            )  # fmt: skip
            text = _fill(step.text, context)
        except jinja2.TemplateError as exc:
            raise ModelError(f"{label}, step {position['n']}: template error: {exc}") from None
        return ScriptStep(text=text, tool_calls=calls, usage=step.usage, error=step.error)

    return ScriptedChatModel(steps, name=name, render=render)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


class Scripts:
    """Hands out the scripted model for each turn and remembers them to check they were used up."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.models: list[tuple[str, ScriptedChatModel]] = []
        self.trigger: dict[str, Any] = {}

    def for_turn(self, index: int, facts: Mapping[str, Any] | None = None) -> ScriptedChatModel:
        label = f"turn {index + 1}"
        model = scripted_turn(
            self.scenario.turns[index], name=f"replay:{self.scenario.name}", label=label,
            base={"facts": dict(facts or {}), "trigger": self.trigger},
        )  # fmt: skip
        self.models.append((label, model))
        return model

    def factory(self, flow: str, persona: str, facts: Mapping[str, Any]) -> ChatModel:
        return self.for_turn(len(self.models), facts)

    def leftovers(self) -> list[str]:
        failures = []
        for label, model in self.models:
            try:
                model.assert_finished()
            except ScriptUnfinished as exc:
                failures.append(f"{label}: extra model step: {exc}")
        if not self.models and self.scenario.turns:
            failures.append("the scripted model was never called: the flow did not run the persona")
        return failures
