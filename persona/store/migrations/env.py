"""Alembic's environment: migrations run on the connection :mod:`persona.store.schema` hands over.

The caller opens the transaction (``Store.begin``: ``BEGIN IMMEDIATE`` on SQLite, the advisory lock on
PostgreSQL), so the whole upgrade commits or rolls back as one, and two instances never interleave
(Alembic's cookbook: "Sharing a Connection across one or more programmatic migration commands").
"""

from __future__ import annotations

from alembic import context

from persona.store.schema import target_metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `persona db upgrade` (persona.store.schema), not the alembic CLI")
context.configure(connection=connection, target_metadata=target_metadata(), render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
