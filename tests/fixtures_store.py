"""Storage fixtures: every storage test runs on SQLite, and on PostgreSQL too when it is available.

``PERSONA_TEST_POSTGRES_URL`` (e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/test``) adds
the ``postgres`` parameter; each test then gets a fresh schema of its own, selected through
``search_path`` in the URL and dropped afterwards, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from persona.store import Store
from persona.store.schema import prepare

POSTGRES_ENV = "PERSONA_TEST_POSTGRES_URL"
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)
"""When the fixture's stores were "first initialised": before every seeded or test time, so the reconciler's
first-start floor leaves the tests of its age limit and paging as they were (tests/test_first_start.py has
a store initialised now)."""
_POSTGRES_URL = os.environ.get(POSTGRES_ENV, "")
_BACKENDS = ["sqlite", *([pytest.param("postgres", marks=pytest.mark.postgres)] if _POSTGRES_URL else [])]
"""Each PostgreSQL variant carries the ``postgres`` marker: ``pytest -m postgres`` runs exactly those."""


@pytest.fixture(params=_BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL nobody else uses: a SQLite file under ``tmp_path`` or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'persona.sqlite3'}"
        return
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(_POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        url = make_url(_POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A :class:`Store` on ``store_url`` with every table created, closed at teardown."""
    opened = Store.open(store_url)
    try:
        prepare(opened, now=lambda: LONG_AGO)
        yield opened
    finally:
        opened.close()


def as_before_migrations(store: Store) -> None:
    """Leave ``store`` as a release from before migrations created it: no revision, none of the later tables."""
    with store.begin() as conn:
        for table in ("alembic_version", "store_info", "worker_heartbeats"):
            conn.exec_driver_sql(f"DROP TABLE {table}")
