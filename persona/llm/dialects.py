"""JSON-schema dialects: the tool parameters as each kind of endpoint can take them.

The registry derives one schema per tool in OpenAI's strict-mode shape (every property required, an
optional one typed ``["string", "null"]``, objects closed, lengths as ``pattern``). That shape is a
strict-mode encoding, not the meaning: sent without ``strict`` it tells a model every field is required
(local models then fill optional ones with invented values), older Ollama refuses the type arrays
(``json: cannot unmarshal array into Go struct field ... of type string``, ollama/ollama#5990, fixed by
#9434), llama.cpp and LM Studio compile every schema into a grammar whose parser refuses regex shorthands
such as ``\\w`` (``Failed to initialize samplers: failed to parse grammar``), and Google's function
declarations are an OpenAPI subset. A dialect is a plain function from that schema to the one an
endpoint takes; it changes only what goes on the wire, and what it returns is shared (remembered per
schema object, see :func:`write`): never edit it. The dispatcher still validates every call against
the registry's full schema, so a dialect can widen what the model is told, never what is accepted.

The shape follows pydantic-ai's ``JsonSchemaTransformer`` (pydantic_ai/_json_schema.py: a walk over every
nested schema, one ``transform`` per node) and its ``GoogleJsonSchemaTransformer``
(pydantic_ai/profiles/google.py: ``$schema``/``title``/``examples``/``discriminator`` dropped, ``const``
as a one-value ``enum``, a string ``format`` moved into the description, ``exclusiveMinimum``/``Maximum``
dropped), written as plain functions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Schema = dict[str, Any]
Dialect = Callable[[Mapping[str, Any]], Schema]

_NESTED = ("items", "additionalProperties", "not")
_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


def strict(schema: Mapping[str, Any]) -> Schema:
    """OpenAI strict mode: the registry's schema as it is."""
    return dict(schema)


def loose(schema: Mapping[str, Any]) -> Schema:
    """Without strict mode: a top-level field that may be null is optional instead (left out of
    ``required``, its type or enum without ``null``): the registry reads a left-out top-level field as null
    (tools/registry.py ``parse``), and only there, so nested objects keep the strict shape."""
    return _optional_not_null(dict(schema))


def gemini(schema: Mapping[str, Any]) -> Schema:
    """Google's OpenAPI subset: loose, no ``additionalProperties`` (the dispatcher still refuses unknown
    fields), and the keywords Gemini does not know turned into words or dropped."""
    return _walk(loose(schema), _google)


def grammar(schema: Mapping[str, Any]) -> Schema:
    """Servers that compile tool schemas into a sampling grammar (llama.cpp, LM Studio's llama.cpp engine):
    loose, and every ``pattern`` in the regex subset the grammar compiler knows. llama.cpp copies ``\\w``,
    ``\\d``, ``\\s`` into the grammar, whose parser refuses them (``unknown escape at \\w``: the request is
    ``Failed to initialize samplers: failed to parse grammar``); newer builds drop such a pattern with a
    warning instead. So ``\\w`` and ``\\d`` are spelled out, ``^[\\s\\S]{m,n}$`` (any text) becomes a length
    bound, and a pattern still holding an escape the compiler does not know, or a bound above
    :data:`GRAMMAR_MAX_REPEAT`, is left out (the dispatcher still checks it). Checked against three
    llama.cpp snapshots' own converter and grammar parser."""
    return _walk(loose(schema), _portable_pattern)


DIALECTS: dict[str, Dialect] = {"strict": strict, "loose": loose, "gemini": gemini, "grammar": grammar}
_WRITTEN: dict[tuple[str, int], tuple[Mapping[str, Any], Schema]] = {}


def write(dialect: str, schema: Mapping[str, Any]) -> Schema:
    """``schema`` in ``dialect``, remembered by the schema's identity: the registry derives each tool's
    schema once, and a turn offers the same objects at every step (the walk costs ~30 µs a tool)."""
    key = (dialect, id(schema))
    seen = _WRITTEN.get(key)
    if seen is not None and seen[0] is schema:
        return seen[1]
    if len(_WRITTEN) > 512:  # schemas built on the fly (tests, probes): never a leak
        _WRITTEN.clear()
    out = DIALECTS[dialect](schema)
    _WRITTEN[key] = (schema, out)
    return out


def _walk(schema: Mapping[str, Any], node: Callable[[Schema], Schema]) -> Schema:
    """``node`` applied to this schema and every schema nested in it (depth first, children first)."""
    out = dict(schema)
    if isinstance(out.get("properties"), Mapping):
        out["properties"] = {
            k: _walk(v, node) if isinstance(v, Mapping) else v for k, v in out["properties"].items()
        }
    for key in _NESTED:
        if isinstance(out.get(key), Mapping):
            out[key] = _walk(out[key], node)
    for key in _LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_walk(s, node) if isinstance(s, Mapping) else s for s in out[key]]
    return node(out)


def _nullable(schema: Mapping[str, Any]) -> bool:
    kind, enum = schema.get("type"), schema.get("enum")
    if isinstance(kind, list) and "null" in kind:
        return True
    if isinstance(enum, list) and None in enum:  # Optional[Literal[...]]: an enum holding null, no type
        return True
    return any(isinstance(s, Mapping) and s.get("type") == "null" for s in schema.get("anyOf") or ())


