"""What a model call returns, in the package's own types: no ``openai`` type gets past :mod:`persona.llm`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


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
    extra: Mapping[str, Any] | None = None
    """What the provider put on the call besides id, type and function (Gemini 3's
    ``extra_content.google.thought_signature``): sent back on the next request exactly as received."""


@dataclass(frozen=True)
class ModelReply:
    text: str | None
    tool_calls: tuple[ToolCall, ...]
    usage: Usage
    model: str
    finish_reason: str | None
    latency_ms: float
    attempts: int
    extra: Mapping[str, Any] | None = None
    """What the provider put on the assistant message besides role, content and tool calls
    (DeepSeek's ``reasoning_content``, OpenRouter's ``reasoning``): sent back exactly as received."""


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


def get_field(obj: Any, key: str) -> Any:
    """Read a field from a model object or a plain dict: openai builds responses without validation."""
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


def message_extra(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """The provider's own fields, to merge into the assistant message (or tool call) sent back."""
    return {k: v for k, v in (extra or {}).items() if v is not None}
