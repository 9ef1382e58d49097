"""Domain errors as HTTP answers: ``{"error": {"type", "message"}}`` with a fitting status.

An unexpected exception becomes a plain 500 whose details stay in the server log, never in the
response; every message is scrubbed of secrets on the way out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from persona.errors import (
    ConfigError,
    Conflict,
    Forbidden,
    ModelError,
    NotConfigured,
    NotFound,
    PersonaError,
    StoreError,
    StoreUnavailable,
    Unauthorized,
)
from tools.errors import PlisioError, ToolsError
from tools.redaction import scrub

log = structlog.get_logger(__name__)

ERRORS: Sequence[tuple[type[Exception], int, str]] = (
    (Unauthorized, 401, "unauthorized"),
    (NotFound, 404, "not_found"),
    (Forbidden, 403, "forbidden"),
    (Conflict, 409, "conflict"),
    (ConfigError, 422, "config_error"),
    (NotConfigured, 503, "not_configured"),
    (StoreUnavailable, 503, "store_unavailable"),
    (StoreError, 500, "store_error"),
    (ModelError, 502, "model_error"),
    (PersonaError, 400, "error"),
)


def status_of(exc: Exception) -> tuple[int, str]:
    """The HTTP status and error type of a domain error (400 ``error`` for any other PersonaError)."""
    for kind, status, name in ERRORS:
        if isinstance(exc, kind):
            return status, name
    return 400, "error"


def error_response(status: int, kind: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": scrub(message), **extra}}, status_code=status)


_CHOICES = re.compile(r"^\^\(([\w|-]+)\)\$$")


def _message(error: Mapping[str, Any]) -> str:
    """pydantic's message, except for a value outside a fixed list: that names the valid values."""
    pattern = str((error.get("ctx") or {}).get("pattern", ""))
    choices = _CHOICES.match(pattern) if error.get("type") == "string_pattern_mismatch" else None
    if choices is None:
        return str(error.get("msg", ""))
    return f"unknown value {error.get('input')!r} (fix: use one of {', '.join(choices.group(1).split('|'))})"


def install_errors(app: FastAPI) -> None:
    async def persona_error(request: Request, exc: Exception) -> Response:
        status, name = status_of(exc)
        if status >= 500:
            log.warning("http_error", path=request.url.path, type=name, error=str(exc))
        response = error_response(status, name, str(exc))
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    async def tools_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, PlisioError):
            return error_response(502, exc.kind, exc.message)
        return error_response(400, "bad_request", str(exc))

    async def validation_error(request: Request, exc: Exception) -> Response:
        errors = exc.errors() if isinstance(exc, RequestValidationError) else []
        fields = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "message": _message(e)} for e in errors
        ]
        summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields) or "invalid request"
        return error_response(422, "validation_error", summary, fields=fields)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "error"
        return error_response(status, "http_error", str(detail))

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("http_unexpected_error", path=request.url.path, error=scrub(f"{type(exc).__name__}: {exc}"))
        return error_response(500, "internal_error", "internal error; the details are in the server log")

    app.add_exception_handler(PersonaError, persona_error)
    app.add_exception_handler(ToolsError, tools_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
