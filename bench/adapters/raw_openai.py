"""The baseline: the same hand-written loop on the official ``openai`` client (``AsyncOpenAI``)."""

from __future__ import annotations

import asyncio
from typing import Any

import openai

from bench.adapters.sandbox_tools import SandboxTools


class RawOpenAILoop:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.stream = bool(cfg["stream"])
        self.client = openai.AsyncOpenAI(api_key=cfg["api_key"], base_url=cfg["openai_base_url"])
        self.tools = SandboxTools(cfg["sandbox_base_url"], cfg["sandbox_api_key"])

    async def aclose(self) -> None:
        await self.client.close()
        await self.tools.aclose()

    async def _complete(self, messages: list[Any]) -> tuple[str | None, list[dict[str, Any]]]:
        cfg = self.cfg
        kwargs: dict[str, Any] = {
            "model": cfg["model"],
            "messages": messages,
            "tools": cfg["tools"],
            "parallel_tool_calls": True,
            "temperature": cfg["temperature"],
            "max_tokens": cfg["max_tokens"],
        }
        if not self.stream:
            completion = await self.client.chat.completions.create(**kwargs)
            message = completion.choices[0].message
            calls = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": c.function.arguments},
                }
                for c in message.tool_calls or ()
                if c.type == "function"
            ]
            return message.content, calls
        parts: list[str] = []
        slots: dict[int, dict[str, Any]] = {}
        stream = await self.client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
        async for chunk in stream:
            for choice in chunk.choices:
                delta = choice.delta
                if delta.content:
                    parts.append(delta.content)
                for frag in delta.tool_calls or ():
                    slot = slots.setdefault(
                        frag.index,
                        {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                    )
                    if frag.id:
                        slot["id"] = frag.id
                    if frag.function is not None:
                        slot["function"]["name"] += frag.function.name or ""
                        slot["function"]["arguments"] += frag.function.arguments or ""
        return ("".join(parts) or None), [slots[i] for i in sorted(slots)]

    async def run(self) -> str:
        messages: list[Any] = [
            {"role": "system", "content": self.cfg["system_prompt"]},
            {"role": "user", "content": self.cfg["user_message"]},
        ]
        for _ in range(10):
            text, calls = await self._complete(messages)
            if not calls:
                return text or ""
            messages.append({"role": "assistant", "content": text, "tool_calls": calls})
            results = await asyncio.gather(
                *(self.tools.call_json(c["function"]["name"], c["function"]["arguments"]) for c in calls)
            )
            messages += [
                {"role": "tool", "tool_call_id": c["id"], "content": r}
                for c, r in zip(calls, results, strict=True)
            ]
        raise RuntimeError("no final answer after 10 model calls")


async def build(cfg: dict[str, Any]) -> RawOpenAILoop:
    return RawOpenAILoop(cfg)
