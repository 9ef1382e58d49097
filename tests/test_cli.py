"""The ``persona`` command as a user runs it: a real process, a temp config, the fake OpenAI server."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.openai_server import FakeOpenAI, FakeStep
from tests.harness import config_text, run_cli, write_config
from tools.plisio.sandbox import SANDBOX_API_KEY, LoopbackServer


def persona(cfg: Path, *args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    return run_cli(cfg, *args, check=check)


@pytest.fixture
def llm() -> Iterator[LoopbackServer]:
    steps = [
        FakeStep(tool_calls=[{"id": "c1", "name": "plisio_get_balance", "arguments": '{"psys_cid":"BTC"}'}]),
        FakeStep(tool_calls=[{"id": "c2", "name": "plisio_create_invoice",
                              "arguments": '{"order_name":"ACME retainer","source_amount":"400","source_currency":"USD"}'}]),
        FakeStep(text="The 400 USD invoice for ACME awaits approval."),
    ]  # fmt: skip
    fake = FakeOpenAI(steps)
    with LoopbackServer(fake.app) as server:
        yield server


@pytest.fixture
def cfg(tmp_path: Path, llm: LoopbackServer) -> Path:
    return write_config(tmp_path, llm_url=llm.base_url, store=False)


@pytest.mark.slow
def test_chat_approve_and_audit_from_the_command_line(cfg: Path, tmp_path: Path) -> None:
    chat = persona(
        cfg, "chat", "--persona", "finance", "--user", "alice@example.com", "--message", "bill ACME 400"
    )
    out = chat.stdout
    assert "→ plisio_get_balance" in out and "✓ succeeded" in out
    assert "→ plisio_create_invoice" in out and "⏸ pending approval" in out
    assert "awaits approval" in out
    conversation = re.search(r"conv_[0-9a-f]{16}", out)
    assert conversation

    listed = persona(cfg, "approvals", "list").stdout
    approval_id = re.search(r"\b[0-9a-f]{12}\b", listed)
    assert approval_id and "ACME" not in listed.split(approval_id.group(0))[0]
    own = persona(cfg, "approvals", "approve", approval_id.group(0), "--by", "alice@example.com", check=3)
    assert "cannot approve it" in own.stderr
    done = persona(cfg, "approvals", "approve", approval_id.group(0), "--by", "bob@example.com").stdout
    assert "executed by bob@example.com" in done and "succeeded" in done
    again = persona(cfg, "approvals", "approve", approval_id.group(0), "--by", "carol@example.com", check=1)
    assert "already executed" in again.stderr

    effects = persona(cfg, "effects", "list").stdout
    assert approval_id.group(0) in effects and "applied" in effects and "400.00 USD" in effects
    shown = persona(cfg, "effects", "show", approval_id.group(0)).stdout
    assert f"effect {approval_id.group(0)}: applied" in shown and "decided by bob@example.com" in shown
    assert "0 effect(s) due" in persona(cfg, "effects", "resolve").stdout
    settled = persona(cfg, "effects", "resolve", approval_id.group(0), check=1)
    assert "nothing to resolve" in settled.stderr and "Traceback" not in settled.stderr
    bogus = persona(cfg, "effects", "list", "--state", "bogus", check=2)
    assert "--state: unknown value 'bogus'" in bogus.stderr and "unresolved" in bogus.stderr

    show = persona(cfg, "audit", "show", conversation.group(0)).stdout
    assert "alice@example.com > bill ACME 400" in show and "approval granted" in show
    assert "plisio_create_invoice succeeded" in show
    verified = persona(cfg, "audit", "verify").stdout
    assert "audit chain intact" in verified
    export = tmp_path / "audit.jsonl"
    persona(cfg, "audit", "export", "--out", str(export))
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert [r["seq"] for r in lines] == list(range(1, len(lines) + 1))
    db_bytes = b"".join(p.read_bytes() for p in (tmp_path / "var").iterdir())
    assert SANDBOX_API_KEY.encode() not in db_bytes
    listed_denied = persona(cfg, "audit", "list", "--event", "approval_granted").stdout
    assert "bob@example.com" in listed_denied or "approval_granted" in listed_denied


@pytest.mark.slow
def test_tools_commands(cfg: Path) -> None:
    listed = persona(cfg, "tools", "list").stdout
    assert "13 Plisio tools" in listed and "plisio_get_transaction" in listed
    schema = persona(cfg, "tools", "schema", "plisio_list_transactions").stdout
    assert '"strict": true' in schema and "pending internal" in schema
    bad = persona(cfg, "tools", "call", "plisio_list_transactions", "--args", '{"status":"paid"}', check=2)
    assert "invalid arguments" in bad.stderr and "cancelled duplicate" in bad.stderr
    ok = persona(cfg, "tools", "call", "plisio_get_balance", "--args", '{"psys_cid":"BTC"}').stdout
    assert json.loads(ok)["psys_cid"] == "BTC"
    unknown = persona(cfg, "tools", "call", "plisio_get_balanse", check=1)
    assert "no tool named 'plisio_get_balanse'" in unknown.stderr
    failing = persona(cfg, "tools", "call", "plisio_get_balance", "--args", '{"psys_cid":"BTCX"}', check=1)
    assert "Unsupported currency" in failing.stderr and "105" in failing.stderr
    door = persona(cfg, "tools", "call", "plisio_create_invoice", "--args", '{"order_name":"x"}', check=2)
    assert "runs only through a persona's gate" in door.stderr and "Traceback" not in door.stderr


@pytest.mark.slow
def test_chat_without_an_llm_says_how_to_configure_one(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config_text(), encoding="utf-8")
    proc = persona(path, "chat", "--user", "a@example.com", "--message", "hi", check=2)
    assert "no LLM endpoint is configured" in proc.stderr and "Ollama" in proc.stderr
