"""A scripted, OpenAI-compatible Chat Completions server (ASGI) for tests and benchmarks.

It exists so the REAL ``openai`` client is exercised end to end (HTTP, SSE parsing, retries,
error mapping) on a loopback port, while every reply is decided by a script. Replies are
shaped like OpenAI's ``chat.completion`` / ``chat.completion.chunk`` objects, but the tool
calls are served exactly as scripted, so malformed ones (no id, non-JSON argument strings,
arguments as a JSON object, unknown tool names) reach the client as a lax endpoint would
send them.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_denied",
    404: "not_found_error",
    429: "rate_limit_exceeded",
}


@dataclass
class FakeStep:
    """One scripted reply.

    ``tool_calls`` entries are ``{"id": "call_1" | None, "name": ..., "arguments": str | dict}``;
    an ``id`` of None (or no ``id`` key) and no ``name`` key are served as missing keys.
    A ``status`` other than 200 answers with ``error_body`` (or an OpenAI-style default) and a
    ``Retry-After`` header when ``retry_after`` is set. ``delay`` (seconds) is waited before
    answering, to provoke client timeouts.
    """

    text: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    error_body: dict[str, Any] | None = None
    retry_after: float | None = None
    delay: float = 0.0
    usage: dict[str, Any] | None = None


class FakeOpenAI:
    """The fake server: ``app`` is the ASGI application, the rest is for assertions."""

    def __init__(
        self,
        script: Sequence[FakeStep] | Callable[[dict[str, Any]], FakeStep],
        *,
        model: str = "fake-model",
    ) -> None:
        self.model = model
        self._script = script
        self._served = 0
        self.requests: list[dict[str, Any]] = []
        self.tool_calls_served = 0
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    @property
    def remaining(self) -> int:
        """Steps of a list script not served yet (always 0 for a callable script)."""
        if callable(self._script):
            return 0
        return max(len(self._script) - self._served, 0)

    def _next_step(self, body: dict[str, Any]) -> FakeStep | None:
        if callable(self._script):
            return self._script(body)
        if self._served >= len(self._script):
            return None
        step = self._script[self._served]
        self._served += 1
        return step

    async def _models(self, request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "fake"}],
            }
        )

    async def _chat(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body is not JSON", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object", "invalid_request_error")
        self.requests.append(body)
        step = self._next_step(body)
        if step is None:
            total = len(self._script) if not callable(self._script) else 0
            return _error(
                500,
                f"fake OpenAI script exhausted: request {len(self.requests)} arrived but the script "
                f"has only {total} steps",
                "server_error",
                code="script_exhausted",
            )
        if step.delay:
            await anyio.sleep(step.delay)
        if step.status != 200:
            headers: dict[str, str] = {}
            if step.retry_after is not None:
                headers["retry-after"] = _seconds(step.retry_after)
                headers["retry-after-ms"] = str(round(step.retry_after * 1000))
            if step.error_body is not None:
                return JSONResponse(step.error_body, status_code=step.status, headers=headers)
            return _error(
                step.status,
                f"fake error {step.status}",
                _ERROR_TYPES.get(step.status, "server_error"),
                headers=headers,
            )
        self.tool_calls_served += len(step.tool_calls)
        usage = step.usage or _usage(body, step)
        ident = f"chatcmpl-fake{len(self.requests)}"
        if body.get("stream"):
            options = body.get("stream_options") or {}
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            return StreamingResponse(
                self._sse(ident, step, usage if include_usage else None), media_type="text/event-stream"
            )
        message: dict[str, Any] = {"role": "assistant", "content": step.text, "refusal": None}
        if step.tool_calls:
            message["tool_calls"] = [_full_call(tc) for tc in step.tool_calls]
        return JSONResponse(
            {
                "id": ident,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model,
                "system_fingerprint": "fp_fake",
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(step)}
                ],
                "usage": usage,
            }
        )

    async def _sse(self, ident: str, step: FakeStep, usage: dict[str, Any] | None) -> AsyncIterator[str]:
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            payload: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if usage is not None:
                payload["usage"] = None
            return f"data: {json.dumps(payload)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        for piece in re.findall(r"\s*\S+\s*", step.text or ""):
            yield chunk({"content": piece})
        for index, tc in enumerate(step.tool_calls):
            first: dict[str, Any] = {"index": index, "type": "function", "function": {"arguments": ""}}
            if tc.get("id") is not None:
                first["id"] = tc["id"]
            if "name" in tc:
                first["function"]["name"] = tc["name"]
            yield chunk({"tool_calls": [first]})
            arguments = tc.get("arguments", "")
            if isinstance(arguments, str):
                for start in range(0, len(arguments), 7):
                    piece = arguments[start : start + 7]
                    yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            else:  # a lax endpoint streaming an object: one delta carrying it whole
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]})
        yield chunk({}, _finish(step))
        if usage is not None:
            final = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model,
                "system_fingerprint": "fp_fake",
                "choices": [],
                "usage": usage,
            }
            yield f"data: {json.dumps(final)}\n\n"
        yield "data: [DONE]\n\n"


def _full_call(tc: dict[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {}
    if "name" in tc:
        function["name"] = tc["name"]
    if "arguments" in tc:
        function["arguments"] = tc["arguments"]
    call: dict[str, Any] = {"type": "function", "function": function}
    if tc.get("id") is not None:
        call["id"] = tc["id"]
    return call


def _finish(step: FakeStep) -> str:
    return "tool_calls" if step.tool_calls else "stop"


def _usage(body: dict[str, Any], step: FakeStep) -> dict[str, int]:
    """Deterministic token counts (about four characters a token) so usage is never zero."""
    prompt = len(json.dumps(body.get("messages", []))) // 4 + 1
    produced = len(step.text or "") + sum(len(json.dumps(tc)) for tc in step.tool_calls)
    completion = produced // 4 + 1
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _error(
    status: int, message: str, kind: str, *, code: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)
