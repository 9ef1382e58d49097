"""Strict-mode schemas from pydantic models: refs inlined, objects closed, every property required.

Two views of one schema: the local one (every constraint pydantic knows, checked by jsonschema before the
model's arguments reach pydantic) and the model's (:func:`model_view`: only the keywords OpenAI's strict
mode accepts). Dialects for other providers start from the model's view (``persona/llm/dialects.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from tools.errors import ToolDefinitionError

# Keywords OpenAI's strict mode accepts; anything else stays in the local validation schema only.
_MODEL_KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "anyOf",
        "description",
        "pattern",
        "format",
        "minimum",
        "maximum",
        "minItems",
        "maxItems",
    }
)


def strict_schema(model: type[BaseModel]) -> dict[str, Any]:
    """Pydantic's JSON schema made strict-mode shaped: refs inlined, objects closed, all required."""
    raw = model.model_json_schema(mode="validation")
    defs = raw.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
            extra = {k: v for k, v in node.items() if k != "$ref"}
            return walk({**target, **extra})
        out = {k: walk(v) for k, v in node.items() if k not in {"title", "default"}}
        if out.get("type") == "object" or "properties" in out:
            out["type"] = "object"
            out.setdefault("properties", {})
            out["required"] = list(out["properties"])
            out["additionalProperties"] = False
        return _enum_only(_collapse_null_union(out))

    schema = walk(raw)
    if schema.get("type") != "object":
        raise ToolDefinitionError(f"{model.__name__}: a tool's parameters must be an object")
    return dict(schema) if isinstance(schema, dict) else {}


def _collapse_null_union(node: dict[str, Any]) -> dict[str, Any]:
    """``anyOf: [{type: T, ...}, {type: null}]`` -> ``{type: [T, null], ...}`` (fewer tokens)."""
    branches = node.get("anyOf")
    if not isinstance(branches, list) or len(branches) != 2 or {"type": "null"} not in branches:
        return node
    other = next(b for b in branches if b != {"type": "null"})
    if "enum" in other and "anyOf" not in other:
        merged = {k: v for k, v in node.items() if k != "anyOf"}
        merged.update({k: v for k, v in other.items() if k != "type"})
        merged["enum"] = [*other["enum"], None]
        return merged
    if not isinstance(other.get("type"), str) or "anyOf" in other or other.get("type") == "object":
        return node
    merged = {k: v for k, v in node.items() if k != "anyOf"}
    merged.update(other)
    merged["type"] = [other["type"], "null"]
    return merged


def _enum_only(node: dict[str, Any]) -> dict[str, Any]:
    """An enum lists every allowed value, its type included: ``type`` beside it only costs tokens."""
    if "enum" in node and "type" in node:
        return {k: v for k, v in node.items() if k != "type"}
    return node


def admits_null(spec: Mapping[str, Any]) -> bool:
    t = spec.get("type")
    if t == "null" or (isinstance(t, list) and "null" in t) or None in spec.get("enum", ()):
        return True
    return any(admits_null(b) for b in spec.get("anyOf", ()))


def model_view(node: Any) -> Any:
    if isinstance(node, list):
        return [model_view(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: model_view(spec) for name, spec in value.items()}
        elif key in _MODEL_KEYWORDS:
            out[key] = model_view(value)
    return out
