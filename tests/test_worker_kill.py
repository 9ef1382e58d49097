"""A worker PROCESS killed with SIGKILL mid-flow, then a second one: nothing lost, nothing doubled.

Real pieces only: the sandbox on a loopback port (shared by every process), the receiver app on
another, a SQLite file as the store, and a fake OpenAI server whose first answer takes long
enough for the test to kill the worker while it holds the inbox row and waits on the model.
The second worker takes the row over once the lease (5 s) lapses; the recovery flow's key
``recovery:<txn_id>`` makes it finish the same run, so exactly one draft exists.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from persona.app import Runtime
from persona.config import load_settings
from persona.drafts import DraftStore
from persona.flows.runs import FlowRuns
from persona.inbox import Inbox
from persona.server import create_app
from tests.fakes.openai_server import FakeOpenAI, FakeStep
from tests.harness import REPO, config_text
from tools.plisio.sandbox import LoopbackServer, Sandbox

pytestmark = pytest.mark.anyio

SLOW_S = 30.0
DRAFT = json.dumps(
    {"subject": "Your order is still waiting", "body": "Hello, your payment did not go through."}
)


class SlowFirst:
    """The first model request hangs (the worker is killed meanwhile); later ones answer at once."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> FakeStep:
        with self.lock:
            self.count += 1
            first = self.count == 1
        return FakeStep(text=DRAFT, delay=SLOW_S if first else 0.0)


@pytest.fixture
def sandbox_server() -> Iterator[tuple[Sandbox, LoopbackServer]]:
    box = Sandbox(seed=7)
    with LoopbackServer(box.app) as server:
        yield box, server


@pytest.fixture
def llm() -> Iterator[tuple[SlowFirst, FakeOpenAI, LoopbackServer]]:
    script = SlowFirst()
    fake = FakeOpenAI(script)
    with LoopbackServer(fake.app) as server:
        yield script, fake, server


def write_config(tmp_path: Path, sandbox_url: str, llm_url: str) -> Path:
    text = config_text()
    replacements = {
        "  base_url: null\n  model: null": f"  base_url: {llm_url}/v1\n  model: fake-model",
        "url: sqlite:///var/persona.sqlite3": f"url: sqlite:///{tmp_path / 'persona.sqlite3'}",
        "    url: null        #": f"    url: {sandbox_url}/api/v1  #",
        "  poll_interval_s: 1\n  lease_s: 120": "  poll_interval_s: 0.2\n  lease_s: 5",
    }
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


async def expired_with_callback(rt: Runtime, box: Sandbox, order_number: str, email: str) -> str:
    """An invoice that expires unpaid, its signed callback received into the inbox; returns its txn_id."""
    async with LoopbackServer(create_app(rt, start_worker=False)) as receiver:
        created = await rt.plisio.client.create_invoice(
            order_number=order_number, order_name="Pro plan", currency="BTC", source_amount=Decimal("100"),
            callback_url=f"{receiver.base_url}/webhooks/plisio", email=email,
        )  # fmt: skip
        assert (await box.expire(created.txn_id))["callback"]["status_code"] == 200
    return created.txn_id


def cli(cfg: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "persona", "--config", str(cfg), *args]


def start_worker(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO)}
    with log.open("ab") as out:
        return subprocess.Popen(cli(cfg, "worker", "--no-schedules"), cwd=cfg.parent, env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


def wait_for(what: str, check: Callable[[], bool], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out waiting for {what}; worker log:\n{log.read_text(errors='replace')}"
            )
        time.sleep(0.05)


@pytest.mark.slow
async def test_killed_worker_loses_nothing_and_doubles_nothing(
    tmp_path: Path,
    sandbox_server: tuple[Sandbox, LoopbackServer],
    llm: tuple[SlowFirst, FakeOpenAI, LoopbackServer],
) -> None:
    box, sandbox_srv = sandbox_server
    script, fake, llm_srv = llm
    cfg = write_config(tmp_path, sandbox_srv.base_url, llm_srv.base_url)
    rt = Runtime.build(load_settings(cfg))
    log = tmp_path / "worker.log"
    workers: list[subprocess.Popen[bytes]] = []
    try:
        txn_id = await expired_with_callback(rt, box, "9101", "dave@example.com")
        inbox = Inbox(rt.store)
        [row] = inbox.list()
        assert (row.txn_id, row.state) == (txn_id, "pending")

        first = start_worker(cfg, log)
        workers.append(first)
        wait_for("the first worker to claim the row and call the model",
                 lambda: inbox.get(row.id).state == "processing" and len(fake.requests) >= 1, log)  # fmt: skip
        claimed = inbox.get(row.id)
        assert claimed.lease_owner is not None and f":{first.pid}:" in claimed.lease_owner
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
        assert inbox.get(row.id).state == "processing"  # still claimed by the dead worker
        assert DraftStore(rt.store).for_invoice(txn_id) == []
        run = FlowRuns(rt.store, rt.now).get(f"recovery:{txn_id}")
        assert run is not None and run.state == "running"  # killed mid-flow

        second = start_worker(cfg, log)
        workers.append(second)
        wait_for("the second worker to finish the row", lambda: inbox.get(row.id).state == "done", log)
        done = inbox.get(row.id)
        assert (done.action, done.plisio_status, done.attempts) == ("recovery", "expired", 2)
        assert done.lease_owner is None
        [draft] = DraftStore(rt.store).for_invoice(txn_id)
        assert (draft.status, draft.subject) == ("pending_review", "Your order is still waiting")
        finished = FlowRuns(rt.store, rt.now).get(f"recovery:{txn_id}")
        assert finished is not None and finished.state == "done"
        assert script.count >= 2

        second.send_signal(signal.SIGTERM)  # a graceful stop
        assert second.wait(timeout=20) == 0, log.read_text(errors="replace")

        listed = subprocess.run(cli(cfg, "inbox", "list", "--state", "done", "--jsonl"), capture_output=True,
                                text=True, timeout=60, cwd=tmp_path, check=True)  # fmt: skip
        [entry] = [json.loads(line) for line in listed.stdout.splitlines()]
        assert (entry["id"], entry["txn_id"], entry["action"]) == (row.id, txn_id, "recovery")
        refused = subprocess.run(cli(cfg, "inbox", "retry", str(row.id)), capture_output=True, text=True,
                                 timeout=60, cwd=tmp_path)  # fmt: skip
        assert refused.returncode == 1 and "only failed or poison rows can be retried" in refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        await rt.aclose()
