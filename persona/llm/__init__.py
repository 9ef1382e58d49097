"""The one door to a language model: a small protocol, an OpenAI-compatible client, a scripted stand-in.

Everything provider-specific stops here: the rest of the package sees :class:`ModelReply` and
:class:`~persona.errors.ModelError`, never ``openai`` types or exceptions. Tool calls are handed on
exactly as received (a missing id, non-JSON or object arguments, unknown names): judging them is the
dispatcher's job, and it can only answer and audit what it is shown. What a provider attaches to its
reply and needs back (``reasoning_content``, thought signatures) rides along in ``extra``.

Modules: ``replies`` (the types), ``client`` (:class:`OpenAIChatModel`; :class:`SharedHttp`, one pool for
many models), ``decoding`` (SSE, deltas, tool calls), ``failures`` (errors of every shape as one message),
``scripted``, ``embedded``. Errors raised: :class:`~persona.errors.ModelError` for any endpoint failure,
:class:`~persona.errors.NotConfigured` for a missing key, ``ScriptExhausted`` / ``ScriptUnfinished`` from
the scripted model.
"""

from persona.llm.client import DEFAULT_BASE_URL, LOCAL_PLACEHOLDER_KEY, OpenAIChatModel, SharedHttp
from persona.llm.embedded import embedded_tool_calls
from persona.llm.replies import ChatModel, ModelReply, ToolCall, Usage, message_extra
from persona.llm.scripted import RecordedCall, ScriptedChatModel, ScriptStep

__all__ = [
    "DEFAULT_BASE_URL", "LOCAL_PLACEHOLDER_KEY", "ChatModel", "ModelReply", "OpenAIChatModel", "RecordedCall",
    "ScriptStep", "ScriptedChatModel", "SharedHttp", "ToolCall", "Usage", "embedded_tool_calls", "message_extra",
]  # fmt: skip
