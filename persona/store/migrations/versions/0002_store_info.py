"""The store remembers when it was first initialised (a safe first start) and which workers are alive.

``store_info`` gets its one row: on a store an older release created, the moment of its first audit
record (when it was in fact first used), or the moment of this upgrade on a store that never recorded
anything; the reconciler then leaves alone invoices that failed before. ``worker_heartbeats`` is new and
empty: readiness asks it whether a worker is beating.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import context, op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "store_info",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("initialised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("initialised_by", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_store_info")),
    )
    op.create_table(
        "worker_heartbeats",
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("owner", name=op.f("pk_worker_heartbeats")),
    )
    op.create_index("ix_worker_heartbeats_beat_at", "worker_heartbeats", ["beat_at"], unique=False)
    attributes = context.config.attributes
    now: datetime = attributes.get("now") or datetime.now(UTC)
    first = op.get_bind().execute(sa.text("SELECT ts FROM audit_log ORDER BY seq LIMIT 1")).scalar()
    since = datetime.fromisoformat(first).astimezone(UTC) if isinstance(first, str) else now
    store_info = sa.table(
        "store_info",
        sa.column("id", sa.Integer()),
        sa.column("initialised_at", sa.DateTime(timezone=True)),
        sa.column("initialised_by", sa.String()),
    )
    op.bulk_insert(
        store_info, [{"id": 1, "initialised_at": since, "initialised_by": attributes.get("release", "")}]
    )


def downgrade() -> None:
    op.drop_index("ix_worker_heartbeats_beat_at", table_name="worker_heartbeats")
    op.drop_table("worker_heartbeats")
    op.drop_table("store_info")
