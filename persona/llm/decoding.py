"""From a provider's bytes to :class:`ModelReply` parts: SSE lines, streamed deltas, tool calls and the
provider's own fields, taken as lax servers really send them.

Every way a stream can go wrong (an ``error`` event or line mid-stream, a ``data:`` line that is not JSON,
a body that cannot be decoded) becomes an ``openai.APIError`` here, which the client turns into one
:class:`~persona.errors.ModelError`: nothing from decoding escapes as a raw exception.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx2
import openai

from persona.llm.replies import ToolCall, Usage, get_field

MESSAGE_KEYS = frozenset(
    {"role", "content", "tool_calls", "refusal", "function_call", "annotations", "audio"}
)
"""Assistant-message keys of the Chat Completions schema itself; any other key is the provider's own."""
CALL_KEYS = frozenset({"id", "type", "function", "index", "custom"})
"""Tool-call keys of the schema itself (``index`` only in stream deltas)."""
STREAMED_TEXT = frozenset({"reasoning_content", "reasoning"})
"""Provider fields that stream as text in pieces (joined); any other field keeps its first value, except
``reasoning_details``, whose items stream by ``index`` (see :func:`_details`)."""


def extra_of(obj: Any, known: frozenset[str]) -> dict[str, Any] | None:
    """The provider's own non-null fields of a message or a tool call, exactly as received."""
    if not isinstance(obj, Mapping):
        return None
    extra = {k: v for k, v in obj.items() if k not in known and v is not None}
    return extra or None


def tool_call_of(raw: Any) -> ToolCall:
    function = get_field(raw, "function") or get_field(raw, "custom")  # "custom" tools carry "input"
    ident, name, arguments = (
        get_field(raw, "id"),
        get_field(function, "name"),
        get_field(function, "arguments"),
    )
    if arguments is None:
        arguments = get_field(function, "input")
    ident = ident if isinstance(ident, str) and ident else None
    return ToolCall(ident, name if isinstance(name, str) else "", arguments, extra_of(raw, CALL_KEYS))


