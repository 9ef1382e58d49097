"""The schema contract of every tool, and argument validation that answers with field-level errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tools.errors import ToolDefinitionError
from tools.plisio.args import CoinArgs
from tools.plisio.tools import PLISIO_TOOLS, plisio_registry
from tools.registry import MAX_RESULT_CHARS, Registry, Tool, ToolFailure, ToolResult, bounded_json

REGISTRY = plisio_registry()
STRICT_KEYWORDS = {
    "type", "properties", "required", "additionalProperties", "items", "enum", "anyOf",
    "description", "pattern", "format", "minimum", "maximum", "minItems", "maxItems",
}  # fmt: skip


def walk_objects(node: Any, path: str = "$") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            found.append((path, node))
        for key, value in node.items():
            if key == "properties":
                for name, spec in value.items():
                    found += walk_objects(spec, f"{path}.{name}")
            elif isinstance(value, dict | list):
                found += walk_objects(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += walk_objects(item, f"{path}[{i}]")
    return found


def keywords(node: Any) -> set[str]:
    out: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "properties":
                for spec in value.values():
                    out |= keywords(spec)
            else:
                out.add(key)
                out |= keywords(value)
    elif isinstance(node, list):
        for item in node:
            out |= keywords(item)
    return out


def test_there_are_exactly_the_thirteen_promised_tools_and_no_withdrawal() -> None:
    assert sorted(REGISTRY.names()) == sorted(
        [
            "plisio_create_invoice", "plisio_estimate_fee", "plisio_get_balance", "plisio_estimate_commission",
            "plisio_get_currencies_by_fiat", "plisio_get_fee_plans", "plisio_get_fee_plan_details",
            "plisio_get_invoice", "plisio_get_invoice_by_email", "plisio_get_shop_info",
            "plisio_list_transactions", "plisio_get_supported_currencies", "plisio_get_transaction",
        ]
    )  # fmt: skip
    assert not any("withdraw" in name for name in REGISTRY.names())
    side_effects = {t.name for t in PLISIO_TOOLS if not t.read_only}
    assert side_effects == {"plisio_create_invoice"}


@pytest.mark.parametrize("tool", PLISIO_TOOLS, ids=lambda t: t.name)
def test_schema_is_openai_strict_mode_shaped(tool: Tool[Any, Any]) -> None:
    spec = tool.openai_tool()
    assert spec["type"] == "function" and spec["function"]["strict"] is True
    assert spec["function"]["name"] == tool.name and len(tool.description) >= 12
    params = spec["function"]["parameters"]
    Draft202012Validator.check_schema(params)
    assert keywords(params) <= STRICT_KEYWORDS, keywords(params) - STRICT_KEYWORDS
    for path, obj in walk_objects(params):
        assert obj["additionalProperties"] is False, path
        assert sorted(obj["required"]) == sorted(obj["properties"]), path
    for name, field in tool.args_model.model_fields.items():
        prop = params["properties"][name]
        admits_null = (
            "null" in (prop.get("type") or [])
            or None in prop.get("enum", [])
            or any(b.get("type") == "null" for b in prop.get("anyOf", []))
        )
        assert admits_null == (not field.is_required()), f"{tool.name}.{name}: optional <=> nullable"
        if prop.get("enum"):
            assert all(isinstance(v, str) or v is None for v in prop["enum"])


@pytest.mark.parametrize("tool", PLISIO_TOOLS, ids=lambda t: t.name)
def test_every_tool_refuses_unknown_fields_and_non_objects(tool: Tool[Any, Any]) -> None:
    bad = tool.parse({"definitely_not_a_field": 1})
    assert isinstance(bad, ToolFailure) and bad.type == "invalid_arguments"
    assert any(e["field"] == "definitely_not_a_field" for e in bad.details["errors"])  # type: ignore[index]
    assert isinstance(tool.parse("[1,2]"), ToolFailure)
    assert isinstance(tool.parse("{not json"), ToolFailure)


def test_unknown_status_lists_the_valid_ones() -> None:
    failure = REGISTRY.get("plisio_list_transactions").parse('{"status":"paid"}')  # type: ignore[union-attr]
    assert isinstance(failure, ToolFailure) and failure.field == "status"
    for real in ["new", "pending", "pending internal", "completed", "mismatch", "expired", "cancelled", "error",
                 "cancelled duplicate"]:  # fmt: skip
        assert real in failure.message


def test_amount_as_json_number_is_refused_with_a_hint() -> None:
    tool = REGISTRY.get("plisio_create_invoice")
    assert tool is not None
    failure = tool.parse('{"order_name":"Pro plan","source_amount":49.9,"source_currency":"USD"}')
    assert isinstance(failure, ToolFailure) and failure.field == "source_amount"
    assert 'decimal string such as "49.9"' in failure.message


def test_omitted_optional_fields_are_null_and_arguments_may_come_as_an_object() -> None:
    tool = REGISTRY.get("plisio_create_invoice")
    assert tool is not None
    parsed = tool.parse({"order_name": "Pro plan", "source_amount": "49.90", "source_currency": "USD"})
    assert not isinstance(parsed, ToolFailure)
    assert str(parsed.source_amount) == "49.90" and parsed.currency is None


@pytest.mark.parametrize(
    ("raw", "field", "needle"),
    [
        ('{"psys_cid":"BT C"}', "psys_cid", "expected form"),
        ('{"psys_cid":"../X"}', "psys_cid", "expected form"),
        ("{}", "psys_cid", "required"),
        ('{"psys_cid":null}', "psys_cid", "not of type"),
    ],
)
def test_field_level_errors(raw: str, field: str, needle: str) -> None:
    failure = REGISTRY.get("plisio_get_balance").parse(raw)  # type: ignore[union-attr]
    assert isinstance(failure, ToolFailure)
    assert failure.field == field and needle in failure.message


def test_cross_field_rules_come_from_pydantic_after_the_schema() -> None:
    tool = REGISTRY.get("plisio_create_invoice")
    assert tool is not None
    both = tool.parse(
        '{"order_name":"x","source_amount":"1","source_currency":"USD","amount":"1","currency":"BTC"}'
    )
    assert isinstance(both, ToolFailure) and "not both" in both.message
    fee = REGISTRY.get("plisio_estimate_fee")
    assert fee is not None
    mismatch = fee.parse({"psys_cid": "BTC", "addresses": ["bc1q" + "x" * 30], "amounts": ["1", "2"]})
    assert isinstance(mismatch, ToolFailure) and "one amount per address" in mismatch.message


async def _noop(args: CoinArgs, ctx: object) -> dict[str, str]:
    return {}


def test_declaration_mistakes_raise() -> None:
    tool = Tool(name="t", description="d" * 30, args_model=CoinArgs, handler=_noop)
    with pytest.raises(ToolDefinitionError, match="declared twice"):
        Registry([tool, tool])
    with pytest.raises(ToolDefinitionError, match="contradict"):
        Tool(name="t", description="d", args_model=CoinArgs, handler=_noop, read_only=True, side_effect="x")


@pytest.mark.anyio
async def test_unknown_tool_is_a_result_not_an_exception() -> None:
    result = await REGISTRY.call("plisio_withdraw", "{}", ctx=None)  # type: ignore[arg-type]
    assert not result.ok and result.error is not None and result.error.type == "unknown_tool"
    assert "plisio_get_balance" in result.error.details["tools"]  # type: ignore[index]


def test_results_are_bounded_and_say_what_was_cut() -> None:
    data = {"operations": [{"id": f"{i:024d}", "email": "x" * 40} for i in range(500)], "total_count": 500}
    text = ToolResult.success("t", data).to_content()
    assert len(text) <= MAX_RESULT_CHARS
    decoded = json.loads(text)
    kept = decoded["result"]["operations"]
    assert 1 <= len(kept) < 500
    assert decoded["truncated"]["omitted_items"]["result.operations"] == 500 - len(kept)
    assert decoded["result"]["total_count"] == 500
    assert len(bounded_json("y" * 10_000, 200)) <= 200
