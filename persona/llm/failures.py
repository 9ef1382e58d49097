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

from persona.llm.profiles import leaving_out
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
_REFUSED_FIELD = re.compile(
    r"unknown (?:name|parameter|field):?\s*['\"]?(?P<a>\w+)"
    r"|unrecognized request argument supplied:\s*(?P<b>\w+)"
    r"|unsupported parameter:\s*['\"]?(?P<c>\w+)"
    r"|property ['\"](?P<d>\w+)['\"] is unsupported"
    r"|body\.(?P<msg>messages\.\d+\.\w+\.)?(?P<e>\w+)[\w.]*: extra inputs are not permitted"
    r"|(?P<f>parallel tool calls) are not supported",
    re.I,
)  # fmt: skip
"""A request field the endpoint refused, in the words of Google, OpenAI/Azure, Groq, Mistral (a pydantic
error's location) and Google again."""
_MESSAGE_FIELDS = frozenset(
    {"reasoning_content", "reasoning", "reasoning_details", "extra_content", "refusal"}
)
_GRAMMAR = re.compile(r"failed to parse grammar|failed to initialize samplers|unknown escape at", re.I)
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


def _refused_field(reason: str) -> tuple[str, bool] | None:
    """The refused field and whether it was on a message (a field another provider attached)."""
    m = _REFUSED_FIELD.search(reason)
    if m is None:
        return None
    name = next(v for k, v in m.groupdict().items() if v and k != "msg")
    name = name.replace(" ", "_").lower()
    return name, bool(m.group("msg")) or name in _MESSAGE_FIELDS


def _wire_fix(name: str, on_message: bool, provider: str) -> str:
    if on_message:
        return (
            f"this server refuses {name} on a message, a field another provider attached to an earlier reply: "
            f"set llm.provider to the kind of server this is (now {provider}), whose profile sends back only "
            "its own fields"
        )
    if name == "stream_options" and provider == "azure":
        return (
            "this Azure API version does not take stream_options (before 2024-09-01-preview): use a newer "
            "api-version or the v1 endpoint, or set llm.stream: false"
        )
    others = [p for p in leaving_out(name) if p != provider]
    if provider in leaving_out(name):  # sent under another profile (a conversation begun elsewhere)
        return f"this endpoint does not take {name}, which the {provider} profile leaves out: keep llm.provider: {provider}"
    if provider != "generic":
        return (
            f"the {provider} profile sends {name}, which this model or server version refuses; "
            + (f"if the server is another kind, set llm.provider ({_leave(others)} it out)" if others
               else "no profile leaves it out: use a model that takes it")
        )  # fmt: skip
    if not others:
        return f"this endpoint does not take {name}, which every profile sends: use a model that takes it"
    return (
        f"this endpoint does not take {name}: set llm.provider to the kind of server it is (now {provider}; "
        f"{_leave(others)} it out)"
    )


def _leave(names: list[str]) -> str:
    return f"{', '.join(names)} {'leaves' if len(names) == 1 else 'leave'}"


def _request_fix(reason: str, provider: str, dialect: str) -> str:
    refused = _refused_field(reason)
    if refused is not None:
        return _wire_fix(*refused, provider)
    if _GRAMMAR.search(reason):
        if dialect == "grammar":
            return (
                "the server could not compile the tool schemas into a grammar even in the llamacpp dialect: "
                "upgrade the server (llama.cpp builds since 2026-08 drop a pattern they cannot compile)"
            )
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
    provider: str = "generic", dialect: str = "loose",
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
            fix = _request_fix(reason, provider, dialect)
        detail = f": {_cut(reason, key)}" if reason else ""
        text = f"{where} {what} (HTTP {status}){detail} {tries}; fix: {fix}"
    elif isinstance(err, openai.APIError):
        reason = reason_of(err.body) or err.message
        text = f"{where} failed mid-response {tries}: {_cut(reason, key)}; fix: {_SERVER_FIX}"
    else:
        text = f"{where} could not be used: {type(err).__name__}: {_cut(str(err), key)}"
    return scrub(text, (key,)), status
