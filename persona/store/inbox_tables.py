"""Tables of the webhook receiver and the worker: the callback inbox and each invoice's state.

``inbox`` holds every verified callback (and every reconciler finding) exactly once: the raw
body hash is unique, and so is ``dedupe_key`` (``<txn_id>|<status>``), so a re-sent callback,
or the same status reported once by a callback and once by the reconciler, is one row. The
insert is ``INSERT ... ON CONFLICT DO NOTHING``, which stays correct under concurrent posts on
SQLite and PostgreSQL alike. Poison rows (signed but unusable) carry no ``dedupe_key``: they
must not block a later usable callback for the same invoice.

``invoice_state`` is the furthest status each invoice has reached (by rank); it only moves
forward, which is how a late ``pending`` after ``completed`` is recognised as stale.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, LargeBinary, String, Table, Text, UniqueConstraint

from persona.store.metadata import metadata

inbox = Table(
    "inbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(16), nullable=False),  # callback | reconciler
    Column("body_hash", String(64), nullable=False),  # sha256 hex of the raw body
    Column("dedupe_key", String(200)),  # "<txn_id>|<status>"; NULL for poison rows
    Column("txn_id", String(64)),  # as received (may be NULL on a poison row)
    Column("status", String(64)),  # as received
    Column("encoding", String(16), nullable=False),  # form | json | reconciler
    Column("body", LargeBinary, nullable=False),  # the raw bytes that were verified
    Column("fields", Text, nullable=False),  # JSON of the verified fields (verify_hash removed)
    Column("state", String(16), nullable=False),  # pending | processing | done | failed | poison
    Column("attempts", Integer, nullable=False, default=0),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("available_at", DateTime(timezone=True), nullable=False),  # not claimed before (backoff)
    Column("lease_owner", String(128)),
    Column("lease_until", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("plisio_status", String(64)),  # the status re-read from Plisio, when it was re-read
    Column("action", String(64)),  # what the worker did: recovery | success | stale | recorded | ...
    Column("error", Text),
    UniqueConstraint("body_hash", name="uq_inbox_body_hash"),
    UniqueConstraint("dedupe_key", name="uq_inbox_dedupe_key"),
)
Index("ix_inbox_state_available", inbox.c.state, inbox.c.available_at)
Index("ix_inbox_txn", inbox.c.txn_id)

invoice_state = Table(
    "invoice_state",
    metadata,
    Column("txn_id", String(64), primary_key=True),
    Column("status", String(64), nullable=False),
    Column("rank", Integer, nullable=False),  # new 0 < pending 1 < pending internal 2 < failed 3 < paid 4
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("inbox_id", Integer),  # the inbox row that moved it last
)

__all__ = ["inbox", "invoice_state"]
