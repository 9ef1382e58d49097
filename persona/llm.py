"""The one door to a language model: a small protocol, an OpenAI-compatible client, a scripted stand-in.

Everything provider-specific stops here: the rest of the package sees :class:`ModelReply` and
:class:`~persona.errors.ModelError`, never ``openai`` types or exceptions. Tool calls are handed on
exactly as received (a missing id, non-JSON or object arguments, unknown names): judging them is the
dispatcher's job, and it can only answer and audit what it is shown.
"""

from __future__ import annotations

import contextvars
import copy
import ipaddress
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx2
import openai
import structlog

from persona.errors import ModelError, NotConfigured, ScriptExhausted, ScriptUnfinished
from tools.redaction import register_secret, scrub

log = structlog.get_logger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_PLACEHOLDER_KEY = "not-needed"
# Per-call attempt counter, bumped by a request hook on the client we create; a ContextVar keeps
# concurrent calls on one model apart (httpx runs hooks in the calling task).
_ATTEMPTS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("llm_attempts", default=None)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
        )


@dataclass(frozen=True)
class ToolCall:
    id: str | None  # None when the endpoint sent no id
    name: str  # "" when missing
    arguments: Any  # RAW: normally a str; a dict from a lax endpoint; None if absent


@dataclass(frozen=True)
class ModelReply:
    text: str | None
    tool_calls: tuple[ToolCall, ...]
    usage: Usage
    model: str
    finish_reason: str | None
    latency_ms: float
    attempts: int


class ChatModel(Protocol):
    @property
    def name(self) -> str: ...

    async def complete(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        *,
        parallel_tool_calls: bool = True,
        on_text: Callable[[str], None] | None = None,
    ) -> ModelReply: ...


def _get(obj: Any, key: str) -> Any:
    """Read a field from a model object or a plain dict: openai builds responses without validation."""
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


def _is_local(host: str) -> bool:
    """Loopback, private-network and ``.local`` hosts: where keyless servers (Ollama, vLLM) live."""
    if host in ("localhost", "host.docker.internal") or host.endswith((".localhost", ".local")):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local


class _ChunkStream(openai.AsyncStream[Any]):
    """openai's stream class, decoding a chat completion's SSE lines straight into dicts.

    The stock decoder is general (any event type, byte-level parsing, a model per chunk) and is most of
    a streamed conversation's client CPU; a chat completion stream is ``data: {json}`` lines and
    ``data: [DONE]``. (Compatible servers send one ``data:`` line per event, as OpenAI does.)
    """

    async def __stream__(self) -> AsyncIterator[Any]:
        response = self.response
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data.startswith("[DONE]"):
                    break
                chunk = json.loads(data)
                if isinstance(chunk, dict) and chunk.get("error"):
                    error = chunk["error"]
                    message = error.get("message") if isinstance(error, dict) else None
                    raise openai.APIError(
                        message=message if isinstance(message, str) else "an error occurred during streaming",
                        request=response.request,
                        body=error,
                    )
                yield chunk
        except httpx2.TimeoutException as exc:
            raise openai.APITimeoutError(request=response.request) from exc
        except httpx2.TransportError as exc:
            raise openai.APIConnectionError(request=response.request) from exc
        finally:
            await response.aclose()


