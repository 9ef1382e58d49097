"""Schema dialects: each profile writes the registry's tool schemas the way its endpoint takes them, and
only on the wire; what the dispatcher accepts stays the registry's."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from persona.llm import OpenAIChatModel
from persona.llm.dialects import DIALECTS, gemini, grammar, loose, write
from persona.llm.profiles import PROFILES
from tests.fakes.openai_server import FakeOpenAI, FakeStep
from tools.plisio.sandbox import LoopbackServer
from tools.plisio.tools import PLISIO_TOOLS
from tools.registry import ToolFailure

TOOLS = {t.name: t for t in PLISIO_TOOLS}
INVOICE = TOOLS["plisio_create_invoice"]


def nodes(schema: Any) -> Iterator[dict[str, Any]]:
    if isinstance(schema, dict):
        yield schema
        for key, value in schema.items():
            if key == "properties":
                for spec in value.values():
                    yield from nodes(spec)
            elif isinstance(value, dict | list):
                yield from nodes(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from nodes(item)


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
@pytest.mark.parametrize("tool", PLISIO_TOOLS, ids=lambda t: t.name)
def test_every_dialect_writes_a_valid_schema_and_leaves_the_registry_alone(dialect: str, tool: Any) -> None:
    before = json.dumps(tool.parameters, sort_keys=True)
    written = DIALECTS[dialect](tool.parameters)
    Draft202012Validator.check_schema(written)
    assert json.dumps(tool.parameters, sort_keys=True) == before, "a dialect copies, never edits"
    assert set(written["properties"]) == set(tool.parameters["properties"])


def test_loose_makes_a_nullable_field_optional() -> None:
    written = loose(INVOICE.parameters)
    assert written["required"] == ["order_name"]
    assert not any(isinstance(n.get("type"), list) for n in nodes(written)), "no type arrays (old Ollama)"
    assert written["properties"]["source_amount"]["type"] == "string"
    assert written["properties"]["allowed_psys_cids"]["type"] == "array"


@pytest.mark.parametrize("tool", PLISIO_TOOLS, ids=lambda t: t.name)
def test_what_a_model_sends_by_the_loose_schema_the_dispatcher_takes(tool: Any) -> None:
    """A model told the loose schema leaves optional fields out; the registry reads them as null."""
    written = loose(tool.parameters)
    only_required = {name: _example(written["properties"][name]) for name in written.get("required", [])}
    only_required |= PAIRED.get(tool.name, {})
    assert not list(Draft202012Validator(written).iter_errors(only_required))
    parsed = tool.parse(json.dumps(only_required))
    assert not isinstance(parsed, ToolFailure), parsed


PAIRED = {"plisio_create_invoice": {"source_amount": "49.90", "source_currency": "USD"}}
"""Optional fields a tool's own rule asks for together (a price: amount and currency of one kind)."""


def _example(spec: dict[str, Any]) -> Any:
    if "enum" in spec:
        return spec["enum"][0]
    kind = spec.get("type")
    if kind == "integer":
        return spec.get("minimum", 1)
    if kind == "array":
        return [_example(spec["items"])] * spec.get("minItems", 1)
    if spec.get("format") == "email":
        return "billing@acme.example"
    pattern = spec.get("pattern", ".*")
    known = {"^\\w{2,20}$": "BTC", "^[A-Z]{3}$": "USD"}
    return known[pattern] if pattern in known else _matching(pattern)


def _matching(pattern: str) -> str:
    """A short string that the simple anchored patterns of the registry accept."""
    for candidate in ("Pro plan", "1", "ab12", "12345678901234567890123456789012", "op_1"):
        if re.fullmatch(pattern.strip("^$"), candidate):
            return candidate
    raise AssertionError(f"no example for {pattern}")


def test_gemini_drops_what_googles_subset_lacks() -> None:
    written = gemini(INVOICE.parameters)
    assert not any("additionalProperties" in n for n in nodes(written))
    assert written["properties"]["email"] == {"type": "string", "description": "Format: email"}
    const = gemini(
        {"type": "object", "properties": {"k": {"const": "x", "title": "K", "exclusiveMinimum": 0}}}
    )
    assert const["properties"]["k"] == {"enum": ["x"], "description": "Greater than 0"}


def test_grammar_writes_patterns_llamacpp_compiles() -> None:
    """llama.cpp's grammar parser refuses \\w, \\d, \\s ("unknown escape"): they are spelled out, any-text
    becomes a length bound, and a pattern that cannot be written is left to the dispatcher."""
    written = grammar(INVOICE.parameters)
    patterns = [n["pattern"] for n in nodes(written) if "pattern" in n]
    assert patterns and not any(re.search(r"\\[wWdDsS]", p) for p in patterns), patterns
    assert written["properties"]["description"] == {"type": "string", "maxLength": 500}
    assert written["properties"]["currency"]["pattern"] == "^[A-Za-z0-9_]{2,20}$"
    assert written["properties"]["order_name"]["pattern"] == "^[^\\n]{1,120}$", "escapes it reads stay"
    fee = grammar(TOOLS["plisio_estimate_fee"].parameters)
    assert "^[A-Za-z0-9_:-]{20,128}$" in json.dumps(fee), "\\w inside a class becomes a range"
    odd = grammar({"type": "object", "properties": {"k": {"type": "string", "pattern": "^\\S+$"}}})
    assert odd["properties"]["k"] == {"type": "string", "description": "Must match ^\\S+$"}


