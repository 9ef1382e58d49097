"""The suite's own rules (tests/guards.py) hold: a CLI subprocess in a test not marked ``slow`` and a read of
the repository's config.yaml both fail the test at once, and the hook tells the CLI from other programs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.guards import REPO, SHIPPED_CONFIG, cli_args, config_of


def test_the_persona_cli_is_told_from_other_programs() -> None:
    assert cli_args([sys.executable, "-m", "persona", "--config", "c.yaml", "demo"]) == [
        "--config",
        "c.yaml",
        "demo",
    ]
    assert cli_args([sys.executable, "-m", "persona.cli.serve", "worker"]) == ["worker"]
    assert cli_args([sys.executable, "-c", "print()", sys.executable, "-m", "persona", "chat"]) == ["chat"]
    assert cli_args(["node", "tests/export_check.mjs"]) is None
    assert cli_args([sys.executable, "-m", "personality"]) is None
    assert cli_args("persona demo") is None


def test_the_config_a_cli_reads_is_resolved_as_persona_does(tmp_path: Path) -> None:
    assert config_of(["demo"], str(REPO), {}) == SHIPPED_CONFIG, "./config.yaml in the repository"
    assert config_of(["demo"], str(tmp_path), {}) == str(tmp_path / "config.yaml")
    assert config_of(["--config", "config.yaml", "demo"], str(REPO), {}) == SHIPPED_CONFIG
    assert config_of(["--config", str(tmp_path / "c.yaml")], str(REPO), {}) == str(tmp_path / "c.yaml")
    assert config_of([f"--config={tmp_path / 'c.yaml'}"], str(REPO), {}) == str(tmp_path / "c.yaml")
    assert config_of([], str(tmp_path), {"PERSONA_CONFIG": SHIPPED_CONFIG}) == SHIPPED_CONFIG


def test_a_cli_subprocess_in_a_test_not_marked_slow_fails_before_it_starts(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match=r"runs the persona CLI as a subprocess, so it is marked"):
        subprocess.run(
            [sys.executable, "-m", "persona", "--help"], cwd=tmp_path, capture_output=True, check=False
        )
    subprocess.run([sys.executable, "-c", "pass"], cwd=tmp_path, check=True)  # any other program runs


def test_reading_the_repositorys_config_fails_the_test() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"config.yaml, which a user edits"):
        (REPO / "config.yaml").read_text(encoding="utf-8")
