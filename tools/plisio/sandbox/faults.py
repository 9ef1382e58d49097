"""Fault injection and the request log: the outermost ASGI layer in front of the fake Plisio.

A rule matches request paths by glob (``fnmatch``: ``*`` also crosses ``/``) and is consumed once
per matching request, ``times`` times. What each kind does, and whether the request is processed:

==================  ==========================================================  ===========
kind                what the client gets                                        processed?
==================  ==========================================================  ===========
latency             ``latency_ms`` of silence, then the normal answer            yes
error_status        ``status`` (default 503) with a JSON error envelope (after   no
                    ``latency_ms``, if set)
rate_limit          429, ``Retry-After: retry_after``, "Rate limit exceeded."    no
html                ``status`` (default 502) nginx-style ``text/html`` page      no
truncated           HTTP 200, Content-Length right, the JSON cut in half          yes
empty               HTTP 200 with an empty body                                  yes
drop_after_commit   headers with the real Content-Length, then the connection    yes
                    breaks: ``httpx.RemoteProtocolError`` (over TCP via uvicorn
                    and in-process via ASGITransport alike)
error_after_commit  ``status`` (default 504) nginx-style page, as a gateway     yes
                    that gave up on an upstream which went on and committed
slow_after_commit   the request is processed, then ``latency_ms`` of silence     yes
                    before the answer (a client timeout after the commit)
==================  ==========================================================  ===========

"processed" means the state change (e.g. the new invoice) is committed even though the client did
not get a usable answer, which is exactly the ambiguity a client must handle. Control endpoints
(``/_sandbox/...``) are never faulted nor logged, so a test can always clean up.
"""

from __future__ import annotations

import threading
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Final, Literal
from urllib.parse import parse_qsl

import anyio
import httpx
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tools.plisio.sandbox.envelope import http_name, rate_limited, server_error

CONTROL_PREFIX: Final = "/_sandbox"
FaultKind = Literal[
    "latency",
    "error_status",
    "rate_limit",
    "html",
    "truncated",
    "empty",
    "drop_after_commit",
    "error_after_commit",
    "slow_after_commit",
]
_NGINX_PAGE: Final = (
    "<html>\r\n<head><title>{status} {name}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {name}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


class FaultRule(BaseModel):
    """One armed fault; the JSON body of ``POST /_sandbox/faults`` has the same fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(min_length=1, description="glob on the request path, e.g. /api/v1/balances/*")
    kind: FaultKind
    times: int = Field(1, ge=1)
    latency_ms: int = Field(0, ge=0, le=600_000)
    status: int | None = Field(None, ge=400, le=599)
    retry_after: int = Field(2, ge=0)


class ConnectionDropped(httpx.RemoteProtocolError):
    """Raised by ``drop_after_commit`` after the response headers went out.

    Over TCP uvicorn then closes the socket and the client's own httpx raises
    ``RemoteProtocolError``; in-process (ASGITransport re-raises app errors) the client sees this
    subclass of it, so both paths look the same to client code.
    """

    def __init__(self, path: str) -> None:
        super().__init__(
            f"sandbox fault drop_after_commit: {path} was committed, then the connection dropped"
        )


@dataclass
class RequestRecord:
    """One request to the fake API, with ``api_key`` replaced by ``***``."""

    method: str
    path: str
    query: dict[str, str]
    status: int | None = None
    fault: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Armed:
    rule: FaultRule
    remaining: int
    hits: list[str] = field(default_factory=list)


class FaultInjector:
    """The armed rules, consumed in the order they were added."""

    def __init__(self) -> None:
        self._armed: list[_Armed] = []
        self._lock = threading.Lock()

    def add(self, rule: FaultRule) -> None:
        with self._lock:
            self._armed.append(_Armed(rule, rule.times))

    def clear(self) -> int:
        with self._lock:
            count = len(self._armed)
            self._armed.clear()
            return count

    @property
    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{**a.rule.model_dump(), "remaining": a.remaining} for a in self._armed]

    def take(self, path: str) -> FaultRule | None:
        with self._lock:
            for armed in self._armed:
                if fnmatchcase(path, armed.rule.path):
                    armed.remaining -= 1
                    if armed.remaining <= 0:
                        self._armed.remove(armed)
                    return armed.rule
        return None


def scrub_query(raw: bytes) -> dict[str, str]:
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    return {k: ("***" if k == "api_key" else v) for k, v in pairs}


def _html_page(status: int) -> Response:
    return Response(_NGINX_PAGE.format(status=status, name=http_name(status)), status, media_type="text/html")


class FaultMiddleware:
    """Logs every API request, then applies the first matching fault rule (if any)."""

    def __init__(self, app: ASGIApp, injector: FaultInjector, log: list[RequestRecord]) -> None:
        self.app = app
        self.injector = injector
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        record = RequestRecord(scope["method"], path, scrub_query(scope.get("query_string", b"")))
        self.log.append(record)
        rule = self.injector.take(path)
        record.fault = rule.kind if rule else None

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
            await send(message)

        if rule is None:
            await self.app(scope, receive, logged_send)
            return
        if rule.kind == "latency":
            await anyio.sleep(rule.latency_ms / 1000)
            await self.app(scope, receive, logged_send)
        elif rule.kind == "error_status":
            await anyio.sleep(rule.latency_ms / 1000)  # a gateway that waits, then gives up: never processed
            await server_error(rule.status or 503).response()(scope, receive, logged_send)
        elif rule.kind == "rate_limit":
            await rate_limited(rule.retry_after).response()(scope, receive, logged_send)
        elif rule.kind == "html":
            await _html_page(rule.status or 502)(scope, receive, logged_send)
        else:
            await self._mangle(rule, scope, receive, logged_send)

    async def _mangle(self, rule: FaultRule, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request for real, then damage (or drop) the answer."""
        start: MutableMapping[str, Any] = {}
        chunks: list[bytes] = []

        async def buffer(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, buffer)
        if rule.kind == "error_after_commit":
            await _html_page(rule.status or 504)(scope, receive, send)
            return
        if rule.kind == "slow_after_commit":
            await anyio.sleep(rule.latency_ms / 1000)
        body = b"".join(chunks)
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        status = int(start.get("status", 200))
        if rule.kind == "truncated":
            body, status = body[: len(body) // 2], 200
        elif rule.kind == "empty":
            body, status = b"", 200
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if rule.kind == "drop_after_commit":
            raise ConnectionDropped(scope.get("path", ""))
        await send({"type": "http.response.body", "body": body, "more_body": False})
