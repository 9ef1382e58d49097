"""Tables of the service itself: when the store was first initialised, and which workers are alive.

``store_info`` has one row, written once when the store is created (or adopted by migration 0002): the
reconciler acts only on failures newer than ``initialised_at``, so a first start never chases a shop's
history. ``worker_heartbeats`` has a row per worker process, touched every poll: readiness asks whether a
worker has beaten recently when one is expected.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, String, Table

from persona.store.metadata import metadata

STORE_INFO_ID = 1

store_info = Table(
    "store_info",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always STORE_INFO_ID: one row
    Column("initialised_at", DateTime(timezone=True), nullable=False),
    Column("initialised_by", String(32), nullable=False),  # the release that created (or adopted) the store
)

worker_heartbeats = Table(
    "worker_heartbeats",
    metadata,
    Column("owner", String(128), primary_key=True),  # host:pid:random, as the worker names its leases
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("beat_at", DateTime(timezone=True), nullable=False),
    Column("stopped_at", DateTime(timezone=True)),  # a clean stop; a crashed worker simply stops beating
)
Index("ix_worker_heartbeats_beat_at", worker_heartbeats.c.beat_at)

__all__ = ["STORE_INFO_ID", "store_info", "worker_heartbeats"]
