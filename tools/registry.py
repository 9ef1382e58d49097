"""Tools declared once; schemas, validation and results derived from the declaration.

A tool is a name, a description written for the model, a pydantic args model
(``extra="forbid"``), an async handler and flags. From that one declaration the registry
derives the OpenAI strict-mode schema (closed objects, every property required, optionals
as ``null`` unions) and validates raw model arguments with jsonschema *before* pydantic, so
the model gets field-level errors it can act on. Failures a model can cause or fix come
back as data (:class:`ToolResult`); only bugs raise.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from functools import cached_property
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from tools.errors import ServiceError, ToolDefinitionError
from tools.schemas import admits_null, model_view, strict_schema

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError as SchemaError

EXPECTED_KEYWORD = "x-expected"
"""A field's form in words (local validation schema only, never sent): the message when its pattern fails."""

FORMATS = ("email",)
"""The string formats tools may use (strict mode accepts them); checked locally like the model is told."""

A = TypeVar("A", bound=BaseModel)
C = TypeVar("C")

MAX_RESULT_CHARS = 6000
"""Results handed back to a model are cut to this many characters (lists shortened first)."""


class ToolArgs(BaseModel):
    """Base of every args model: unknown fields are an error, parsed args are immutable."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, defer_build=True
    )  # built on first use: fast CLI start


@dataclass(frozen=True)
class ToolFailure:
    """Why a call did not produce a result, in words a model (or a person) can act on."""

    type: str
    message: str
    field: str | None = None
    details: Mapping[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.field:
            out["field"] = self.field
        if self.details:
            out["details"] = dict(self.details)
        return out


@dataclass(frozen=True)
class ToolResult:
    """The outcome of one tool call: ``data`` on success, ``error`` otherwise."""

    tool: str
    ok: bool
    data: Any = None
    error: ToolFailure | None = None

    @classmethod
    def success(cls, tool: str, data: Any) -> ToolResult:
        return cls(tool=tool, ok=True, data=data)

    @classmethod
    def failure(cls, tool: str, failure: ToolFailure) -> ToolResult:
        return cls(tool=tool, ok=False, error=failure)

    def payload(self) -> dict[str, Any]:
        if self.ok:
            return {"ok": True, "result": self.data}
        assert self.error is not None
        return {"ok": False, "error": self.error.as_dict()}

    def to_content(self, limit: int = MAX_RESULT_CHARS) -> str:
        """Compact JSON for the model, bounded to ``limit`` characters."""
        return bounded_json(self.payload(), limit)


Handler = Callable[[A, C], Awaitable[Any]]


@dataclass(frozen=True)
class Money:
    """The money a side-effect call moves or asks for, as the tool reads it from its arguments."""

    value: Decimal
    currency: str
    fiat: bool
    """True for a fiat price (``USD``), False for an amount of a coin (``BTC``)."""


AmountRule = Callable[[Any], Money]
"""Validated arguments -> the money the call is about: what the policy's caps are checked against."""
Lookup = Callable[[A, C], Awaitable[Any | None]]
"""Finds a side effect that may have been applied (by the idempotency key in the context): its result
data as the handler would have returned it, None when it is definitely not there; raises when the
lookup itself fails (then the outcome stays unknown)."""


