"""The operator's commands as a user runs them: ``--version``, ``config check``, ``db current`` / ``db upgrade``
on a fresh, a stale and a newer store, ``reconcile --since --dry-run``, a port in use, the store's mode."""

from __future__ import annotations

import json
import socket
import sqlite3
import stat
from pathlib import Path

import pytest

from persona.release import VERSION
from persona.store import Store
from persona.store.schema import head
from tests.fixtures_store import as_before_migrations
from tests.harness import run_cli, write_config

pytestmark = pytest.mark.slow


def test_version(tmp_path: Path) -> None:
    assert run_cli(write_config(tmp_path), "--version").stdout == f"persona {VERSION}\n"


def test_config_check_prints_the_effective_settings_without_secrets(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    secret = "sk-test-do-not-print-0123456789"
    out = run_cli(cfg, "config", "check", env={"OPENAI_API_KEY": secret}).stdout
    assert secret not in out
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    assert lines["config"].endswith("(valid)") and lines["release"] == f"release    persona {VERSION}"
    assert "(schema: empty, created on first start" in lines["store"]
    assert lines["plisio"].startswith("plisio     sandbox: in-process sandbox (seed")
    assert "finance: chat;" in out and "invoices ≤" in out
    doc = json.loads(run_cli(cfg, "config", "check", "--json").stdout)
    assert doc["plisio"]["mode"] == "sandbox" and doc["store"]["schema"] == "empty"
    assert "plisio_create_invoice" in doc["personas"]["finance"]["tools"]
    assert doc["llm"]["key_set"] is False


def test_config_check_fails_on_a_broken_file_with_the_key_and_fix(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text(encoding="utf-8").replace("port: 8080", "port: eighty"), encoding="utf-8")
    proc = run_cli(cfg, "config", "check", check=2)
    assert "server.port" in proc.stderr and "Traceback" not in proc.stderr


def test_db_current_and_upgrade_through_a_store_from_before_migrations(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    proc = run_cli(cfg, "db", "current", check=1)
    assert "state     empty: the first start creates it" in proc.stdout
    run_cli(cfg, "audit", "verify")  # any command creates the store at the head
    assert "state     current" in run_cli(cfg, "db", "current").stdout
    store = Store.open(f"sqlite:///{tmp_path / 'persona.sqlite3'}")
    as_before_migrations(store)
    store.close()
    refused = run_cli(cfg, "audit", "verify", check=2)
    assert "revision none (created before migrations)" in refused.stderr
    assert "persona db upgrade" in refused.stderr
    assert "behind: run `persona db upgrade`" in run_cli(cfg, "db", "current", check=1).stdout
    upgraded = run_cli(cfg, "db", "upgrade").stdout
    assert f"upgraded from revision none (created before migrations) to {head()}" in upgraded
    assert "nothing to do" in run_cli(cfg, "db", "upgrade").stdout
    doc = json.loads(run_cli(cfg, "db", "current", "--json").stdout)
    assert (doc["revision"], doc["state"]) == (head(), "current")


def test_a_store_a_newer_release_wrote_stops_every_command(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    run_cli(cfg, "audit", "verify")
    with sqlite3.connect(tmp_path / "persona.sqlite3") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0999'")
    for args in (("audit", "verify"), ("worker", "--once"), ("db", "upgrade")):
        proc = run_cli(cfg, *args, check=2)
        assert "revision 0999" in proc.stderr and "a newer release" in proc.stderr


def test_the_store_and_exports_are_readable_only_by_their_owner(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    run_cli(cfg, "audit", "verify")
    run_cli(cfg, "audit", "export", "--out", str(tmp_path / "audit.jsonl"))
    for name in ("persona.sqlite3", "audit.jsonl"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o600, f"{name}: {mode:o}"


def test_a_port_in_use_is_one_line_before_any_banner(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        for args in (("serve", "--port", str(port)), ("sandbox", "--port", str(port))):
            proc = run_cli(cfg, *args, check=2)
            assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in proc.stderr
            assert "persona on http" not in proc.stderr and "Plisio sandbox on" not in proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_reconcile_dry_run_lists_old_failures_the_schedule_leaves_alone(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    scheduled = run_cli(cfg, "reconcile", "--dry-run").stdout
    assert "would queue 0" in scheduled, scheduled  # a fresh store: the seeded history is older
    older = run_cli(cfg, "reconcile", "--since", "30d", "--dry-run", "--json").stdout
    found = json.loads(older)
    assert found and all(item["txn_id"] and item["status"] for item in found)
    assert "0 inbox row" in run_cli(cfg, "inbox", "list").stdout
