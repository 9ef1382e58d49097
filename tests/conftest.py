"""Shared fixtures: the async backend, an instant clock, the sandbox and a client on it."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog

from tools.plisio.client import PlisioClient, RetryPolicy

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class FakeClock:
    """A monotonic clock whose sleeps advance time instantly and are recorded."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sandbox():  # type: ignore[no-untyped-def]
    from tools.plisio.sandbox import Sandbox

    return Sandbox(seed=7, now=lambda: NOW)


@pytest.fixture
async def plisio(sandbox, clock: FakeClock) -> AsyncIterator[PlisioClient]:  # type: ignore[no-untyped-def]
    from tools.plisio.sandbox import SANDBOX_API_KEY

    client = PlisioClient(
        SANDBOX_API_KEY,
        base_url="http://sandbox.test/api/v1",
        transport=sandbox.transport(),
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(1),
        retry=RetryPolicy(),
    )
    async with client:
        yield client


@pytest.fixture
def capture_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every structlog event of the test, at every level, as the dicts the code logged: before any processor,
    so before the scrubbing the log line gets (a secret found here was handed to the logger).

    The runtime configures structlog to drop events below its level (``log.level: warning``): logging is set
    up first, as the runtime would, then the level filter is opened to debug and restored afterwards."""
    from persona import log

    log.ensure_configured()
    wrapper = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(wrapper_class=wrapper)


# Storage fixtures (SQLite always, PostgreSQL too when PERSONA_TEST_POSTGRES_URL is set).
from tests.fixtures_store import store, store_url  # noqa: E402, F401

# Rules held for every test: CLI subprocesses are marked slow; the repository's config.yaml is never read.
from tests.guards import pytest_configure, pytest_runtest_protocol  # noqa: E402, F401
