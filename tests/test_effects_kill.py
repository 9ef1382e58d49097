"""A process killed with SIGKILL between claiming an invoice and recording its outcome: from chat and from
the recovery flow's worker (the approval case is in ``test_effects.py``).

Real pieces only: the sandbox on a loopback port shared by every process, a SQLite file as the store,
the ``persona`` CLI in a child process, a fake OpenAI server on loopback. The sandbox commits the invoice
and then holds its answer back, so the child dies with the effect ``claimed`` and the invoice made.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from persona.app import Runtime
from persona.config import load_settings
from persona.drafts import DraftStore
from persona.effects import is_order_number
from persona.effects.ledger import State
from persona.inbox import Inbox
from tests.fakes.openai_server import FakeOpenAI, FakeStep
from tests.harness import REPO
from tests.test_worker_kill import expired_with_callback, start_worker, write_config
from tools.plisio.sandbox import FaultRule, LoopbackServer, Sandbox

pytestmark = pytest.mark.anyio

NEW = "/api/v1/invoices/new"


@pytest.fixture
def box() -> Iterator[tuple[Sandbox, LoopbackServer]]:
    sandbox = Sandbox(seed=7)
    with LoopbackServer(sandbox.app) as server:
        yield sandbox, server


def invoices_with(sandbox: Sandbox, order_number: str) -> int:
    return sum(1 for op in list(sandbox.state.operations.values()) if op.order_number == order_number)


async def wait_until(what: str, check: Callable[[], bool], child: subprocess.Popen[Any], log: Path) -> None:
    deadline = time.monotonic() + 60
    while not check():
        if time.monotonic() > deadline or child.poll() is not None:
            raise AssertionError(f"{what} did not happen; child log:\n{log.read_text(errors='replace')}")
        await asyncio.sleep(0.05)


def kill(child: subprocess.Popen[Any]) -> None:
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL


@pytest.mark.slow
async def test_a_chat_killed_mid_invoice_is_resolved_by_the_sweep(
    tmp_path: Path, box: tuple[Sandbox, LoopbackServer]
) -> None:
    sandbox, server = box
    steps = [
        FakeStep(tool_calls=[{"id": "c1", "name": "plisio_create_invoice",
                              "arguments": '{"order_name":"ACME retainer","source_amount":"40","source_currency":"USD"}'}]),
        FakeStep(text="Done."),
    ]  # fmt: skip
    with LoopbackServer(FakeOpenAI(steps).app) as llm:
        cfg = write_config(tmp_path, server.base_url, llm.base_url)
        sandbox.faults.add(FaultRule(path=NEW, kind="slow_after_commit", latency_ms=60_000))
        log = tmp_path / "chat.log"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
        with log.open("wb") as out:
            child = subprocess.Popen(
                [sys.executable, "-m", "persona", "--config", str(cfg), "chat", "--persona", "finance",
                 "--user", "alice@example.com", "--message", "bill ACME 40 USD"],
                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            await wait_until("the invoice commit", lambda: any(is_order_number(op.order_number or "")
                                                              for op in list(sandbox.state.operations.values())),
                             child, log)  # fmt: skip
            kill(child)
        finally:
            if child.poll() is None:
                child.kill()
        sandbox.faults.clear()
    later = datetime.now(UTC) + timedelta(hours=1)
    rt = Runtime.build(load_settings(cfg), now=lambda: later)
    try:
        [effect] = rt.dispatcher.effects.ledger.find()
        assert effect.state is State.CLAIMED, "killed between the claim and the outcome"
        [resolved] = await rt.dispatcher.effects.sweep()
        assert resolved.state is State.APPLIED and invoices_with(sandbox, effect.order_number) == 1
        assert rt.dispatcher.effects.ledger.spent("finance", effect.day or "") == Decimal(40)
        assert any(r.event == "effect_resolved" for r in rt.audit.conversation(effect.conversation_id))
        assert rt.audit.verify().ok
    finally:
        await rt.aclose()


@pytest.mark.slow
async def test_a_worker_killed_mid_link_leaves_one_link_for_the_next_worker(
    tmp_path: Path, box: tuple[Sandbox, LoopbackServer]
) -> None:
    """The model fails, the template path sends the fresh link, the worker dies before the answer; the
    next worker re-runs the flow, finds the link's effect and looks it up: one link, one draft."""
    sandbox, server = box
    with LoopbackServer(FakeOpenAI(lambda body: FakeStep(status=400)).app) as llm:
        cfg = write_config(tmp_path, server.base_url, llm.base_url)
        rt = Runtime.build(load_settings(cfg))
        log = tmp_path / "worker.log"
        workers: list[subprocess.Popen[bytes]] = []
        try:
            txn_id = await expired_with_callback(rt, sandbox, "9102", "maria.garcia@example.com")
            sandbox.faults.add(FaultRule(path=NEW, kind="slow_after_commit", latency_ms=60_000))
            first = start_worker(cfg, log)
            workers.append(first)
            ledger = rt.dispatcher.effects.ledger
            await wait_until("the fresh link's commit", lambda: any(
                is_order_number(op.order_number or "") for op in list(sandbox.state.operations.values())
            ), first, log)  # fmt: skip
            kill(first)
            [effect] = ledger.find()
            assert (effect.key.namespace, effect.key.slot) == (f"recovery:{txn_id}", "fresh_link")
            assert effect.state is State.CLAIMED
            sandbox.faults.clear()
            second = start_worker(cfg, log)
            workers.append(second)
            inbox = Inbox(rt.store)
            await wait_until(
                "the second worker's draft", lambda: inbox.list()[0].state == "done", second, log
            )
            [draft] = DraftStore(rt.store).for_invoice(txn_id)
            [effect] = ledger.find()
            assert effect.state is State.APPLIED and invoices_with(sandbox, effect.order_number) == 1
            assert (
                draft.payment_link
                and draft.new_txn_id == sandbox.state.by_order_number(effect.order_number).id
            )  # type: ignore[union-attr]
            assert draft.drafted_by == "template"
        finally:
            for proc in workers:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
            await rt.aclose()
