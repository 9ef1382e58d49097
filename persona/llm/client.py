"""The OpenAI-compatible client: any Chat Completions endpoint through the real ``openai`` package."""

from __future__ import annotations

import contextvars
import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import httpx2
import openai
import structlog

from persona.errors import ModelError, NotConfigured
from persona.llm.decoding import MESSAGE_KEYS, ChunkStream, StreamedReply, extra_of, tool_call_of, usage_of
from persona.llm.failures import explain
from persona.llm.profiles import profile
from persona.llm.replies import ModelReply, ToolCall, Usage, get_field
from tools.redaction import register_secret, scrub

log = structlog.get_logger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_PLACEHOLDER_KEY = "not-needed"
# Per-call attempt counter, bumped by a request hook on the client we create; a ContextVar keeps
# concurrent calls on one model apart (httpx runs hooks in the calling task).
_ATTEMPTS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("llm_attempts", default=None)


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
        pool: SharedHttp | None = None,
        provider: str | None = None,
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
        self.profile = profile(provider, base_url)
        self._owns_http = http_client is None and pool is None  # only then is the client ours to close
        self._counts = http_client is None  # our hook is on it: attempts can be counted
        if pool is not None and http_client is None:
            http_client = pool.client()
        elif http_client is None:
            http_client = _counting_client()
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

    async def list_models(self) -> list[str]:
        """The model ids the endpoint lists (``GET /models``); a failure is a :class:`ModelError`."""
        try:
            listed = await self._client.get("/models", cast_to=object)
            data = get_field(listed, "data") or []
            return [str(get_field(m, "id")) for m in data if get_field(m, "id")]
        except _UNREADABLE as exc:
            err = exc if isinstance(exc, openai.OpenAIError) else _undecodable(exc)
            raise ModelError(self._explain(err, None)[0]) from None

    @property
    def base_url(self) -> str:
        """The endpoint as it may be shown (no userinfo, secrets scrubbed)."""
        return self._base_url

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
        request: dict[str, Any] = {"model": self._model, "messages": self.profile.outgoing(messages)}
        if tools:  # some servers reject parallel_tool_calls (or an empty tools list) without tools
            request["tools"] = self.profile.tools(tools)
            if self.profile.parallel_tool_calls:
                request["parallel_tool_calls"] = parallel_tool_calls
        if self._temperature is not None:
            request["temperature"] = self._temperature
        if self._max_tokens is not None:
            request[self.profile.max_tokens_key] = self._max_tokens
        counter = [0]
        token = _ATTEMPTS.set(counter)
        started = time.perf_counter()
        try:
            run = self._streamed if self._stream else self._single
            text, calls, usage, model, finish, extra = await run(request, on_text)
        except _UNREADABLE as exc:
            err = exc if isinstance(exc, openai.OpenAIError) else _undecodable(exc)
            attempts = counter[0] if self._counts else None
            message, status = self._explain(err, attempts)
            log.warning(
                "llm_call_failed", host=self._host, model=self._model, status=status, attempts=attempts
            )
            raise ModelError(message) from None
        finally:
            _ATTEMPTS.reset(token)
        latency = round((time.perf_counter() - started) * 1000, 3)
        reply = ModelReply(
            text, calls, usage, model or self._model, finish, latency, max(counter[0], 1), extra
        )
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
        choices = get_field(completion, "choices") or []
        if not choices:
            raise openai.APIError(
                message="the endpoint returned no choices", request=_NO_REQUEST, body=completion
            )
        message, finish = get_field(choices[0], "message"), get_field(choices[0], "finish_reason")
        text = _text_of(get_field(message, "content"))
        if on_text is not None and text:
            on_text(text)
        calls = self._kept(tool_call_of(tc) for tc in (get_field(message, "tool_calls") or []))
        usage, model = usage_of(get_field(completion, "usage")), get_field(completion, "model")
        return text, calls, usage, model, finish, self.profile.keep(extra_of(message, MESSAGE_KEYS))

    async def _streamed(self, request: dict[str, Any], on_text: Callable[[str], None] | None) -> _Parts:
        body = {**request, "stream": True}
        if self.profile.stream_usage:
            body["stream_options"] = {"include_usage": True}
        stream = await self._client.post(
            "/chat/completions", body=body, cast_to=object, stream=True, stream_cls=ChunkStream
        )
        reply = StreamedReply()
        usage, model, finish = Usage(), None, None
        async with stream:
            async for chunk in stream:
                model = get_field(chunk, "model") or model
                if get_field(chunk, "usage") is not None:
                    usage = usage_of(get_field(chunk, "usage"))
                for choice in get_field(chunk, "choices") or []:
                    if (get_field(choice, "index") or 0) != 0:
                        continue
                    finish = get_field(choice, "finish_reason") or finish
                    piece = reply.add_delta(get_field(choice, "delta"))
                    if piece and on_text is not None:
                        on_text(piece)
        return reply.text(), self._kept(reply.calls()), usage, model, finish, self.profile.keep(reply.extra)

    def _kept(self, calls: Iterable[ToolCall]) -> tuple[ToolCall, ...]:
        """The calls with only the fields of their own this provider is sent back."""
        return tuple(replace(c, extra=self.profile.keep(dict(c.extra or {}), call=True)) for c in calls)

    def _explain(self, err: openai.OpenAIError, attempts: int | None) -> tuple[str, int | None]:
        n = attempts or self._max_retries + 1
        tries = f"after {'' if attempts else 'up to '}{n} attempt{'s' if n != 1 else ''}"
        return explain(
            err, where=f"LLM endpoint {self._host} (model {self._model})", base_url=self._base_url,
            timeout=self._timeout, tries=tries, key=self._key, provider=self.profile.name,
            dialect=self.profile.dialect,
        )  # fmt: skip