class OpenAIChatModel:
    """:class:`ChatModel` over any OpenAI-compatible Chat Completions endpoint (``openai.AsyncOpenAI``)."""

    def __init__(
        self,
        *,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        temperature: float | None = None,
        max_tokens: int | None = None,
        stream: bool = False,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        url = urlsplit(base_url or DEFAULT_BASE_URL)
        self._host = url.hostname or "?"
        host = f"[{self._host}]" if ":" in self._host else self._host
        netloc = host + (f":{url.port}" if url.port else "")  # no userinfo in anything we print
        self._base_url = scrub(url._replace(netloc=netloc).geturl())
        if not api_key:
            if not _is_local(self._host):
                raise NotConfigured(
                    f"no API key for the LLM endpoint {self._host} (model {model}); fix: set OPENAI_API_KEY "
                    "(or the variable llm.api_key_env names), or point llm.base_url at a local server"
                )
            api_key = LOCAL_PLACEHOLDER_KEY  # the openai client refuses to run without one
        else:
            register_secret(api_key)
        self._key = api_key
        self._model, self._timeout, self._max_retries = model, timeout, max_retries
        self._temperature, self._max_tokens, self._stream = temperature, max_tokens, stream
        self._owns_http = http_client is None  # only then can attempts be counted (and the client closed)
        if http_client is None:
            http_client = openai.DefaultAsyncHttpxClient(event_hooks={"request": [_count_attempt]})
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url or DEFAULT_BASE_URL,
            timeout=timeout,
            max_retries=max_retries,
            http_client=http_client,
        )

    @property
    def name(self) -> str:
        return self._model

    def __repr__(self) -> str:
        return f"OpenAIChatModel(base_url={self._base_url!r}, model={self._model!r})"

    async def aclose(self) -> None:
        """Close the HTTP client if we created it (a caller's client stays the caller's)."""
        if self._owns_http:
            await self._client.close()

    async def complete(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        *,
        parallel_tool_calls: bool = True,
        on_text: Callable[[str], None] | None = None,
    ) -> ModelReply:
        """One Chat Completions call; ``on_text`` gets each streamed delta (or the whole text once)."""
        request: dict[str, Any] = {"model": self._model, "messages": list(messages)}
        if tools:  # some servers reject parallel_tool_calls (or an empty tools list) without tools
            request.update(tools=list(tools), parallel_tool_calls=parallel_tool_calls)
        if self._temperature is not None:
            request["temperature"] = self._temperature
        if self._max_tokens is not None:
            request["max_tokens"] = self._max_tokens
        counter = [0]
        token = _ATTEMPTS.set(counter)
        started = time.perf_counter()
        try:
            run = self._streamed if self._stream else self._single
            text, calls, usage, model, finish = await run(request, on_text)
        except openai.OpenAIError as err:
            attempts = counter[0] if self._owns_http else None
            message, status = self._explain(err, attempts)
            log.warning(
                "llm_call_failed", host=self._host, model=self._model, status=status, attempts=attempts
            )
            raise ModelError(message) from None
        finally:
            _ATTEMPTS.reset(token)
        latency = round((time.perf_counter() - started) * 1000, 3)
        reply = ModelReply(text, calls, usage, model or self._model, finish, latency, max(counter[0], 1))
        log.debug(
            "llm_call_completed",
            host=self._host,
            model=reply.model,
            attempts=reply.attempts,
            tool_calls=len(calls),
            total_tokens=usage.total_tokens,
            latency_ms=latency,
        )
        return reply

    # Requests go through the client's generic ``post`` with a plain dict body and ``cast_to=object``:
    # the client still does the URL, auth, timeouts, retries (Retry-After included) and error mapping,
    # but skips re-walking every request's whole message history and tool schemas against its type
    # annotations and building pydantic models of every reply. On a tool-calling conversation that
    # walk is most of the client's CPU, and it grows with the conversation (see bench/).

    async def _single(self, request: dict[str, Any], on_text: Callable[[str], None] | None) -> _Parts:
        completion = await self._client.post("/chat/completions", body=request, cast_to=object)
        choices = _get(completion, "choices") or []
        if not choices:
            raise openai.OpenAIError("the endpoint returned no choices")
        message, finish = _get(choices[0], "message"), _get(choices[0], "finish_reason")
        text = _get(message, "content")
        if on_text is not None and text:
            on_text(text)
        calls = tuple(_tool_call(tc) for tc in (_get(message, "tool_calls") or []))
        return text, calls, _usage(_get(completion, "usage")), _get(completion, "model"), finish

    async def _streamed(self, request: dict[str, Any], on_text: Callable[[str], None] | None) -> _Parts:
        body = {**request, "stream": True, "stream_options": {"include_usage": True}}
        stream = await self._client.post(
            "/chat/completions", body=body, cast_to=object, stream=True, stream_cls=_ChunkStream
        )
        parts: list[str] = []
        slots: dict[int, dict[str, Any]] = {}
        usage, model, finish = Usage(), None, None
        async with stream:
            async for chunk in stream:
                model = _get(chunk, "model") or model
                if _get(chunk, "usage") is not None:
                    usage = _usage(_get(chunk, "usage"))
                for choice in _get(chunk, "choices") or []:
                    if (_get(choice, "index") or 0) != 0:
                        continue
                    finish = _get(choice, "finish_reason") or finish
                    delta = _get(choice, "delta")
                    piece = _get(delta, "content")
                    if piece:
                        parts.append(piece)
                        if on_text is not None:
                            on_text(piece)
                    for fragment in _get(delta, "tool_calls") or []:
                        _merge_delta(slots, fragment)
        calls = tuple(ToolCall(s["id"], s["name"], s["arguments"]) for _, s in sorted(slots.items()))
        return ("".join(parts) if parts else None), calls, usage, model, finish

    def _explain(self, err: openai.OpenAIError, attempts: int | None) -> tuple[str, int | None]:
        """A secret-free message saying what failed, where, after how many attempts, and the fix."""
        where = f"LLM endpoint {self._host} (model {self._model})"
        n = attempts or self._max_retries + 1
        tries = f"after {'' if attempts else 'up to '}{n} attempt{'s' if n != 1 else ''}"
        status: int | None = None
        if isinstance(err, openai.APITimeoutError):
            text = (
                f"{where} timed out ({self._timeout:g}s per attempt) {tries}; "
                "fix: check that the server is up and not overloaded, or raise llm.timeout"
            )
        elif isinstance(err, openai.APIConnectionError):
            cause = type(err.__cause__).__name__ if err.__cause__ else "connection error"
            text = (
                f"{where} is unreachable ({cause}) {tries}; "
                f"fix: check llm.base_url ({self._base_url}) and that the server is running"
            )
        elif isinstance(err, openai.APIStatusError):
            status = err.status_code
            what, fix = _STATUS_HELP.get(status, ("failed", _SERVER_FIX))
            detail = _server_message(err) if status != 401 else ""
            text = f"{where} {what} (HTTP {status}){detail} {tries}; fix: {fix}"
        elif isinstance(err, openai.APIError):
            text = f"{where} failed mid-response {tries}: {err.message[:300]}"
        else:
            text = f"{where} could not be used: {type(err).__name__}: {str(err)[:300]}"
        return scrub(text, (self._key,)), status


