"""One obedient model server per module (loopback, stops by itself), and a runtime whose personas use it
through the real ``openai`` client: chat, HTTP and the three flows all reach the same compromised model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from persona.app import Runtime
from persona.settings import Settings
from persona.store.engine import Store
from tests.attacks.obedient import Obedient
from tests.harness import build_runtime, repo_settings
from tools.plisio.sandbox import LoopbackServer, Sandbox


@pytest.fixture(scope="module")
def model_server() -> Iterator[tuple[Obedient, LoopbackServer]]:
    obedient = Obedient()
    with LoopbackServer(obedient.server().app) as server:
        yield obedient, server


@pytest.fixture
def obedient(model_server: tuple[Obedient, LoopbackServer]) -> Obedient:
    model_server[0].emitted.clear()
    return model_server[0]


def with_model(settings: Settings, base_url: str) -> Settings:
    llm = settings.llm.model_copy(
        update={"base_url": f"{base_url}/v1", "model": "fake-model", "max_retries": 0}
    )
    return settings.model_copy(update={"llm": llm})


@pytest.fixture
async def rt(
    store: Store, sandbox: Sandbox, model_server: tuple[Obedient, LoopbackServer]
) -> AsyncIterator[Runtime]:
    runtime = build_runtime(store, sandbox, settings=with_model(repo_settings(), model_server[1].base_url))
    yield runtime
    await runtime.aclose()
