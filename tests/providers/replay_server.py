"""A replay server: real captured responses of real model servers, served verbatim to the real ``openai``
client, and the follow-up request checked the way that provider checks it.

A capture (``captures/<provider>/<case>.json``, see ``captures/SOURCES.md``) holds one response exactly as
the provider sent it: a JSON body, an SSE stream (comments, empty deltas and chunk boundaries kept), or an
error body of any shape. The server answers the first request with it; a follow-up (after the tools ran)
is checked against what the provider ``requires_back`` (DeepSeek's ``reasoning_content`` on the assistant
message, Gemini 3's ``thought_signature`` on each tool call): answered with the provider's own error body
when it is missing, with a plain final answer when it is there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

CAPTURES = Path(__file__).parent / "captures"


@dataclass(frozen=True)
class Capture:
    path: Path
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.data['provider']}/{self.data['case']}"

    @property
    def response(self) -> dict[str, Any]:
        return dict(self.data["response"])

    @property
    def streamed(self) -> bool:
        return self.response.get("content_type", "").startswith("text/event-stream")

    @property
    def is_error(self) -> bool:
        return int(self.response.get("status", 200)) >= 400 or "error" in self.data.get("expect", {})

    @property
    def profile(self) -> str:
        """The client profile this provider's server is (persona/llm/profiles.py)."""
        provider = str(self.data["provider"])
        return {"gemini-2.5": "gemini", "gemini-3": "gemini", "generic-strict": "generic"}.get(
            provider, provider
        )

    @property
    def expect(self) -> dict[str, Any]:
        return dict(self.data.get("expect", {}))


def _load(name: str) -> Capture:
    path = CAPTURES / f"{name}.json"
    return Capture(path, json.loads(path.read_text(encoding="utf-8")))


def captures() -> Iterator[Capture]:
    for path in sorted(CAPTURES.glob("*/*.json")):
        yield Capture(path, json.loads(path.read_text(encoding="utf-8")))


def _assistants(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body.get("messages") or [] if m.get("role") == "assistant" and m.get("tool_calls")]


def _has_reasoning(body: dict[str, Any], key: str) -> bool:
    return all(isinstance(m.get(key), str | list) and m.get(key) for m in _assistants(body))


def sent_as_received(capture: Capture, body: dict[str, Any], key: str) -> bool:
    """The follow-up's assistant message carries ``key`` exactly as the capture held it (streamed text
    joined here, independently of the client's own assembly)."""
    response = capture.response
    if "sse" in response:
        pieces = []
        for line in response["sse"].splitlines():
            if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
                for choice in json.loads(line[5:]).get("choices") or []:
                    piece = (choice.get("delta") or {}).get(key)
                    if isinstance(piece, str):
                        pieces.append(piece)
        expected: Any = "".join(pieces) or None
    else:
        expected = response["body"]["choices"][0]["message"].get(key)
    return expected is not None and all(m.get(key) == expected for m in _assistants(body))


def _has_signatures(body: dict[str, Any]) -> bool:
    calls = [c for m in _assistants(body) for c in m["tool_calls"]]
    return all(
        isinstance(c.get("extra_content"), dict)
        and isinstance(c["extra_content"].get("google"), dict)
        and c["extra_content"]["google"].get("thought_signature")
        for c in calls[:1]  # Gemini 3 signs the first call of a step; later ones may carry none
    )


def _own_ids(body: dict[str, Any]) -> bool:
    """Mistral: every id in the conversation is one of its own 9-character ids."""
    ids = [c.get("id") for m in _assistants(body) for c in m["tool_calls"]]
    ids += [m.get("tool_call_id") for m in body.get("messages") or [] if m.get("role") == "tool"]
    return all(isinstance(i, str) and len(i) == 9 and i.isalnum() for i in ids)


CHECKS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "reasoning_content": lambda body: _has_reasoning(body, "reasoning_content"),
    "reasoning_details": lambda body: _has_reasoning(body, "reasoning_details"),
    "thought_signature": _has_signatures,
    "own_call_ids": _own_ids,
}


