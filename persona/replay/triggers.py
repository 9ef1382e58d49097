"""What starts a non-chat scenario: a signed Plisio callback, a refund request, a churn scan.

Each goes through the same path production uses: the callback is signed by the sandbox and
posted to the real webhook receiver (in-process ASGI), lands in the inbox and is processed by
the worker; refund requests and churn scans call the flows as the CLI and HTTP API do.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from persona.errors import ScenarioError
from persona.replay.scenario import Scenario

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from persona.deps import FlowDeps, WorkerDeps
    from persona.replay.script import Scripts
    from tools.plisio.sandbox import Sandbox

REPLAY_CALLBACK_URL = "http://persona.replay/webhooks/plisio"
"""Where the replayed sandbox sends its callbacks: never a real host (the app is served in-process)."""


async def refund_request(flows: FlowDeps, scenario: Scenario, scripts: Scripts) -> Any:
    from persona.flows.refunds import triage

    number = scenario.trigger.order_number or ""
    page = await flows.plisio.list_operations(search=number, limit=5)
    found = [op for op in page.operations if op.params is not None and op.params.order_number == number]
    if not found:
        raise ScenarioError(f"trigger.order_number {number!r} is not in the seeded sandbox shop")
    scripts.trigger.update({"txn_id": found[0].id, "order_number": number})
    return await triage(
        flows,
        txn_id=found[0].id,
        reason=scenario.trigger.reason or "",
        requested_by=scenario.user,
        trigger="replay",
    )


async def churn_scan(flows: FlowDeps, scenario: Scenario) -> dict[str, list[str]]:
    from persona.flows.churn import scan

    report = await scan(flows, trigger="replay", slot=scenario.now)
    return {
        name: [p["email"] for p in people]
        for name, people in report.signals.items()
        if isinstance(people, list)
    }


async def callback(
    worker: WorkerDeps, receiver: ASGIApp, scenario: Scenario, scripts: Scripts, sandbox: Sandbox
) -> None:
    """Create the invoice, move it, let the sandbox POST the signed callback to ``receiver`` (the app, served
    in-process), run the worker."""
    import httpx

    from persona.effects import EffectKey, order_number
    from persona.replay.scenario import InvoiceSpec
    from persona.worker import Worker

    trigger = scenario.trigger
    spec = trigger.invoice or InvoiceSpec()
    sandbox.notifier.transport = httpx.ASGITransport(app=receiver)
    url = REPLAY_CALLBACK_URL + ("?json=true" if trigger.encoding == "json" else "")
    created = await worker.plisio.create_invoice(
        order_number=order_number(EffectKey("replay", scenario.name)), order_name=spec.order_name, currency=spec.currency,
        source_currency=spec.source_currency, source_amount=Decimal(spec.source_amount), email=spec.email,
        callback_url=url,
    )  # fmt: skip
    scripts.trigger.update({"txn_id": created.txn_id, "email": spec.email})
    if trigger.action == "underpay":
        await sandbox.pay(created.txn_id, Decimal(trigger.paid or "0"))
    move = {
        "expire": sandbox.expire,
        "underpay": sandbox.expire,
        "cancel": sandbox.cancel,
        "error": sandbox.error,
    }
    report = await move[trigger.action](created.txn_id)
    delivered = report.get("callback") or {}
    if delivered.get("status_code") != 200:
        raise ScenarioError(f"the webhook receiver did not accept the signed callback: {delivered}")
    await Worker(worker, churn=None, schedules=False).drain()