def test_the_dispatcher_still_checks_what_a_dialect_leaves_out() -> None:
    odd_text = {"order_name": "x", "source_amount": "1", "source_currency": "USD", "currency": "BTC-é"}
    assert not list(
        Draft202012Validator(loose(INVOICE.parameters)).iter_errors({**odd_text, "currency": "BTC"})
    )
    failure = INVOICE.parse(json.dumps(odd_text))
    assert isinstance(failure, ToolFailure) and "currency" in failure.message


def test_only_openai_and_azure_are_sent_strict_mode() -> None:
    registry_tools = [t.openai_tool() for t in PLISIO_TOOLS]
    for name, prof in PROFILES.items():
        sent = prof.tools(registry_tools)
        strict = {t["function"].get("strict") for t in sent}
        if name in ("openai", "azure"):
            assert sent == registry_tools and strict == {True}, name
        else:
            assert strict == {None}, name
            assert all(t["function"]["parameters"] == DIALECTS[prof.dialect](r["function"]["parameters"])
                       for t, r in zip(sent, registry_tools, strict=True)), name  # fmt: skip


@pytest.mark.anyio
@pytest.mark.parametrize(("provider", "parallel"), [("generic", True), ("gemini", False), ("openai", True)])
async def test_the_wire_carries_the_profiles_choices(provider: str, parallel: bool) -> None:
    fake = FakeOpenAI([FakeStep(text="ok"), FakeStep(text="ok")])
    tools = [t.openai_tool() for t in PLISIO_TOOLS]
    with LoopbackServer(fake.app) as server:
        model = OpenAIChatModel(model="m", base_url=f"{server.base_url}/v1", api_key="k", provider=provider)
        try:
            for _ in range(2):
                await model.complete([{"role": "user", "content": "hi"}], tools)
        finally:
            await model.aclose()
    first, second = fake.requests
    assert ("parallel_tool_calls" in first) is parallel
    assert first["tools"] == second["tools"] == json.loads(json.dumps(PROFILES[provider].tools(tools)))


def test_an_optional_enum_is_optional_and_typed_for_google() -> None:
    """``Optional[Literal[...]]`` is an enum holding null: loose leaves it out of ``required``."""
    listing = TOOLS["plisio_list_transactions"].parameters
    assert loose(listing)["required"] == []
    status = gemini(listing)["properties"]["status"]
    assert None not in status["enum"] and status["type"] == "string"
    assert loose({"type": "object", "properties": {"k": {"type": ["null"]}}, "required": ["k"]})["properties"] == {
        "k": {"type": ["null"]}}, "nothing but null: left as it is, still a valid schema"  # fmt: skip


def test_only_top_level_fields_are_loosened() -> None:
    """The registry reads a left-out field as null only at the top, so a nested object keeps its shape."""
    nested = {"type": "object", "additionalProperties": False, "required": ["lines"], "properties": {
        "lines": {"type": "array", "items": {"type": "object", "required": ["sku", "note"], "properties": {
            "sku": {"type": "string"}, "note": {"type": ["string", "null"]}}}}}}  # fmt: skip
    assert loose(nested)["properties"]["lines"] == nested["properties"]["lines"]


@pytest.mark.parametrize(
    ("pattern", "written"),
    [
        ("^https?:\\/\\/[\\w.-]+$", "^https?://[A-Za-z0-9_.-]+$"),
        ("^[\\w\\.]+$", "^[A-Za-z0-9_.]+$"),
        ("^[\\(\\)0-9 +]+$", "^[()0-9 +]+$"),
        ("^\\d{3}\\.\\d$", "^[0-9]{3}\\.[0-9]$"),
        ("^\\x41[^\\n]{1,120}$", "^\\x41[^\\n]{1,120}$"),
        ("^[a\\-z]+$", None),  # an escaped '-' in a class: older builds refuse it
        ("^\\S+$", None),
        ("[A-Z]{3}", None),  # not anchored
        ("^a\\$", None),  # the last '$' is escaped: not anchored either
        ("^a{0,2000}$", None),  # over the bound every build compiles
    ],
)
def test_grammar_patterns_are_what_llamacpp_reads_or_left_out(pattern: str, written: str | None) -> None:
    spec = grammar({"type": "object", "properties": {"k": {"type": "string", "pattern": pattern}}})[
        "properties"
    ]["k"]
    if written is None:
        assert "pattern" not in spec and spec["description"] == f"Must match {pattern}"
    else:
        assert spec["pattern"] == written


def test_grammar_leaves_out_length_bounds_no_build_compiles() -> None:
    spec = grammar({"type": "object", "properties": {"k": {"type": "string", "maxLength": 5000}}})[
        "properties"
    ]["k"]
    assert spec == {"type": "string", "description": "Up to 5000 characters"}


def test_a_written_schema_is_remembered_per_schema_object() -> None:
    params = TOOLS["plisio_create_invoice"].parameters
    assert write("loose", params) is write("loose", params), "a turn's steps reuse one written schema"
    copy_of = json.loads(json.dumps(params))
    assert write("loose", copy_of) == write("loose", params) and write("loose", copy_of) is not write(
        "loose", params
    )


@pytest.mark.parametrize("tool", PLISIO_TOOLS, ids=lambda t: t.name)
def test_gemini_schemas_stay_in_googles_subset(tool: Any) -> None:
    written = gemini(tool.parameters)
    for node in nodes(written):
        assert not {"additionalProperties", "const", "$schema", "title"} & node.keys(), node
        assert not isinstance(node.get("type"), list), node
        assert None not in (node.get("enum") or []), node
        assert node.get("format") in (None, "enum", "date-time"), node
