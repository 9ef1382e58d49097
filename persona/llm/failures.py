"""A provider's failure as one secret-free sentence: what failed, where, after how many attempts, the
provider's own reason, and a fix that fits the cause.

Providers report errors in every shape: OpenAI's ``{"error": {"message"}}`` (which the ``openai`` client
unwraps), Google's JSON *list* ``[{"error": {...}}]``, a bare string, an HTML page from a proxy, an SSE
``error`` event mid-stream. :func:`reason_of` finds the message in each.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import Any

import httpx2
import openai

from tools.redaction import scrub

_KEY_FIX = "check the key in OPENAI_API_KEY (or the variable llm.api_key_env names)"
_SERVER_FIX = "check the server's health and logs, then retry (retries are bounded by llm.max_retries)"
_REQUEST_FIX = "check that llm.model supports tool calling; the endpoint's reason above says what it refused"
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
_ROUND_TRIP = re.compile(r"reasoning_content|thought_signature|thought signature|reasoning_details", re.I)
_SAMPLING = re.compile(r"temperature|max_tokens|max_completion_tokens|top_p", re.I)
_TOOLS = re.compile(r"\btools?\b|function|tool_choice|parallel_tool_calls", re.I)
_REFUSED = re.compile(
    r"unknown (?:name|parameter|field)|unrecognized request argument|cannot find field|extra inputs|"
    r"not (?:permitted|supported)|unsupported", re.I,
)  # fmt: skip
_WIRE = re.compile(
    r"parallel[_ ]tool[_ ]calls|stream_options|max_completion_tokens|max_tokens|\bstrict\b", re.I
)
_GRAMMAR = re.compile(r"failed to parse grammar|grammar", re.I)
_TYPE_ARRAY = re.compile(r"cannot unmarshal array into Go struct field \S*\.type\b", re.I)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)
_TAGS = re.compile(r"<[^>]+>")


def reason_of(body: Any) -> str:
    """The provider's own message in an error body of any shape, collapsed to one line ("" if none)."""
    if isinstance(body, list):
        return next((r for r in (reason_of(item) for item in body) if r), "")
    if isinstance(body, Mapping):
        loc, msg = body.get("loc"), body.get("msg")
        if isinstance(loc, list) and isinstance(msg, str):  # a pydantic error item (Mistral, FastAPI servers)
            return f"{'.'.join(str(part) for part in loc)}: {msg}"
        for key in ("message", "error", "detail", "msg", "error_message"):
            found = reason_of(body.get(key)) if key in body else ""
            if found:
                return found
        return ""
    if isinstance(body, str):
        text = body
        if "<" in text and ">" in text:  # an HTML page (a proxy's 502): its title, or its text
            title = _TITLE.search(text)
            text = title.group(1) if title else _TAGS.sub(" ", text)
        return " ".join(html.unescape(text).split())
    return ""


def _cut(text: str, key: str, limit: int = 300) -> str:
    """Scrubbed, then cut: a secret cut in half by the limit would no longer be recognised."""
    return scrub(text, (key,))[:limit]


def _request_fix(reason: str, provider: str) -> str:
    wire = _WIRE.search(reason)
    if wire and _REFUSED.search(reason):
        if wire.group(0) == "stream_options" and provider == "azure":
            return (
                "this Azure API version does not take stream_options (before 2024-09-01-preview): use a newer "
                "api-version or the v1 endpoint, or set llm.stream: false"
            )
        return (
            f"this endpoint does not take {wire.group(0).replace(' ', '_').lower()}: set llm.provider to the kind of server it is "
            f"(now {provider}; the README lists them), whose profile leaves it out"
        )
    if _GRAMMAR.search(reason):
        return (
            "the server could not compile the tool schemas into a grammar: set llm.provider: llamacpp (or "
            f"lmstudio; now {provider}), whose schema dialect writes patterns its grammar compiler reads"
        )
    if _TYPE_ARRAY.search(reason):
        return (
            f"this server (Ollama before 0.6.6) refuses type arrays in tool schemas: set llm.provider: ollama "
            f"(now {provider}), or upgrade the server"
        )
    if _ROUND_TRIP.search(reason):
        return (
            "the endpoint wants fields of its own earlier reply sent back; this client keeps and returns them, "
            "so the history was made without them (an older release, or an edited conversation): start a new "
            "conversation"
        )
    if _SAMPLING.search(reason):
        return "check the sampling parameters sent (personas.<name>.model: temperature, max_tokens)"
    if _TOOLS.search(reason):
        return "check that llm.model supports tool calling (the server may need it enabled for this model)"
    return _REQUEST_FIX


def explain(
    err: openai.OpenAIError, *, where: str, base_url: str, timeout: float, tries: str, key: str,
    provider: str = "generic",
) -> tuple[str, int | None]:  # fmt: skip
    """The sentence for ``err``, and its HTTP status when it has one."""
    status: int | None = None
    if isinstance(err, openai.APITimeoutError):
        text = (
            f"{where} timed out ({timeout:g}s per attempt) {tries}; "
            "fix: check that the server is up and not overloaded, or raise llm.timeout"
        )
    elif isinstance(err, openai.APIConnectionError) and isinstance(err.__cause__, httpx2.DecodingError):
        text = (
            f"{where} answered with a body that could not be decoded ({_cut(str(err.__cause__), key, 200)}) {tries}; "
            f"fix: {_SERVER_FIX}"
        )
    elif isinstance(err, openai.APIConnectionError):
        cause = type(err.__cause__).__name__ if err.__cause__ else "connection error"
        text = (
            f"{where} is unreachable ({cause}) {tries}; "
            f"fix: check llm.base_url ({base_url}) and that the server is running"
        )
    elif isinstance(err, openai.APIStatusError):
        status = err.status_code
        what, fix = _STATUS_HELP.get(status, ("failed", _SERVER_FIX))
        reason = reason_of(err.body) if status != 401 else ""
        if status in (400, 422):
            fix = _request_fix(reason, provider)
        detail = f": {_cut(reason, key)}" if reason else ""
        text = f"{where} {what} (HTTP {status}){detail} {tries}; fix: {fix}"
    elif isinstance(err, openai.APIError):
        reason = reason_of(err.body) or err.message
        text = f"{where} failed mid-response {tries}: {_cut(reason, key)}; fix: {_SERVER_FIX}"
    else:
        text = f"{where} could not be used: {type(err).__name__}: {_cut(str(err), key)}"
    return scrub(text, (key,)), status
