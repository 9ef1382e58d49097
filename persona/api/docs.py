"""``GET /docs``: the API reference as one self-contained HTML page, rendered on the server.

FastAPI's own ``/docs`` loads Swagger UI from a CDN, a blank page on a host without internet. This
page is the app's OpenAPI schema (``request.app.openapi()``, so it cannot drift from the routes)
rendered with Jinja2 (autoescaped): no JavaScript, no external URL, CSS inline. Every path and
method, the roles it needs (from its security requirement, see :mod:`persona.api.access`),
parameters with their types and constraints, request bodies with ``$ref`` resolved, examples.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader

METHODS = ("get", "post", "put", "patch", "delete")
_CHOICES = re.compile(r"^\^\(([\w|.-]+)\)\$$")
_CONSTRAINTS = (
    ("minLength", "min length"), ("maxLength", "max length"), ("minimum", "≥"), ("maximum", "≤"),
    ("exclusiveMinimum", ">"), ("exclusiveMaximum", "<"), ("minItems", "min items"), ("maxItems", "max items"),
    ("format", "format"),
)  # fmt: skip


@dataclass
class Row:
    """One parameter or body field, as a row of the page."""

    name: str
    where: str
    type: str
    required: bool
    description: str = ""
    constraints: list[str] = field(default_factory=list)
    default: str | None = None
    deprecated: bool = False


@dataclass
class Operation:
    method: str
    path: str
    anchor: str
    summary: str
    description: str
    tag: str
    access: str
    parameters: list[Row]
    body: list[Row]
    body_notes: list[str]
    body_examples: list[str]
    responses: list[dict[str, str]]


def router() -> APIRouter:
    api = APIRouter()

    @api.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    async def docs(request: Request) -> HTMLResponse:
        return HTMLResponse(render(request.app))

    return api


@functools.cache
def _template() -> Any:
    env = Environment(loader=PackageLoader("persona.api", "templates"), autoescape=True)
    return env.get_template("docs.html.j2")


def render(app: FastAPI) -> str:
    """The page for ``app``: its OpenAPI schema, every operation grouped by tag."""
    schema = app.openapi()
    components = schema.get("components", {}).get("schemas", {})
    operations = [
        _operation(path, method, op, components)
        for path, item in schema.get("paths", {}).items()
        for method, op in item.items()
        if method in METHODS
    ]
    tags: dict[str, list[Operation]] = {}
    for operation in operations:
        tags.setdefault(operation.tag, []).append(operation)
    info = schema.get("info", {})
    text: str = _template().render(
        info=info, openapi=schema.get("openapi", ""), tags=tags, count=len(operations)
    )
    return text


# -- access --------------------------------------------------------------------------------------


def access(op: dict[str, Any]) -> str:
    """Who may call it: the roles in its security requirement (:mod:`persona.api.access`), or no token."""
    requirements = op.get("security") or []
    if not requirements:
        return "no token"
    roles = sorted(
        {role for requirement in requirements for scopes in requirement.values() for role in scopes}
    )
    return f"Bearer token; role {', '.join(roles)}" if roles else "Bearer token"


# -- one operation ---------------------------------------------------------------------------------


def _operation(path: str, method: str, op: dict[str, Any], components: dict[str, Any]) -> Operation:
    body, notes, examples = _body(op.get("requestBody"), components)
    return Operation(
        method=method.upper(), path=path, anchor=_anchor(method, path), summary=op.get("summary", ""),
        description=op.get("description", ""), tag=(op.get("tags") or ["other"])[0], access=access(op),
        parameters=[_parameter(p, components) for p in op.get("parameters", [])], body=body,
        body_notes=notes, body_examples=examples, responses=_responses(op.get("responses", {}), components),
    )  # fmt: skip


def _anchor(method: str, path: str) -> str:
    return "op-" + method + "-" + re.sub(r"[^A-Za-z0-9]+", "-", path).strip("-")


def _parameter(param: dict[str, Any], components: dict[str, Any]) -> Row:
    schema = resolve(param.get("schema", {}), components)
    return Row(
        name=param.get("name", ""), where=param.get("in", ""), type=type_of(schema),
        required=bool(param.get("required")), description=param.get("description") or schema.get("description", ""),
        constraints=constraints(schema), default=_default(schema), deprecated=bool(param.get("deprecated")),
    )  # fmt: skip


def _body(body: dict[str, Any] | None, components: dict[str, Any]) -> tuple[list[Row], list[str], list[str]]:
    """A request body's fields, notes (required or not, alternatives, unknown fields) and examples."""
    if not body:
        return [], [], []
    media = body.get("content", {}).get("application/json", {})
    schema = resolve(media.get("schema", {}), components)
    notes = [f"application/json, {'required' if body.get('required') else 'optional (may be left out)'}"]
    if schema.get("additionalProperties") is False:
        notes.append("unknown fields are refused (422)")
    for choice in schema.get("anyOf", []):
        if "required" in choice:
            notes.append("one of the ways to send it: " + ", ".join(choice["required"]))
    required = set(schema.get("required", []))
    fields = [
        _field(name, resolve(prop, components), name in required)
        for name, prop in schema.get("properties", {}).items()
    ]
    examples = [*schema.get("examples", []), *([media["example"]] if "example" in media else [])]
    examples += [e.get("value") for e in media.get("examples", {}).values()]
    return fields, notes, [pretty(e) for e in examples]


