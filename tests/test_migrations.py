"""The store's schema history: the migrations produce the tables the code declares, carry a store's data
forward, refuse a store that is behind or ahead, and several instances starting together never race."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from persona.audit import AuditLog
from persona.clock import utcnow
from persona.errors import SchemaMismatch
from persona.inbox import Callback, Inbox
from persona.release import VERSION
from persona.store import Store, schema
from persona.store.schema import head, initialised_at, prepare, status, upgrade
from tests.fixtures_store import as_before_migrations
from tests.test_audit import fill

EARLY = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
LATER = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def run_history(store: Store, to: str = "head") -> None:
    """The migrations themselves, from an empty store up to ``to`` (a fresh store is not made this way)."""
    with store.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(schema.MIGRATIONS))
        config.attributes.update(connection=conn, now=LATER, release=VERSION)
        command.upgrade(config, to)


def triggers(store: Store) -> set[str]:
    query = (
        "SELECT name FROM sqlite_master WHERE type = 'trigger'"
        if store.dialect == "sqlite"
        else "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgrelid::regclass::text NOT LIKE 'pg_%'"
    )
    with store.read() as conn:
        return {str(name) for name in conn.execute(text(query)).scalars()}


def shape(store: Store) -> dict[str, object]:
    """Tables, columns (name, type, nullable), indexes and unique constraints, as the database reports them."""
    with store.read() as conn:
        found = inspect(conn)
        out: dict[str, object] = {}
        for table in sorted(found.get_table_names()):
            out[table] = (
                [(c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(table)],
                sorted(
                    (i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in found.get_indexes(table)
                ),
                sorted((u["name"], tuple(u["column_names"])) for u in found.get_unique_constraints(table)),
                found.get_pk_constraint(table)["constrained_columns"],
            )
        return out


@pytest.fixture
def empty(store_url: str) -> Store:
    opened = Store.open(store_url)
    yield opened  # type: ignore[misc]
    opened.close()


def test_the_history_builds_exactly_the_tables_the_code_declares(empty: Store, store: Store) -> None:
    run_history(empty)
    with empty.read() as conn:
        assert compare_metadata(MigrationContext.configure(conn), schema.target_metadata()) == []
    assert shape(empty) == shape(store), "a migrated store differs from a fresh one"
    assert triggers(empty) == triggers(store) and triggers(store), "the audit triggers differ"
    assert status(empty).state == status(store).state == "current"


def test_a_fresh_store_is_created_at_the_head_and_remembers_when(empty: Store) -> None:
    assert status(empty).state == "empty"
    found = prepare(empty, now=lambda: LATER)
    assert (found.state, found.current) == ("current", head())
    assert initialised_at(empty) == LATER
    assert prepare(empty, now=lambda: LATER + timedelta(days=1)).state == "current"
    assert initialised_at(empty) == LATER, "a later start does not move the first one"


def test_a_baseline_store_keeps_its_data_through_the_upgrade(empty: Store) -> None:
    run_history(empty, "0001")
    audit = AuditLog(empty, now=lambda: EARLY)
    fill(audit, 3)
    audit.close()
    inbox = Inbox(empty)
    recorded = inbox.record(
        source="callback", body=b"txn_id=T1&status=expired", encoding="form",
        fields={"txn_id": "T1", "status": "expired"}, callback=Callback(txn_id="T1", status="expired", fields={}),
        error=None, now=EARLY,
    )  # fmt: skip
    behind = status(empty)
    assert (behind.state, behind.current) == ("behind", "0001")
    with pytest.raises(SchemaMismatch) as refused:
        prepare(empty, now=utcnow)
    assert "revision 0001" in str(refused.value) and "persona db upgrade" in str(refused.value)
    assert f"needs {head()}" in str(refused.value)

    before, after = upgrade(empty, now=lambda: LATER)
    assert (before.current, after.current, after.state) == ("0001", head(), "current")
    assert initialised_at(empty) == EARLY, "an adopted store was first used at its first audit record"
    row = inbox.get(recorded.id)
    assert (row.txn_id, row.status, row.state) == ("T1", "expired", "pending")
    log = AuditLog(empty)
    report = log.verify()
    assert report.ok and report.records == 3
    assert [log.get(seq).user for seq in (1, 2, 3)] == ["user-0", "user-1", "user-2"]  # type: ignore[union-attr]
    log.close()


def test_a_store_from_before_migrations_is_refused_then_adopted(store: Store) -> None:
    audit = AuditLog(store, now=lambda: EARLY)
    fill(audit, 1)
    audit.close()
    as_before_migrations(store)
    with pytest.raises(SchemaMismatch, match=r"revision none \(created before migrations\)"):
        prepare(store, now=utcnow)
    before, after = upgrade(store, now=lambda: LATER)
    assert (before.current, after.state) == (None, "current")
    assert initialised_at(store) == EARLY
    assert AuditLog(store).verify().ok


def test_a_store_a_newer_release_wrote_is_refused(store: Store) -> None:
    with store.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    for attempt in (lambda: prepare(store, now=utcnow), lambda: upgrade(store, now=utcnow)):
        with pytest.raises(SchemaMismatch) as refused:
            attempt()
        message = str(refused.value)
        assert "revision 0999" in message and "a newer release" in message and VERSION in message
    assert status(store).state == "ahead"


def test_an_upgrade_that_fails_leaves_the_store_as_it_was(empty: Store) -> None:
    run_history(empty, "0001")
    with empty.begin() as conn:  # what 0002 is about to create is in the way
        conn.execute(text("CREATE TABLE worker_heartbeats (owner VARCHAR(128) PRIMARY KEY)"))
    with pytest.raises(Exception, match="worker_heartbeats"):
        upgrade(empty, now=utcnow)
    assert status(empty).current == "0001"
    assert "store_info" not in inspect(empty.engine).get_table_names()


@pytest.mark.parametrize("start", ["empty", "0001"])
def test_instances_starting_together_create_or_upgrade_the_store_once(store_url: str, start: str) -> None:
    first = Store.open(store_url)
    if start != "empty":
        run_history(first, start)
    stores = [Store.open(store_url) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    outcomes: list[object] = []

    def start_one(opened: Store) -> None:
        barrier.wait()
        try:
            if start == "empty":
                outcomes.append(prepare(opened, now=utcnow).state)
            else:
                outcomes.append(upgrade(opened, now=utcnow)[1].state)
        except Exception as exc:  # pragma: no cover - the assertion below shows it
            outcomes.append(exc)

    threads = [threading.Thread(target=start_one, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert outcomes == ["current"] * len(stores)
        with first.read() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
            assert conn.execute(text("SELECT count(*) FROM store_info")).scalar_one() == 1
            assert conn.execute(text("SELECT count(*) FROM audit_head")).scalar_one() == 1
    finally:
        for opened in (first, *stores):
            opened.close()
