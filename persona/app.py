"""Composition root: builds the Plisio client (live or sandbox) and, later, store, registry, personas.

Everything that owns a connection is built here and closed here, so the CLI, the server
and the tests assemble the same objects the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from persona.config import PlisioMode, Settings
from persona.errors import NotConfigured
from tools.plisio.client import KeySource, PlisioClient, RetryPolicy, Timeouts

if TYPE_CHECKING:
    from tools.plisio.sandbox import Sandbox

IN_PROCESS_SANDBOX_URL = "http://sandbox.invalid/api/v1"


@dataclass
class PlisioConnection:
    """A Plisio client and, in sandbox mode, the sandbox it talks to (in-process or remote)."""

    client: PlisioClient
    sandbox: Sandbox | None
    mode: PlisioMode

    async def aclose(self) -> None:
        await self.client.aclose()


def connect_plisio(
    settings: Settings,
    *,
    key: str | KeySource | None = None,
    sandbox: Sandbox | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> PlisioConnection:
    """Build the client the settings ask for.

    Sandbox mode needs no key: it uses the in-process sandbox (or ``plisio.sandbox.url``).
    Live mode needs ``PLISIO_API_KEY`` (or a ``key`` source from the vault).
    """
    cfg = settings.plisio
    timeouts = Timeouts(**cfg.timeouts.model_dump())
    retry = RetryPolicy(**cfg.retry.model_dump())
    if cfg.mode is PlisioMode.LIVE:
        if key is None:
            if settings.plisio_api_key is None:
                raise NotConfigured(
                    "plisio.mode is 'live' but no Plisio key is available: export PLISIO_API_KEY=<your secret key>"
                    " (Plisio dashboard, API settings), or set plisio.mode: sandbox in config.yaml"
                )
            key = settings.plisio_api_key.get_secret_value()
        client = PlisioClient(key, base_url=cfg.base_url, timeouts=timeouts, retry=retry, transport=transport)
        return PlisioConnection(client, None, cfg.mode)

    from tools.plisio.sandbox import SANDBOX_API_KEY, Sandbox

    if cfg.sandbox.url and sandbox is None and transport is None:
        client = PlisioClient(SANDBOX_API_KEY, base_url=cfg.sandbox.url, timeouts=timeouts, retry=retry)
        return PlisioConnection(client, None, cfg.mode)
    sandbox = sandbox or Sandbox(seed=cfg.sandbox.seed)
    client = PlisioClient(
        key or SANDBOX_API_KEY,
        base_url=IN_PROCESS_SANDBOX_URL,
        timeouts=timeouts,
        retry=retry,
        transport=transport or sandbox.transport(),
    )
    return PlisioConnection(client, sandbox, cfg.mode)
