"""The runtime's models: one per persona, all on one pooled HTTP client, closed with the runtime.

Before, a flow run built a model (and an HTTP connection pool) per call and nothing closed it.
"""

from __future__ import annotations

from typing import Any

import pytest

from persona.errors import NotConfigured
from persona.llm import ScriptedChatModel
from persona.models import NO_LLM_HELP, Models
from persona.settings import Settings
from persona.store.engine import Store
from tests.fakes.openai_server import FakeOpenAI, FakeStep
from tests.harness import build_runtime, repo_settings, say
from tests.test_llm import MESSAGES, serve
from tools.plisio.sandbox import Sandbox

pytestmark = pytest.mark.anyio


def with_endpoint(url: str) -> Settings:
    settings = repo_settings()
    llm = settings.llm.model_copy(update={"base_url": url, "model": "fake-model"})
    return settings.model_copy(update={"llm": llm})


async def test_each_persona_gets_one_model_and_every_model_shares_one_pool() -> None:
    server = FakeOpenAI([FakeStep(status=429, retry_after=0), FakeStep(text="one"), FakeStep(text="two")])
    with serve(server.app) as url:
        models = Models(with_endpoint(url))
        assert not models.pooled, "nothing is opened before a model is used"
        finance = models.configured("finance")
        assert models.configured("finance") is finance
        assert models.chat("finance", "alice@example.com") is finance
        assert models.flow("recovery", "finance", {}) is finance
        growth = models.configured("growth")
        assert growth is not finance
        first = await finance.complete(MESSAGES, [])
        second = await growth.complete(MESSAGES, [])
        assert models.pooled
        await models.aclose()
    assert (first.text, first.attempts) == ("one", 2), "attempts are counted on the shared client too"
    assert (second.text, second.attempts) == ("two", 1)
    assert len(server.requests) == 3
    assert not models.pooled, "closed with its owner"


async def test_without_an_endpoint_a_flow_gets_none_and_a_chat_a_clear_error() -> None:
    models = Models(repo_settings())
    assert models.flow("recovery", "finance", {"txn_id": "t"}) is None  # the flow's template then writes
    with pytest.raises(NotConfigured) as refused:
        models.chat("finance", "alice@example.com")
    assert str(refused.value) == NO_LLM_HELP
    assert not models.pooled


async def test_an_injected_factory_replaces_the_endpoint_for_chat_and_flows() -> None:
    asked: list[tuple[str, str, dict[str, Any]]] = []

    def factory(flow: str, persona: str, facts: Any) -> ScriptedChatModel:
        asked.append((flow, persona, dict(facts)))
        return ScriptedChatModel([say("hi")])

    models = Models(with_endpoint("http://127.0.0.1:9/v1"), factory)
    models.chat("finance", "alice@example.com")
    models.flow("recovery", "growth", {"txn_id": "t1"})
    assert asked == [
        ("chat", "finance", {"user": "alice@example.com"}),
        ("recovery", "growth", {"txn_id": "t1"}),
    ]
    assert not models.pooled, "the configured endpoint is never opened"


async def test_the_runtime_hands_its_models_to_chat_and_flows_and_closes_them(
    store: Store, sandbox: Sandbox
) -> None:
    rt = build_runtime(store, sandbox, settings=with_endpoint("http://127.0.0.1:9/v1"))
    model = rt.chat.models("finance", "alice@example.com")
    assert rt.flows.models("recovery", "finance", {}) is model
    assert rt.models.pooled
    await rt.aclose()
    assert not rt.models.pooled
