"""`persona audit list/show` for scripts and people: piped at 80 columns nothing is cut, `--json` and
`--jsonl` parse (times RFC 3339 with Z), filters name their valid values, a conversation id may be given by its
first characters (an ambiguous start lists the matches)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona.audit import AuditLog
from persona.clock import utcnow
from persona.store.engine import Store
from persona.store.schema import prepare
from tests.harness import run_cli, write_config
from tests.test_audit import Clock, event

COLS = {"COLUMNS": "80"}
LONG_USER = "maria.fernanda.garcia-lopez@finance.northwind-digital.example.com"


@pytest.mark.slow
def test_audit_list_and_show_for_pipes_and_scripts(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    store = Store.open(f"sqlite:///{tmp_path / 'persona.sqlite3'}")
    prepare(store, now=utcnow)
    log = AuditLog(store, now=Clock())
    try:
        for i in range(4):
            log.append_sync(event(i, user=LONG_USER, conversation_id=f"conv_{i:02d}_{'a' * 30}",
                                  reason="the amount is within the persona's per-invoice cap of 1000 USD" * 2))  # fmt: skip
    finally:
        log.close()
        store.close()

    table = run_cli(cfg, "audit", "list", env=COLS).stdout
    assert "4 audit record(s)" in table and "…" not in table
    assert table.count(LONG_USER) == 4 and "conv_03_" + "a" * 30 in table
    assert "2026-11-24T12:00:01Z" in table, "times in tables are RFC 3339 with Z"

    records = json.loads(run_cli(cfg, "audit", "list", "--json", env=COLS).stdout)
    assert [r["seq"] for r in records] == [1, 2, 3, 4] and records[0]["user"] == LONG_USER
    assert records[0]["ts"] == "2026-11-24T12:00:01.000123Z"
    lines = run_cli(cfg, "audit", "list", "--jsonl", "--limit", "2", env=COLS).stdout.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [3, 4]
    both = run_cli(cfg, "audit", "list", "--json", "--jsonl", check=2)
    assert "choose one of --json and --jsonl" in " ".join(both.stderr.split())

    bogus = " ".join(run_cli(cfg, "audit", "list", "--event", "bogus", check=2, env=COLS).stderr.split())
    assert "no audit record has event 'bogus'" in bogus and "tool_call_succeeded" in bogus
    persona = " ".join(run_cli(cfg, "audit", "list", "--persona", "nobody", check=2, env=COLS).stderr.split())
    assert "--persona: unknown value 'nobody'" in persona and "finance" in persona

    one = json.loads(run_cli(cfg, "audit", "show", "3", env=COLS).stdout)  # `| jq` works: never wrapped
    assert one["seq"] == 3 and one["user"] == LONG_USER and one["payload"]["arguments"]["n"] == 2
    shown = run_cli(cfg, "audit", "show", "conv_02", env=COLS).stdout
    assert shown.startswith("conversation conv_02_" + "a" * 30) and "…" not in shown
    as_records = json.loads(run_cli(cfg, "audit", "show", "conv_02", "--json", env=COLS).stdout)
    assert [r["seq"] for r in as_records] == [3]
    ambiguous = " ".join(run_cli(cfg, "audit", "show", "conv_0", check=2, env=COLS).stderr.split())
    assert (
        "'conv_0' is the start of 4 conversation ids: conv_00_" in ambiguous
        and "give more characters" in ambiguous
    )
    missing = " ".join(run_cli(cfg, "audit", "show", "zzz", check=1, env=COLS).stderr.split())
    assert "no conversation 'zzz' (nor one whose id starts with it)" in missing


@pytest.mark.slow
def test_a_flow_only_persona_is_refused_for_chat_naming_those_that_can(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    refused = " ".join(run_cli(cfg, "chat", "--persona", "recovery", "--user", "a@example.com", "-m", "hi",
                               check=2).stderr.split())  # fmt: skip
    assert "persona 'recovery' only writes for its flow (personas.recovery.chat: false" in refused
    assert "chat with one of: finance, growth" in refused and "template" not in refused


@pytest.mark.slow
def test_drafts_mark_sent_on_the_command_line(tmp_path: Path) -> None:
    from persona.drafts import DraftStore
    from tests.conftest import NOW

    cfg = write_config(tmp_path)
    store = Store.open(f"sqlite:///{tmp_path / 'persona.sqlite3'}")
    prepare(store, now=utcnow)
    draft, _ = DraftStore(store).create(
        flow_key="recovery:t9", txn_id="t9", order_number="ORD-9", customer_email="e@x.io", subject="Hi",
        body="Pay again?", payment_link=None, new_txn_id=None, context={}, drafted_by="template",
        conversation_id=None, now=NOW,
    )  # fmt: skip
    store.close()
    done = run_cli(cfg, "drafts", "mark-sent", draft.id[:6], "--by", "ops@example.com", "--note", "by phone")
    assert done.stdout.strip() == f"draft {draft.id}: sent (by hand, ops@example.com)"
    shown = json.loads(run_cli(cfg, "drafts", "show", draft.id, "--json").stdout)
    assert shown["status"] == "sent" and shown["delivery"]["attempts"][0]["note"] == "by phone"
    again = " ".join(
        run_cli(cfg, "drafts", "mark-sent", draft.id, "--by", "ops@example.com", check=1).stderr.split()
    )
    assert f"draft {draft.id} is sent" in again
