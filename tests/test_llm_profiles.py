"""Provider profiles: detected from the endpoint, named in config.yaml, and deciding what of a reply's own
fields goes back (and only that)."""

from __future__ import annotations

from pathlib import Path

import pytest

from persona.llm import OpenAIChatModel
from persona.llm.profiles import PROFILES, detect, profile
from tests.providers.replay_server import Capture, ReplayServer
from tests.test_config import error_for
from tools.plisio.sandbox import LoopbackServer


@pytest.mark.parametrize(
    ("base_url", "name"),
    [
        ("https://api.openai.com/v1", "openai"),
        ("https://acme.openai.azure.com/openai/deployments/gpt-4o", "azure"),
        ("https://acme.services.ai.azure.com/models", "azure"),
        ("https://generativelanguage.googleapis.com/v1beta/openai/", "gemini"),
        ("https://api.deepseek.com/v1", "deepseek"),
        ("https://openrouter.ai/api/v1", "openrouter"),
        ("https://api.groq.com/openai/v1", "groq"),
        ("https://api.mistral.ai/v1", "mistral"),
        ("http://127.0.0.1:11434/v1", "ollama"),
        ("http://localhost:1234/v1", "lmstudio"),
        ("http://127.0.0.1:8080/v1", "llamacpp"),
        ("http://gpu-box:8000/v1", "vllm"),
        ("http://127.0.0.1:43121/v1", "generic"),
        ("https://evil-api.openai.com.example.net/v1", "generic"),  # a suffix, not the host
        (None, "openai"),
    ],
)
def test_the_profile_is_detected_from_the_endpoint(base_url: str | None, name: str) -> None:
    assert detect(base_url).name == name


def test_a_named_provider_wins_over_the_url() -> None:
    assert profile("deepseek", "http://127.0.0.1:43121/v1").name == "deepseek"


def test_each_profile_sends_back_only_what_its_provider_takes() -> None:
    reply = {"reasoning_content": "r", "reasoning": "r", "reasoning_details": [{"t": 1}], "channel": "analysis",
             "extra_content": {"google": {"thought_signature": "s"}}}  # fmt: skip
    assert PROFILES["deepseek"].keep(reply) == {"reasoning_content": "r"}
    assert PROFILES["groq"].keep(reply) is None and PROFILES["mistral"].keep(reply) is None
    assert PROFILES["openrouter"].keep(reply) == {"reasoning": "r", "reasoning_details": [{"t": 1}]}
    assert PROFILES["gemini"].keep(reply, call=True) == {
        "extra_content": {"google": {"thought_signature": "s"}}
    }
    assert PROFILES["generic"].keep(reply) == {k: v for k, v in reply.items() if k != "channel"}, (
        "an unknown server gets what some provider needs back, not whatever another attached"
    )


def test_a_history_from_another_provider_is_sent_without_its_fields() -> None:
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "reasoning_content": "r", "channel": "analysis",
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"},
                         "extra_content": {"google": {"thought_signature": "s"}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "{}"},
    ]  # fmt: skip
    sent = PROFILES["groq"].outgoing(history)
    assert sent[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}  # fmt: skip
    assert sent[0] is history[0] and sent[2] is history[2], "messages without provider fields are not copied"
    assert PROFILES["deepseek"].outgoing(history)[1]["reasoning_content"] == "r"
    assert history[1]["channel"] == "analysis", "the stored history is not changed"


def test_an_unknown_provider_in_the_config_names_the_choices(tmp_path: Path) -> None:
    err = error_for(tmp_path, "llm:\n  provider: anthropic\n")
    assert err.key == "llm.provider" and err.line == 2
    assert "'openai'" in str(err) and "'generic'" in str(err)


@pytest.mark.anyio
@pytest.mark.parametrize(("provider", "key"), [("openai", "max_completion_tokens"), ("azure", "max_completion_tokens"),
                                                ("ollama", "max_tokens"), (None, "max_tokens")])  # fmt: skip
async def test_the_length_bound_goes_by_the_providers_name(provider: str | None, key: str) -> None:
    capture = Capture(Path("inline.json"), {"provider": "inline", "case": "x", "response": {
        "status": 200, "body": {"id": "x", "object": "chat.completion", "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}}})  # fmt: skip
    server = ReplayServer(capture)
    with LoopbackServer(server.app) as http:
        model = OpenAIChatModel(model="m", base_url=f"{http.base_url}/v1", max_tokens=100, provider=provider,
                                max_retries=0)  # fmt: skip
        try:
            await model.complete([{"role": "user", "content": "hi"}], [])
        finally:
            await model.aclose()
    [sent] = server.requests
    (other,) = {"max_tokens", "max_completion_tokens"} - {key}
    assert sent[key] == 100 and other not in sent


def test_the_readme_table_is_the_profiles() -> None:
    """What the README says each profile sends is what the code sends."""
    rows = []
    for name, prof in PROFILES.items():
        back = sorted((prof.message_fields or set()) | (prof.call_fields or set()))
        rows.append(
            f"| `{name}` | {'strict mode' if prof.strict_tools else prof.dialect} | "
            f"{'sent' if prof.parallel_tool_calls else 'left out'} | {'asked' if prof.stream_usage else 'not asked'} | "
            f"{', '.join(f'`{b}`' for b in back) or 'nothing'} | `{prof.max_tokens_key}` |"
        )
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert "\n".join(rows) in readme
