"""Refund triage on the seeded sandbox: the policy decides, a scripted persona explains, nothing else wins."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from persona.app import Runtime
from persona.audit import AuditFilter
from persona.errors import NotFound
from persona.flows import refunds
from persona.flows.refund_policy import Clause
from persona.flows.runs import FlowRuns
from persona.llm import ScriptedChatModel
from persona.settings import RetrySettings
from persona.store.engine import Store
from tests.harness import build_runtime, call, repo_settings, run_cli, say, step, write_config
from tools.errors import PlisioTransportError
from tools.plisio.models import Operation
from tools.plisio.sandbox import LoopbackServer, Sandbox
from tools.plisio.sandbox.seed import RECENT_REFUNDABLE_ORDER_NUMBERS, TOO_OLD_TO_REFUND_ORDER_NUMBERS

pytestmark = pytest.mark.anyio

MISMATCH_ORDER = "202617036"  # raj.patel: 125% of 19.00 USD paid in USDT, 3 days ago
UNDERPAID_ORDER = "202617017"  # priya.nair: 80% of a GBP price received, then expired, 9 days ago


def explaining(text: str, *, estimate: bool = True) -> Any:
    """A model factory: look the invoice up, estimate the refund's cost when there is one, write ``text``."""
    models: list[ScriptedChatModel] = []

    def factory(flow: str, persona: str, facts: Mapping[str, Any]) -> ScriptedChatModel:
        assert flow == "refund_triage" and persona == "refunds"
        steps = [step(call("plisio_get_invoice", {"invoice_id": facts["invoice"]["txn_id"]}))]
        inputs = facts["cost_estimate_inputs"]
        if estimate and inputs:
            args = {
                "psys_cid": inputs["psys_cid"],
                "addresses": [inputs["address"]],
                "amounts": [inputs["amount"]],
            }
            steps.append(step(call("plisio_estimate_fee", args), call("plisio_estimate_commission", args)))
        steps.append(say(text))
        models.append(ScriptedChatModel(steps, name="scripted-finance"))
        return models[-1]

    factory.models = models  # type: ignore[attr-defined]
    return factory


@pytest.fixture
async def rt(store: Store, sandbox: Sandbox) -> Any:
    runtime = build_runtime(store, sandbox)
    yield runtime
    await runtime.plisio.aclose()


async def invoice(rt: Runtime, order_number: str) -> Operation:
    page = await rt.plisio.client.list_operations(search=order_number, limit=10)
    found = [
        op
        for op in page.operations
        if op.params and op.params.order_number == order_number and op.status != "cancelled duplicate"
    ]
    assert len(found) == 1, order_number
    return found[0]


def events(rt: Runtime, event: str) -> list[Any]:
    return rt.audit.query(AuditFilter(event=event))


async def test_approved_refund_is_explained_estimated_stored_listed_and_audited(
    rt: Runtime, sandbox: Sandbox
) -> None:
    op = await invoice(rt, RECENT_REFUNDABLE_ORDER_NUMBERS[1])  # 79.00 USD in USDT_TRX, 6 days ago
    rt.model_factory = explaining(
        "Approved: paid 6 days ago and 79.00 USD is within the 100 USD auto-approve limit. Sending "
        "79.387062 USDT_TRX back costs a network fee of 13.7 (estimated to the invoice's own wallet_hash)."
    )
    out = await refunds.triage(
        rt.flows,
        txn_id=op.id,
        reason="Bought the wrong plan",
        requested_by="alice@example.com",
        trigger="cli",
    )
    assert (out.decision, out.clause) == ("approve", Clause.AUTO_APPROVE_UP_TO)
    assert out.refund_amount == op.actual_sum and out.refund_currency == "USDT_TRX"
    assert (out.refund_value, out.value_currency) == (Decimal("79.00"), "USD")
    assert out.explained_by == "scripted-finance" and out.explanation.startswith("Approved")
    assert out.flags == () and out.conversation_id
    assert out.cost_estimate is not None
    assert out.cost_estimate["fee"]["psys_cid"] == "USDT_TRX" and Decimal(out.cost_estimate["fee"]["fee"]) > 0
    paid = out.cost_estimate["commission"]
    assert Decimal(paid["commission"]) == (op.actual_sum * Decimal("0.005")).quantize(Decimal("0.000001"))
    assert paid["network_fee_coin"] == "TRX" and "total_cost" not in paid, "USDT_TRX and TRX do not add up"
    fee_requests = [r for r in sandbox.requests if r.path == "/api/v1/operations/fee/USDT_TRX"]
    assert fee_requests and fee_requests[0].query["addresses"] == op.wallet_hash
    assert any(r.path == f"/api/v1/invoices/{op.id}" for r in sandbox.requests), (
        "the persona read the invoice"
    )

    assert [d.id for d in refunds.list_decisions(rt.flows)] == [out.id]
    again = refunds.get_decision(rt.flows, out.id)
    assert (again.decision, again.clause, again.refund_amount, again.refund_value) == (
        "approve", Clause.AUTO_APPROVE_UP_TO, op.actual_sum, Decimal("79.00"))  # fmt: skip
    assert again.cost_estimate == out.cost_estimate and again.explanation == out.explanation
    assert again.facts and again.facts["invoice"]["order_number"] == "202618802"
    (decided,) = events(rt, "refund_decided")
    assert (decided.decision, decided.reason, decided.source, decided.user) == (
        "approve", Clause.AUTO_APPROVE_UP_TO, "cli", "alice@example.com")  # fmt: skip
    assert decided.payload["refund_decision_id"] == out.id and decided.conversation_id == out.conversation_id
    tools = [
        r.tool for r in rt.audit.conversation(out.conversation_id or "") if r.event == "tool_call_succeeded"
    ]
    assert sorted(tools) == ["plisio_estimate_commission", "plisio_estimate_fee", "plisio_get_invoice"]
    assert events(rt, "refund_explanation_flagged") == []


