"""Record -> replay round trips: a live conversation (fake OpenAI server) becomes a scenario that replays green."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes.openai_server import FakeOpenAI, FakeStep
from tests.harness import run_cli, write_config
from tools.plisio.sandbox import SANDBOX_API_KEY, LoopbackServer


def conversation(body: dict[str, Any]) -> FakeStep:
    """A model that reads what its tools returned: list expired invoices, open the first, bill it again."""
    tool_msgs = [m for m in body["messages"] if m["role"] == "tool"]
    if not tool_msgs:
        return FakeStep(tool_calls=[{"id": "c1", "name": "plisio_list_transactions",
                                     "arguments": '{"status":"expired","type":"invoice","limit":1}'}])  # fmt: skip
    if len(tool_msgs) == 1:
        op = json.loads(tool_msgs[0]["content"])["result"]["operations"][0]
        return FakeStep(tool_calls=[
            {"id": "c2", "name": "plisio_get_transaction", "arguments": json.dumps({"operation_id": op["id"]})},
            {"id": "c3", "name": "plisio_create_invoice", "arguments": json.dumps(
                {"order_name": "Retry", "source_amount": "30", "source_currency": "USD"})},
        ])  # fmt: skip
    created = json.loads(tool_msgs[-1]["content"])["result"]
    return FakeStep(text=f"New invoice {created['txn_id']} for 30 USD: {created['invoice_url']}")


@pytest.fixture
def cfg(tmp_path: Path) -> Iterator[Path]:
    fake = FakeOpenAI(conversation)
    with LoopbackServer(fake.app) as server:
        yield write_config(tmp_path, llm_url=server.base_url, store=False)


def persona(cfg: Path, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    return run_cli(cfg, *args, check=code, env={"OPENAI_API_KEY": "sk-test-never-written-0123456789"})


def assert_clean(path: Path) -> dict[str, Any]:
    text = path.read_text()
    assert SANDBOX_API_KEY not in text and "sk-test-never-written" not in text
    return dict(yaml.safe_load(text))


@pytest.mark.slow
def test_record_then_replay(cfg: Path, tmp_path: Path) -> None:
    out = tmp_path / "recorded_retry.yaml"
    persona(cfg, "record", "--persona", "finance", "--user", "alice@example.com", "-m", "bill the last expired one",
            "--out", str(out))  # fmt: skip
    scenario = assert_clean(out)
    get_tx = scenario["turns"][0]["model"][1]["tool_calls"][0]
    assert get_tx["arguments"]["operation_id"] == "{{ results[0].operations[0].id }}"
    assert "{{ results[2].txn_id }}" in scenario["turns"][0]["model"][2]["text"]
    assert [t["name"] for t in scenario["expect"]["tools_called"]] == [
        "plisio_list_transactions", "plisio_get_transaction", "plisio_create_invoice"]  # fmt: skip
    replayed = persona(cfg, "replay", str(out))
    assert "pass" in replayed.stdout


@pytest.mark.slow
def test_audit_export_as_scenario_then_replay(cfg: Path, tmp_path: Path) -> None:
    chat = persona(
        cfg, "chat", "--persona", "finance", "--user", "bob@example.com", "-m", "bill the last expired one"
    )
    conversation_id = re.search(r"conv_[0-9a-f]{16}", chat.stdout)
    assert conversation_id
    out = tmp_path / "exported.yaml"
    persona(cfg, "audit", "export", "--conversation", conversation_id.group(0), "--as-scenario", str(out))
    scenario = assert_clean(out)
    assert scenario["user"] == "bob@example.com" and scenario["persona"] == "finance"
    replayed = persona(cfg, "replay", str(out))
    assert "pass" in replayed.stdout


@pytest.mark.slow
def test_a_recording_that_stopped_replays_only_as_stopped(tmp_path: Path) -> None:
    """The recorded turn hit the loop guard: record exits 1, the scenario says so, and its replay passes
    only while it expects that stop (without it, replay exits 1 and names the stop)."""
    looping = FakeOpenAI(lambda body: FakeStep(tool_calls=[
        {"id": f"c{len(body['messages'])}", "name": "plisio_get_balance", "arguments": '{"psys_cid":"BTC"}'}]))  # fmt: skip
    with LoopbackServer(looping.app) as server:
        cfg = write_config(tmp_path, llm_url=server.base_url, store=False)
        out = tmp_path / "looping.yaml"
        recorded = persona(cfg, "record", "--persona", "finance", "--user", "alice@example.com",
                           "-m", "BTC balance?", "--out", str(out), code=1)  # fmt: skip
    assert "a turn stopped early (loop_guard), as the scenario records" in recorded.stdout
    scenario = assert_clean(out)
    assert scenario["expect"]["stopped_by"] == "loop_guard"
    assert "pass" in persona(cfg, "replay", str(out)).stdout
    del scenario["expect"]["stopped_by"]
    out.write_text(yaml.safe_dump(scenario, sort_keys=False))
    failed = persona(cfg, "replay", str(out), code=1)
    assert "a turn stopped by loop_guard (I stopped before finishing" in " ".join(failed.stdout.split())
