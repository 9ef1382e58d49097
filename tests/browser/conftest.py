"""The console in a real browser: Debian's chromium driven by Playwright, against `persona serve`'s app on
127.0.0.1 (uvicorn in a thread), with the sandbox in-process and the outbound receiver a fake transport.

Run with ``make browser-test`` (``.ci/run`` installs chromium when it is missing). Nothing here is skipped:
without chromium or Playwright the suite fails and says what to install.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from persona.clock import utcnow
from persona.server import create_app
from persona.store.engine import Store
from persona.store.schema import prepare
from tests.conftest import NOW
from tests.console_world import World, build_world
from tools.plisio.sandbox import LoopbackServer, Sandbox

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, str]]:
    """A world built once per module, served on a loopback port for the browser."""
    store = Store.open(f"sqlite:///{tmp_path_factory.mktemp('console') / 'persona.sqlite3'}")
    prepare(store, now=utcnow)
    # Its own thread: Playwright's sync API already runs an event loop in this one.
    with ThreadPoolExecutor(1) as pool:
        built = pool.submit(asyncio.run, build_world(store, Sandbox(seed=7, now=lambda: NOW))).result()
    with LoopbackServer(create_app(built.rt, start_worker=False)) as server:
        yield built, server.base_url
    store.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # a clear failure, never a skip
        raise RuntimeError("the browser tests need Playwright: `make browser-test` installs it") from exc
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"no chromium at {CHROMIUM}: `apt-get install chromium` (`.ci/run` does)")
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


class Watched:
    """A page with every console message, page error and failed request kept, to assert there are none."""

    def __init__(self, page: Any, base: str) -> None:
        self.page, self.base = page, base
        self.problems: list[str] = []
        page.on(
            "console",
            lambda m: (
                self.problems.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning")
                else None
            ),
        )
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", self._failed)

    def _failed(self, request: Any) -> None:
        if request.failure != "net::ERR_ABORTED":  # a load the next navigation cancelled is not a failure
            self.problems.append(f"request failed: {request.url} ({request.failure})")

    def open(self, path: str) -> Any:
        response = self.page.goto(self.base + path)
        return response

    def sign_in(self, token: str) -> None:
        self.open("/sign-in")
        self.page.fill("#token", token)
        self.page.click("button:has-text('Sign in')")


@pytest.fixture
def page(browser: Any, world: tuple[World, str]) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    watched = Watched(context.new_page(), world[1])
    yield watched
    context.close()
