"""LangGraph: the prebuilt ReAct agent (``create_react_agent``) on ``langchain-openai``'s ``ChatOpenAI``.

The 13 tools are ``StructuredTool``s with our strict schemas as ``args_schema``, each calling the
hand-wired sandbox tool; LangGraph's ``ToolNode`` runs the parallel pair concurrently. Streaming turns
on ``ChatOpenAI(streaming=True)`` and drains ``astream(stream_mode="messages")`` token by token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.tools import StructuredTool
from langchain_openai import ChatOpenAI
from langgraph.prebuilt import create_react_agent

from bench.adapters.sandbox_tools import SandboxTools


class LangGraphAgent:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.stream = bool(cfg["stream"])
        self.tools = SandboxTools(cfg["sandbox_base_url"], cfg["sandbox_api_key"])
        self.llm = ChatOpenAI(
            model=cfg["model"],
            base_url=cfg["openai_base_url"],
            api_key=cfg["api_key"],
            temperature=cfg["temperature"],
            max_tokens=cfg["max_tokens"],
            streaming=self.stream,
            stream_usage=True,
        )
        tools = [self._tool(t["function"]) for t in cfg["tools"]]
        self.graph: Any = create_react_agent(
            self.llm.bind_tools(tools, parallel_tool_calls=True), tools, prompt=cfg["system_prompt"]
        )

    def _tool(self, spec: dict[str, Any]) -> StructuredTool:
        name = spec["name"]

        def make() -> Callable[..., Awaitable[str]]:
            async def invoke(**kwargs: Any) -> str:
                return await self.tools.call(name, kwargs)

            return invoke

        return StructuredTool.from_function(
            coroutine=make(), name=name, description=spec["description"], args_schema=spec["parameters"]
        )

    async def run(self) -> str:
        inputs = {"messages": [("user", self.cfg["user_message"])]}
        if not self.stream:
            state = await self.graph.ainvoke(inputs)
        else:
            state = None
            async for mode, data in self.graph.astream(inputs, stream_mode=["messages", "values"]):
                if mode == "values":
                    state = data
        assert state is not None
        last: BaseMessage = state["messages"][-1]
        return str(last.content)

    async def aclose(self) -> None:
        await self.tools.aclose()


async def build(cfg: dict[str, Any]) -> LangGraphAgent:
    return LangGraphAgent(cfg)