_NO_REQUEST = httpx2.Request("POST", "http://llm.invalid/chat/completions")
"""openai.APIError wants a request; a reply-shape error names none (and is never sent)."""
_Parts = tuple[str | None, tuple[ToolCall, ...], Usage, str | None, str | None, dict[str, Any] | None]


_UNREADABLE = (openai.OpenAIError, ValueError, TypeError, KeyError, AttributeError, httpx2.HTTPError)
"""What reading a reply can raise: ValueError for a JSON body that is not JSON, httpx2.HTTPError for bytes
that do not decode, TypeError/KeyError/AttributeError for a body of another shape (``"choices": 5``)."""


def _undecodable(exc: Exception) -> openai.APIError:
    what = (
        "could not be decoded"
        if isinstance(exc, ValueError | httpx2.HTTPError)
        else "has an unexpected shape"
    )
    return openai.APIError(
        message=f"the reply {what} ({type(exc).__name__}: {str(exc)[:200]})", request=_NO_REQUEST, body=None
    )


def _text_of(content: Any) -> str | None:
    """The answer's text: a string, or the text parts of a list (Mistral's reasoning models send
    ``[{"type": "thinking", ...}, {"type": "text", "text": ...}]``)."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [get_field(p, "text") for p in content if get_field(p, "type") in (None, "text")]
        return "".join(p for p in parts if isinstance(p, str)) or None
    raise TypeError(f"message content is a {type(content).__name__}")


class SharedHttp:
    """One HTTP connection pool for many models (a runtime's personas and flows), closed once by its owner.

    A model per call on its own client would open (and, unless closed, leak) a pool per flow run; the
    openai SDK takes a caller's ``http_client`` and leaves closing it to the caller. Attempts are counted
    on it as on a model's own client (the same request hook)."""

    def __init__(self) -> None:
        self._client: httpx2.AsyncClient | None = None

    def client(self) -> httpx2.AsyncClient:
        if self._client is None:
            self._client = _counting_client()
        return self._client

    @property
    def opened(self) -> bool:
        return self._client is not None and not self._client.is_closed

    async def aclose(self) -> None:
        client, self._client = self._client, None  # a model made after this gets a fresh pool
        if client is not None:
            await client.aclose()


def _counting_client() -> httpx2.AsyncClient:
    return openai.DefaultAsyncHttpxClient(event_hooks={"request": [_count_attempt]})


async def _count_attempt(request: httpx2.Request) -> None:
    box = _ATTEMPTS.get()
    if box is not None:
        box[0] += 1


def _is_local(host: str) -> bool:
    """Loopback, private-network and ``.local`` hosts: where keyless servers (Ollama, vLLM) live."""
    if host in ("localhost", "host.docker.internal") or host.endswith((".localhost", ".local")):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local
