"""Refused callbacks, tallied: one audit record per source address and minute, however many arrive.

Anyone can post to ``/webhooks/plisio``; a record per forged post let a stranger grow the audit log without
limit (300 posts, 300 durable rows). Each refusal is still logged and counted at once (the log line and the
``persona_callbacks_rejected_total`` metric); the audit log gets a ``webhook_rejected`` summary when the
address's minute closes (at the next refusal after it, at :meth:`Rejections.flush_due` every few seconds,
and at shutdown): how many, why (by kind, with the first full reason), how many bytes. Memory is bounded
too: past ``max_addresses`` distinct addresses in a minute, the rest share one ``other`` tally.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from persona.jsonutil import rfc3339

OTHER = "other"
"""The address a tally is kept under once ``max_addresses`` are being tallied in a minute."""
MAX_REASON_CHARS = 300


@dataclass
class Tally:
    peer: str
    minute: datetime
    count: int = 0
    bytes: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    first_reason: str = ""
    first_at: datetime | None = None
    last_at: datetime | None = None

    def payload(self) -> dict[str, object]:
        return {
            "peer": self.peer, "minute": rfc3339(self.minute, precise=False), "count": self.count,
            "bytes": self.bytes, "kinds": dict(sorted(self.kinds.items())), "first_reason": self.first_reason,
            "first_at": self.first_at and rfc3339(self.first_at), "last_at": self.last_at and rfc3339(self.last_at),
        }  # fmt: skip


Write = Callable[[Tally], Awaitable[None]]


def kind_of(reason: str) -> str:
    """``signature: verify_hash does not match`` -> ``signature``: what a summary counts by."""
    return reason.split(":", 1)[0].strip()[:60] or "unknown"


class Rejections:
    """The open tallies of the current minutes, and the writer that audits a closed one."""

    def __init__(self, write: Write, *, max_addresses: int = 1000) -> None:
        self._write = write
        self.max_addresses = max_addresses
        self._open: dict[str, Tally] = {}

    async def add(self, peer: str | None, reason: str, size: int, now: datetime) -> None:
        """Count one refusal (and write the tallies of minutes that have closed)."""
        await self.flush_due(now)
        minute = now.replace(second=0, microsecond=0)
        address = peer or "unknown"
        if address not in self._open and len(self._open) >= self.max_addresses:
            address = OTHER
        tally = self._open.get(address)
        if tally is None:
            tally = self._open[address] = Tally(
                address, minute, first_reason=reason[:MAX_REASON_CHARS], first_at=now
            )
        tally.count += 1
        tally.bytes += size
        tally.kinds[kind_of(reason)] += 1
        tally.last_at = now

    async def flush_due(self, now: datetime) -> int:
        """Write the tallies whose minute is over; how many were written."""
        minute = now.replace(second=0, microsecond=0)
        return await self._flush([t for t in self._open.values() if t.minute < minute])

    async def flush_all(self) -> int:
        """Write every open tally (shutdown; a test that reads the audit log)."""
        return await self._flush(list(self._open.values()))

    @property
    def open(self) -> int:
        return len(self._open)

    async def _flush(self, closed: list[Tally]) -> int:
        for tally in closed:
            del self._open[tally.peer]
        for tally in closed:
            await self._write(tally)
        return len(closed)


__all__ = ["MAX_REASON_CHARS", "OTHER", "Rejections", "Tally", "Write", "kind_of"]
