"""Logging, configured once: structlog for our events, stdlib for libraries, secrets scrubbed in both.

Events are snake_case names with fields. Every string that reaches a log line passes
:func:`tools.redaction.scrub`, so a Plisio key in a URL (httpx logs full URLs at INFO),
an OpenAI key or a bearer token never lands in a log file.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from tools.redaction import SecretScrubFilter, install_log_scrubbing, scrub_data

_configured = False


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return {k: scrub_data(v) for k, v in event.items()}


def configure(level: str = "warning", fmt: str = "console", stream: TextIO | None = None) -> None:
    """Set up structlog and the stdlib root logger. Later calls only change the level."""
    global _configured
    numeric = logging.getLevelName(level.upper())
    out = stream or sys.stderr
    install_log_scrubbing()
    root = logging.getLogger()
    root.setLevel(numeric)
    if not _configured:
        handler = logging.StreamHandler(out)
        handler.addFilter(SecretScrubFilter())
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    _configured = True


def ensure_configured(level: str = "warning", fmt: str = "console") -> None:
    """Configure logging unless the application already did (a library use of the runtime, a benchmark):
    unconfigured structlog prints every debug event to stdout."""
    if not _configured:
        configure(level, fmt)
