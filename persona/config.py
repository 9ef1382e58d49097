"""Loading the settings: ``config.yaml`` plus the environment, validated once into :class:`persona.settings.Settings`.

This is the only module that reads ``os.environ``. A broken file stops start-up with a
message naming the file, the line, the key and the fix, never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from persona.config_checks import check_settings
from persona.errors import ConfigError
from persona.settings import Settings
from persona.yaml_errors import config_error, parse_yaml

DEFAULT_CONFIG = "config.yaml"
ENV_CONFIG = "PERSONA_CONFIG"
ENV_PLISIO_KEY = "PLISIO_API_KEY"
ENV_PLISIO_PREVIOUS_KEY = "PLISIO_PREVIOUS_API_KEY"
ENV_MASTER_KEY = "PERSONA_MASTER_KEY"
ENV_AUDIT_SIGNING_KEY = "PERSONA_AUDIT_SIGNING_KEY"


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
            raise ConfigError(
                f"cannot read the file: {exc}", path=str(file), fix="check the path and permissions"
            ) from None
        raw = parse_yaml(text, file)
    elif required or path is not None:
        raise ConfigError(
            "file not found",
            path=str(file),
            fix=f"create it (see config.yaml in the repository) or set {ENV_CONFIG}",
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
    data = {**raw, "source": str(file), "base_dir": str(file.parent.resolve())}
    key = env.get(ENV_PLISIO_KEY)
    if key:
        data["plisio_api_key"] = key.strip()
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, file, text) from None
    secrets = {
        "llm_api_key": env.get(settings.llm.api_key_env),
        "plisio_previous_api_key": env.get(ENV_PLISIO_PREVIOUS_KEY),
        "outbound_secret": env.get(settings.outbound.secret_env),
        "checkpoint_secret": env.get(settings.audit.checkpoint_secret_env),
        "master_key": env.get(ENV_MASTER_KEY),
        "audit_signing_key": env.get(ENV_AUDIT_SIGNING_KEY),
    }
    found = {k: SecretStr(v.strip()) for k, v in secrets.items() if v and v.strip()}
    if found:
        settings = settings.model_copy(update=found)
    check_settings(settings, file, text)
    return settings
