"""Time, injected: the ``Clock`` every component takes, and how a stored time is read back.

Nothing calls ``datetime.now`` on its own: the composition root passes ``utcnow`` (tests pass a fixed or
stepping clock), so a test controls every moment a component sees.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import overload

__all__ = ["Clock", "as_utc", "utcnow"]

Clock = Callable[[], datetime]
"""Returns the current time, timezone-aware (UTC)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(moment: datetime) -> datetime: ...
@overload
def as_utc(moment: None) -> None: ...
def as_utc(moment: datetime | None) -> datetime | None:
    """A time as stored: SQLite gives naive datetimes back, and they were stored as UTC."""
    return moment if moment is None or moment.tzinfo is not None else moment.replace(tzinfo=UTC)
