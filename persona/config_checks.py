"""The checks of the settings pydantic cannot make field by field: each names the file, the line, the key
and the fix. ``load_settings`` runs them once, after the environment's secrets are in."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import TYPE_CHECKING

from persona.errors import ConfigError
from persona.yaml_errors import line_of

if TYPE_CHECKING:
    from persona.settings import Settings


def check_settings(settings: Settings, file: Path, text: str) -> None:
    _check_personas(settings, file, text)
    _check_flows(settings, file, text)
    _check_effects(settings, file, text)


def _check_effects(settings: Settings, file: Path, text: str) -> None:
    """The sweep must not conclude "failed" while a request may still be in flight."""
    after = settings.effects.resolve_after_s
    for name, persona in settings.personas.items():
        if persona.limits.tool_timeout_s * 2 > after:
            raise ConfigError(
                f"{after:g}s is less than twice personas.{name}.limits.tool_timeout_s "
                f"({persona.limits.tool_timeout_s:g}s): the sweep could call an invoice still in flight failed",
                path=str(file),
                key="effects.resolve_after_s",
                line=line_of(text, ["effects", "resolve_after_s"]),
                fix=f"set effects.resolve_after_s to at least {persona.limits.tool_timeout_s * 2:g}",
            )


def _check_flows(settings: Settings, file: Path, text: str) -> None:
    flows = settings.flows
    for key, persona in (
        ("recovery", flows.recovery.persona),
        ("refunds", flows.refunds.persona),
        ("churn", flows.churn.persona),
    ):
        if settings.personas and persona not in settings.personas:
            raise ConfigError(
                f"persona {persona!r} is not defined",
                path=str(file),
                key=f"flows.{key}.persona",
                line=line_of(text, ["flows", key, "persona"]),
                fix="define it under personas: or name one that exists: "
                + ", ".join(sorted(settings.personas)),
            )
    cron = flows.churn.schedule
    if cron:
        from croniter import croniter

        if not croniter.is_valid(cron):
            raise ConfigError(
                f"{cron!r} is not a cron expression",
                path=str(file),
                key="flows.churn.schedule",
                line=line_of(text, ["flows", "churn", "schedule"]),
                fix='use five fields, e.g. "0 6 * * 1" (Mondays 06:00 UTC), or null to disable',
            )


def _check_personas(settings: Settings, file: Path, text: str) -> None:
    """Cross-field checks pydantic cannot do alone: tool names exist, prompt files exist."""
    from tools.plisio.tools import PLISIO_TOOLS

    known = {t.name for t in PLISIO_TOOLS}
    prompts = settings.prompts_path()
    for name, persona in settings.personas.items():
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", name):
            raise ConfigError(
                "persona names are lowercase letters, digits, - and _",
                path=str(file),
                key=f"personas.{name}",
                line=line_of(text, ["personas", name]),
                fix="rename the persona",
            )
        for i, tool in enumerate(persona.tools):
            if tool != "@read" and tool not in known:
                close = difflib.get_close_matches(tool, sorted(known), n=1)
                hint = (
                    f"did you mean {close[0]}?"
                    if close
                    else "use @read or one of: " + ", ".join(sorted(known))
                )
                raise ConfigError(
                    f"unknown tool {tool!r}",
                    path=str(file),
                    key=f"personas.{name}.tools[{i}]",
                    line=line_of(text, ["personas", name, "tools", str(i)]),
                    fix=hint,
                )
        if "plisio_create_invoice" in persona.tools and persona.invoice_policy is None:
            raise ConfigError(
                "a persona that may create invoices needs caps",
                path=str(file),
                key=f"personas.{name}.invoice_policy",
                line=line_of(text, ["personas", name]),
                fix="add invoice_policy: {max_amount: ..., daily_total: ..., approval_above: ...}",
            )
        template = prompts / persona.prompt
        if not template.is_file():
            raise ConfigError(
                f"prompt template {persona.prompt!r} not found in {prompts}",
                path=str(file),
                key=f"personas.{name}.prompt",
                line=line_of(text, ["personas", name, "prompt"]),
                fix=f"create {template} or point prompt: at an existing file in {settings.prompts_dir}/",
            )