_KEY_FIX = "check the key in OPENAI_API_KEY (or the variable llm.api_key_env names)"
_SERVER_FIX = "check the server's health and logs, then retry (retries are bounded by llm.max_retries)"
_REQUEST_FIX = "check that llm.model supports tool calling and the parameters sent (temperature, max_tokens)"
_STATUS_HELP = {
    401: ("rejected the API key", _KEY_FIX),
    403: ("refused access: the key may not be allowed to use this model", _KEY_FIX + " and its permissions"),
    404: (
        "has no such model or /chat/completions route",
        "check llm.model (the server's /v1/models lists them) and that llm.base_url ends with /v1",
    ),
    400: ("rejected the request", _REQUEST_FIX),
    422: ("rejected the request", _REQUEST_FIX),
    429: ("is rate limiting", "wait, lower the request rate, or check the key's quota"),
}
_Parts = tuple[str | None, tuple[ToolCall, ...], Usage, str | None, str | None]


async def _count_attempt(request: httpx2.Request) -> None:
    box = _ATTEMPTS.get()
    if box is not None:
        box[0] += 1


def _server_message(err: openai.APIStatusError) -> str:
    body = err.body
    message = _get(body, "message") if isinstance(body, Mapping) else None
    return f": {scrub(str(message))[:300]}" if message else ""


