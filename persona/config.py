"""Settings: ``config.yaml`` plus the environment, validated once into a frozen model.

This is the only module that reads ``os.environ``. A broken file stops start-up with a
message naming the file, the line, the key and the fix, never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from persona.errors import ConfigError

DEFAULT_CONFIG = "config.yaml"
ENV_CONFIG = "PERSONA_CONFIG"
ENV_PLISIO_KEY = "PLISIO_API_KEY"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PlisioMode(StrEnum):
    SANDBOX = "sandbox"
    LIVE = "live"


class TimeoutSettings(Frozen):
    connect: float = Field(5.0, gt=0, le=120)
    read: float = Field(20.0, gt=0, le=600)
    write: float = Field(10.0, gt=0, le=600)
    pool: float = Field(5.0, gt=0, le=120)


class RetrySettings(Frozen):
    max_attempts: int = Field(4, ge=1, le=10)
    base_delay: float = Field(0.25, ge=0, le=30)
    max_delay: float = Field(4.0, ge=0, le=120)
    deadline: float = Field(30.0, gt=0, le=600)


class SandboxSettings(Frozen):
    url: str | None = None
    """Base URL of a running ``persona sandbox``; null runs the sandbox in-process."""
    seed: int = 7


class PlisioSettings(Frozen):
    mode: PlisioMode = PlisioMode.SANDBOX
    base_url: str = Field("https://api.plisio.net/api/v1", pattern=r"^https?://")
    callback_url: str | None = Field(None, pattern=r"^https?://")
    timeouts: TimeoutSettings = TimeoutSettings()
    retry: RetrySettings = RetrySettings()
    sandbox: SandboxSettings = SandboxSettings()


class LogSettings(Frozen):
    level: Literal["debug", "info", "warning", "error"] = "warning"
    format: Literal["console", "json"] = "console"


class Settings(Frozen):
    """Everything the service is configured with. Built once by :func:`load_settings`."""

    source: str = Field("<defaults>", exclude=True)
    plisio: PlisioSettings = PlisioSettings()
    log: LogSettings = LogSettings()
    plisio_api_key: SecretStr | None = Field(None, exclude=True)
    """From ``PLISIO_API_KEY``; never from the file (a file gets committed)."""


def config_path(explicit: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(explicit or env.get(ENV_CONFIG) or DEFAULT_CONFIG)


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    required: bool = False,
) -> Settings:
    """Read, validate and freeze the settings. ``required`` makes a missing file an error."""
    env = os.environ if env is None else env
    file = config_path(path, env)
    raw: Any = {}
    text = ""
    if file.exists():
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the file: {exc}", path=str(file), fix="check the path and permissions")
        raw = _parse_yaml(text, file)
    elif required or path is not None:
        raise ConfigError(
            "file not found", path=str(file), fix=f"create it (see config.yaml in the repository) or set {ENV_CONFIG}"
        )
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("the top level must be a mapping of sections (plisio:, log:, ...)", path=str(file))
    if "plisio_api_key" in raw or "api_key" in (raw.get("plisio") or {}):
        raise ConfigError(
            "secrets do not belong in the config file",
            path=str(file),
            key="plisio.api_key",
            fix=f"remove it and set the {ENV_PLISIO_KEY} environment variable",
        )
    data = {**raw, "source": str(file)}
    key = env.get(ENV_PLISIO_KEY)
    if key:
        data["plisio_api_key"] = key.strip()
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, file, text) from None
    return settings


def _parse_yaml(text: str, file: Path) -> Any:
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


def _config_error(exc: ValidationError, file: Path, text: str) -> ConfigError:
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ())]
    key = ".".join(loc)
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid value"))
    given = err.get("input")
    if kind == "extra_forbidden":
        fix = "remove it or check its spelling against config.yaml in the repository"
        msg = "unknown setting"
    elif kind in {"float_parsing", "int_parsing", "decimal_parsing", "float_type", "int_type", "decimal_type"}:
        fix = f"write a number here, not {given!r}"
    elif kind == "enum" or kind == "literal_error":
        fix = msg.replace("Input should be", "use")
    elif kind == "missing":
        fix = "add this setting"
    else:
        fix = "see config.yaml in the repository for the expected form"
    if given is not None and kind not in {"extra_forbidden", "missing"} and not isinstance(given, dict | list):
        msg = f"{msg} (got {given!r})"
    return ConfigError(msg, path=str(file), key=key, line=_line_of(text, loc), fix=fix)


def _line_of(text: str, loc: list[str]) -> int | None:
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
