"""A scripted stand-in for a model: fixed steps, for replay scenarios and loop tests."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from persona.errors import ScriptExhausted, ScriptUnfinished
from persona.llm.replies import ModelReply, ToolCall, Usage
from tools.redaction import scrub


@dataclass(frozen=True)
class ScriptStep:
    text: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage | None = None
    error: Exception | None = None  # raised by complete(), to simulate a provider failure


@dataclass(frozen=True)
class RecordedCall:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    parallel_tool_calls: bool


def _describe(step: ScriptStep) -> str:
    if step.error is not None:
        return f"error {step.error!r}"
    parts = [f"text {step.text[:80]!r}"] if step.text else []
    if step.tool_calls:
        parts.append("tool calls " + ", ".join(tc.name or "<no name>" for tc in step.tool_calls))
    return " and ".join(parts) or "an empty reply"


class ScriptedChatModel:
    """:class:`ChatModel` that plays a fixed list of steps: for replay scenarios and loop tests.

    Being called past the end, or ending with steps unused, is an error: a scenario that does
    not use exactly its script is not testing what it claims to.
    """

    def __init__(
        self,
        steps: Sequence[ScriptStep],
        *,
        name: str = "scripted",
        render: Callable[[ScriptStep, Sequence[Mapping[str, Any]]], ScriptStep] | None = None,
    ) -> None:
        self._steps = list(steps)
        self._next = 0
        self._name = name
        self._render = render
        """Fills a step in from the conversation so far (replay templates: ``{{ results[0].txn_id }}``)."""
        self.calls: list[RecordedCall] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def remaining(self) -> int:
        return len(self._steps) - self._next

    async def complete(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        *,
        parallel_tool_calls: bool = True,
        on_text: Callable[[str], None] | None = None,
    ) -> ModelReply:
        seen_now = copy.deepcopy([dict(m) for m in messages]), copy.deepcopy([dict(t) for t in tools])
        self.calls.append(RecordedCall(*seen_now, parallel_tool_calls))
        if self._next >= len(self._steps):
            last = dict(messages[-1]) if messages else {}
            seen = scrub(f"{last.get('role', '?')}: {str(last.get('content'))[:200]}") if last else "none"
            raise ScriptExhausted(
                f"scripted model was called for step {self._next + 1} but the script has only "
                f"{len(self._steps)} steps; last message: {seen}"
            )
        step = self._steps[self._next]
        self._next += 1
        if self._render is not None:
            step = self._render(step, messages)
        if step.error is not None:
            raise step.error
        if on_text is not None and step.text:
            on_text(step.text)
        finish = "tool_calls" if step.tool_calls else "stop"
        return ModelReply(
            step.text, tuple(step.tool_calls), step.usage or Usage(), self._name, finish, 0.0, 1
        )

    def assert_finished(self) -> None:
        """Raise :class:`ScriptUnfinished` naming the first unused step, if any."""
        if self.remaining:
            step = self._steps[self._next]
            raise ScriptUnfinished(
                f"scripted model {self._name!r} left {self.remaining} step(s) unused; the first unused is "
                f"step {self._next + 1} of {len(self._steps)}: {_describe(step)}"
            )
