"""A streamed reply leaves its connection in the pool: read to the end of the body after ``[DONE]``, so a
conversation's model requests share one TCP connection instead of opening one each (measured: five per
conversation before)."""

from __future__ import annotations

from typing import Any

import pytest

from persona.llm import OpenAIChatModel
from tests.fakes.openai_server import FakeOpenAI, FakeStep
from tools.plisio.sandbox.server import LoopbackServer

pytestmark = pytest.mark.anyio


class Peers:
    """ASGI wrapper that notes the client address (host, port) of every request: one port, one connection."""

    def __init__(self, app: Any) -> None:
        self.app, self.ports = app, []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.ports.append(scope["client"][1])
        await self.app(scope, receive, send)


@pytest.mark.parametrize("stream", [True, False])
async def test_model_requests_reuse_one_connection(stream: bool) -> None:
    fake = FakeOpenAI([FakeStep(text=f"reply {n}") for n in range(4)])
    peers = Peers(fake.app)
    async with LoopbackServer(peers) as server:
        model = OpenAIChatModel(
            model="fake-model", base_url=f"{server.base_url}/v1", api_key="k", stream=stream
        )
        try:
            for n in range(4):
                reply = await model.complete([{"role": "user", "content": "hi"}], tools=[])
                assert reply.text == f"reply {n}"
        finally:
            await model.aclose()
    assert len(peers.ports) == 4 and len(set(peers.ports)) == 1, peers.ports