def _usage(raw: Any) -> Usage:
    if raw is None:
        return Usage()
    p, c, t = (_get(raw, k) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    p, c = (p if isinstance(p, int) else 0), (c if isinstance(c, int) else 0)
    return Usage(p, c, t if isinstance(t, int) else p + c)


def _tool_call(raw: Any) -> ToolCall:
    function = _get(raw, "function") or _get(raw, "custom")  # "custom" tools carry "input"
    ident, name, arguments = _get(raw, "id"), _get(function, "name"), _get(function, "arguments")
    if arguments is None:
        arguments = _get(function, "input")
    ident = ident if isinstance(ident, str) and ident else None
    return ToolCall(ident, name if isinstance(name, str) else "", arguments)


def _merge_delta(slots: dict[int, dict[str, Any]], delta: Any) -> None:
    """Fold one streamed tool-call fragment into its slot (by ``index``): id, name, arguments concatenated."""
    index = _get(delta, "index")
    ident = _get(delta, "id")
    if not isinstance(index, int):  # a server that omits index: a new id opens a new call
        known = {s["id"] for s in slots.values()}
        index = len(slots) if (ident and ident not in known) or not slots else max(slots)
    slot = slots.setdefault(index, {"id": None, "name": "", "arguments": None})
    if isinstance(ident, str) and ident and slot["id"] is None:
        slot["id"] = ident
    function = _get(delta, "function")
    name = _get(function, "name")
    if isinstance(name, str) and name and name != slot["name"]:  # some servers repeat the full name
        slot["name"] += name
    arguments = _get(function, "arguments")
    if isinstance(arguments, str):
        slot["arguments"] = (slot["arguments"] if isinstance(slot["arguments"], str) else "") + arguments
    elif arguments is not None:
        slot["arguments"] = arguments  # an object from a lax endpoint: kept raw


_KEYS = "name|function|function_name|tool|tool_name|recipient_name"
_NAMED = re.compile(  # JSON keys ("name": "x") or keyword arguments (name='x'), never prose
    rf"""(?:["'](?:{_KEYS})["']\s*:|\b(?:{_KEYS})\s*=)\s*["'](?:functions\.)?([A-Za-z_][\w.-]*)["']"""
)
_TAG = re.compile(r"<function=(?:functions\.)?([A-Za-z_][\w.-]*)>")
_CALL_LINE = re.compile(r"^[ \t>`\[]*(?:functions\.)?([A-Za-z_]\w*)\((.*)\)[`\];.\s]*$", re.MULTILINE)
_CALL_OBJECT = re.compile(r"\b(?:functions\.)?([A-Za-z_]\w*)\s*\(\s*\{")
_CALL_LIST = re.compile(r"[\[,]\s*(?:functions\.)?([A-Za-z_]\w*)\(")


def embedded_tool_calls(text: str | None, tool_names: Collection[str]) -> list[str]:
    """Names of offered tools the model apparently tried to call inside its text, in order of appearance.

    Catches JSON-ish calls (``<tool_call>{"name": ...}``, bare or fenced objects with ``"name"`` /
    ``"function"``), ``<function=name>`` tags, a line that is just ``name(...)`` and ``name({...})``;
    a name merely mentioned in prose does not count. Only names in ``tool_names`` are reported.
    """
    if not text:
        return []
    names = set(tool_names)
    found: list[tuple[int, str]] = []
    for pattern in (_NAMED, _TAG, _CALL_LINE, _CALL_OBJECT, _CALL_LIST):
        found.extend((m.start(), m.group(1)) for m in pattern.finditer(text) if m.group(1) in names)
    return list(dict.fromkeys(name for _, name in sorted(found)))


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
