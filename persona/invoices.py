"""Invoice state that only moves forward, so late and replayed callbacks cannot undo the present.

Plisio may deliver callbacks out of order (a ``pending`` retried after ``completed``), and an
invoice can legitimately move from a failure to a success (a late payment after ``expired``).
Ranking the statuses makes both cases one rule: a status is applied only if it ranks higher
than the one recorded. Unknown statuses have no rank; the receiver stores them as poison.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects import postgresql, sqlite

from persona.clock import as_utc
from persona.store.engine import Store
from persona.store.inbox_tables import invoice_state

RANKS: dict[str, int] = {
    "new": 0,
    "pending": 1,
    "pending internal": 2,
    "expired": 3,
    "cancelled": 3,
    "error": 3,
    "cancelled duplicate": 3,
    "completed": 4,
    "mismatch": 4,
}
FAILURE_RANK = 3
SUCCESS_STATUSES = frozenset({"completed", "mismatch"})
FAILURE_STATUSES = frozenset({"expired", "cancelled", "error", "cancelled duplicate"})


def rank(status: str) -> int | None:
    """The status's rank, or None for a status we do not know (``111``, ``22``, a typo)."""
    return RANKS.get(status)


def is_terminal(status: str) -> bool:
    return RANKS.get(status, -1) >= FAILURE_RANK


@dataclass(frozen=True)
class Transition:
    """What :func:`advance` saw and did."""

    txn_id: str
    previous: str | None
    """The status recorded before (None: first sighting)."""
    offered: str
    recorded: str
    """The status recorded now: ``offered`` when it moved, else the higher one already there."""
    moved: bool

    @property
    def stale(self) -> bool:
        """``offered`` ranks below what is recorded: acting on it would go backwards."""
        return (rank(self.offered) or 0) < (rank(self.recorded) or 0)


@functools.cache
def _first_sighting(dialect: str) -> Any:
    """Built once so the compiled-statement cache serves it (values go as parameters). RETURNING,
    because the rowcount of an INSERT is not reliable on every driver."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(invoice_state).on_conflict_do_nothing().returning(invoice_state.c.txn_id)


def advance(
    conn: Connection, dialect: str, txn_id: str, status: str, *, now: datetime, inbox_id: int | None = None
) -> Transition:
    """Move ``txn_id`` to ``status`` if that ranks higher; inside the caller's transaction.

    Race-free: the first sighting is an ``INSERT ... ON CONFLICT DO NOTHING`` and every later
    move a conditional ``UPDATE ... WHERE rank < :new``, so two workers applying two statuses at
    once still end on the higher one.
    """
    new_rank = rank(status)
    if new_rank is None:
        raise ValueError(f"unknown invoice status {status!r}")
    before = conn.execute(
        select(invoice_state.c.status).where(invoice_state.c.txn_id == txn_id)
    ).scalar_one_or_none()
    values = {"status": status, "rank": new_rank, "updated_at": as_utc(now), "inbox_id": inbox_id}
    inserted = conn.execute(_first_sighting(dialect), {"txn_id": txn_id, **values}).first()
    if inserted is not None:
        return Transition(txn_id, None, status, status, True)
    moved = conn.execute(
        update(invoice_state)
        .where(invoice_state.c.txn_id == txn_id, invoice_state.c.rank < new_rank)
        .values(**values)
    ).rowcount
    if moved == 1:
        return Transition(txn_id, before, status, status, True)
    current = conn.execute(
        select(invoice_state.c.status).where(invoice_state.c.txn_id == txn_id)
    ).scalar_one()
    return Transition(txn_id, str(current), status, str(current), False)


class InvoiceStates:
    """Reads of ``invoice_state`` for the worker, the reconciler and operators."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def get(self, txn_id: str) -> str | None:
        with self._store.read("read invoice state") as conn:
            value = conn.execute(
                select(invoice_state.c.status).where(invoice_state.c.txn_id == txn_id)
            ).scalar_one_or_none()
        return None if value is None else str(value)

    def terminal(self, txn_ids: list[str]) -> set[str]:
        """Those of ``txn_ids`` already known in a terminal (failed or paid) state."""
        if not txn_ids:
            return set()
        with self._store.read("read invoice state") as conn:
            rows = conn.execute(
                select(invoice_state.c.txn_id).where(
                    invoice_state.c.txn_id.in_(txn_ids), invoice_state.c.rank >= FAILURE_RANK
                )
            )
            return {str(r[0]) for r in rows}
