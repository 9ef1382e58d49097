"""Jinja2 pages of the console: one environment, autoescaped, with the filters the templates use."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from persona.jsonutil import rfc3339

SECURITY_HEADERS = {
    # No script at all, styles only from this server, forms only to it, never framed.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


def _ts(value: datetime | str | None) -> str:
    """The CLI's table format: RFC 3339 in UTC with ``Z``, to the second."""
    if value is None:
        return ""
    return rfc3339(datetime.fromisoformat(value) if isinstance(value, str) else value, precise=False)


def _money(value: Decimal | str | int | float | None, currency: str | None = None) -> str:
    if value is None or value == "":
        return "—"
    text = format(Decimal(str(value)).normalize(), "f") if not isinstance(value, float) else str(value)
    return f"{text} {currency}" if currency else text


def _segment(value: Any) -> str:
    """One path segment of a link: every reserved character escaped (ids come from clients and old data)."""
    return quote(str(value), safe="")


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("persona.web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ts=_ts, money=_money, pretty=_pretty, segment=_segment)
    return env


class Pages:
    def __init__(self) -> None:
        self.env = environment()

    def render(self, template: str, code: int = 200, /, **values: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(**values)
        return HTMLResponse(html, status_code=code, headers=SECURITY_HEADERS)
