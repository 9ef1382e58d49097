"""What an audit record is: the event a caller appends, the record the log stores, a filter over them."""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from persona.events import SOURCES

"""Where a record can come from: every :class:`~persona.events.Source`."""


class _EventFields(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event: str
    source: str
    user: str | None = None
    persona: str | None = None
    conversation_id: str | None = None
    tool: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    decision: str | None = None
    reason: str | None = None
    model: str | None = None
    usage: dict[str, int] | None = None
    latency_ms: float | None = Field(None, allow_inf_nan=False)


class AuditEvent(_EventFields):
    """What a caller appends; the log adds seq, ts and the hashes."""

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if value not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(sorted(SOURCES))}")
        return value

    @field_validator("event")
    @classmethod
    def _event_name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_.]{0,63}", value):
            raise ValueError("event must be a short snake_case name (letters, digits, '_', '.')")
        return value


class AuditRecord(_EventFields):
    """One stored record, as it was hashed (redacted)."""

    seq: int
    ts: datetime
    prev_hash: str
    hash: str


@dataclasses.dataclass(frozen=True)
class AuditFilter:
    user: str | None = None
    persona: str | None = None
    conversation_id: str | None = None
    event: str | None = None
    tool: str | None = None
    source: str | None = None
    since: datetime | None = None
    """Inclusive; a naive datetime is taken as UTC."""
    until: datetime | None = None
    """Exclusive; a naive datetime is taken as UTC."""
    limit: int | None = None
    after_seq: int | None = None
    newest: bool = False
    """With ``limit``: the last ``limit`` matching records (still returned in seq order)."""
