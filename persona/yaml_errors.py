"""Problems in a YAML file reported where they are: parse errors and pydantic validation errors as
:class:`ConfigError` with the file, the line, the key and a fix (``config.yaml``, replay scenarios)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from persona.errors import ConfigError


def parse_yaml(text: str, file: Path) -> Any:
    """The data of ``text``, or a ConfigError with the line of the first syntax problem."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(
            f"not valid YAML: {exc.problem}",
            path=str(file),
            line=line,
            fix="check indentation and quoting around that line",
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", path=str(file)) from None


def config_error(exc: ValidationError, file: Path, text: str) -> ConfigError:
    """The first validation error as a message naming the key, its line and the fix."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ())]
    key = ".".join(loc)
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid value"))
    given = err.get("input")
    if kind == "extra_forbidden":
        fix = "remove it or check its spelling against config.yaml in the repository"
        msg = "unknown setting"
    elif kind in {
        "float_parsing",
        "int_parsing",
        "decimal_parsing",
        "float_type",
        "int_type",
        "decimal_type",
    }:
        fix = f"write a number here, not {given!r}"
    elif kind == "enum" or kind == "literal_error":
        fix = msg.replace("Input should be", "use")
    elif kind == "missing":
        fix = "add this setting"
    else:
        fix = "see config.yaml in the repository for the expected form"
    if (
        given is not None
        and kind not in {"extra_forbidden", "missing"}
        and not isinstance(given, dict | list)
    ):
        msg = f"{msg} (got {given!r})"
    return ConfigError(msg, path=str(file), key=key, line=line_of(text, loc), fix=fix)


def line_of(text: str, loc: list[str]) -> int | None:
    """1-based line of the YAML node at ``loc`` (or of its deepest existing parent)."""
    if not text:
        return None
    try:
        node: Any = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            break
    return line