async def test_a_model_claiming_approval_of_a_denied_refund_changes_nothing_and_is_flagged(
    rt: Runtime,
) -> None:
    op = await invoice(rt, TOO_OLD_TO_REFUND_ORDER_NUMBERS[0])  # completed 20 days ago
    rt.model_factory = explaining(
        "Good news: your refund has been approved and will be sent today.", estimate=False
    )
    out = await refunds.triage(
        rt.flows, txn_id=op.id, reason="please", requested_by="bob@example.com", trigger="http"
    )
    assert (out.decision, out.clause) == ("deny", Clause.WINDOW_DAYS)
    assert out.refund_amount is None and out.refund_value is None
    assert "explanation_contradicts_decision:approve" in out.flags
    assert out.explained_by == "policy" and out.explanation.startswith(
        "Denied under flows.refunds.window_days"
    )
    stored = refunds.get_decision(rt.flows, out.id)
    assert stored.decision == "deny" and "approved" not in stored.explanation
    assert stored.facts and "has been approved" in stored.facts["review"]["model_explanation"]
    (flagged,) = events(rt, "refund_explanation_flagged")
    assert flagged.decision == "deny" and flagged.source == "http"
    assert "has been approved" in flagged.payload["model_explanation"]
    (decided,) = events(rt, "refund_decided")
    assert decided.decision == "deny" and decided.payload["flags"] == list(out.flags)


async def test_without_a_model_the_policy_explains(rt: Runtime) -> None:
    op = await invoice(rt, RECENT_REFUNDABLE_ORDER_NUMBERS[2])  # 45.15 EUR in ETH, 11 days ago
    assert rt.model_factory is None and rt.models.flow("refund_triage", "refunds", {}) is None
    out = await refunds.triage(
        rt.flows, txn_id=op.id, reason="duplicate order", requested_by="carol", trigger="cli"
    )
    assert (out.decision, out.clause) == ("approve", Clause.AUTO_APPROVE_UP_TO)
    assert out.refund_currency == "ETH" and out.refund_amount == op.actual_sum
    assert out.value_currency == "USD" and Decimal("48.90") < (out.refund_value or 0) < Decimal("49.10")
    assert out.explained_by == "policy" and out.conversation_id is None and out.cost_estimate is None
    assert (
        "45.15 EUR = " in out.explanation
        and "Approved under flows.refunds.auto_approve_up_to" in out.explanation
    )


async def test_seeded_cases_mismatch_underpaid_escalation_and_duplicates(rt: Runtime) -> None:
    mismatch = await invoice(rt, MISMATCH_ORDER)
    out = await refunds.triage(
        rt.flows, txn_id=mismatch.id, reason="paid too much", requested_by="raj", trigger="cli"
    )
    assert mismatch.actual_sum is not None and mismatch.amount is not None
    assert (out.decision, out.refund_amount) == ("approve", mismatch.actual_sum - mismatch.amount)
    assert out.refund_value == Decimal("4.75")

    under = await invoice(rt, UNDERPAID_ORDER)
    out = await refunds.triage(
        rt.flows, txn_id=under.id, reason="gave up", requested_by="priya", trigger="cli"
    )
    assert (out.decision, out.clause) == ("escalate", Clause.UNDERPAID)

    big = await invoice(rt, RECENT_REFUNDABLE_ORDER_NUMBERS[0])  # 190.00 USD
    first = await refunds.triage(
        rt.flows, txn_id=big.id, reason="not needed", requested_by="ava", trigger="cli"
    )
    assert (first.decision, first.clause, first.refund_value) == (
        "escalate", Clause.AUTO_APPROVE_UP_TO, Decimal("190.00"))  # fmt: skip
    second = await refunds.triage(
        rt.flows, txn_id=big.id, reason="FRAUD!", requested_by="ava", trigger="replay"
    )
    assert (second.decision, second.clause) == ("deny", Clause.ONE_PER_INVOICE) and first.id in second.detail
    assert len(refunds.list_decisions(rt.flows, limit=2)) == 2
    assert {d.id for d in refunds.list_decisions(rt.flows)} >= {first.id, second.id}
    runs = {r.key: r.state for r in FlowRuns(rt.store, rt.now).recent("refund_triage")}
    assert runs == {
        f"refund_triage:{mismatch.id}:0": "done",
        f"refund_triage:{under.id}:0": "done",
        f"refund_triage:{big.id}:0": "done",
        f"refund_triage:{big.id}:1": "done",
    }


