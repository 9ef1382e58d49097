"""``GET /metrics`` scraped after a scripted chat, a burst of callbacks (duplicates and a forgery among them)
and a failed flow: each counter and gauge says what happened, and nothing without a token."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from persona.app import Runtime
from persona.deps import FlowDeps
from persona.models import Models as RuntimeModels
from persona.server import create_app
from persona.store.engine import Store
from persona.worker import Worker
from tests.harness import bearer, build_runtime, call, say, step
from tests.test_server import Models, client
from tests.test_webhooks import callback_fields
from tests.test_worker import settings_with
from tools.plisio.callbacks import encode_form_callback
from tools.plisio.models import Operation
from tools.plisio.sandbox import SANDBOX_API_KEY, Sandbox

pytestmark = pytest.mark.anyio

FORM = {"content-type": "application/x-www-form-urlencoded"}


class Broken:
    """A recovery flow that fails every time (its row fails after the one attempt allowed)."""

    async def handle_failure(self, deps: FlowDeps, op: Operation, *, trigger: str) -> None:
        raise RuntimeError("the flow broke")

    async def handle_success(self, deps: FlowDeps, op: Operation) -> None:
        return None


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_the_counters_say_what_happened(store: Store, sandbox: Sandbox) -> None:
    rt = build_runtime(store, sandbox, settings=settings_with(max_attempts=1))
    try:
        await _scenario(rt, sandbox)
    finally:
        rt.audit.close()


async def _scenario(rt: Runtime, sandbox: Sandbox) -> None:
    models = Models([step(call("plisio_get_balance", {"psys_cid": "BTC"})), say("You hold some BTC.")])
    rt = dataclasses.replace(rt, models=RuntimeModels(rt.settings, models))
    app = create_app(rt, start_worker=False)
    async with client(app, bearer(rt)) as http:
        assert (await http.get("/metrics", headers={"authorization": ""})).status_code == 401
        chat = await http.post("/v1/chat", json={"persona": "finance", "message": "What is my BTC balance?"})
        assert chat.status_code == 200, chat.text
        for n in range(5):
            body = encode_form_callback(
                callback_fields(f"6a1b2c3d4e5f60718293a4b{n}", "completed"), SANDBOX_API_KEY
            )
            assert (await http.post("/webhooks/plisio", content=body, headers=FORM)).status_code == 200
            if n < 2:
                assert (await http.post("/webhooks/plisio", content=body, headers=FORM)).json()["duplicate"]
        forged = encode_form_callback(callback_fields("6a1b2c3d4e5f60718293a4bf", "completed"), "sk_not_ours")
        assert (await http.post("/webhooks/plisio", content=forged, headers=FORM)).status_code == 401

        created = await rt.plisio.client.create_invoice(
            order_number="7", order_name="Pro plan", currency="BTC", source_amount=Decimal("100"),
            callback_url="http://127.0.0.1:9/lost",
        )  # fmt: skip
        await sandbox.cancel(created.txn_id)
        worker = Worker(rt.worker, handlers=Broken(), churn=None, schedules=False)  # type: ignore[arg-type]
        found = await worker.reconcile()  # the new failure, and the seeded shop's of the last 72 h
        assert created.txn_id in found.enqueued
        await worker.drain()
        scraped = await http.get("/metrics")
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    got = samples(scraped.text)

    def value(name: str, **labels: str) -> float:
        return got.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("persona_model_requests_total", persona="finance", model="scripted-test", outcome="ok") == 2
    assert value("persona_model_latency_seconds_count", persona="finance", model="scripted-test") == 2
    assert value("persona_tool_calls_total", tool="plisio_get_balance", outcome="succeeded") == 1
    assert value("persona_policy_decisions_total", verdict="allow") >= 1
    assert value("persona_callbacks_total", result="received") == 5
    assert value("persona_callbacks_total", result="duplicate") == 2
    assert value("persona_callbacks_rejected_total", kind="signature") == 1
    assert value("persona_worker_batches_total") >= 1
    failed = len(found.enqueued)
    assert value("persona_worker_rows_total", outcome="failed") == failed
    assert value("persona_inbox_rows", state="failed") == failed
    assert value("persona_inbox_rows", state="pending") + value("persona_inbox_rows", state="done") == 5
    assert value("persona_inbox_oldest_age_seconds", state="failed") >= 0
    assert ("persona_approvals_pending", ()) in got and ("persona_drafts_pending", ()) in got
    assert SANDBOX_API_KEY not in scraped.text