def _field(name: str, prop: dict[str, Any], required: bool) -> Row:
    return Row(
        name=name, where="body", type=type_of(prop), required=required, description=prop.get("description", ""),
        constraints=constraints(prop), default=_default(prop), deprecated=bool(prop.get("deprecated")),
    )  # fmt: skip


def _responses(responses: dict[str, Any], components: dict[str, Any]) -> list[dict[str, str]]:
    shown = []
    for status, answer in responses.items():
        media = answer.get("content", {}).get("application/json", {})
        example = media.get("example")
        schema = resolve(media.get("schema", {}), components) if media.get("schema") else {}
        shown.append({
            "status": str(status), "description": answer.get("description", ""),
            "example": "" if example is None else pretty(example), "type": type_of(schema) if schema else "",
        })  # fmt: skip
    return shown


# -- schemas ---------------------------------------------------------------------------------------


def resolve(schema: Any, components: dict[str, Any], seen: frozenset[str] = frozenset()) -> Any:
    """``schema`` with every ``#/components/schemas/X`` reference replaced by X (a cycle stays a ref)."""
    if isinstance(schema, list):
        return [resolve(item, components, seen) for item in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
        name = ref.rsplit("/", 1)[1]
        if name in seen or name not in components:
            return {"title": name}
        return {**resolve(components[name], components, seen | {name}), "title": name}
    return {key: resolve(value, components, seen) for key, value in schema.items()}


def type_of(schema: dict[str, Any]) -> str:
    """A short type: ``string``, ``integer``, ``array of string``, ``string or null``, a model's name."""
    for key in ("anyOf", "oneOf"):
        if key in schema and all(isinstance(s, dict) for s in schema[key]):
            options = [type_of(s) for s in schema[key] if "required" not in s or "type" in s]
            if options:
                return " or ".join(dict.fromkeys(options))
    kind = schema.get("type")
    if kind == "array":
        return f"array of {type_of(schema.get('items', {}))}"
    if kind == "object" and schema.get("title") and "properties" in schema:
        return f"object ({schema['title']})"
    if isinstance(kind, str):
        return kind + (f" ({schema['format']})" if "format" in schema else "")
    return str(schema.get("title", "any"))


def constraints(schema: dict[str, Any]) -> list[str]:
    """The rules a value must meet, in words: the choices, the pattern, bounds, format."""
    found: list[str] = []
    for option in [schema, *[s for s in schema.get("anyOf", []) if isinstance(s, dict)]]:
        if "enum" in option:
            found.append("one of: " + ", ".join(str(v) for v in option["enum"]))
        pattern = option.get("pattern")
        if isinstance(pattern, str):
            choices = _CHOICES.match(pattern)
            found.append(
                "one of: " + ", ".join(choices.group(1).split("|")) if choices else f"pattern {pattern}"
            )
        for key, label in _CONSTRAINTS:
            if key in option and not (key == "format" and option is schema):
                found.append(f"{label} {option[key]}")
    return found


def _default(schema: dict[str, Any]) -> str | None:
    return json.dumps(schema["default"]) if "default" in schema else None


def pretty(value: Any) -> str:
    text: str = json.dumps(value, indent=2, ensure_ascii=False)
    return text