@dataclass(frozen=True)
class Tool(Generic[A, C]):
    """One tool, declared once."""

    name: str
    description: str
    args_model: type[A]
    handler: Handler[A, C]
    read_only: bool = True
    side_effect: str | None = None
    """What the call changes in the world (e.g. ``"creates_invoice"``); None for reads."""
    idempotency: str | None = None
    """How a repeated call is kept from acting twice (e.g. ``"order_number from the effect key"``)."""
    amount: AmountRule | None = None
    """How to read the call's money from its arguments. A side-effect tool without one is denied by the
    policy: caps that cannot be checked are not caps (fail closed)."""
    lookup: Lookup[A, C] | None = None
    """How to find out whether a side effect whose answer was lost was applied. Required with a side effect."""

    def __post_init__(self) -> None:
        if self.read_only == (self.side_effect is not None):
            raise ToolDefinitionError(f"{self.name}: read_only and side_effect contradict each other")
        if self.side_effect is not None and self.lookup is None:
            raise ToolDefinitionError(
                f"{self.name}: a side-effect tool must declare lookup, or a lost answer could never be resolved"
            )
        if self.args_model.model_config.get("extra") != "forbid":
            raise ToolDefinitionError(f"{self.name}: args model must forbid extra fields")

    @cached_property
    def validation_schema(self) -> dict[str, Any]:
        """Strict schema with every constraint pydantic knows (used locally by jsonschema)."""
        return strict_schema(self.args_model)

    @cached_property
    def parameters(self) -> dict[str, Any]:
        """The strict schema as sent to the model: only keywords strict mode accepts."""
        pruned: dict[str, Any] = model_view(self.validation_schema)
        return pruned

    @cached_property
    def _validator(self) -> Draft202012Validator:
        from jsonschema import Draft202012Validator, FormatChecker  # on first validation: fast CLI start

        return Draft202012Validator(self.validation_schema, format_checker=FormatChecker(list(FORMATS)))

    @cached_property
    def _nullable(self) -> frozenset[str]:
        props = self.validation_schema["properties"]
        return frozenset(name for name, spec in props.items() if admits_null(spec))

    def openai_tool(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
                "strict": True,
            },
        }

    def parse(self, raw: str | Mapping[str, Any] | None) -> A | ToolFailure:
        """Raw model arguments -> args model, or a field-level failure."""
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            raw = {}
        if isinstance(raw, str):
            try:
                obj: Any = json.loads(raw, parse_float=Decimal)
            except ValueError as exc:
                return ToolFailure(
                    "invalid_arguments",
                    f"arguments are not valid JSON ({exc}); send one JSON object with the tool's parameters",
                )
        else:
            obj = dict(raw)
        if not isinstance(obj, dict):
            return ToolFailure(
                "invalid_arguments", f"arguments must be a JSON object, not {type(obj).__name__}"
            )
        # Endpoints without strict mode (Ollama, vLLM) often omit optional fields: treat as null.
        for name in self._nullable:
            obj.setdefault(name, None)
        errors = sorted(self._validator.iter_errors(obj), key=lambda e: (list(e.absolute_path), e.message))
        if errors:
            return _schema_failure(errors)
        try:
            return self.args_model.model_validate(obj)
        except ValidationError as exc:
            return _pydantic_failure(exc)


C_co = TypeVar("C_co", covariant=True)


class ContextFactory(Protocol[C_co]):
    """The context a tool call runs with, built per call by the integration the tools belong to (for Plisio: a
    client on the persona's own key, the order number the caller's effects ledger derived, the callback URL).

    The gate takes one and knows nothing of what is inside: it knows tools, not Plisio.
    """

    def __call__(self, persona: str, order_number: str | None = None) -> Awaitable[C_co]: ...


