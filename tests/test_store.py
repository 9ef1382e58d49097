"""The storage boundary: dialect settings, write locking, and errors that say what, where and how to fix."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from persona.clock import utcnow
from persona.errors import ConfigError, StoreError, StoreUnavailable
from persona.store import Store
from persona.store.schema import prepare

PASSWORD = "hunter2-Very-Secret"


def test_create_all_is_idempotent_and_registers_every_table(store: Store) -> None:
    prepare(store, now=utcnow)
    prepare(store, now=utcnow)
    tables = set(inspect(store.engine).get_table_names())
    assert {"audit_log", "audit_head", "effects", "chat_requests"} <= tables
    assert not {"approvals", "tool_results", "spend_ledger"} & tables, "replaced by the effects ledger"
    with store.read() as conn:
        assert conn.execute(text("SELECT seq FROM audit_head")).scalar_one() == 0


def test_transactions_commit_and_roll_back(store: Store) -> None:
    with store.begin() as conn:
        conn.execute(text("INSERT INTO audit_head (id, seq, hash) VALUES (2, 0, 'x')"))
    with pytest.raises(RuntimeError):
        _insert_then_fail(store)
    with store.read() as conn:
        assert conn.execute(text("SELECT id FROM audit_head ORDER BY id")).scalars().all() == [1, 2]


def _insert_then_fail(store: Store) -> None:
    with store.begin() as conn:
        conn.execute(text("INSERT INTO audit_head (id, seq, hash) VALUES (3, 0, 'y')"))
        raise RuntimeError("abort")


def test_repr_and_url_never_show_the_password(store_url: str) -> None:
    url = make_url(store_url)
    if url.get_backend_name() == "postgresql":
        url = url.set(password=PASSWORD)  # trust auth accepts any password
    store = Store.open(url.render_as_string(hide_password=False))
    try:
        assert PASSWORD not in repr(store)
        assert PASSWORD not in store.url
        assert store.dialect in repr(store)
    finally:
        store.close()


def test_sqlite_settings(store: Store) -> None:
    if store.dialect != "sqlite":
        assert store.engine.pool._pre_ping
        return
    with store.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() >= 1000


def test_sqlite_write_transactions_take_the_lock_at_begin(store_url: str, store: Store) -> None:
    if store.dialect != "sqlite":
        return
    path = store_url.removeprefix("sqlite:///")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        # No statement yet, but BEGIN IMMEDIATE already holds the write lock.
        with store.begin(), pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        with store.read() as conn:  # a reader does not block a writer
            conn.execute(text("SELECT 1 FROM audit_head")).all()
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
    finally:
        other.close()


def test_statement_errors_become_store_errors_without_parameters(store: Store) -> None:
    with pytest.raises(StoreError) as info, store.begin("record a thing") as conn:
        conn.execute(text("SELECT * FROM no_such_table WHERE x = :p"), {"p": "param-value-xyz"})
    message = str(info.value)
    assert message.startswith("cannot record a thing:")
    assert "no_such_table" in message
    assert "param-value-xyz" not in message
    assert "[SQL" not in message
    assert not isinstance(info.value, StoreUnavailable)


def test_unreachable_postgres_is_unavailable_with_a_fix_and_no_password() -> None:
    with pytest.raises(StoreUnavailable) as info:
        Store.open(f"postgresql+psycopg://persona:{PASSWORD}@127.0.0.1:1/persona")
    message = str(info.value)
    assert PASSWORD not in message
    assert "postgresql+psycopg://persona:***@127.0.0.1:1/persona" in message
    assert "fix:" in message
    assert "PostgreSQL" in message
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_plain_postgresql_scheme_uses_psycopg() -> None:
    with pytest.raises(StoreUnavailable, match=r"postgresql\+psycopg://u:\*\*\*@127.0.0.1:1/db"):
        Store.open(f"postgresql://u:{PASSWORD}@127.0.0.1:1/db")


def test_unwritable_sqlite_path_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(StoreUnavailable) as info:
        Store.open(f"sqlite:///{blocker}/sub/persona.sqlite3")
    message = str(info.value)
    assert str(blocker) in message
    assert "fix:" in message
    assert "writ" in message


def test_sqlite_path_that_is_a_directory_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable) as info:
        Store.open(f"sqlite:///{tmp_path}")
    message = str(info.value)
    assert "unable to open database file" in message
    assert str(tmp_path) in message
    assert "fix:" in message


@pytest.mark.parametrize(
    "url", ["not a url", f"mysql://root:{PASSWORD}@localhost/db", f"postgresql+asyncpg://u:{PASSWORD}@h/db"]
)
def test_unsupported_urls_are_config_errors_that_do_not_echo_the_url(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        Store.open(url)
    assert info.value.key == "store.url"
    assert PASSWORD not in str(info.value)


def test_in_memory_sqlite_works_for_one_process() -> None:
    store = Store.open("sqlite://")
    try:
        prepare(store, now=utcnow)
        with store.read() as conn:
            assert conn.execute(text("SELECT count(*) FROM audit_log")).scalar_one() == 0
    finally:
        store.close()


def test_values_starting_with_a_prefix_take_it_literally(store: Store) -> None:
    from sqlalchemy import Column, Integer, MetaData, String, Table, insert

    meta = MetaData()
    things = Table("prefix_probe", meta, Column("id", String(20), primary_key=True), Column("kind", Integer))
    meta.create_all(store.engine)
    try:
        with store.begin() as conn:
            conn.execute(insert(things), [{"id": i, "kind": k} for i, k in
                                          (("ab_1", 1), ("abX1", 1), ("ab%2", 2), ("ab_3", 2), ("b", 1))])  # fmt: skip
        assert store.starting(things.c.id, "ab", 10, "probe") == sorted(["ab_1", "abX1", "ab%2", "ab_3"])
        assert store.starting(things.c.id, "ab_", 10, "probe") == ["ab_1", "ab_3"], "_ is not a wildcard"
        assert store.starting(things.c.id, "ab%", 10, "probe") == ["ab%2"], "% is not a wildcard"
        assert store.starting(things.c.id, "ab", 1, "probe") == [sorted(["ab_1", "abX1", "ab%2", "ab_3"])[0]]
        assert store.starting(things.c.id, "ab", 10, "probe", things.c.kind == 2) == sorted(["ab%2", "ab_3"])
    finally:
        meta.drop_all(store.engine)
