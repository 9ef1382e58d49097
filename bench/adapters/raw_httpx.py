"""The floor: a hand-written tool loop posting Chat Completions JSON with raw ``httpx``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from bench.adapters.sandbox_tools import SandboxTools


class RawHttpxLoop:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.stream = bool(cfg["stream"])
        self.http = httpx.AsyncClient(
            base_url=cfg["openai_base_url"].rstrip("/") + "/",
            headers={"Authorization": f"Bearer {cfg['api_key']}"},
            timeout=60.0,
        )
        self.tools = SandboxTools(cfg["sandbox_base_url"], cfg["sandbox_api_key"])

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.tools.aclose()

    def _request(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        cfg = self.cfg
        body = {
            "model": cfg["model"],
            "messages": messages,
            "tools": cfg["tools"],
            "parallel_tool_calls": True,
            "temperature": cfg["temperature"],
            "max_tokens": cfg["max_tokens"],
        }
        if self.stream:
            body.update(stream=True, stream_options={"include_usage": True})
        return body

    async def _complete(self, messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
        if not self.stream:
            response = await self.http.post("chat/completions", json=self._request(messages))
            response.raise_for_status()
            message = response.json()["choices"][0]["message"]
            return message.get("content"), message.get("tool_calls") or []
        parts: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        async with self.http.stream("POST", "chat/completions", json=self._request(messages)) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        parts.append(delta["content"])
                    for frag in delta.get("tool_calls") or ():
                        slot = calls.setdefault(
                            frag["index"],
                            {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                        )
                        if frag.get("id"):
                            slot["id"] = frag["id"]
                        function = frag.get("function") or {}
                        slot["function"]["name"] += function.get("name") or ""
                        slot["function"]["arguments"] += function.get("arguments") or ""
        return ("".join(parts) or None), [calls[i] for i in sorted(calls)]

    async def run(self) -> str:
        messages: list[dict[str, Any]] = [
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


async def build(cfg: dict[str, Any]) -> RawHttpxLoop:
    return RawHttpxLoop(cfg)
