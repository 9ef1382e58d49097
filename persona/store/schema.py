"""The store's schema version: a fresh store is created at the head, an older one is upgraded on request,
and nothing runs on a schema it was not written for.

Alembic keeps the history (:mod:`persona.store.migrations`) and the revision a store is at (its
``alembic_version`` table). :func:`prepare`, which every start runs, creates an empty store from the tables
and stamps it at the head (Alembic's cookbook, "Building an Up to Date Database from Scratch"), passes one
at the head, and refuses one that is behind (an older release wrote it, or a release from before
migrations: ``persona db upgrade`` brings it forward) or ahead (a newer release wrote it). :func:`upgrade`
runs the missing migrations in one transaction. Both take the write lock first (``BEGIN IMMEDIATE`` on
SQLite, an advisory lock on PostgreSQL), so instances starting together create or upgrade a store once:
the second finds it done.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, MetaData, inspect, select

from persona.clock import as_utc
from persona.errors import SchemaMismatch
from persona.release import VERSION
from persona.store.engine import Store

log = structlog.get_logger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
ADVISORY_LOCK = 7262617412
"""The PostgreSQL advisory lock (transaction scoped) every schema change takes: one instance at a time."""
UPGRADE_FIX = "back up the database, then run `persona db upgrade`"

State = Literal["current", "behind", "ahead", "empty"]


def target_metadata() -> MetaData:
    """Every table the code declares (importing the table modules registers them)."""
    from persona.store import (  # noqa: F401  (registers the tables)
        audit_tables,
        chat_tables,
        flow_tables,
        inbox_tables,
        service_tables,
        tables,
        vault_tables,
        web_tables,
    )
    from persona.store.metadata import metadata

    return metadata


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory(str(MIGRATIONS))


def head() -> str:
    """The revision this release writes."""
    revision = _script().get_current_head()
    assert revision is not None, "persona/store/migrations/versions holds no revision"
    return revision


def _known(revision: str) -> bool:
    try:
        return _script().get_revision(revision) is not None
    except CommandError:
        return False


@dataclass(frozen=True)
class SchemaStatus:
    """Where a store's schema stands against this release."""

    current: str | None
    """The revision recorded in the store; None before migrations (or in an empty store)."""
    head: str
    tables: int
    """How many of this release's tables the store holds (0: empty)."""

    @property
    def state(self) -> State:
        if self.current == self.head:
            return "current"
        if self.current is None:
            return "empty" if self.tables == 0 else "behind"
        return "behind" if _known(self.current) else "ahead"

    @property
    def revision(self) -> str:
        """The current revision as a person reads it."""
        return self.current or (
            "none (empty store)" if self.tables == 0 else "none (created before migrations)"
        )


def _status(conn: Connection) -> SchemaStatus:
    heads = MigrationContext.configure(conn).get_current_heads()
    ours = set(target_metadata().tables) & set(inspect(conn).get_table_names())
    return SchemaStatus(current=heads[0] if heads else None, head=head(), tables=len(ours))


def status(store: Store) -> SchemaStatus:
    """The store's schema revision, read without taking the write lock."""
    with store.read("read the schema revision") as conn:
        return _status(conn)


def mismatch(store: Store, found: SchemaStatus) -> SchemaMismatch:
    """The error for a store whose schema this release cannot use: which revision, and what to run."""
    where = f"[database: {store.url}]"
    if found.state == "ahead":
        return SchemaMismatch(
            f"the store's schema is at revision {found.current}, which this release ({VERSION}, revision"
            f" {found.head}) does not know: a newer release upgraded it {where} (fix: run that newer release,"
            " or restore the backup taken before the upgrade)"
        )
    return SchemaMismatch(
        f"the store's schema is at revision {found.revision}; this release ({VERSION}) needs {found.head}"
        f" {where} (fix: {UPGRADE_FIX})"
    )


def prepare(store: Store, *, now: Callable[[], datetime]) -> SchemaStatus:
    """Make the store usable by this release, or say why not: create an empty one at the head, pass a current
    one, refuse (:class:`SchemaMismatch`) one that is behind or ahead. Every start runs this."""
    found = status(store)
    if found.state == "current":
        return found
    if found.state != "empty":
        raise mismatch(store, found)
    with store.begin("create the tables") as conn:
        _lock(store, conn)
        found = _status(conn)  # another instance may have created it meanwhile
        if found.state == "empty":
            _create(conn, store, now)
            return _status(conn)
    if found.state != "current":
        raise mismatch(store, found)
    return found


def upgrade(store: Store, *, now: Callable[[], datetime]) -> tuple[SchemaStatus, SchemaStatus]:
    """Run the migrations a store lacks (or create it, if empty), in one transaction; (before, after)."""
    with store.begin("upgrade the schema") as conn:
        _lock(store, conn)
        before = _status(conn)
        if before.state == "ahead":
            raise mismatch(store, before)
        if before.state == "empty":
            _create(conn, store, now)
        elif before.state == "behind":
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes.update(connection=conn, now=now(), release=VERSION)
            command.upgrade(config, "head")
        after = _status(conn)
    if before.current != after.current:
        log.info("schema_upgraded", url=store.url, before=before.revision, after=after.revision)
    return before, after


def initialised_at(store: Store) -> datetime | None:
    """When the store was first initialised (created, or adopted by the migration that began recording it)."""
    from persona.store.service_tables import STORE_INFO_ID, store_info

    with store.read("read when the store was initialised") as conn:
        found = conn.execute(
            select(store_info.c.initialised_at).where(store_info.c.id == STORE_INFO_ID)
        ).scalar()
    return None if found is None else as_utc(found)


def _lock(store: Store, conn: Connection) -> None:
    if store.dialect == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK})")


def _create(conn: Connection, store: Store, now: Callable[[], datetime]) -> None:
    from persona.store import audit_tables, tables
    from persona.store.service_tables import STORE_INFO_ID, store_info

    target_metadata().create_all(conn)
    tables.install(conn)
    audit_tables.install(conn, store.dialect)
    MigrationContext.configure(conn).stamp(_script(), "head")
    conn.execute(store_info.insert().values(id=STORE_INFO_ID, initialised_at=now(), initialised_by=VERSION))
    log.info("store_created", url=store.url, revision=head())


__all__ = [
    "ADVISORY_LOCK",
    "MIGRATIONS",
    "SchemaStatus",
    "head",
    "initialised_at",
    "mismatch",
    "prepare",
    "status",
    "target_metadata",
    "upgrade",
]
