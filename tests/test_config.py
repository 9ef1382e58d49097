"""A broken config stops start-up with the file, the line, the key and the fix; never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from persona.app import connect_plisio
from persona.config import load_settings
from persona.errors import ConfigError, NotConfigured
from persona.settings import resolve_tools
from tests.harness import REPO, repo_settings

PERSONAS = f"""
prompts_dir: {REPO / "prompts"}
personas:
  finance:
    prompt: finance.md.j2
    tools: ["@read", plisio_create_invoice]
    invoice_policy: {{max_amount: 100, daily_total: 500, approval_above: 50}}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def error_for(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), env={})
    return info.value


def test_the_shipped_config_loads_and_offers_the_promised_scopes() -> None:
    settings = repo_settings()  # tests/config.yaml: the shipped text, not a ./config.yaml since edited
    finance = resolve_tools(settings.personas["finance"])
    growth = resolve_tools(settings.personas["growth"])
    assert len(finance) == 13 and "plisio_create_invoice" in finance
    assert len(growth) == 12 and "plisio_create_invoice" not in growth
    assert settings.plisio.mode.value == "sandbox"


def test_unknown_tool_in_a_scope(tmp_path: Path) -> None:
    err = error_for(tmp_path, PERSONAS.replace("plisio_create_invoice]", "plisio_create_invoce]"))
    assert err.key == "personas.finance.tools[1]" and err.line == 6
    assert "did you mean plisio_create_invoice?" in str(err) and str(tmp_path / "config.yaml") in str(err)


def test_missing_prompt_file(tmp_path: Path) -> None:
    err = error_for(tmp_path, PERSONAS.replace("finance.md.j2", "nope.md.j2"))
    assert err.key == "personas.finance.prompt" and err.line == 5
    assert "'nope.md.j2' not found" in str(err) and "fix:" in str(err)


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    err = error_for(tmp_path, "plisio:\n  mode: sandbox\n   timeouts: [1, 2\n")
    assert err.line == 3 and "not valid YAML" in str(err)


def test_a_cap_that_is_not_a_number(tmp_path: Path) -> None:
    err = error_for(tmp_path, PERSONAS.replace("max_amount: 100", "max_amount: lots"))
    assert err.key == "personas.finance.invoice_policy.max_amount" and err.line == 7
    assert "got 'lots'" in str(err) and "write a number here" in str(err)


def test_unknown_setting_and_bad_enum(tmp_path: Path) -> None:
    err = error_for(tmp_path, "plisio:\n  mode: sandbx\n")
    assert err.key == "plisio.mode" and err.line == 2 and "'sandbox' or 'live'" in str(err)
    err = error_for(tmp_path, "plisio:\n  timeout: 5\n")
    assert err.key == "plisio.timeout" and "unknown setting" in str(err)


def test_secrets_are_refused_in_the_file(tmp_path: Path) -> None:
    err = error_for(tmp_path, "plisio:\n  api_key: sk_live_abc\n")
    assert "PLISIO_API_KEY" in str(err) and "sk_live_abc" not in str(err)


def test_invoice_tool_without_caps(tmp_path: Path) -> None:
    err = error_for(
        tmp_path,
        PERSONAS.replace("    invoice_policy: {max_amount: 100, daily_total: 500, approval_above: 50}\n", ""),
    )
    assert err.key == "personas.finance.invoice_policy" and "needs caps" in str(err)


def test_explicit_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "absent.yaml", env={})


def test_live_mode_needs_a_key_and_sandbox_does_not() -> None:
    settings = repo_settings()
    live = settings.model_copy(update={"plisio": settings.plisio.model_copy(update={"mode": "live"})})
    with pytest.raises(NotConfigured, match="export PLISIO_API_KEY"):
        connect_plisio(live)


@pytest.mark.slow
def test_cli_prints_the_error_without_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, PERSONAS.replace("max_amount: 100", "max_amount: lots"))
    proc = subprocess.run(
        [sys.executable, "-m", "persona", "--config", str(path), "tools", "call", "plisio_get_shop_info"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "personas.finance.invoice_policy.max_amount" in proc.stderr and "Traceback" not in proc.stderr