def _without_null(schema: Schema) -> Schema:
    """``schema`` without its null alternative; as it is when null is all it admits."""
    kind, enum = schema.get("type"), schema.get("enum")
    if isinstance(kind, list):
        rest = [t for t in kind if t != "null"]
        if not rest:
            return schema
        schema["type"] = rest[0] if len(rest) == 1 else rest
    if isinstance(enum, list) and None in enum:
        values = [v for v in enum if v is not None]
        if not values:
            return schema
        schema["enum"] = values
        if "type" not in schema and all(isinstance(v, str) for v in values):
            schema["type"] = "string"  # Google's enums are typed strings
    if isinstance(schema.get("anyOf"), list):
        rest = [s for s in schema["anyOf"] if not (isinstance(s, Mapping) and s.get("type") == "null")]
        if not rest:
            return schema
        if len(rest) == 1 and isinstance(rest[0], Mapping):
            del schema["anyOf"]
            schema = {**rest[0], **schema}
        else:
            schema["anyOf"] = rest
    return schema


def _optional_not_null(schema: Schema) -> Schema:
    props = schema.get("properties")
    if schema.get("type") != "object" or not isinstance(props, dict):
        return schema
    optional = {name for name, spec in props.items() if isinstance(spec, Mapping) and _nullable(spec)}
    if optional:
        schema["properties"] = {k: _without_null(dict(v)) if k in optional else v for k, v in props.items()}
        schema["required"] = [k for k in schema.get("required") or () if k not in optional]
    return schema


def _google(schema: Schema) -> Schema:
    for key in ("$schema", "title", "examples", "discriminator", "additionalProperties"):
        schema.pop(key, None)
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    for key, word in (("exclusiveMinimum", "greater than"), ("exclusiveMaximum", "less than")):
        if key in schema:
            _note(schema, f"{word} {schema.pop(key)}")
    if (
        schema.get("type") == "string"
        and "format" in schema
        and schema["format"] not in ("enum", "date-time")
    ):
        _note(schema, f"format: {schema.pop('format')}")
    return schema


_SPELLED = {"\\w": ("[A-Za-z0-9_]", "A-Za-z0-9_"), "\\d": ("[0-9]", "0-9")}
"""Shorthand escapes and their spelling outside and inside a character class."""
_ANY_TEXT = re.compile(r"\^\[\\s\\S\]\{(\d+),(\d+)\}\$")
_OUTSIDE = frozenset("^$.[]()|{}*+?") | frozenset('trn\\"')
"""Escapes llama.cpp's converter reads outside a class: the regex metacharacters it unescapes, and those
its grammar parser takes as they are (common/json-schema-to-grammar.cpp, src/llama-grammar.cpp)."""
_INSIDE = frozenset('trn\\"[]')
"""Inside ``[...]`` every escape is copied into the grammar, whose parser knows only these (and hex)."""
_HEX = re.compile(r"x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}")
_PLAIN_INSIDE = frozenset("./()|{}*+?$")
"""Escaped characters that mean themselves inside a class unescaped (``[\\.]`` is ``[.]``)."""
GRAMMAR_MAX_REPEAT = 1999
"""The largest repetition bound every llama.cpp build compiles (builds of 2025-11 to 2026-08 refuse
2000 and above: ``number of repetitions exceeds sane defaults``)."""
_BOUND = re.compile(r"\{(\d+),(\d+)\}")


def _portable_pattern(schema: Schema) -> Schema:
    for key in ("maxLength", "maxItems"):
        if isinstance(schema.get(key), int) and schema[key] > GRAMMAR_MAX_REPEAT:
            _note(schema, f"{'at most' if key == 'maxItems' else 'up to'} {schema.pop(key)}"
                          f"{' items' if key == 'maxItems' else ' characters'}")  # fmt: skip
    pattern = schema.get("pattern")
    if not isinstance(pattern, str):
        return schema
    text = _ANY_TEXT.fullmatch(pattern)
    if text and int(text.group(2)) <= GRAMMAR_MAX_REPEAT:
        del schema["pattern"]
        low, high = int(text.group(1)), int(text.group(2))
        schema["maxLength"] = min(high, schema.get("maxLength", high))
        if low:
            schema["minLength"] = max(low, schema.get("minLength", low))
        return schema
    spelled = _spell_out(pattern)
    too_long = spelled is not None and any(
        int(m.group(2)) > GRAMMAR_MAX_REPEAT for m in _BOUND.finditer(spelled)
    )
    anchored = spelled is not None and spelled.startswith("^") and re.search(r"(?<!\\)(?:\\\\)*\$$", spelled)
    if spelled is None or too_long or not anchored:
        del schema["pattern"]
        _note(schema, f"must match {pattern}")
    else:
        schema["pattern"] = spelled
    return schema


def _spell_out(pattern: str) -> str | None:
    """``\\w`` and ``\\d`` as explicit classes (inside ``[...]`` as ranges), every other escape checked
    against what llama.cpp reads where it stands; None when one cannot be written."""
    out: list[str] = []
    in_class, i = False, 0
    while i < len(pattern):
        pair = pattern[i : i + 2]
        if pair in _SPELLED:
            out.append(_SPELLED[pair][1 if in_class else 0])
            i += 2
            continue
        if pattern[i] == "\\":
            rest = pattern[i + 1 :]
            hexed = _HEX.match(rest)
            if hexed:
                out.append("\\" + hexed.group(0))
                i += 1 + len(hexed.group(0))
                continue
            if rest[:1] == "/" or (in_class and rest[:1] in _PLAIN_INSIDE):
                out.append(rest[0])  # an escape that means the character itself: written plain
                i += 2
                continue
            if not rest or rest[0] not in (_INSIDE if in_class else _OUTSIDE):
                return None
            out.append(pair)
            i += 2
            continue
        if pattern[i] == "[" and not in_class:
            in_class = True
        elif pattern[i] == "]" and in_class:
            in_class = False
        out.append(pattern[i])
        i += 1
    return "".join(out)


def _note(schema: Schema, words: str) -> None:
    described = schema.get("description")
    schema["description"] = f"{described} ({words})" if described else words[:1].upper() + words[1:]
