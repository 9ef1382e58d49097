"""``persona tools call`` in live mode against the sandbox on loopback: no side door around the gate.

A write goes through the persona's dispatcher (scope, per-invoice cap, approvals, grant caps, the effects
ledger) exactly as the persona's own calls do, audited with source ``cli``; a read is audited too.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from persona.audit import AuditFilter, AuditLog
from persona.store.engine import Store
from tests.harness import write_config
from tools.plisio.sandbox import SANDBOX_API_KEY, LoopbackServer, Sandbox


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Path, Sandbox]]:
    """A config in live mode whose Plisio is the sandbox served on 127.0.0.1, keyed by $PLISIO_API_KEY."""
    sandbox = Sandbox(seed=7)
    with LoopbackServer(sandbox.app) as server:
        cfg = write_config(tmp_path)
        text = cfg.read_text(encoding="utf-8").replace("  mode: sandbox\n", "  mode: live\n", 1)
        text = text.replace("https://api.plisio.net/api/v1", f"{server.base_url}/api/v1", 1)
        cfg.write_text(text, encoding="utf-8")
        yield cfg, sandbox


def persona(
    cfg: Path, *args: str, check: int = 0, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "persona", "--config", str(cfg), *args], input=stdin, capture_output=True, text=True,
        timeout=120, cwd=cfg.parent, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "PLISIO_API_KEY": SANDBOX_API_KEY},
    )  # fmt: skip
    assert proc.returncode == check, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def invoice(amount: str, email: str) -> str:
    return json.dumps(
        {"order_name": "Console test", "source_amount": amount, "source_currency": "USD", "email": email}
    )


def billed(sandbox: Sandbox, email: str) -> int:
    return sum(1 for op in sandbox.state.operations.values() if op.email == email)


def records(cfg: Path, **flt: str) -> list[object]:
    store = Store.open(f"sqlite:///{cfg.parent / 'persona.sqlite3'}")
    try:
        return list(AuditLog(store).query(AuditFilter(**flt)))  # type: ignore[arg-type]
    finally:
        store.close()


@pytest.mark.slow
def test_a_write_needs_a_persona_and_goes_through_its_gate(live: tuple[Path, Sandbox]) -> None:
    cfg, sandbox = live
    door = persona(cfg, "tools", "call", "plisio_create_invoice", "--args", invoice("100", "a@x.io"), check=2)
    assert "add --persona NAME" in door.stderr and billed(sandbox, "a@x.io") == 0
    who = persona(cfg, "tools", "call", "plisio_create_invoice", "--persona", "finance", "--args",
                  invoice("100", "a@x.io"), check=2)  # fmt: skip
    assert "--user" in who.stderr and billed(sandbox, "a@x.io") == 0

    over = persona(cfg, "tools", "call", "plisio_create_invoice", "--persona", "finance", "--user", "ops@x.io",
                   "--args", invoice("5000", "big@x.io"), check=1)  # fmt: skip
    assert "denied" in over.stderr and "1000" in over.stderr and billed(sandbox, "big@x.io") == 0
    held = persona(cfg, "tools", "call", "plisio_create_invoice", "--persona", "finance", "--user", "ops@x.io",
                   "--args", invoice("600", "held@x.io"), check=1)  # fmt: skip
    approval = re.search(r"held for approval (\w+)", held.stderr)
    assert approval is not None and billed(sandbox, "held@x.io") == 0
    listed = persona(cfg, "approvals", "list", "--json").stdout
    assert approval.group(1) in [a["id"] for a in json.loads(listed)]
    done = persona(cfg, "tools", "call", "plisio_create_invoice", "--persona", "finance", "--user", "ops@x.io",
                   "--args", invoice("100", "ok@x.io"))  # fmt: skip
    assert json.loads(done.stdout)["invoice_url"] and billed(sandbox, "ok@x.io") == 1
    scoped = persona(cfg, "tools", "call", "plisio_create_invoice", "--persona", "growth", "--user", "ops@x.io",
                     "--args", invoice("10", "growth@x.io"), check=1)  # fmt: skip
    assert "denied" in scoped.stderr and billed(sandbox, "growth@x.io") == 0

    seen = records(cfg, source="cli", tool="plisio_create_invoice")
    events = [(r.event, r.user, r.persona) for r in seen]  # type: ignore[attr-defined]
    assert ("tool_call_denied", "ops@x.io", "finance") in events and (
        "approval_requested",
        "ops@x.io",
        "finance",
    ) in events
    assert ("tool_call_succeeded", "ops@x.io", "finance") in events and (
        "tool_call_denied",
        "ops@x.io",
        "growth",
    ) in events


@pytest.mark.slow
def test_grant_caps_apply_to_the_cli_too(live: tuple[Path, Sandbox]) -> None:
    cfg, sandbox = live
    persona(cfg, "connect", "plisio", "--name", "shop-main", "--key-stdin", stdin=SANDBOX_API_KEY + "\n")
    persona(cfg, "grants", "add", "--persona", "finance", "--connection", "shop-main", "--max-amount", "200")
    capped = persona(cfg, "tools", "call", "plisio_create_invoice", "--persona", "finance", "--user", "ops@x.io",
                     "--args", invoice("220", "grant@x.io"), check=1)  # fmt: skip
    assert "200" in capped.stderr and billed(sandbox, "grant@x.io") == 0
    persona(cfg, "tools", "call", "plisio_create_invoice", "--persona", "finance", "--user", "ops@x.io",
            "--args", invoice("180", "grant@x.io"))  # fmt: skip
    assert billed(sandbox, "grant@x.io") == 1


@pytest.mark.slow
def test_a_read_is_audited(live: tuple[Path, Sandbox]) -> None:
    cfg, _ = live
    read = persona(
        cfg, "tools", "call", "plisio_get_balance", "--args", '{"psys_cid": "BTC"}', "--user", "ops@x.io"
    )
    assert json.loads(read.stdout)["psys_cid"] == "BTC"
    events = [(r.event, r.user, r.source) for r in records(cfg, tool="plisio_get_balance")]  # type: ignore[attr-defined]
    assert events == [("tool_call_attempted", "ops@x.io", "cli"), ("tool_call_succeeded", "ops@x.io", "cli")]
