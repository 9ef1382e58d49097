"""Builders shared by the persona tests: a runtime on the in-process sandbox, scripted steps."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from persona.app import Runtime, connect_plisio
from persona.config import load_settings
from persona.llm import ScriptStep, ToolCall
from persona.settings import Settings
from persona.store.engine import Store
from tests.conftest import NOW

REPO = Path(__file__).resolve().parent.parent
CONFIG = Path(__file__).resolve().parent / "config.yaml"
"""The config the tests run on: config.yaml as shipped, kept in tests/ so that editing the repository's own
(as the README says) changes nothing here. Tests get copies of it (:func:`config_text`), never REPO/config.yaml."""


def config_text() -> str:
    """The tests' config, its ``prompts_dir`` the repository's prompts/ by absolute path (copies go elsewhere)."""
    text = CONFIG.read_text(encoding="utf-8")
    assert "\nprompts_dir: prompts\n" in text, CONFIG
    return text.replace("\nprompts_dir: prompts\n", f"\nprompts_dir: {REPO / 'prompts'}\n")


@functools.cache
def _settings_file() -> Path:
    """:func:`repo_settings`' copy of the config, in a temporary directory of this test process (removed at
    exit): the files its defaults put beside the store (var/master.key) land there, not in the repository."""
    home = Path(tempfile.mkdtemp(prefix="persona-tests-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    path = home / "config.yaml"
    path.write_text(config_text(), encoding="utf-8")
    return path


def repo_settings(**env: str) -> Settings:
    """The tests' config (:data:`CONFIG`). Periodic audit checkpoints (on time and every N records) are off:
    the shipped paths would put them (and the signing key) beside the store; the tests that want them give a
    directory of their own."""
    settings = load_settings(_settings_file(), env=env)
    off = {"checkpoint_every_s": None, "checkpoint_every_records": None}
    return settings.model_copy(update={"audit": settings.audit.model_copy(update=off)})


def build_runtime(
    store: Store,
    sandbox: Any,
    *,
    settings: Settings | None = None,
    now: Callable[[], datetime] = lambda: NOW,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Runtime:
    settings = settings or repo_settings()
    plisio = connect_plisio(settings, sandbox=sandbox, transport=transport)
    return Runtime.build(settings, store=store, plisio=plisio, now=now)


def call(name: str, args: Any = None, call_id: str | None = "auto") -> ToolCall:
    """A tool call; dict arguments are JSON-encoded unless ``raw`` semantics are wanted (pass a str)."""
    if call_id == "auto":
        call.counter += 1  # type: ignore[attr-defined]
        call_id = f"call_{call.counter}"  # type: ignore[attr-defined]
    arguments = json.dumps(args) if isinstance(args, dict) else args
    return ToolCall(id=call_id, name=name, arguments=arguments)


call.counter = 0  # type: ignore[attr-defined]


def step(*calls: ToolCall, text: str | None = None) -> ScriptStep:
    return ScriptStep(text=text, tool_calls=tuple(calls))


def say(text: str) -> ScriptStep:
    return ScriptStep(text=text)


class ConcurrencyProbe(httpx.AsyncBaseTransport):
    """Wraps a transport; records request order and the most requests in flight at once.

    Requests whose path contains ``hold`` wait (up to ``patience`` seconds) until ``expect`` of them
    are in flight, so truly concurrent calls meet, and sequential ones show max_inflight == 1.
    """

    def __init__(
        self, inner: httpx.AsyncBaseTransport, *, hold: str = "", expect: int = 2, patience: float = 1.5
    ):
        self.inner, self.hold, self.expect, self.patience = inner, hold, expect, patience
        self.inflight = 0
        self.max_inflight = 0
        self.paths: list[str] = []
        self._arrived = 0
        self._met = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        self.paths.append(request.url.path)
        try:
            if self.hold and self.hold in request.url.path:
                self._arrived += 1
                if self._arrived >= self.expect:
                    self._met.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._met.wait(), self.patience)
            return await self.inner.handle_async_request(request)
        finally:
            self.inflight -= 1


def bearer(rt: Runtime, email: str = "alice@example.com", role: str = "operator") -> dict[str, str]:
    """``Authorization`` headers for a user of ``role`` (added on first use) with a fresh API token."""
    import contextlib

    from persona.errors import Conflict
    from persona.users import Users
    from persona.vault import Actor

    users = Users(rt.store, rt.audit, rt.now)
    actor = Actor("cli", "test-setup")
    with contextlib.suppress(Conflict):
        users.add(email, role, actor)
    return {"Authorization": f"Bearer {users.issue_token(email, actor)}"}


def run_cli(
    cfg: Path, *args: str, check: int | None = 0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m persona --config CFG ARGS`` as a user runs it: a real process, no traceback allowed."""
    proc = subprocess.run(
        [sys.executable, "-m", "persona", "--config", str(cfg), *args],
        capture_output=True, text=True, timeout=120, cwd=cfg.parent,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", **(env or {})},
    )  # fmt: skip
    if check is not None:
        assert proc.returncode == check, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def write_config(
    tmp_path: Path, *, llm_url: str | None = None, sandbox_url: str | None = None, store: bool = True
) -> Path:
    """The tests' config (:func:`config_text`) as ``tmp_path/config.yaml``: the store in ``tmp_path``, optional
    endpoints."""
    text = config_text()
    if store:
        text = text.replace(
            "url: sqlite:///var/persona.sqlite3", f"url: sqlite:///{tmp_path / 'persona.sqlite3'}"
        )
    if llm_url:
        text = text.replace(
            "  base_url: null\n  model: null", f"  base_url: {llm_url}/v1\n  model: fake-model"
        )
    if sandbox_url:
        text = re.sub(r"(\n    url: )null", rf"\g<1>{sandbox_url}", text, count=1)
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path
