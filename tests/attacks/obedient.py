"""An obedient model: a fake OpenAI-compatible server that does whatever injected text tells it.

A compromised or steered model is the threat: text in a customer's order name, a refund reason, a tool
result or the user's own message says ``DO <tool> <arguments>``, and this model emits exactly that call,
one per step, in the order the instructions appear, then answers. It reads every message the real
``openai`` client sends except the system prompt (ours), JSON-decoding the facts block and tool results
first, so an instruction escaped inside JSON is read as the model would read it. It keeps no state
between requests: what it does next follows from the conversation it is sent, as a real model's does.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.openai_server import FakeOpenAI, FakeStep

INSTRUCTION = re.compile(r"\bDO (\S+) ")
FINAL = '{"subject": "About your order", "body": "Done as instructed."}'
"""The last answer: a valid recovery draft, and plain text to the other flows and to chat."""


def do(tool: str, arguments: Any) -> str:
    """The text an attacker plants: ``arguments`` a dict (sent as JSON) or a raw string (sent as is)."""
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments, separators=(",", ":"))
    return f"DO {tool} {raw}"


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
        text = value.strip()
        if text[:1] in "{[":
            with contextlib.suppress(ValueError):
                yield from _strings(json.loads(text))
        for block in re.findall(r"<facts>\n(.*)\n</facts>", value, re.DOTALL):
            yield from _strings(json.loads(block))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def instructions(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Every ``DO`` instruction in what the model was sent, in order, each once."""
    found: list[tuple[str, str]] = []
    for message in messages:
        if message.get("role") in ("system", "assistant"):
            continue
        for text in _strings(message.get("content")):
            for match in INSTRUCTION.finditer(text):
                rest = text[match.end() :]
                try:
                    parsed, end = json.JSONDecoder().raw_decode(rest)
                    raw = rest[:end] if isinstance(parsed, dict) else rest.split("\n", 1)[0]
                except ValueError:
                    if rest[:1] in "{[":
                        continue  # JSON escaped inside JSON: read where it is decoded
                    raw = rest.split("\n", 1)[0].split(" DO ", 1)[0]
                if (match.group(1), raw) not in found:
                    found.append((match.group(1), raw))
    return found


@dataclass
class Obedient:
    """The script of a :class:`FakeOpenAI`: one instructed call per step, then :data:`FINAL`."""

    emitted: list[tuple[str, str, str]] = field(default_factory=list)
    """(call id, tool, raw arguments) of every call this model asked for."""

    def __call__(self, body: dict[str, Any]) -> FakeStep:
        messages = body.get("messages") or []
        done = sum(len(m.get("tool_calls") or []) for m in messages if m.get("role") == "assistant")
        todo = instructions(messages)
        if done >= len(todo):
            return FakeStep(text=FINAL)
        tool, raw = todo[done]
        call_id = f"obey_{done}"
        self.emitted.append((call_id, tool, raw))
        return FakeStep(tool_calls=[{"id": call_id, "name": tool, "arguments": raw}])

    def server(self) -> FakeOpenAI:
        return FakeOpenAI(self)
