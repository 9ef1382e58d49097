"""The one ``MetaData`` every table module registers on.

A naming convention makes constraint and index names deterministic on SQLite and
PostgreSQL alike, so a migration (or a trigger that names a table) can refer to them.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, MetaData, inspect

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


def add_missing_columns(conn: Connection, table: str, columns: Iterable[tuple[str, str]]) -> None:
    """Add nullable ``(name, SQL type)`` columns a table created by an older release lacks, inside the caller's
    transaction: how the baseline migration adopts a store from before migrations (later changes are
    migrations of their own)."""
    present = {column["name"] for column in inspect(conn).get_columns(table)}
    for name, kind in columns:
        if name not in present:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
