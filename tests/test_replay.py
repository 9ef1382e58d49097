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
