"""System prompts: Jinja2 templates in ``prompts/``, rendered with StrictUndefined.

A typo in a template variable must fail loudly at start-up, not ship a prompt with a hole in it.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from persona.errors import ConfigError
from persona.settings import resolve_tools

if TYPE_CHECKING:
    from persona.calls import CallContext


class PromptLibrary:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(directory)),
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # noqa: S701 - prompts are plain text for a model, not HTML
            keep_trailing_newline=True,
            trim_blocks=False,
        )

    def for_call(self, ctx: CallContext, *, today: date, template: str | None = None, **extra: Any) -> str:
        """The system prompt of a call context's persona: its template (or ``template``, a flow's) with
        the persona, its user, today, its tools and its invoice policy; ``extra`` adds a flow's values."""
        persona = ctx.persona
        return self.render(
            template or persona.prompt, persona=ctx.persona_name, description=persona.description, user=ctx.user,
            today=today.isoformat(), tools=list(resolve_tools(persona)), policy=persona.invoice_policy, **extra,
        )  # fmt: skip

    def render(self, template: str, **values: Any) -> str:
        try:
            return self._env.get_template(template).render(**values).strip() + "\n"
        except jinja2.TemplateNotFound as exc:
            raise ConfigError(
                f"prompt template {exc.name!r} not found",
                path=str(self.directory),
                fix="create it or fix its name",
            ) from None
        except jinja2.UndefinedError as exc:
            raise ConfigError(
                f"template uses an undefined variable: {exc.message}",
                path=str(self.directory / template),
                fix="remove it from the template or pass it when rendering",
            ) from None
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(
                f"template syntax error: {exc.message}",
                path=str(Path(exc.filename or template)),
                line=exc.lineno,
                fix="fix the Jinja2 syntax",
            ) from None
