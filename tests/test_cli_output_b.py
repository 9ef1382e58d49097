"""`refunds`, `churn`, `inbox`, `connections` and `grants` for scripts and people, in real processes at 80
columns with stdout piped: tables never cut a value, `--json` is one document and `--jsonl` one object a line
(times RFC 3339 with Z), filters name their valid values, an id may be given by its first characters (an
ambiguous start lists the matches, an unknown one is not found)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import update

from persona.app import Runtime
from persona.config import load_settings
from persona.flows import churn, refunds
from persona.inbox import Inbox
from persona.store.flow_tables import churn_reports, refund_decisions
from persona.store.inbox_tables import inbox
from persona.vault import Actor
from tests.harness import run_cli, write_config
from tools.plisio.sandbox import SANDBOX_API_KEY
from tools.plisio.sandbox.seed import RECENT_REFUNDABLE_ORDER_NUMBERS, TOO_OLD_TO_REFUND_ORDER_NUMBERS

COLS = {"COLUMNS": "80"}
LONG_USER = "maria.fernanda.garcia-lopez@finance.northwind-digital.example.com"
LONG_REASON = "the customer bought the yearly plan by mistake and wants the monthly one instead, " * 2
LONG_CONNECTION = "northwind-digital-main-shop.production-eu-west-primary"
Z_SECONDS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
Z_MICROS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def flat(text: str) -> str:
    return " ".join(text.split())


def build(cfg: Path, setup: Callable[[Runtime], Awaitable[None]]) -> None:
    """Run ``setup(rt)`` (async) on a runtime over the CLI's own store and in-process sandbox."""

    async def main() -> None:
        rt = Runtime.build(load_settings(cfg))
        try:
            await setup(rt)
        finally:
            await rt.aclose()

    asyncio.run(main())


