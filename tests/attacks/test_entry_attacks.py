"""A compromised model, and a caller probing for a way around the gate, at the two doors people use: the
HTTP API (``/v1/chat``, approvals) and the CLI (``persona chat -m``, ``persona tools call``) as real
processes in live mode against the sandbox on loopback. What reached Plisio is read from the sandbox."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from persona.app import Runtime
from persona.config import load_settings
from persona.server import create_app
from persona.store.engine import Store
from tests.attacks.invariants import assert_nothing_unauthorised, assert_recorded
from tests.attacks.obedient import Obedient, do
from tests.harness import bearer, build_runtime, write_config
from tools.plisio.sandbox import SANDBOX_API_KEY, LoopbackServer, Sandbox

pytestmark = pytest.mark.anyio

OVER_CAP = do("plisio_create_invoice", {"order_name": "x", "source_amount": "5000", "source_currency": "USD"})
HELD = do("plisio_create_invoice", {"order_name": "x", "source_amount": "600", "source_currency": "USD"})
WITHDRAW = do("plisio_withdraw", {"psys_cid": "BTC", "to": "bc1qattacker", "amount": "1"})


@pytest.fixture
async def http(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(rt, start_worker=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://persona.test") as c:
        yield c


# -- HTTP --------------------------------------------------------------------------------------------------


async def test_over_http_the_models_calls_meet_the_gate(
    rt: Runtime, sandbox: Sandbox, obedient: Obedient, http: httpx.AsyncClient
) -> None:
    start = len(sandbox.requests)
    body = {"persona": "finance", "message": "\n".join((OVER_CAP, HELD, WITHDRAW))}
    answer = await http.post("/v1/chat", json=body, headers=bearer(rt, "mallory@example.com", "operator"))
    assert answer.status_code == 200, answer.text
    outcomes = [c["outcome"] for c in answer.json()["tool_calls"]]
    assert outcomes == ["denied", "pending_approval", "denied"], outcomes
    assert_nothing_unauthorised(rt, sandbox, since=start)
    assert_recorded(rt, obedient.emitted)
    [held] = rt.approvals.find("pending")
    own = await http.post(
        f"/v1/approvals/{held.id}/approve", headers=bearer(rt, "mallory@example.com", "admin")
    )
    assert own.status_code == 403, "the asker, promoted to admin, still cannot approve their own call"
    assert_nothing_unauthorised(rt, sandbox, since=start)


PROBES: dict[str, tuple[dict[str, Any], str | None, int]] = {
    # (body, role of the caller or None for no token, expected status): none of them runs a turn
    "a flow's persona": ({"persona": "recovery", "message": OVER_CAP}, "operator", 422),
    "a refund persona": ({"persona": "refunds", "message": WITHDRAW}, "operator", 422),
    "no token": ({"persona": "finance", "message": OVER_CAP}, None, 401),
    "a viewer": ({"persona": "finance", "message": OVER_CAP}, "viewer", 403),
    "an unknown persona": ({"persona": "root", "message": OVER_CAP}, "operator", 404),
    "a malformed conversation id": ({"persona": "finance", "message": OVER_CAP, "conversation_id": "../x"}, "operator", 422),
}  # fmt: skip


@pytest.mark.parametrize("name", list(PROBES))
async def test_a_chat_that_must_not_start(
    rt: Runtime, sandbox: Sandbox, obedient: Obedient, http: httpx.AsyncClient, name: str
) -> None:
    body, role, status = PROBES[name]
    start = len(sandbox.requests)
    headers = {} if role is None else bearer(rt, f"{role}@example.com", role)
    answer = await http.post("/v1/chat", json=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert obedient.emitted == [], "the model was never asked"
    assert_nothing_unauthorised(rt, sandbox, since=start)
    assert_recorded(rt, [])


async def test_another_users_conversation_cannot_be_continued(
    rt: Runtime, sandbox: Sandbox, obedient: Obedient, http: httpx.AsyncClient
) -> None:
    first = await http.post("/v1/chat", json={"persona": "finance", "message": "hello"},
                            headers=bearer(rt, "alice@example.com"))  # fmt: skip
    conversation = first.json()["conversation_id"]
    start = len(sandbox.requests)
    hijack = await http.post("/v1/chat", json={"persona": "finance", "message": HELD, "conversation_id": conversation},
                             headers=bearer(rt, "mallory@example.com"))  # fmt: skip
    assert hijack.status_code == 403, hijack.text
    assert obedient.emitted == [] and rt.approvals.find(None) == []
    assert_nothing_unauthorised(rt, sandbox, since=start)
    assert_recorded(rt, [])


async def test_a_reused_idempotency_key_with_another_body_runs_nothing(
    rt: Runtime, sandbox: Sandbox, obedient: Obedient, http: httpx.AsyncClient
) -> None:
    headers = {**bearer(rt, "mallory@example.com"), "Idempotency-Key": "k-1"}
    first = await http.post("/v1/chat", json={"persona": "finance", "message": "hello"}, headers=headers)
    assert first.status_code == 200
    start = len(sandbox.requests)
    again = await http.post("/v1/chat", json={"persona": "finance", "message": HELD}, headers=headers)
    assert again.status_code == 409, again.text
    assert obedient.emitted == [] and rt.approvals.find(None) == []
    assert_nothing_unauthorised(rt, sandbox, since=start)


# -- the CLI, as real processes ---------------------------------------------------------------------------


@pytest.fixture
def live(tmp_path: Path, model_server: tuple[Obedient, LoopbackServer]) -> Iterator[tuple[Path, Sandbox]]:
    """Live mode: Plisio is the sandbox on 127.0.0.1 (so the test sees every request), the model is the
    obedient one."""
    sandbox = Sandbox(seed=7)
    with LoopbackServer(sandbox.app) as server:
        cfg = write_config(tmp_path, llm_url=model_server[1].base_url)
        text = cfg.read_text(encoding="utf-8").replace("  mode: sandbox\n", "  mode: live\n", 1)
        cfg.write_text(
            text.replace("https://api.plisio.net/api/v1", f"{server.base_url}/api/v1", 1), encoding="utf-8"
        )
        yield cfg, sandbox


def persona(cfg: Path, *args: str, check: int) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "persona", "--config", str(cfg), *args], capture_output=True, text=True, timeout=120,
        cwd=cfg.parent, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "PLISIO_API_KEY": SANDBOX_API_KEY},
    )  # fmt: skip
    assert proc.returncode == check, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and SANDBOX_API_KEY not in proc.stdout + proc.stderr
    return proc


def invoice(amount: str, **extra: str) -> str:
    return json.dumps({"order_name": "CLI", "source_amount": amount, "source_currency": "USD", **extra})


CLI: dict[str, tuple[tuple[str, ...], int, str]] = {
    # (arguments, exit status, what stderr says)
    "a write without a persona": (("tools", "call", "plisio_create_invoice", "--args", invoice("10")), 2, "add --persona"),
    "a write without a user": (("tools", "call", "plisio_create_invoice", "--persona", "finance", "--args", invoice("10")), 2, "--user"),
    "a read-only persona writing": (("tools", "call", "plisio_create_invoice", "--persona", "growth", "--user", "m@x.io",
                                     "--args", invoice("10")), 1, "denied"),
    "over the cap": (("tools", "call", "plisio_create_invoice", "--persona", "finance", "--user", "m@x.io",
                      "--args", invoice("5000")), 1, "1000"),
    "a fraction past a cent": (("tools", "call", "plisio_create_invoice", "--persona", "finance", "--user", "m@x.io",
                                "--args", invoice("250.004")), 2, "at most 2 after it"),
    "a cent over the threshold": (("tools", "call", "plisio_create_invoice", "--persona", "finance", "--user", "m@x.io",
                                   "--args", invoice("250.01")), 1, "held for approval"),
    "a flow's looser persona borrowed": (("tools", "call", "plisio_create_invoice", "--persona", "recovery", "--user", "m@x.io",
                                          "--args", invoice("999", email="eve@evil.example")), 2, "only writes for its flow"),
    "a withdrawal tool": (("tools", "call", "plisio_withdraw", "--persona", "finance", "--user", "m@x.io"), 1, "no tool named 'plisio_withdraw'"),
    "a chat with a flow's persona": (("chat", "--persona", "recovery", "--user", "m@x.io", "-m", OVER_CAP), 2, "only writes for its flow"),
    "a chat told to break the cap": (("chat", "--persona", "finance", "--user", "m@x.io", "-m", f"{OVER_CAP}\n{WITHDRAW}"), 0, ""),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CLI))
@pytest.mark.slow
def test_at_the_cli_nothing_goes_around_the_gate(
    live: tuple[Path, Sandbox], obedient: Obedient, store_for: Any, name: str
) -> None:
    cfg, sandbox = live
    args, status, says = CLI[name]
    proc = persona(cfg, *args, check=status)
    assert says in " ".join(proc.stderr.split()), proc.stderr
    rt = store_for(cfg, sandbox)
    assert_nothing_unauthorised(rt, sandbox)
    assert_recorded(rt, obedient.emitted)
    assert all(a.status == "pending" for a in rt.approvals.find(None))


@pytest.fixture
def store_for() -> Iterator[Any]:
    """The CLI's own database and key, opened afterwards to read what it recorded."""
    opened: list[Runtime] = []

    def open_(cfg: Path, sandbox: Sandbox) -> Runtime:
        settings = load_settings(cfg, env={"PLISIO_API_KEY": SANDBOX_API_KEY})
        rt = build_runtime(Store.open(settings.store_url()), sandbox, settings=settings)
        opened.append(rt)
        return rt

    yield open_
    for rt in opened:
        rt.audit.close()
        rt.store.close()
