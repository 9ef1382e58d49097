"""What one tool call is made with and what comes back: the vocabulary the loop, the dispatcher and the
effects ledger share (so none of them imports another just for a type)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from persona.audit import AuditEvent, AuditLog
from persona.effects.keys import EffectKey, chat_key
from persona.events import Source
from persona.policy import PolicyDecision
from persona.settings import PersonaSettings, Settings
from tools.registry import ToolResult, bounded_json


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DENIED = "denied"
    PENDING_APPROVAL = "pending_approval"
    REPLAYED = "replayed"
    """Answered from an effect that already happened (or is held): nothing was done again."""
    UNKNOWN = "unknown"
    """Sent, and no answer seen: recorded as ``unknown``, looked up, never reported as failed."""


@dataclass(frozen=True)
class CallContext:
    persona_name: str
    persona: PersonaSettings
    user: str
    conversation_id: str
    source: str = Source.CHAT
    flow_key: str | None = None
    """A flow's key (``recovery:<txn_id>``): its side effects are keyed in it instead of in the chat."""
    slots: Mapping[str, str] = field(default_factory=dict)
    """Within a flow, the fixed slot of a tool's effect (``plisio_create_invoice`` -> ``fresh_link``): however
    often and by whichever path (model or template) the flow asks, it is one effect."""

    pinned: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Within a flow, arguments of a tool that code fixes, whatever the model asks (``plisio_create_invoice`` ->
    the failed invoice's amount, currency and email: a recovery link is tied to the debt)."""

    def effect_key(self, tool: str, seq: int) -> EffectKey:
        if self.flow_key is not None:
            return EffectKey(self.flow_key, self.slots.get(tool, f"{tool}:{seq}"))
        return chat_key(self.conversation_id, seq)

    def fixed_slot(self, tool: str) -> bool:
        return self.flow_key is not None and tool in self.slots


def call_context(
    settings: Settings,
    persona: str,
    user: str,
    *,
    conversation_id: str | None = None,
    source: str = Source.CHAT,
    flow_key: str | None = None,
    slots: Mapping[str, str] | None = None,
    pinned: Mapping[str, Mapping[str, Any]] | None = None,
) -> CallContext:
    """Who is calling, for which conversation, as ``persona`` (its settings read once, here)."""
    return CallContext(
        persona_name=persona,
        persona=settings.persona(persona),
        user=user,
        conversation_id=conversation_id or f"conv_{uuid.uuid4().hex[:16]}",
        source=source,
        flow_key=flow_key,
        slots=dict(slots or {}),
        pinned=dict(pinned or {}),
    )


@dataclass(frozen=True)
class Dispatched:
    call_id: str
    tool: str
    outcome: Outcome
    content: str
    """The tool message handed back to the model (compact, bounded JSON)."""
    result: ToolResult | None = None
    decision: PolicyDecision | None = None
    approval_id: str | None = None
    read_only: bool = True
    notices: tuple[str, ...] = ()
    effect_id: str | None = None

    def data(self) -> dict[str, Any]:
        """The result object of a successful (or replayed) call, ``{}`` otherwise."""
        try:
            parsed = json.loads(self.content)
        except ValueError:
            return {}
        result = parsed.get("result") if isinstance(parsed, dict) and parsed.get("ok") else None
        return result if isinstance(result, dict) else {}


current_call: ContextVar[CallContext | None] = ContextVar("current_call", default=None)
"""The call being executed, so a credential read deep in the Plisio client is audited with its context."""


def call_event(ctx: CallContext, event: str, tool: str | None = None, **fields: Any) -> AuditEvent:
    """An audit record of something done in this call's context (who, as which persona, in which conversation)."""
    return AuditEvent(
        event=event, source=ctx.source, user=ctx.user, persona=ctx.persona_name,
        conversation_id=ctx.conversation_id, tool=tool, **fields,
    )  # fmt: skip


async def record_call(
    audit: AuditLog, ctx: CallContext, event: str, tool: str | None, *, durable: bool = True, **fields: Any
) -> None:
    """Append a call record. ``durable=False`` queues it for the next group commit instead of waiting: for
    records that precede no side effect (a side effect flushes first, and so does the turn's end)."""
    record = call_event(ctx, event, tool, **fields)
    if durable:
        await audit.append(record)
    else:
        audit.record(record)


def error_content(kind: str, message: str, **extra: Any) -> str:
    return bounded_json({"ok": False, "error": {"type": kind, "message": message, **extra}})
