"""Names of audit events: one vocabulary for the loop, the dispatcher, webhooks and flows."""

from __future__ import annotations

from enum import StrEnum


class Event(StrEnum):
    TURN_STARTED = "turn_started"
    TURN_ENDED = "turn_ended"
    TURN_FAILED = "turn_failed"
    TURN_CANCELLED = "turn_cancelled"
    """A person stopped the turn (Ctrl-C in `persona chat`); its ``turn_failed`` says what was cut short."""
    MODEL_REQUEST = "model_request"
    MODEL_RESPONSE = "model_response"
    MODEL_FAILED = "model_failed"
    TOOL_CALL_ATTEMPTED = "tool_call_attempted"
    TOOL_CALL_DENIED = "tool_call_denied"
    TOOL_CALL_ARGUMENTS_PINNED = "tool_call_arguments_pinned"
    """The model asked for other values than the flow fixes (a recovery link's amount, currency, email)."""
    TOOL_CALL_SUCCEEDED = "tool_call_succeeded"
    TOOL_CALL_FAILED = "tool_call_failed"
    TOOL_CALL_REPLAYED = "tool_call_replayed"
    TOOL_CALL_UNKNOWN = "tool_call_outcome_unknown"
    EFFECT_RESOLVED = "effect_resolved"
    TOOL_CALL_IN_TEXT = "tool_call_in_text"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_GRANTED = "approval_granted"
    APPROVAL_REJECTED = "approval_rejected"
    APPROVAL_REFUSED = "approval_refused"
    """An approval was refused: its row does not match its seal (or has none, or it cannot be checked here), or
    the audit log shows the call was decided already."""
    CLAIM_UNVERIFIED = "claim_unverified"
    LIMIT_REACHED = "limit_reached"


class Source(StrEnum):
    CHAT = "chat"
    HTTP = "http"
    WEBHOOK = "webhook"
    SCHEDULE = "schedule"
    REPLAY = "replay"
    CLI = "cli"
    WORKER = "worker"
    WEB = "web"
    """The review console (`persona serve` at ``/``)."""