def _schemas(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every schema node of every tool's parameters."""
    stack = [t.get("function", {}).get("parameters") for t in body.get("tools") or []]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack += [v for k, v in node.items() if k in ("items", "anyOf", "additionalProperties")]
            stack += list((node.get("properties") or {}).values())
        elif isinstance(node, list):
            stack += node


_SHORTHAND = re.compile(r"\\[wWdDsS]")
"""Regex escapes llama.cpp's grammar compiler copies into the grammar, whose parser then refuses them."""


REQUEST_CHECKS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "parallel_tool_calls": lambda body: "parallel_tool_calls" in body,
    "stream_options": lambda body: "stream_options" in body,
    "type_arrays": lambda body: any(isinstance(s.get("type"), list) for s in _schemas(body)),
    "grammar_escapes": lambda body: any(
        _SHORTHAND.search(s["pattern"]) or not (s["pattern"].startswith("^") and s["pattern"].endswith("$"))
        for s in _schemas(body) if isinstance(s.get("pattern"), str)
    ),
}  # fmt: skip
"""What a capture's ``refuses`` may name: a request this provider answers with its own error."""
MESSAGE_SCHEMA = {"role", "content", "tool_calls", "tool_call_id", "name", "refusal"}
CALL_SCHEMA = {"id", "type", "function"}


def unknown_field(body: dict[str, Any]) -> str | None:
    """The first property a strict server (Groq, Mistral, OpenAI) refuses on a message or a tool call."""
    for message in body.get("messages") or []:
        extra = set(message) - MESSAGE_SCHEMA
        extra |= {k for c in message.get("tool_calls") or [] for k in set(c) - CALL_SCHEMA}
        if extra:
            return sorted(extra)[0]
    return None


"""What a follow-up request must carry, by the name a capture's ``expect.round_trip`` gives."""


@dataclass
class ReplayServer:
    capture: Capture
    requests: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    """Round-trip checks the follow-up failed (the provider would have answered its error)."""

    @property
    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        for refusal in self.capture.data.get("refuses") or []:
            if REQUEST_CHECKS[refusal["check"]](body):
                self.refused.append(refusal["check"])
                return self._verbatim(_load(refusal["refusal_from"]).response)
        if len(self.requests) == 1:
            return self._verbatim(self.capture.response)
        expect = self.capture.expect
        field = unknown_field(body) if expect.get("strict_fields") else None
        if field is not None:  # Groq's wording for it
            self.refused.append(f"unknown field {field}")
            message = f"'messages' : property '{field}' is unsupported"
            return JSONResponse(
                {"error": {"message": message, "type": "invalid_request_error"}}, status_code=400
            )
        for need in expect.get("round_trip", []):
            exact = need != "reasoning_content" or sent_as_received(self.capture, body, need)
            if not CHECKS[need](body) or not exact:
                self.refused.append(need)
                return self._verbatim(self._refusal())
        return self._final(body)

    def _refusal(self) -> dict[str, Any]:
        """The provider's own answer to a follow-up that lacks what it needs back (a sibling capture)."""
        source = self.capture.expect.get("refusal_from")
        if source:
            return _load(source).response
        return {
            "status": 400,
            "body": {"error": {"message": "a field of the earlier reply was not passed back"}},
        }

    @staticmethod
    def _verbatim(response: dict[str, Any]) -> Response:
        status = int(response.get("status", 200))
        kind = response.get("content_type", "application/json")
        if "sse" in response:
            return Response(response["sse"], status_code=status, media_type=kind)
        if "text" in response:
            return Response(response["text"], status_code=status, media_type=kind)
        return Response(json.dumps(response["body"]), status_code=status, media_type=kind)

    def _final(self, body: dict[str, Any]) -> Response:
        """A plain closing answer in the shape the client asked for (the capture's job is the first step)."""
        text = "Your BTC balance is shown above."
        if body.get("stream"):
            chunks = [
                {"id": "final", "object": "chat.completion.chunk", "model": body["model"],
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]},
                {"id": "final", "object": "chat.completion.chunk", "model": body["model"],
                 "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            ]  # fmt: skip
            sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return Response(sse, media_type="text/event-stream")
        return JSONResponse(
            {"id": "final", "object": "chat.completion", "model": body["model"],
             "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18}}
        )  # fmt: skip
