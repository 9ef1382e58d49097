"""openai-agents (the OpenAI Agents SDK) on its Chat Completions model, tracing off.

The 13 tools are ``FunctionTool``s with our strict schemas, each calling the hand-wired sandbox tool;
the SDK runs the parallel pair concurrently. Streaming uses ``Runner.run_streamed`` and drains its
events, as a UI would.
"""

from __future__ import annotations

from typing import Any

from agents import (
    Agent,
    FunctionTool,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

from bench.adapters.sandbox_tools import SandboxTools


class AgentsSdk:
    def __init__(self, cfg: dict[str, Any]) -> None:
        set_tracing_disabled(True)  # no exporter, no network
        self.cfg = cfg
        self.stream = bool(cfg["stream"])
        self.client = AsyncOpenAI(api_key=cfg["api_key"], base_url=cfg["openai_base_url"])
        self.tools = SandboxTools(cfg["sandbox_base_url"], cfg["sandbox_api_key"])
        self.agent: Agent[Any] = Agent(
            name="finance",
            instructions=cfg["system_prompt"],
            model=OpenAIChatCompletionsModel(model=cfg["model"], openai_client=self.client),
            model_settings=ModelSettings(
                temperature=cfg["temperature"], max_tokens=cfg["max_tokens"], parallel_tool_calls=True
            ),
            tools=[self._tool(t["function"]) for t in cfg["tools"]],
        )

    def _tool(self, spec: dict[str, Any]) -> FunctionTool:
        name = spec["name"]

        async def invoke(ctx: Any, arguments: str) -> str:
            return await self.tools.call_json(name, arguments)

        return FunctionTool(
            name=name,
            description=spec["description"],
            params_json_schema=spec["parameters"],
            on_invoke_tool=invoke,
            strict_json_schema=True,
        )

    async def run(self) -> str:
        if not self.stream:
            result = await Runner.run(self.agent, self.cfg["user_message"], max_turns=10)
            return str(result.final_output)
        streamed = Runner.run_streamed(self.agent, self.cfg["user_message"], max_turns=10)
        async for _ in streamed.stream_events():
            pass
        return str(streamed.final_output)

    async def aclose(self) -> None:
        await self.client.close()
        await self.tools.aclose()


async def build(cfg: dict[str, Any]) -> AgentsSdk:
    return AgentsSdk(cfg)
