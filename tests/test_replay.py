"""Replay: every shipped scenario passes, and each kind of drift fails with a precise message."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from persona.errors import ScenarioError
from persona.replay.runner import Result, run_scenario
from persona.replay.scenario import Scenario, load
from tests.harness import REPO, repo_settings

pytestmark = pytest.mark.anyio

SCENARIOS = sorted((REPO / "scenarios").glob("*.yaml"))
BASE = yaml.safe_load((REPO / "scenarios" / "invoice_within_policy.yaml").read_text())


async def replay(data: dict[str, Any]) -> Result:
    return await run_scenario(Scenario.model_validate({**data, "source": "test"}), repo_settings())


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
async def test_every_shipped_scenario_passes(path: Path) -> None:
    result = await run_scenario(load(path), repo_settings())
    assert result.ok, "\n".join(result.failures)
    assert result.steps >= 1


def test_the_promised_scenarios_are_shipped() -> None:
    kinds = {load(p).trigger.kind for p in SCENARIOS}
    assert {"chat", "callback", "refund_request", "churn_scan"} <= kinds
    assert len(SCENARIOS) >= 9


async def test_changed_tool_argument_fails_precisely() -> None:
    data = copy.deepcopy(BASE)
    data["turns"][0]["model"][0]["tool_calls"][0]["arguments"]["source_amount"] = "50.00"
    result = await replay(data)
    assert not result.ok
    assert (
        'changed arguments: plisio_create_invoice source_amount: expected "49.90", got "50.00"'
        in result.failures
    )


async def test_missing_tool_call_fails_precisely() -> None:
    data = copy.deepcopy(BASE)
    data["turns"][0]["model"] = [{"text": "Invoice created: https://plisio.net/invoice/x 49.90 USD"}]
    result = await replay(data)
    assert any(f.startswith("missing tool call: expected plisio_create_invoice") for f in result.failures)


async def test_extra_model_step_fails_precisely() -> None:
    data = copy.deepcopy(BASE)
    data["turns"][0]["model"].append({"text": "Anything else?"})
    result = await replay(data)
    extra = [f for f in result.failures if "extra model step" in f]
    assert extra and "step 3 of 3" in extra[0] and "Anything else?" in extra[0]


async def test_model_called_past_its_script_fails_precisely() -> None:
    data = copy.deepcopy(BASE)
    data["turns"][0]["model"] = data["turns"][0]["model"][:1]
    result = await replay(data)
    missing = [f for f in result.failures if "missing model step" in f]
    assert missing and "step 2 but the script has only 1 steps" in missing[0]


async def test_unexpected_text_fails_precisely() -> None:
    data = copy.deepcopy(BASE)
    data["turns"][0]["model"][1]["text"] += " I also moved your balance to cold storage."
    data["expect"]["final_text"]["not_contains"] = ["cold storage"]
    result = await replay(data)
    assert any(
        f.startswith("unexpected text: the final answer contains 'cold storage'") for f in result.failures
    )


async def test_a_policy_change_changes_the_outcome() -> None:
    settings = repo_settings()
    finance = settings.personas["finance"]
    assert finance.invoice_policy is not None
    strict = finance.invoice_policy.model_copy(update={"max_amount": 10})
    settings = settings.model_copy(
        update={
            "personas": {
                **settings.personas,
                "finance": finance.model_copy(update={"invoice_policy": strict}),
            }
        }
    )
    result = await run_scenario(Scenario.model_validate({**BASE, "source": "t"}), settings)
    assert any("policy: expected plisio_create_invoice -> allow" in f for f in result.failures)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name: x\npersona: finance\nturns: []\n", ":3: turns: List should have at least 1 item"),
        (
            "name: x\npersona: finance\nturns:\n  - user: hi\n    model:\n      - {tex: hello}\n",
            ":6: turns.0.model.0.tex: unknown field",
        ),
        (
            "name: x\npersona: finance\nturns:\n  - user: hi\n    model:\n      - {}\n",
            ":6: turns.0.model.0: Value error",
        ),
        ("name: [\n", ":2: not valid YAML"),
    ],
)
def test_invalid_scenarios_name_file_line_and_field(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load(path)
    assert str(info.value).startswith(str(path)) and needle in str(info.value), str(info.value)


LOOPING = {
    "name": "looping",
    "persona": "finance",
    "turns": [
        {
            "user": "What is my BTC balance?",
            "model": [{"tool_calls": [{"name": "plisio_get_balance", "arguments": {"psys_cid": "BTC"}}]}] * 4,
        }
    ],
}


async def test_a_turn_stopped_by_a_limit_fails_unless_expected() -> None:
    result = await replay(copy.deepcopy(LOOPING))
    assert not result.ok
    (failure,) = [f for f in result.failures if "stopped by" in f]
    assert failure.startswith("a turn stopped by loop_guard (I stopped before finishing"), failure
    assert failure.endswith("say so: expect: stopped_by: loop_guard")


async def test_an_expected_stop_passes_and_another_fails() -> None:
    assert (await replay({**copy.deepcopy(LOOPING), "expect": {"stopped_by": "loop_guard"}})).ok
    other = await replay({**copy.deepcopy(LOOPING), "expect": {"stopped_by": "max_steps"}})
    assert other.failures == ["the turn should end by max_steps, it ended by loop_guard"]


def test_a_stop_reason_that_means_nothing_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**LOOPING, "expect": {"stopped_by": "limit"}}, sort_keys=False))
    with pytest.raises(ScenarioError) as info:
        load(path)
    assert "expect.stopped_by: Input should be 'completed', 'max_steps'" in str(info.value), str(info.value)


async def test_a_stop_in_an_earlier_turn_is_seen_and_can_be_expected() -> None:
    """Turn 1 hits the loop guard, turn 2 completes: not expected -> fails; expected -> passes;
    `completed` does not hide it."""
    two = copy.deepcopy(LOOPING)
    two["turns"].append({"user": "Thanks.", "model": [{"text": "You are welcome."}]})
    unexpected = await replay(copy.deepcopy(two))
    assert any(f.startswith("a turn stopped by loop_guard") for f in unexpected.failures), unexpected.failures
    assert (await replay({**copy.deepcopy(two), "expect": {"stopped_by": "loop_guard"}})).ok
    hidden = await replay({**copy.deepcopy(two), "expect": {"stopped_by": "completed"}})
    assert any(f.startswith("a turn stopped by loop_guard") for f in hidden.failures), hidden.failures
