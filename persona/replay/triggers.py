"""What starts a non-chat scenario: a signed Plisio callback, a refund request, a churn scan.

Each goes through the same path production uses: the callback is signed by the sandbox and
posted to the real webhook receiver (in-process ASGI), lands in the inbox and is processed by
the worker; refund requests and churn scans call the flows as the CLI and HTTP API do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from persona.errors import ScenarioError
from persona.replay.scenario import Scenario

if TYPE_CHECKING:
    from persona.app import Runtime
    from persona.replay.runner import _Scripts
    from tools.plisio.sandbox import Sandbox


async def refund_request(rt: Runtime, scenario: Scenario, scripts: _Scripts) -> Any:
    from persona.flows.refunds import triage

    number = scenario.trigger.order_number or ""
    page = await rt.plisio.client.list_operations(search=number, limit=5)
    found = [op for op in page.operations if op.params is not None and op.params.order_number == number]
    if not found:
        raise ScenarioError(f"trigger.order_number {number!r} is not in the seeded sandbox shop")
    scripts.trigger.update({"txn_id": found[0].id, "order_number": number})
    return await triage(
        rt, txn_id=found[0].id, reason=scenario.trigger.reason or "", requested_by=scenario.user, trigger="replay"
    )


async def churn_scan(rt: Runtime, scenario: Scenario) -> dict[str, list[str]]:
    from persona.flows.churn import scan

    report = await scan(rt, trigger="replay", slot=scenario.now)
    return {
        name: [p["email"] for p in people]
        for name, people in report.signals.items()
        if isinstance(people, list)
    }


async def callback(rt: Runtime, scenario: Scenario, scripts: _Scripts, sandbox: Sandbox) -> None:
    raise ScenarioError("callback scenarios need the webhook receiver")
