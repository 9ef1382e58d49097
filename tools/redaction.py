"""Scrubbing secrets out of text, URLs, data and log records.

Plisio takes its secret key as ``?api_key=`` in the query string, so every URL that
reaches a log line, an exception or a result is a potential leak: httpx itself logs
full request URLs at INFO. Scrubbing happens in two ways at once: by pattern (any
``api_key=`` value, whatever it is) and by value (every secret the process knows of,
wherever it shows up).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import Any

REDACTED = "***"

# api_key=..., view_key=..., and the usual credential-looking query/JSON keys.
_QUERY_SECRET = re.compile(
    r"(?i)\b(api_key|view_key|apikey|access_token|token|secret|password)=([^&\s\"'<>]+)",
)
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}")
_MIN_SECRET_LEN = 6

_lock = threading.Lock()
_known: set[str] = set()
_known_pattern: re.Pattern[str] | None = None
"""All known secrets as one alternation (longest first), rebuilt when one is registered."""


def register_secret(value: str | None) -> None:
    """Remember a secret value so that it is scrubbed wherever it appears later."""
    global _known_pattern
    if value and len(value) >= _MIN_SECRET_LEN:
        with _lock:
            if value not in _known:
                _known.add(value)
                ordered = sorted(_known, key=len, reverse=True)
                _known_pattern = re.compile("|".join(re.escape(s) for s in ordered))


def known_secrets() -> frozenset[str]:
    with _lock:
        return frozenset(_known)


def scrub(text: str, extra: Iterable[str] = ()) -> str:
    """Return ``text`` with secret query parameters, bearer tokens and known secret values masked.

    Called on every string of every audit record and log line, so the common case (nothing to hide)
    is a few substring tests, not regular-expression passes.
    """
    if not text:
        return text
    out = text
    if "=" in out:
        out = _QUERY_SECRET.sub(lambda m: f"{m.group(1)}={REDACTED}", out)
    if "earer" in out or "EARER" in out:
        out = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", out)
    pattern = _known_pattern
    if pattern is not None:
        out = pattern.sub(REDACTED, out)
    for secret in extra:
        if secret and len(secret) >= _MIN_SECRET_LEN and secret in out:
            out = out.replace(secret, REDACTED)
    return out


def scrub_data(value: Any, extra: Iterable[str] = ()) -> Any:
    """Deep-copy JSON-like data with every string scrubbed (dict keys are left alone)."""
    secrets = tuple(extra)
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, dict):
        return {k: scrub_data(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_data(v, secrets) for v in value]
    return value


class SecretScrubFilter(logging.Filter):
    """A stdlib logging filter that scrubs a record's message and arguments in place.

    Attached to the ``httpx``/``httpcore``/``uvicorn`` loggers and to handlers, it turns
    ``GET https://api.plisio.net/api/v1/shops?api_key=sk_live_...`` into ``...?api_key=***``
    before any handler formats the record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if record.args:
                record.msg = record.getMessage()
                record.args = None
            if isinstance(record.msg, str):
                record.msg = scrub(record.msg)
            else:
                record.msg = scrub(str(record.msg))
        except Exception:  # a log line must never crash the caller
            record.msg, record.args = "log record dropped: could not be scrubbed", None
        return True


_installed = False

LOGGERS_THAT_PRINT_URLS = (
    "httpx",
    "httpcore",
    "httpx2",
    "httpcore2",
    "uvicorn.access",
    "uvicorn.error",
    "openai",
)


def install_log_scrubbing() -> None:
    """Attach the scrub filter to the libraries that log URLs. Idempotent."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    flt = SecretScrubFilter()
    for name in LOGGERS_THAT_PRINT_URLS:
        logging.getLogger(name).addFilter(flt)