def usage_of(raw: Any) -> Usage:
    if raw is None:
        return Usage()
    p, c, t = (get_field(raw, k) for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    p, c = (p if isinstance(p, int) else 0), (c if isinstance(c, int) else 0)
    return Usage(p, c, t if isinstance(t, int) else p + c)


def _stream_error(payload: Any, request: httpx2.Request) -> openai.APIError:
    """An error a server reported inside the stream (OpenAI's ``{"error": ...}`` chunk, llama.cpp's
    ``error:`` line or an ``event: error`` event), with the server's own message."""
    error = payload.get("error", payload) if isinstance(payload, Mapping) else payload
    message = get_field(error, "message") if isinstance(error, Mapping) else error
    text = message if isinstance(message, str) and message else "an error occurred during streaming"
    return openai.APIError(message=text, request=request, body=error)


def _not_a_stream(body: str, request: httpx2.Request) -> openai.APIError:
    """A streamed request answered without a single ``data:`` line: an error body, or a server that ignores
    ``stream``; either way the turn must not end as an empty answer."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, (Mapping, list)) and (not isinstance(parsed, Mapping) or parsed.get("error")):
        return _stream_error(parsed[0] if isinstance(parsed, list) and parsed else parsed, request)
    shown = body if len(body) <= 120 else body[:117] + "..."
    return openai.APIError(
        message=f"a streamed request was answered with no stream ({shown!r}); fix: set llm.stream: false",
        request=request, body=None,
    )  # fmt: skip


def _decoded(data: str, request: httpx2.Request) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        shown = data if len(data) <= 120 else data[:117] + "..."
        raise openai.APIError(
            message=f"the stream sent a data line that is not JSON: {shown!r}", request=request, body=None
        ) from None


_AFTER_DONE_LINES = 8
"""Lines read after ``data: [DONE]`` (normally none: the body ends) before giving up on reusing the connection."""


class ChunkStream(openai.AsyncStream[Any]):
    """openai's stream class, decoding a chat completion's SSE lines straight into dicts.

    The stock decoder is general (any event type, byte-level parsing, a model per chunk) and is most of
    a streamed conversation's client CPU; a chat completion stream is ``data: {json}`` lines and
    ``data: [DONE]``, with comments (``: OPENROUTER PROCESSING``) and, from some servers, errors as an
    ``event: error`` event or a bare ``error:`` line (llama.cpp's server).
    """

    async def __stream__(self) -> AsyncIterator[Any]:
        response = self.response
        request = response.request
        event = None
        streamed = False
        done = 0
        other: list[str] = []
        try:
            async for line in response.aiter_lines():
                if done:  # read to the end, so the connection goes back to the pool (a break closes it)
                    done += 1
                    if done > _AFTER_DONE_LINES:
                        break
                    continue
                if not line:
                    event = None  # an empty line ends an event
                    continue
                if line.startswith("event:"):
                    event = line[6:].strip()
                    continue
                if line.startswith("error:"):
                    raise _stream_error(_decoded(line[6:].strip(), request), request)
                if not line.startswith("data:"):
                    if not line.startswith((":", "id:", "retry:")) and len(other) < 50:
                        other.append(line)
                    continue  # comments, ids, retry hints
                streamed = True
                data = line[5:].strip()
                if data.startswith("[DONE]"):
                    done = 1
                    continue
                chunk = _decoded(data, request)
                if event == "error" or (isinstance(chunk, Mapping) and chunk.get("error")):
                    raise _stream_error(chunk, request)
                yield chunk
            if not streamed:
                raise _not_a_stream("\n".join(other), request)
        except httpx2.TimeoutException as exc:
            raise openai.APITimeoutError(request=request) from exc
        except httpx2.TransportError as exc:
            raise openai.APIConnectionError(request=request) from exc
        except httpx2.HTTPError as exc:  # DecodingError and the like: the bytes were not what they said
            raise openai.APIError(
                message=f"the stream could not be decoded ({type(exc).__name__}: {exc})",
                request=request,
                body=None,
            ) from exc
        finally:
            await response.aclose()


class StreamedReply:
    """A streamed reply put together delta by delta: text, the provider's own message fields (strings
    concatenated, as ``reasoning_content`` streams), and tool calls by ``index``."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.extra: dict[str, Any] = {}
        self.slots: dict[int, dict[str, Any]] = {}
        self._last = 0
        self._alias: dict[int, int] = {}
        """A server's index -> our slot, once two calls came under one index (see :meth:`add_call`)."""

    def add_delta(self, delta: Any) -> str | None:
        """Fold one ``choices[0].delta``; returns its text piece, if any."""
        for key, value in (extra_of(delta, MESSAGE_KEYS) or {}).items():
            before = self.extra.get(key)
            if before is None:
                self.extra[key] = list(value) if isinstance(value, list) else value
            elif key in STREAMED_TEXT and isinstance(before, str) and isinstance(value, str):
                self.extra[key] = before + value
            elif key == "reasoning_details" and isinstance(before, list) and isinstance(value, list):
                _details(before, value)
        for fragment in get_field(delta, "tool_calls") or []:
            self.add_call(fragment)
        piece = get_field(delta, "content")
        if isinstance(piece, list):  # content parts (Mistral's reasoning models): the text ones
            piece = "".join(
                str(get_field(p, "text") or "") for p in piece if get_field(p, "type") in (None, "text")
            )
        if isinstance(piece, str) and piece:
            self.parts.append(piece)
            return piece
        return None

    def add_call(self, delta: Any) -> None:
        """Fold one tool-call fragment into its slot: id, name, arguments concatenated, the provider's own
        fields kept (first value wins, objects merged: a signature is sent once, never concatenated)."""
        index = get_field(delta, "index")
        ident = get_field(delta, "id")
        ident = ident if isinstance(ident, str) and ident else None
        function = get_field(delta, "function")
        name = get_field(function, "name")
        name = name if isinstance(name, str) else ""
        if not isinstance(index, int):  # a server that omits index: calls are told apart by id
            by_id = {s["id"]: key for key, s in self.slots.items() if s["id"]}
            if ident and ident in by_id:
                index = by_id[ident]
            elif ident or not self.slots:
                index = max(self.slots, default=-1) + 1
            else:
                index = self._last  # a fragment with no id continues the call before it
        else:
            index = self._alias.get(index, index)
            slot = self.slots.get(index)
            if slot is not None and ident and slot["id"] and ident != slot["id"] and name:
                # Another call under the same index (Gemini behind common converters sends parallel calls
                # all as index 0): a new id with a name starts a new call, never a merged one.
                fresh = max(self.slots) + 1
                self._alias[get_field(delta, "index")] = fresh
                index = fresh
        self._last = index
        slot = self.slots.setdefault(index, {"id": None, "name": "", "arguments": None, "extra": {}})
        if ident and slot["id"] is None:
            slot["id"] = ident
        if name and name != slot["name"]:  # some servers repeat the full name
            slot["name"] += name
        arguments = get_field(function, "arguments")
        if isinstance(arguments, str):
            slot["arguments"] = (slot["arguments"] if isinstance(slot["arguments"], str) else "") + arguments
        elif arguments is not None:
            slot["arguments"] = arguments  # an object from a lax endpoint: kept raw
        for key, value in (extra_of(delta, CALL_KEYS) or {}).items():
            slot["extra"][key] = _merged(slot["extra"].get(key), value)

    def text(self) -> str | None:
        return "".join(self.parts) if self.parts else None

    def calls(self) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(s["id"], s["name"], s["arguments"], s["extra"] or None)
            for _, s in sorted(self.slots.items())
        )


def _details(before: list[Any], pieces: list[Any]) -> None:
    """OpenRouter's ``reasoning_details`` stream as items with an ``index``: an item's text pieces are
    joined, its other fields (a signature arrives last) kept as they come."""
    for piece in pieces:
        index = piece.get("index") if isinstance(piece, Mapping) else None
        same = next(
            (b for b in before if isinstance(b, dict) and index is not None and b.get("index") == index), None
        )
        if same is None:
            before.append(dict(piece) if isinstance(piece, Mapping) else piece)
            continue
        for key, value in piece.items():
            if (
                key in ("text", "summary", "data")
                and isinstance(value, str)
                and isinstance(same.get(key), str)
            ):
                same[key] += value
            elif value is not None and same.get(key) is None:
                same[key] = value


def _merged(before: Any, value: Any) -> Any:
    if before is None:
        return value
    if isinstance(before, Mapping) and isinstance(value, Mapping):
        return {**value, **{k: _merged(v, value.get(k)) for k, v in before.items()}}
    return before
