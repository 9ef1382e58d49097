"""Two rules of the suite, held for every test through a Python audit hook (``sys.addaudithook``; nothing is
patched): a test that runs the persona CLI as a subprocess is marked ``slow`` (``make test-fast`` leaves those
out), and no test reads the repository's own config.yaml (a user edits it, as the README says; the tests run
on copies of tests/config.yaml), neither in-process nor through a CLI that would find it.

A breach fails the test at the ``open`` or ``subprocess.Popen`` that commits it, saying which rule it broke.
tests/conftest.py imports the hooks below, which installs them.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Generator, Mapping
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = str(REPO / "config.yaml")
FIX = "copy tests/config.yaml instead (tests.harness: config_text, write_config, repo_settings)"
_running: list[pytest.Item] = []
_installed: list[bool] = []


def _text(value: Any) -> str:
    return os.fsdecode(value) if isinstance(value, str | bytes | os.PathLike) else str(value)


def cli_args(argv: Any) -> list[str] | None:
    """The arguments after ``-m persona`` (or ``-m persona.<module>``); None when ``argv`` runs no persona CLI."""
    args = [_text(a) for a in ([argv] if isinstance(argv, str | bytes | os.PathLike) else argv or [])]
    for i, (flag, module) in enumerate(itertools.pairwise(args)):
        if flag == "-m" and (module == "persona" or module.startswith("persona.")):
            return args[i + 2 :]
    return None


def config_of(cli: list[str], cwd: str, env: Mapping[str, str]) -> str:
    """The config file that CLI reads, resolved as persona.config does: --config, $PERSONA_CONFIG, ./config.yaml."""
    chosen = env.get("PERSONA_CONFIG") or "config.yaml"
    for i, arg in enumerate(cli):
        if arg in ("--config", "-c") and i + 1 < len(cli):
            chosen = cli[i + 1]
            break
        if arg.startswith("--config="):
            chosen = arg.removeprefix("--config=")
            break
    return os.path.abspath(os.path.join(cwd, chosen))


def _breach(rule: str) -> None:
    where = _running[-1].nodeid if _running else "collection"
    pytest.fail(f"{where}: {rule}", pytrace=False)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open":
        path = args[0]
        if (
            isinstance(path, str | bytes | os.PathLike)
            and _text(path).endswith("config.yaml")
            and os.path.abspath(_text(path)) == SHIPPED_CONFIG
        ):
            _breach(f"reads {SHIPPED_CONFIG}, which a user edits; {FIX}")
    elif event == "subprocess.Popen":
        _, argv, cwd, env = args
        cli = cli_args(argv)
        if cli is None:
            return
        if _running and _running[-1].get_closest_marker("slow") is None:
            _breach("runs the persona CLI as a subprocess, so it is marked @pytest.mark.slow")
        where = _text(cwd) if cwd is not None else os.getcwd()
        if config_of(cli, where, os.environ if env is None else env) == SHIPPED_CONFIG:
            _breach(f"runs the persona CLI on {SHIPPED_CONFIG}, which a user edits; pass --config: {FIX}")


def pytest_configure(config: pytest.Config) -> None:
    if not _installed:  # an audit hook cannot be removed: one per process
        sys.addaudithook(_audit)
        _installed.append(True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    """Which test is running (its fixtures' setup and teardown too), for the audit hook."""
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()
