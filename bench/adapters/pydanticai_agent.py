"""PydanticAI (``pydantic-ai-slim[openai]``): an ``Agent`` on ``OpenAIChatModel``.

The 13 tools come from our strict schemas through ``Tool.from_schema``, each calling the hand-wired
sandbox tool; PydanticAI runs the parallel pair concurrently. Streaming uses ``run_stream`` and
drains the text deltas.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic_ai import Agent, Tool
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from bench.adapters.sandbox_tools import SandboxTools


class PydanticAIAgent:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.stream = bool(cfg["stream"])
        self.provider = OpenAIProvider(base_url=cfg["openai_base_url"], api_key=cfg["api_key"])
        self.tools = SandboxTools(cfg["sandbox_base_url"], cfg["sandbox_api_key"])
        self.agent: Agent[None, str] = Agent(
            OpenAIChatModel(cfg["model"], provider=self.provider),
            system_prompt=cfg["system_prompt"],
            model_settings={
                "temperature": cfg["temperature"],
                "max_tokens": cfg["max_tokens"],
                "parallel_tool_calls": True,
            },
            tools=[self._tool(t["function"]) for t in cfg["tools"]],
        )

    def _tool(self, spec: dict[str, Any]) -> Tool[None]:
        name = spec["name"]

        def make() -> Callable[..., Awaitable[str]]:
            async def invoke(**kwargs: Any) -> str:
                return await self.tools.call(name, kwargs)

            return invoke

        return Tool.from_schema(
            function=make(), name=name, description=spec["description"], json_schema=spec["parameters"]
        )

    async def run(self) -> str:
        if not self.stream:
            result = await self.agent.run(self.cfg["user_message"])
            return result.output
        async with self.agent.run_stream(self.cfg["user_message"]) as streamed:
            async for _ in streamed.stream_text(delta=True):
                pass
            return await streamed.get_output()

    async def aclose(self) -> None:
        await self.provider.client.close()
        await self.tools.aclose()


async def build(cfg: dict[str, Any]) -> PydanticAIAgent:
    return PydanticAIAgent(cfg)
