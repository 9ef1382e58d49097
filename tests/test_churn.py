"""Churn signals on seeded data with known answers; scans stored, audited, once per scheduled slot."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from persona.app import Runtime
from persona.audit import AuditFilter
from persona.flows import churn
from persona.flows.runs import FlowRuns
from persona.flows.signals import compute
from persona.llm import ScriptedChatModel
from persona.settings import ChurnSettings
from persona.store.engine import Store
from tests.conftest import NOW
from tests.harness import build_runtime, call, say, step, write_config
from tests.test_refunds import persona
from tools.plisio.client import PlisioClient
from tools.plisio.models import Operation, OperationType
from tools.plisio.sandbox import SANDBOX_API_KEY, Sandbox
from tools.plisio.sandbox import seed as known

pytestmark = pytest.mark.anyio
SETTINGS = ChurnSettings()


async def all_invoices(box: Sandbox) -> list[Operation]:
    async with PlisioClient(
        SANDBOX_API_KEY, base_url="http://sandbox.test/api/v1", transport=box.transport()
    ) as c:
        found: list[Operation] = []
        page = 1
        while True:
            batch = await c.list_operations(page=page, limit=50, type=OperationType.INVOICE)
            found += batch.operations
            if page >= batch.meta.page_count:
                return found
            page += 1


@pytest.mark.parametrize("seed", [7, 11, 2024])
async def test_signals_on_seeded_data_equal_the_known_answers(seed: int) -> None:
    box = Sandbox(seed=seed, now=lambda: NOW)
    signals = compute(await all_invoices(box), now=NOW, settings=SETTINGS)
    assert signals.emails("churned") == known.CHURNED_REPEAT_CUSTOMERS
    assert signals.emails("underpayers") == known.REPEAT_UNDERPAYERS
    assert signals.emails("switchers") == known.COIN_SWITCHERS
    share = signals.expired_share
    assert (share.recent_expired, share.recent_total) == (known.EXPIRED_LAST_30D, known.INVOICES_LAST_30D)
    assert (share.previous_expired, share.previous_total) == (
        known.EXPIRED_PREVIOUS_60D,
        known.INVOICES_PREVIOUS_60D,
    )
    assert share.recent_share == known.EXPIRED_SHARE_LAST_30D == Fraction(1, 4)
    assert share.previous_share == known.EXPIRED_SHARE_PREVIOUS_60D == Fraction(1, 10)
    assert share.rising
    flagged = signals.emails("churned") | signals.emails("underpayers") | signals.emails("switchers")
    assert not flagged & known.NEAR_MISS_CUSTOMERS
    assert signals.invoices == known.INVOICES_LAST_30D + known.INVOICES_PREVIOUS_60D


async def test_signal_evidence_names_counts_dates_coins_and_amounts() -> None:
    box = Sandbox(seed=7, now=lambda: NOW)
    signals = compute(await all_invoices(box), now=NOW, settings=SETTINGS)
    olivia = next(c for c in signals.churned if c.email == "olivia.hart@example.com")
    assert (olivia.completed, olivia.invoices, olivia.coins_paid) == (4, 4, ("BTC", "LTC"))
    assert olivia.last_paid_at is not None and 51 <= (NOW - olivia.last_paid_at).days <= 52
    assert [e.order_number for e in olivia.evidence] == ["202617001", "202617002", "202617003", "202617004"]
    assert dict(olivia.paid_by_currency) == {"USD": Decimal("190.00") + 19 + 19 + 15}
    diego = next(c for c in signals.underpayers if c.email == "diego.alvarez@example.com")
    assert diego.underpaid == 3 and {e.order_number for e in diego.evidence} == {
        "202617018",
        "202617019",
        "202617021",
    }
    assert all(e.received and e.amount and 0 < e.received < e.amount for e in diego.evidence)
    raj = next(c for c in signals.switchers if c.email == "raj.patel@example.com")
    assert raj.coins_paid == ("BTC", "ETH", "TRX", "USDT") and raj.paid == 4 and raj.completed == 3
    facts = signals.to_dict()
    assert (
        facts["expired_share"]["recent_share"] == "1/4"
        and facts["expired_share"]["recent_percent"] == "25.0%"
    )
    assert json.loads(json.dumps(facts)) == facts, "JSON-ready"


def invoice(
    i: int, email: str | None, days: float, status: str = "completed", coin: str = "BTC", **kw: Any
) -> Operation:
    created = int((NOW - timedelta(days=days)).timestamp())
    params = {"order_number": f"T-{i}", "email": email, "source_amount": "10.00", "source_currency": "USD"}
    return Operation.model_validate(
        {"id": f"op{i:06d}", "type": "invoice", "status": status, "psys_cid": coin, "amount": "1",
         "actual_sum": kw.pop("received", "1" if status in ("completed", "mismatch") else "0"),
         "created_at_utc": created, "params": params, **kw}
    )  # fmt: skip


def test_definitions_at_their_boundaries() -> None:
    ops = [
        # churned: 3 completed, the newest exactly quiet_days old (outside the last 45 days)
        *[invoice(i, "a@x.io", d) for i, d in enumerate((80, 60, 45))],
        # not churned: an expired (unpaid) invoice 10 days ago counts as activity
        *[invoice(10 + i, "b@x.io", d) for i, d in enumerate((80, 60, 50))],
        invoice(13, "b@x.io", 10, "expired"),
        # not churned: mismatch is not "completed", so only 2 completed
        invoice(20, "c@x.io", 80), invoice(21, "c@x.io", 70), invoice(22, "c@x.io", 60, "mismatch", received="1.2"),
        # switcher through a mismatch; a 4th coin only expired does not count
        invoice(30, "d@x.io", 5, coin="BTC"), invoice(31, "d@x.io", 4, coin="ETH"),
        invoice(32, "d@x.io", 3, "mismatch", coin="SOL", received="2"), invoice(33, "d@x.io", 2, "expired", coin="TON"),
        # underpayer: two expired with money; an expired with none does not count
        invoice(40, "E@X.io", 9, "expired", received="0.5"), invoice(41, "e@x.io", 8, "expired", received="0.1"),
        invoice(42, "f@x.io", 9, "expired", received="0.5"), invoice(43, "f@x.io", 8, "expired"),
        # ignored: a guest, a withdrawal, an invoice older than the lookback
        invoice(50, None, 1, "expired", received="0.3"), invoice(51, None, 2, "expired", received="0.3"),
        Operation.model_validate({"id": "w1", "type": "cash_out", "status": "completed", "created_at_utc": int(NOW.timestamp()) - 60}),
        invoice(60, "a@x.io", 91),
    ]  # fmt: skip
    s = compute(ops, now=NOW, settings=SETTINGS)
    assert s.emails("churned") == {"a@x.io"}
    assert s.emails("switchers") == {"d@x.io"}
    assert s.emails("underpayers") == {"e@x.io"}, "emails are case-folded"
    a = s.churned[0]
    assert (a.completed, a.invoices) == (3, 3), "the 91-day-old invoice is outside the lookback"
    share = s.expired_share
    assert (share.recent_expired, share.recent_total) == (8, 11)
    assert (share.previous_expired, share.previous_total) == (0, 9) and share.rising
    tight = compute(
        ops, now=NOW, settings=SETTINGS.model_copy(update={"quiet_days": 46, "coin_switch_min": 4})
    )
    assert "a@x.io" not in tight.emails("churned") and tight.emails("switchers") == set()


# -- the scan --------------------------------------------------------------------------------------


def growth(text: str) -> Any:
    calls: list[Mapping[str, Any]] = []

    def factory(flow: str, persona_name: str, facts: Mapping[str, Any]) -> ScriptedChatModel:
        assert (flow, persona_name) == ("churn_scan", "growth")
        calls.append(facts)
        first = facts["churned_repeat_customers"][0]["email"]
        return ScriptedChatModel(
            [step(call("plisio_list_transactions", {"search": first, "limit": 10})), say(text)],
            name="scripted-growth",
        )

    factory.calls = calls  # type: ignore[attr-defined]
    return factory


@pytest.fixture
async def rt(store: Store, sandbox: Sandbox) -> Any:
    runtime = build_runtime(store, sandbox)
    yield runtime
    await runtime.plisio.aclose()


async def test_scan_stores_an_actionable_report_and_audits_it(rt: Runtime, sandbox: Sandbox) -> None:
    rt.model_factory = growth(
        "**Headline**: 4 repeat customers stopped paying, e.g. olivia.hart@example.com."
    )
    report = await churn.scan(rt.flows, trigger="cli", requested_by="gina@example.com")
    assert report.summarized_by == "scripted-growth" and report.summary.startswith("**Headline**")
    assert report.run_key.startswith("churn_scan:manual:") and report.trigger == "cli"
    assert report.operations_scanned == known.INVOICES_LAST_30D + known.INVOICES_PREVIOUS_60D
    assert report.window_end == NOW and report.window_start == NOW - timedelta(days=90)
    emails = {c["email"] for c in report.signals["churned_repeat_customers"]}
    assert emails == known.CHURNED_REPEAT_CUSTOMERS and report.signals["review"]["flags"] == []
    pages = [
        r for r in sandbox.requests if r.path == "/api/v1/operations" and r.query.get("type") == "invoice"
    ]
    assert [r.query["limit"] for r in pages] == ["50"] * 6 + (["50"] if len(pages) > 6 else [])
    assert [d.id for d in churn.list_reports(rt.flows)] == [report.id]
    assert churn.get_report(rt.flows, report.id).signals == report.signals
    (event,) = rt.audit.query(AuditFilter(event="churn_report_created"))
    assert (event.source, event.user, event.persona) == ("cli", "gina@example.com", "growth")
    assert set(event.payload["churned"]) == known.CHURNED_REPEAT_CUSTOMERS
    assert event.payload["expired_share"] == {"recent_share": "1/4", "previous_share": "1/10", "rising": True}
    (run,) = FlowRuns(rt.store, rt.now).recent("churn_scan")
    assert (
        run.state == "done"
        and run.conversation_id == report.conversation_id
        and report.id in (run.summary or "")
    )


async def test_the_same_slot_twice_is_one_report_and_one_model_run(rt: Runtime) -> None:
    factory = growth("Report.")
    rt.model_factory = factory
    slot = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
    first = await churn.scan(rt.flows, trigger="schedule", slot=slot)
    second = await churn.scan(rt.flows, trigger="schedule", slot=slot)
    assert first.id == second.id and first.run_key == "churn_scan:2026-11-23T06:00:00+00:00"
    assert len(factory.calls) == 1 and len(churn.list_reports(rt.flows)) == 1
    assert len(rt.audit.query(AuditFilter(event="churn_report_created"))) == 1
    due = await churn.scan_due(rt.flows)  # the schedule "0 6 * * 1": NOW (a Tuesday) belongs to Monday's slot
    assert due is not None and due.id == first.id
    manual = await churn.scan(rt.flows, trigger="cli")
    assert manual.id != first.id and len(churn.list_reports(rt.flows)) == 2


async def test_without_a_model_the_report_is_a_template_with_every_number(rt: Runtime) -> None:
    report = await churn.scan(rt.flows, trigger="cli")
    assert report.summarized_by == "template" and report.conversation_id is None
    for email in known.CHURNED_REPEAT_CUSTOMERS | known.REPEAT_UNDERPAYERS | known.COIN_SWITCHERS:
        assert email in report.summary
    assert "30/120 expired (25.0%)" in report.summary and "18/180 (10.0%)" in report.summary
    assert "## Actions" in report.summary
    assert not any(email in report.summary for email in known.NEAR_MISS_CUSTOMERS)


async def test_a_summary_naming_unknown_customers_is_flagged(rt: Runtime) -> None:
    rt.model_factory = growth("Call nora.quinn@example.com now.")
    report = await churn.scan(rt.flows, trigger="replay")
    assert report.signals["review"]["flags"] == [
        "summary_names_customers_not_in_signals:nora.quinn@example.com"
    ]


def test_due_and_next_slots() -> None:
    monday_six = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
    assert churn.due_slot("0 6 * * 1", monday_six) == monday_six
    assert churn.due_slot("0 6 * * 1", monday_six - timedelta(seconds=1)) == monday_six - timedelta(days=7)
    assert churn.next_slot("0 6 * * 1", monday_six) == monday_six + timedelta(days=7)


@pytest.mark.slow
def test_churn_cli_scan_reports_show_runs(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)  # in-process sandbox: history seeded up to today's midnight, scanned now
    out = persona(cfg, "churn", "scan").stdout
    report_id = re.search(r"churn report ([0-9a-f]{12})", out)
    assert report_id, out
    assert "4 churned repeat customer(s), 3 repeat underpayer(s), 3 coin switcher(s)" in out
    # The 30-day window moves with the clock, so the shares drift a little during the day.
    assert re.search(r"expired share \d+\.\d% vs \d+\.\d% \(rising\)", out) and "written by   template" in out
    first = json.loads(persona(cfg, "churn", "scan", "--scheduled", "--json").stdout)
    again = json.loads(persona(cfg, "churn", "scan", "--scheduled", "--json").stdout)
    assert first["id"] == again["id"] and first["trigger"] == "schedule"
    listed = persona(cfg, "churn", "reports").stdout
    assert "2 churn report(s)" in listed and report_id.group(1) in listed
    shown = persona(cfg, "churn", "show", report_id.group(1)).stdout
    assert "olivia.hart@example.com" in shown
    runs = persona(cfg, "churn", "runs").stdout
    assert "schedule: 0 6 * * 1 (UTC)" in runs and "(done)" in runs and "2 churn scan run(s)" in runs
    assert "no churn report 'nope'" in persona(cfg, "churn", "show", "nope", check=1).stderr