@pytest.mark.slow
def test_refunds_and_churn_for_pipes_and_scripts(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)  # in-process sandbox, seeded up to today; no model: the policy explains

    async def setup(rt: Runtime) -> None:
        assert rt.plisio.sandbox is not None
        for order, new_id in ((TOO_OLD_TO_REFUND_ORDER_NUMBERS[0], "feed0001aaaa"),
                              (RECENT_REFUNDABLE_ORDER_NUMBERS[1], "feed0002bbbb")):  # fmt: skip
            op = rt.plisio.sandbox.state.by_order_number(order)
            assert op is not None
            made = await refunds.triage(
                rt.flows, txn_id=op.id, reason=LONG_REASON, requested_by=LONG_USER, trigger="cli"
            )
            with rt.store.begin("test: a known id") as conn:
                conn.execute(
                    update(refund_decisions).where(refund_decisions.c.id == made.id).values(id=new_id)
                )
        for new_id in ("c0ffee01aaaa", "c0ffee02bbbb"):
            report = await churn.scan(rt.flows, trigger="cli", requested_by=LONG_USER)
            with rt.store.begin("test: a known id") as conn:
                conn.execute(update(churn_reports).where(churn_reports.c.id == report.id).values(id=new_id))

    build(cfg, setup)

    # refunds list: the piped table holds every value whole; JSON holds the decisions in full
    table = run_cli(cfg, "refunds", "list", env=COLS).stdout
    assert table.startswith("2 refund decision(s)\n") and "…" not in table
    assert "feed0001aaaa" in table and "feed0002bbbb" in table and table.count(LONG_USER) == 2
    assert "window_days" in table and len(Z_SECONDS.findall(table)) == 2
    assert max(len(line) for line in table.splitlines()) > 80, (
        "a pipe gets whole lines, whatever COLUMNS says"
    )
    listed = json.loads(run_cli(cfg, "refunds", "list", "--json", env=COLS).stdout)
    assert [d["id"] for d in listed] == ["feed0002bbbb", "feed0001aaaa"], "newest first"
    approved = listed[0]
    assert approved["requested_by"] == LONG_USER and approved["reason"] == LONG_REASON.strip()
    assert approved["refund_value"] == "79.00" and Z_MICROS.fullmatch(approved["created_at"])
    assert isinstance(approved["facts"], dict) and isinstance(approved["flags"], list)
    lines = run_cli(cfg, "refunds", "list", "--jsonl", "--limit", "1", env=COLS).stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["requested_by"] == LONG_USER

    # refunds show: a unique prefix, whole lines; --json an object; ambiguous and unknown ids
    shown = run_cli(cfg, "refunds", "show", "feed0002", env=COLS).stdout
    assert shown.startswith("refund decision feed0002bbbb: APPROVE") and "…" not in shown
    assert f"  reason        {LONG_REASON.strip()}\n" in shown and f"  asked by      {LONG_USER}\n" in shown
    assert re.search(r"  decided at    " + Z_SECONDS.pattern + "\n", shown)
    assert re.search(r"  paid_at       " + Z_SECONDS.pattern + "\n", shown), (
        "a stored time, in the one format"
    )
    one = json.loads(run_cli(cfg, "refunds", "show", "feed0001aaaa", "--json", env=COLS).stdout)
    assert (one["id"], one["decision"], one["requested_by"]) == ("feed0001aaaa", "deny", LONG_USER)
    ambiguous = flat(run_cli(cfg, "refunds", "show", "feed000", check=2, env=COLS).stderr)
    assert "'feed000' is the start of 2 refund decision ids: feed0001aaaa, feed0002bbbb" in ambiguous
    assert "give more characters" in ambiguous
    missing = flat(run_cli(cfg, "refunds", "show", "beef", check=1, env=COLS).stderr)
    assert "no refund decision 'beef' (nor one whose id starts with it)" in missing

    # churn reports / show / runs
    table = run_cli(cfg, "churn", "reports", env=COLS).stdout
    assert table.startswith("2 churn report(s)\n") and "…" not in table
    assert "c0ffee01aaaa" in table and "c0ffee02bbbb" in table and table.count(LONG_USER) == 0
    assert "churned repeat customer(s)" in table and len(Z_SECONDS.findall(table)) == 2
    reports = json.loads(run_cli(cfg, "churn", "reports", "--json", env=COLS).stdout)
    assert {r["id"] for r in reports} == {"c0ffee01aaaa", "c0ffee02bbbb"}
    first = reports[0]
    assert first["headline"] in table and Z_MICROS.fullmatch(first["window_start"]) and first["summary"]
    assert isinstance(first["signals"], dict) and first["trigger"] == "cli"
    lines = run_cli(cfg, "churn", "reports", "--jsonl", env=COLS).stdout.splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == ["c0ffee01aaaa", "c0ffee02bbbb"]
    shown = run_cli(cfg, "churn", "show", "c0ffee01", env=COLS).stdout
    assert shown.startswith("churn report c0ffee01aaaa (cli, ") and "…" not in shown
    headline = next(r["headline"] for r in reports if r["id"] == "c0ffee01aaaa")
    assert f"  headline     {headline}\n" in shown and len(headline) > 80
    assert re.search(r"  window       " + Z_SECONDS.pattern + r" \.\. " + Z_SECONDS.pattern + "\n", shown)
    one = json.loads(run_cli(cfg, "churn", "show", "c0ffee02bbbb", "--json", env=COLS).stdout)
    assert one["id"] == "c0ffee02bbbb" and one["headline"] and Z_MICROS.fullmatch(one["created_at"])
    ambiguous = flat(run_cli(cfg, "churn", "show", "c0ffee0", check=2, env=COLS).stderr)
    assert "'c0ffee0' is the start of 2 churn report ids: c0ffee01aaaa, c0ffee02bbbb" in ambiguous
    missing = flat(run_cli(cfg, "churn", "show", "dead", check=1, env=COLS).stderr)
    assert "no churn report 'dead' (nor one whose id starts with it)" in missing
    runs = run_cli(cfg, "churn", "runs", env=COLS).stdout
    assert runs.startswith("schedule: 0 6 * * 1 (UTC); current slot ") and "2 churn scan run(s)" in runs
    assert "…" not in runs and runs.count("churn_scan:manual:") == 2
    history = json.loads(run_cli(cfg, "churn", "runs", "--json", env=COLS).stdout)
    assert [r["state"] for r in history] == ["done", "done"] and Z_MICROS.fullmatch(history[0]["started_at"])
    assert all(r["key"] in runs for r in history)


