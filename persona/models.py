"""The runtime's language models: the configured endpoint per persona, on one pooled HTTP client.

Chat turns and flow runs ask :class:`Models` for their persona's model instead of building one each time:
a model per call on its own client opened a connection pool per flow run that nothing closed. Here every
persona's model shares one :class:`~persona.llm.SharedHttp`, built on first use and closed with the runtime
(:meth:`Models.aclose`). ``factory`` replaces the configured endpoint (tests, replay, the demo's script).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from persona.errors import NotConfigured
from persona.llm import ChatModel, OpenAIChatModel, SharedHttp
from persona.settings import Settings

__all__ = ["NO_LLM_HELP", "ModelFactory", "Models", "model_for"]

ModelFactory = Callable[[str, str, Mapping[str, Any]], ChatModel]
"""(flow, persona, facts) -> the model that writes for that run (``flow`` is ``"chat"`` for a chat turn)."""

NO_LLM_HELP = (
    "no LLM endpoint is configured. Set llm.base_url and llm.model in config.yaml, for example:\n"
    "  OpenAI: base_url: https://api.openai.com/v1   model: gpt-4o-mini   (export OPENAI_API_KEY=...)\n"
    "  Ollama: base_url: http://127.0.0.1:11434/v1  model: llama3.1      (no key needed)\n"
    "  vLLM:   base_url: http://127.0.0.1:8000/v1   model: <served model name>"
)


def model_for(
    settings: Settings, persona: str, *, stream: bool | None = None, pool: SharedHttp | None = None
) -> OpenAIChatModel:
    """The configured endpoint as ``persona`` uses it (its model, temperature, max_tokens); ``stream``
    overrides ``llm.stream`` (``persona llm check`` tries both); ``pool``: the HTTP client to share (else
    the model has its own, closed with it)."""
    llm = settings.llm
    chosen = settings.persona(persona).model
    model = chosen.model or llm.model
    if not llm.base_url or not model:
        raise NotConfigured(NO_LLM_HELP)
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
    return OpenAIChatModel(
        model=model, base_url=llm.base_url, api_key=key, timeout=llm.timeout, max_retries=llm.max_retries,
        temperature=chosen.temperature, max_tokens=chosen.max_tokens, stream=llm.stream if stream is None else stream,
        provider=llm.provider, pool=pool,
    )  # fmt: skip


class Models:
    """Each persona's model, made once, all on one HTTP pool; or what ``factory`` returns."""

    def __init__(self, settings: Settings, factory: ModelFactory | None = None) -> None:
        self.settings = settings
        self.factory = factory
        """Injected models (tests, replay, the demo); None means the configured endpoint."""
        self._pool = SharedHttp()
        self._made: dict[str, OpenAIChatModel] = {}

    def configured(self, persona: str) -> OpenAIChatModel:
        """``persona``'s configured model (NotConfigured when no endpoint is set)."""
        made = self._made.get(persona)
        if made is None:
            made = self._made[persona] = model_for(self.settings, persona, pool=self._pool)
        return made

    def chat(self, persona: str, user: str) -> ChatModel:
        """The model a chat turn of ``persona`` with ``user`` runs on (NotConfigured without an endpoint)."""
        if self.factory is not None:
            return self.factory("chat", persona, {"user": user})
        return self.configured(persona)

    def flow(self, flow: str, persona: str, facts: Mapping[str, Any]) -> ChatModel | None:
        """The model a flow's persona writes with, or None (no endpoint: the flow's template writes)."""
        if self.factory is not None:
            return self.factory(flow, persona, facts)
        try:
            return self.configured(persona)
        except NotConfigured:
            return None

    @property
    def pooled(self) -> bool:
        """Whether the shared HTTP client is open (a configured model was used and not closed yet)."""
        return self._pool.opened

    async def aclose(self) -> None:
        self._made.clear()
        await self._pool.aclose()
