"""Names of audit events and sources: one vocabulary for everything that writes the audit log.

An audit record's ``event`` is always a member of one of these enums and its ``source`` a :class:`Source`
(tests/test_invariants.py refuses a string literal in their place), so "what can the log say" has one
answer. The enums are grouped by who writes them; every value is unique across all of them (a test).
"""

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


class WebhookEvent(StrEnum):
    """The callback receiver (source ``webhook``)."""

    RECEIVED = "webhook_received"
    DUPLICATE = "webhook_duplicate"
    REJECTED = "webhook_rejected"
    POISON = "webhook_poison"


class WorkerEvent(StrEnum):
    """The inbox worker and its jobs (source ``worker``/``schedule``)."""

    PROCESSED = "inbox_processed"
    RETRY = "inbox_retry_scheduled"
    FAILED = "inbox_failed"
    POISON = "inbox_poison"
    RECONCILED = "reconcile_finished"
    SCHEDULE_RUN = "schedule_run"


class FlowEvent(StrEnum):
    """What the recovery, churn and refund flows decide and write."""

    DRAFT_CREATED = "draft_created"
    DRAFT_OBSOLETED = "draft_obsoleted"
    CHURN_REPORT_CREATED = "churn_report_created"
    REFUND_DECIDED = "refund_decided"
    REFUND_EXPLANATION_FLAGGED = "refund_explanation_flagged"


class ReviewEvent(StrEnum):
    """A person's review of a draft, and its delivery."""

    APPROVED = "draft_approved"
    REJECTED = "draft_rejected"
    SENT = "draft_sent"
    SEND_FAILED = "draft_send_failed"
    MARKED_SENT = "draft_marked_sent"


class VaultEvent(StrEnum):
    """Credential, grant and user changes."""

    CONNECTION_CREATED = "connection_created"
    CONNECTION_ROTATED = "connection_rotated"
    CONNECTION_REVOKED = "connection_revoked"
    MASTER_KEY_ROTATED = "master_key_rotated"
    GRANT_ADDED = "grant_added"
    GRANT_REMOVED = "grant_removed"
    USER_ADDED = "user_added"
    USER_TOKEN_ISSUED = "user_token_issued"  # noqa: S105  (an event name)
    USER_DISABLED = "user_disabled"
    TAMPER = "credential_tamper_detected"


class OperatorEvent(StrEnum):
    """What an operator does by hand: the console's sessions, a retried inbox row, a prune."""

    CONSOLE_SIGNED_IN = "console_signed_in"
    CONSOLE_SIGNED_OUT = "console_signed_out"
    INBOX_RETRIED = "inbox_retried"
    AUDIT_PRUNED = "audit_pruned"


EVENTS: tuple[type[StrEnum], ...] = (
    Event, WebhookEvent, WorkerEvent, FlowEvent, ReviewEvent, VaultEvent, OperatorEvent,
)  # fmt: skip
"""Every audit event name there is."""


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


SOURCES: frozenset[str] = frozenset(Source)
"""The values of :class:`Source`, for membership tests of text (``"chat" in Source`` needs Python 3.12)."""