class Registry(Generic[C]):
    """The set of tools a process knows, by name."""

    def __init__(self, tools: Iterable[Tool[Any, C]] = ()) -> None:
        self._tools: dict[str, Tool[Any, C]] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool[Any, C]) -> None:
        if tool.name in self._tools:
            raise ToolDefinitionError(f"tool {tool.name!r} is declared twice")
        tool.parameters  # noqa: B018 - derive (and so check) the schema at registration
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool[Any, C] | None:
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Any:
        return iter(self._tools.values())

    def names(self) -> list[str]:
        return list(self._tools)

    def openai_tools(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        chosen = self._tools.values() if names is None else [self._tools[n] for n in names]
        return [t.openai_tool() for t in chosen]

    async def call(
        self, name: str, raw: str | Mapping[str, Any] | None, ctx: C, *, timeout: float | None = None
    ) -> ToolResult:
        """Parse, validate and run one call; model-fixable failures come back as data."""
        tool = self._tools.get(name)
        if tool is None:
            return ToolResult.failure(
                name,
                ToolFailure(
                    "unknown_tool", f"there is no tool named {name!r}", details={"tools": self.names()}
                ),
            )
        parsed = tool.parse(raw)
        if isinstance(parsed, ToolFailure):
            return ToolResult.failure(name, parsed)
        return await run(tool, parsed, ctx, timeout=timeout)


async def run(tool: Tool[A, C], args: A, ctx: C, *, timeout: float | None = None) -> ToolResult:
    """Execute already-validated args. A service's failures and timeouts become data; bugs raise."""
    try:
        async with asyncio.timeout(timeout):
            data = await tool.handler(args, ctx)
    except ServiceError as exc:
        return ToolResult.failure(tool.name, ToolFailure(exc.kind, str(exc), details=exc.to_dict()))
    except TimeoutError:
        return ToolResult.failure(
            tool.name, ToolFailure("tool_timeout", f"{tool.name} did not finish within {timeout:g}s")
        )
    return ToolResult.success(tool.name, data)


# ----------------------------------------------------------------------------- errors as data


def _invalid(items: list[dict[str, str]]) -> ToolFailure:
    """Field-level errors: the first one leads the message, all (up to 5) are in the details."""
    first = items[0]
    where = f"{first['field']}: " if first["field"] else ""
    return ToolFailure(
        "invalid_arguments",
        f"{where}{first['message']}",
        field=first["field"] or None,
        details={"errors": items},
    )


def _schema_failure(errors: list[SchemaError]) -> ToolFailure:
    return _invalid([{"field": _field_of(e), "message": _message_of(e)} for e in errors[:5]])


def _field_of(error: SchemaError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator in {"required", "additionalProperties"} and "'" in error.message:
        name = error.message.split("'")[1]
        return f"{path}.{name}" if path else name
    return path


def _message_of(error: SchemaError) -> str:
    inst = error.instance
    if error.validator == "type" and isinstance(inst, int | float | Decimal) and not isinstance(inst, bool):
        expected = error.validator_value
        if expected == "string" or (isinstance(expected, list) and "string" in expected):
            return f'must be a decimal string such as "{inst}", not a JSON number'
    if error.validator == "enum":
        allowed: Any = error.validator_value
        values = [str(v) for v in allowed if v is not None]
        return f"{_short(inst)} is not a valid value; use one of: {', '.join(values)}"
    if error.validator == "additionalProperties" and isinstance(error.schema, Mapping):
        fields = ", ".join(error.schema.get("properties", {}))
        return f"{error.message}; the fields are: {fields}"
    if error.validator == "pattern":
        expected = error.schema.get(EXPECTED_KEYWORD) if isinstance(error.schema, Mapping) else None
        if isinstance(expected, str):
            return f"{_short(inst)} is refused: must be {expected}"
        return f"{_short(inst)} does not have the expected form (pattern {error.validator_value})"
    return error.message


def _pydantic_failure(exc: ValidationError) -> ToolFailure:
    return _invalid(
        [
            {
                "field": ".".join(str(p) for p in err.get("loc", ())),
                "message": str(err.get("msg", "invalid value")).removeprefix("Value error, "),
            }
            for err in exc.errors()[:5]
        ]
    )


def _short(value: Any) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------- bounded JSON


def to_jsonable(value: Any) -> Any:
    """Decimals as strings, enums as values, models as dicts: JSON that keeps money exact."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, BaseModel):
        return to_jsonable(value.model_dump(mode="python", by_alias=True, exclude_none=True))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    return value


def dumps(value: Any) -> str:
    return _compact(to_jsonable(value))


def _compact(data: Any) -> str:
    """Compact JSON of data that is already JSON-able (no second walk through :func:`to_jsonable`)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def bounded_json(value: Any, limit: int = MAX_RESULT_CHARS) -> str:
    """Compact JSON no longer than ``limit``: the longest lists are shortened first, with a note."""
    data = to_jsonable(value)
    text = _compact(data)
    omitted: dict[str, int] = {}
    for _ in range(40):
        if len(text) <= limit:
            return text
        path, items = _longest_list(data, "")
        if items is None or len(items) <= 1:
            break
        keep = max(1, len(items) // 2)
        omitted[path or "$"] = omitted.get(path or "$", 0) + len(items) - keep
        del items[keep:]
        if isinstance(data, dict):
            data["truncated"] = {"omitted_items": omitted, "hint": "narrow the query (filters, page, limit)"}
        text = _compact(data)
    if len(text) <= limit:
        return text
    return dumps({"truncated_text": text[: max(0, limit - 80)], "note": "result cut to fit the size limit"})


def _longest_list(node: Any, path: str) -> tuple[str, list[Any] | None]:
    best: tuple[str, list[Any] | None] = ("", None)
    if isinstance(node, list):
        best = (path, node)
        children = [(f"{path}[{i}]", v) for i, v in enumerate(node)]
    elif isinstance(node, dict):
        children = [(f"{path}.{k}" if path else str(k), v) for k, v in node.items() if k != "truncated"]
    else:
        return best
    for child_path, child in children:
        cand = _longest_list(child, child_path)
        if cand[1] is not None and (best[1] is None or len(_compact(cand[1])) > len(_compact(best[1]))):
            best = cand
    return best
