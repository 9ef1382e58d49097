"""``persona demo``: the failed-payment story, end to end on loopback, with no keys and no network.

Everything is the real product except the two outside parties: Plisio is the sandbox (served
over HTTP on 127.0.0.1, signing its callbacks) and the model is the bundled scripted scenario
``scenarios/failed_payment_recovery.yaml``. ``persona serve`` (webhook receiver, inbox, worker,
recovery flow, audit log) runs for real on another loopback port.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from persona.app import Runtime, connect_plisio
from persona.audit import AuditRecord
from persona.audit_chain import VerifyReport
from persona.drafts import Draft, DraftStore
from persona.errors import PersonaError
from persona.events import WorkerEvent
from persona.llm import ChatModel
from persona.replay.scenario import load
from persona.replay.script import scripted_turn
from persona.settings import PlisioSettings, SandboxSettings, ServerSettings, Settings, StoreSettings
from tools.plisio.client import PlisioClient
from tools.plisio.sandbox import SANDBOX_API_KEY, LoopbackServer, Sandbox

SCENARIO = "scenarios/failed_payment_recovery.yaml"
CUSTOMER = "maria.garcia@example.com"


@dataclass
class Story:
    shop: str = ""
    operations: int = 0
    sandbox_url: str = ""
    server_url: str = ""
    txn_id: str = ""
    amount: str = ""
    callback_status: int | None = None
    callback_encoding: str = ""
    draft: Draft | None = None
    tool_calls: list[tuple[str, str]] = field(default_factory=list)
    chain: list[AuditRecord] = field(default_factory=list)
    report: VerifyReport | None = None
    seconds: float = 0.0


def _settings(base: Settings, workdir: Path, sandbox_url: str) -> Settings:
    plisio = PlisioSettings(sandbox=SandboxSettings(url=f"{sandbox_url}/api/v1"))
    return base.model_copy(
        update={
            "plisio": plisio,
            "store": StoreSettings(url=f"sqlite:///{workdir / 'demo.sqlite3'}"),
            "server": ServerSettings(in_process_worker=True),
        }
    )


def _scripted(root: Path) -> Callable[[str, str, Mapping[str, Any]], ChatModel]:
    scenario = load(root / SCENARIO)

    def factory(flow: str, persona: str, facts: Mapping[str, Any]) -> ChatModel:
        return scripted_turn(scenario.turns[0], name="scripted (scenarios/failed_payment_recovery.yaml)",
                             base={"facts": dict(facts), "trigger": {}}, label="demo")  # fmt: skip

    return factory


async def run_story(base: Settings, *, root: Path, workdir: Path, say: Callable[[str], None]) -> Story:
    """Tell the story step by step through ``say``; return what happened for the caller to check."""
    from persona.server import create_app
    from persona.worker import Worker

    started = time.perf_counter()
    story = Story()
    await asyncio.to_thread(_fresh, workdir)
    sandbox = Sandbox(seed=base.plisio.sandbox.seed)
    with LoopbackServer(sandbox.app) as plisio_server:
        story.sandbox_url = plisio_server.base_url
        settings = _settings(base, workdir, plisio_server.base_url)
        rt = Runtime.build(settings, plisio=connect_plisio(settings))
        rt.model_factory = _scripted(root)
        # The receiver serves HTTP in its own thread; the worker runs here, as `persona worker` would.
        app = create_app(rt, start_worker=False)
        stop = asyncio.Event()
        worker = asyncio.create_task(Worker(rt.worker, churn=None, schedules=False).run(stop))
        try:
            with LoopbackServer(app) as persona_server:
                story.server_url = persona_server.base_url
                await _tell(story, rt, sandbox, say)
        finally:
            stop.set()
            await worker
            await rt.aclose()
    story.seconds = time.perf_counter() - started
    return story


async def _tell(story: Story, rt: Runtime, sandbox: Sandbox, say: Callable[[str], None]) -> None:
    checkout = PlisioClient(SANDBOX_API_KEY, base_url=f"{story.sandbox_url}/api/v1")
    try:
        shop = await checkout.get_shop()
        story.shop = shop.name or "?"
        story.operations = (await checkout.list_operations(limit=1)).meta.total_count
        say(f"1. Plisio sandbox: shop [bold]{story.shop}[/], {story.operations} operations over 90 days,")
        say(f"   serving Plisio's API on {story.sandbox_url}/api/v1")
        created = await checkout.create_invoice(
            order_number=str(int(time.time())), order_name="Northwind Studio — annual", currency="BTC",
            source_currency="USD", source_amount=Decimal("240"), email=CUSTOMER,
            callback_url=f"{story.server_url}/webhooks/plisio",
        )  # fmt: skip
    finally:
        await checkout.aclose()
    story.txn_id, story.amount = created.txn_id, "240 USD"
    say(f"2. The checkout creates invoice {story.txn_id}: 240 USD, Northwind Studio (annual),")
    say(f"   for {CUSTOMER}; its callbacks go to persona serve on {story.server_url}")
    async with httpx.AsyncClient(base_url=story.sandbox_url, timeout=10) as control:
        moved = (await control.post(f"/_sandbox/invoices/{story.txn_id}/expire")).json()
    delivery = moved.get("callback") or {}
    story.callback_status = delivery.get("status_code")
    story.callback_encoding = sandbox.callbacks[-1].encoding if sandbox.callbacks else "?"
    say(
        f"3. Nobody pays; the invoice expires. Plisio posts a signed callback ({story.callback_encoding}, HMAC-SHA1);"
    )
    say(f"   persona serve verifies it, stores it in the inbox, then answers {story.callback_status}")
    drafts = DraftStore(rt.store)
    records: list[AuditRecord] = []
    for _ in range(200):  # until the worker has drafted and finished the inbox row
        found = [d for d in drafts.find(None) if d.txn_id == story.txn_id]
        records = rt.audit.query(_filter())
        if found and any(r.event == WorkerEvent.PROCESSED for r in records):
            story.draft = found[0]
            break
        await asyncio.sleep(0.05)
    if story.draft is None:
        raise PersonaError("the demo's recovery draft did not appear within 10 s; see `persona inbox list`")
    story.tool_calls = [(r.tool or "", r.event.removeprefix("tool_call_")) for r in records
                        if r.conversation_id == story.draft.conversation_id and r.event in
                        {"tool_call_succeeded", "tool_call_failed", "tool_call_denied"}]  # fmt: skip
    processed = next((r for r in records if r.event == WorkerEvent.PROCESSED), None)
    re_read = processed.payload.get("plisio_status") if processed else "?"
    say(f"4. The worker claims it, re-reads the invoice from Plisio ({re_read}), starts the recovery flow;")
    say("   the recovery persona pulls the customer's context with its own tool calls:")
    for tool, outcome in story.tool_calls:
        say(f"     {tool:<28} {outcome}")
    d = story.draft
    say(f"5. Draft {d.id} waits for review; nothing reaches the customer until a person approves it:")
    say(f"     To: {d.customer_email}")
    say(f"     Subject: {d.subject}")
    for line in _wrap(d.body, 88):
        say(f"     | {line}")
    say(f"     Fresh payment link: {d.payment_link}")
    story.chain = [r for r in records if r.event in {"webhook_received", "inbox_processed", "draft_created"}]
    story.report = rt.audit.verify()
    keyed = (
        "every MAC verifies" if story.report.keyed == story.report.records else f"{story.report.keyed} keyed"
    )
    say(f"6. persona audit verify: {'chain intact' if story.report.ok else 'BROKEN'}, {story.report.records} records, "
        f"{keyed}, head {str(story.report.head_hash)[:16]}…")  # fmt: skip
    say(f"   webhook_received -> {len(story.tool_calls)} tool calls -> draft_created -> inbox_processed")


def _fresh(workdir: Path) -> None:
    """Each demo starts from an empty store (its own file; the configured store is not touched)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for old in workdir.glob("demo.sqlite3*"):
        old.unlink()


def _filter() -> Any:
    from persona.audit import AuditFilter

    return AuditFilter()


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    lines: list[str] = []
    for para in text.splitlines() or [""]:
        lines += textwrap.wrap(para, width) or [""]
    return lines