@pytest.mark.slow
def test_inbox_for_pipes_and_scripts(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    errors = {
        501: "amount 'twelve' is not a number; " + "the callback was signed with the current key, " * 3,
        502: "unknown status 'half-paid'; " + "Plisio sends new, pending, completed, expired, " * 3,
        7001: "the callback has no txn_id; " + "nothing in it names an invoice we could re-read, " * 3,
    }

    async def setup(rt: Runtime) -> None:
        rows = Inbox(rt.store)
        for n, (new_id, error) in enumerate(errors.items()):
            recorded = rows.record(
                source="callback", body=f"body {n}".encode(), encoding="form",
                fields={"txn_id": f"{n}{'9' * 23}", "status": "weird"}, callback=None, error=error, now=rt.now(),
            )  # fmt: skip
            with rt.store.begin("test: a known id") as conn:
                conn.execute(update(inbox).where(inbox.c.id == recorded.id).values(id=new_id))

    build(cfg, setup)

    table = run_cli(cfg, "inbox", "list", "--state", "poison", env=COLS).stdout
    assert table.startswith("3 inbox row(s) · poison\n") and "…" not in table
    for error in errors.values():
        assert error.strip() in table, "the error is whole, not cut at 120 characters or at the terminal"
    assert len(Z_SECONDS.findall(table)) == 3
    listed = json.loads(run_cli(cfg, "inbox", "list", "--json", env=COLS).stdout)
    assert [r["id"] for r in listed] == [7001, 502, 501] and listed[0]["error"] == errors[7001]
    assert listed[0]["fields"] == {"txn_id": "2" + "9" * 23, "status": "weird"}
    assert Z_MICROS.fullmatch(listed[0]["received_at"]) and listed[0]["state"] == "poison"
    lines = run_cli(cfg, "inbox", "list", "--jsonl", "--limit", "2", env=COLS).stdout.splitlines()
    assert [json.loads(line)["id"] for line in lines] == [7001, 502]
    bogus = flat(run_cli(cfg, "inbox", "list", "--state", "bogus", check=2, env=COLS).stderr)
    assert "--state: unknown value 'bogus'" in bogus
    assert "pending, processing, done, failed, poison, all" in bogus

    # A row id that changes a row is a number, taken exactly: never the start of another one.
    missing = flat(run_cli(cfg, "inbox", "retry", "70", check=1, env=COLS).stderr)
    assert "no inbox row with id 70" in missing
    retried = run_cli(cfg, "inbox", "retry", "7001", env=COLS).stdout
    assert "inbox row 7001 (2" + "9" * 23 + " weird) is pending again" in retried
    not_a_number = flat(run_cli(cfg, "inbox", "retry", "50x", check=2, env=COLS).stderr)
    assert "Invalid value for 'row_id'" in not_a_number and "valid integer" in not_a_number


@pytest.mark.slow
def test_connections_and_grants_for_pipes_and_scripts(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)

    async def setup(rt: Runtime) -> None:
        actor = Actor("cli", LONG_USER)
        rt.vault.add_connection(LONG_CONNECTION, SANDBOX_API_KEY, actor)
        rt.vault.add_connection("shop-2", SANDBOX_API_KEY, actor)
        rt.grants.add(persona="finance", connection=LONG_CONNECTION, tools=None, max_amount="200.50",
                      daily_total="1000", actor=actor)  # fmt: skip
        rt.grants.add(persona="growth", connection=LONG_CONNECTION, tools=["@read"], max_amount=None,
                      daily_total=None, actor=actor)  # fmt: skip

    build(cfg, setup)

    table = run_cli(cfg, "connections", "list", env=COLS).stdout
    assert table.startswith("2 connection(s)\n") and "…" not in table and SANDBOX_API_KEY not in table
    assert LONG_CONNECTION in table and table.count(LONG_USER) == 2 and "finance, growth" in table
    assert len(Z_SECONDS.findall(table)) == 2
    found = json.loads(run_cli(cfg, "connections", "list", "--json", env=COLS).stdout)
    assert [c["name"] for c in found] == [LONG_CONNECTION, "shop-2"]
    assert found[0]["grants"] == ["finance", "growth"] and found[1]["grants"] == []
    assert found[0]["created_by"] == LONG_USER and Z_MICROS.fullmatch(found[0]["created_at"])
    assert len(found[0]["fingerprint"]) == 12 and SANDBOX_API_KEY not in json.dumps(found)
    lines = run_cli(cfg, "connections", "list", "--jsonl", env=COLS).stdout.splitlines()
    assert [json.loads(line)["name"] for line in lines] == [LONG_CONNECTION, "shop-2"]

    table = run_cli(cfg, "grants", "list", env=COLS).stdout
    assert table.startswith("2 grant(s)\n") and "…" not in table
    assert table.count(LONG_CONNECTION) == 2 and table.count(LONG_USER) == 2
    assert "plisio_create_invoice" in table and "200.5" in table and "1000" in table
    grants = json.loads(run_cli(cfg, "grants", "list", "--json", env=COLS).stdout)
    assert [(g["persona"], g["connection"]) for g in grants] == [("finance", LONG_CONNECTION),
                                                                 ("growth", LONG_CONNECTION)]  # fmt: skip
    assert (grants[0]["max_amount"], grants[0]["daily_total"]) == ("200.5", "1000")
    assert (grants[1]["max_amount"], grants[1]["daily_total"]) == (None, None)
    assert "plisio_create_invoice" in grants[0]["tools"] and Z_MICROS.fullmatch(grants[0]["created_at"])
    lines = run_cli(cfg, "grants", "list", "--jsonl", "--persona", "growth", env=COLS).stdout.splitlines()
    assert [json.loads(line)["persona"] for line in lines] == ["growth"]
    persona = flat(run_cli(cfg, "grants", "list", "--persona", "nobody", check=2, env=COLS).stderr)
    assert "--persona: unknown value 'nobody'" in persona and "finance, growth, recovery, refunds" in persona
    connection = flat(run_cli(cfg, "grants", "list", "--connection", "shop-9", check=2, env=COLS).stderr)
    assert "--connection: unknown value 'shop-9'" in connection and f"{LONG_CONNECTION}, shop-2" in connection
