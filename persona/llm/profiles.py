"""Provider profiles: what each OpenAI-compatible server needs that the others must not get.

A profile says which of the provider's own reply fields go back on the next request, and how the reply's
length bound is named (``max_completion_tokens`` for OpenAI and Azure). Providers differ
in a way no single rule serves: DeepSeek's thinking mode refuses a follow-up whose assistant message lacks
its ``reasoning_content``, Gemini 3 one whose tool call lacks ``extra_content.google.thought_signature``,
while Groq and Mistral refuse any property they do not know (``property 'reasoning' is unsupported``).
A profile changes only what goes on the wire, never what the dispatcher validates. The idea of a
per-provider profile picked from the model's endpoint follows pydantic-ai's ``ModelProfile``
(pydantic_ai/profiles/); the fields here are the ones the captures under tests/providers/ show matter.

``llm.provider`` picks one; left out, it is detected from the base URL (host, then the port local
servers listen on by default), and an endpoint nothing matches is ``generic``: what some provider needs
back (reasoning, signatures) comes back, which lenient servers ignore; nothing else a server attached.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from persona.llm.dialects import write

ProviderName = Literal[
    "openai", "azure", "gemini", "deepseek", "ollama", "vllm", "llamacpp", "lmstudio", "openrouter", "groq",
    "mistral", "generic",
]  # fmt: skip


@dataclass(frozen=True)
class Profile:
    name: ProviderName
    message_fields: frozenset[str] | None
    """The provider's own assistant-message fields it gets back; None: every one it sent."""
    call_fields: frozenset[str] | None
    """The same for each tool call."""
    max_tokens_key: str = "max_tokens"
    """OpenAI deprecated ``max_tokens`` for ``max_completion_tokens``, which its reasoning models require
    ("Unsupported parameter: 'max_tokens' ... Use 'max_completion_tokens' instead"); most compatible servers
    know only ``max_tokens``."""
    strict_tools: bool = False
    """Send ``"strict": true`` on each function (OpenAI's constrained decoding). Elsewhere it is refused
    (Google: ``Unknown name "strict"``) or means nothing, and the schema goes in a loose dialect."""
    dialect: str = "loose"
    """How the tool parameters are written (persona/llm/dialects.py)."""
    parallel_tool_calls: bool = True
    """The endpoint takes the ``parallel_tool_calls`` parameter (Google's answered ``Unknown name
    "parallel_tool_calls"``, then ``Parallel tool calls are not supported``): left out, the model may
    still answer with several calls, which the loop handles the same way."""
    stream_usage: bool = True
    """Ask for the usage chunk of a stream (``stream_options.include_usage``)."""

    @property
    def summary(self) -> str:
        """The profile and what it changes on the wire, in a few words (``persona llm check``)."""
        tools = "strict mode" if self.strict_tools else f"{self.dialect} schema"
        quirks = [q for q, on in (("no parallel_tool_calls", not self.parallel_tool_calls),
                                  ("no stream usage", not self.stream_usage)) if on]  # fmt: skip
        return f"{self.name} (tools: {', '.join([tools, *quirks])})"

    def tools(self, tools: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The tool declarations as this endpoint takes them (the registry writes strict mode's)."""
        if self.strict_tools and self.dialect == "strict":
            return list(tools)
        out: list[Mapping[str, Any]] = []
        for tool in tools:
            fn = {k: v for k, v in tool["function"].items() if k != "strict" or self.strict_tools}
            if isinstance(fn.get("parameters"), Mapping):
                fn["parameters"] = write(self.dialect, fn["parameters"])
            out.append({**tool, "function": fn})
        return out

    def outgoing(self, messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The messages as this provider may be sent them: a stored history may carry fields another
        provider attached (the conversation began under another ``llm.provider``)."""
        out: list[Mapping[str, Any]] = []
        for m in messages:
            calls = m.get("tool_calls") or () if m.get("role") == "assistant" else ()
            if m.get("role") != "assistant" or (
                m.keys() <= _ASSISTANT and all(c.keys() <= _CALL for c in calls)
            ):
                out.append(m)  # nothing of a provider's own: as it is (the common case, no copy)
                continue
            kept = {k: v for k, v in m.items() if k in _ASSISTANT or self._allowed(k, call=False)}
            if m.get("tool_calls"):
                kept["tool_calls"] = [
                    {k: v for k, v in c.items() if k in _CALL or self._allowed(k, call=True)}
                    for c in m["tool_calls"]
                ]
            out.append(kept)
        return out

    def _allowed(self, key: str, *, call: bool) -> bool:
        allowed = self.call_fields if call else self.message_fields
        return allowed is None or key in allowed

    def keep(self, extra: dict[str, object] | None, *, call: bool = False) -> dict[str, object] | None:
        """What of ``extra`` this provider is sent back (the rest is not kept)."""
        if not extra:
            return None
        allowed = self.call_fields if call else self.message_fields
        kept = dict(extra) if allowed is None else {k: v for k, v in extra.items() if k in allowed}
        return kept or None


_NONE: frozenset[str] = frozenset()
PROFILES: dict[str, Profile] = {
    "openai": Profile("openai", _NONE, _NONE, "max_completion_tokens", strict_tools=True, dialect="strict"),
    "azure": Profile("azure", _NONE, _NONE, "max_completion_tokens", strict_tools=True, dialect="strict"),
    # Google's OpenAI-compatible endpoint: signatures ride in extra_content (on the call for Gemini 3).
    "gemini": Profile(
        "gemini", frozenset({"extra_content"}), frozenset({"extra_content"}), dialect="gemini",
        parallel_tool_calls=False,
    ),
    # https://api-docs.deepseek.com/guides/thinking_mode#tool-calls: reasoning_content must come back.
    "deepseek": Profile("deepseek", frozenset({"reasoning_content"}), _NONE),
    # OpenRouter asks for reasoning_details back to keep a reasoning model's chain across tool calls.
    "openrouter": Profile("openrouter", frozenset({"reasoning", "reasoning_details"}), _NONE),
    "groq": Profile("groq", _NONE, _NONE),  # strict: "property 'reasoning' is unsupported"
    # Refuses any field it does not know ("Extra inputs are not permitted"), stream_options included;
    # its streams end with usage unasked.
    "mistral": Profile("mistral", _NONE, _NONE, stream_usage=False),
    "ollama": Profile("ollama", _NONE, _NONE),
    "vllm": Profile("vllm", _NONE, _NONE),
    "llamacpp": Profile("llamacpp", _NONE, _NONE, dialect="grammar"),
    "lmstudio": Profile("lmstudio", _NONE, _NONE, dialect="grammar"),
    # Anything else (a proxy such as LiteLLM, a server not listed): the fields some provider needs back,
    # nothing it merely attached; a strict server behind a proxy needs llm.provider set.
    "generic": Profile(
        "generic",
        frozenset({"reasoning_content", "reasoning", "reasoning_details", "extra_content"}),
        frozenset({"extra_content"}),
    ),
}  # fmt: skip
_ASSISTANT = frozenset({"role", "content", "tool_calls", "name", "refusal"})
_CALL = frozenset({"id", "type", "function"})
_HOSTS = (
    ("api.openai.com", "openai"), (".openai.azure.com", "azure"), (".services.ai.azure.com", "azure"),
    (".cognitiveservices.azure.com", "azure"), ("generativelanguage.googleapis.com", "gemini"),
    ("api.deepseek.com", "deepseek"), ("openrouter.ai", "openrouter"), ("api.groq.com", "groq"),
    ("api.mistral.ai", "mistral"), ("ollama.com", "ollama"),
)  # fmt: skip
_PORTS = {11434: "ollama", 1234: "lmstudio", 8080: "llamacpp", 8000: "vllm"}
"""Default ports of local servers: a hint only, when the host says nothing."""


def leaving_out(field: str) -> list[str]:
    """The profiles that do not send ``field`` (a request parameter a server may refuse)."""
    sends: dict[str, Any] = {
        "parallel_tool_calls": lambda p: p.parallel_tool_calls,
        "stream_options": lambda p: p.stream_usage,
        "strict": lambda p: p.strict_tools,
        "max_tokens": lambda p: p.max_tokens_key == "max_tokens",
        "max_completion_tokens": lambda p: p.max_tokens_key == "max_completion_tokens",
    }
    test = sends.get(field)
    return [] if test is None else [name for name, p in PROFILES.items() if not test(p)]


def detect(base_url: str | None) -> Profile:
    url = urlsplit(base_url or "https://api.openai.com/v1")
    host = (url.hostname or "").lower()
    for suffix, name in _HOSTS:
        if host == suffix.lstrip(".") or host.endswith(suffix if suffix.startswith(".") else "." + suffix):
            return PROFILES[name]
    try:
        port = url.port
    except ValueError:
        port = None
    return PROFILES[_PORTS.get(port or 0, "generic")]


def profile(name: str | None, base_url: str | None) -> Profile:
    """The named profile, or the one the base URL suggests."""
    return PROFILES[name] if name else detect(base_url)