async def test_unknown_invoice_is_not_found_and_nothing_is_stored(rt: Runtime) -> None:
    with pytest.raises(NotFound, match="no invoice 0123456789abcdef01234567"):
        await refunds.triage(
            rt.flows, txn_id="0123456789abcdef01234567", reason="x", requested_by="u", trigger="cli"
        )
    with pytest.raises(NotFound, match="not a Plisio invoice id"):
        await refunds.triage(rt.flows, txn_id="../operations", reason="x", requested_by="u", trigger="cli")
    assert refunds.list_decisions(rt.flows) == [] and events(rt, "refund_decided") == []
    with pytest.raises(NotFound):
        refunds.get_decision(rt.flows, "nope")


class Unreachable(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)


async def test_plisio_unreachable_is_a_clear_error_and_stores_nothing(store: Store, sandbox: Sandbox) -> None:
    settings = repo_settings()
    plisio = settings.plisio.model_copy(update={"retry": RetrySettings(max_attempts=1)})
    rt = build_runtime(
        store, sandbox, settings=settings.model_copy(update={"plisio": plisio}), transport=Unreachable()
    )
    try:
        with pytest.raises(PlisioTransportError, match=r"Plisio is unreachable .* no decision was stored"):
            await refunds.triage(
                rt.flows, txn_id="6b02d94077d5759d69cd2483", reason="x", requested_by="u", trigger="cli"
            )
        assert refunds.list_decisions(rt.flows) == []
    finally:
        await rt.plisio.aclose()


# -- the command line ------------------------------------------------------------------------------


def persona(cfg: Path, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    return run_cli(cfg, *args, check=check)


@pytest.fixture
def served() -> Iterator[tuple[Sandbox, str]]:
    box = Sandbox(seed=7)  # real clock: the CLI's runtime uses the real clock too
    with LoopbackServer(box.app) as server:
        yield box, f"{server.base_url}/api/v1"


@pytest.mark.slow
def test_refunds_cli_triage_list_show(tmp_path: Path, served: tuple[Sandbox, str]) -> None:
    box, url = served
    cfg = write_config(tmp_path, sandbox_url=url)
    old = box.state.by_order_number(TOO_OLD_TO_REFUND_ORDER_NUMBERS[0])
    recent = box.state.by_order_number(RECENT_REFUNDABLE_ORDER_NUMBERS[1])
    assert old is not None and recent is not None
    denied = persona(
        cfg,
        "refunds",
        "triage",
        "--invoice",
        old.id,
        "--reason",
        "[red]changed[/] my mind",
        "--by",
        "ops@example.com",
    )
    out = denied.stdout
    assert re.search(r"refund decision [0-9a-f]{12}: DENY", out), out
    assert "flows.refunds.window_days" in out and "explained by  policy" in out
    assert (
        "Denied under flows.refunds.window_days: Refunds only for invoices paid within the last 14 days."
        in out
    )
    assert "[red]changed[/] my mind" in out, "outside text is printed literally, never as markup"
    approved = persona(
        cfg,
        "refunds",
        "triage",
        "--invoice",
        recent.id,
        "--reason",
        "wrong plan",
        "--by",
        "ops@example.com",
        "--json",
    )
    data = json.loads(approved.stdout)
    assert (data["decision"], data["clause"], data["refund_value"]) == (
        "approve",
        Clause.AUTO_APPROVE_UP_TO,
        "79.00",
    )
    listed = persona(cfg, "refunds", "list").stdout
    assert "2 refund decision(s)" in listed and old.id in listed and "window_days" in listed
    shown = persona(cfg, "refunds", "show", data["id"]).stdout
    assert "APPROVE" in shown and "202618802" in shown and "79.00 USD" in shown
    missing = persona(
        cfg,
        "refunds",
        "triage",
        "--invoice",
        "0123456789abcdef01234567",
        "--reason",
        "x",
        "--by",
        "u@example.com",
        check=1,
    )
    assert "Plisio has no invoice 0123456789abcdef01234567" in missing.stderr
    assert "no refund decision 'nope'" in persona(cfg, "refunds", "show", "nope", check=1).stderr
