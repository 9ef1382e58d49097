"""Limits before anything else: a body's size before it is read, a token before the body is, and a pace
on failed tokens per address.

An ASGI middleware (after starlette's own pure-ASGI middlewares, e.g. ``GZipMiddleware``: it wraps
``receive`` instead of reading the request) in front of every route. For each request:

- a declared ``Content-Length`` over the limit is a 413 before one byte is read; a body streamed without one
  is counted as it arrives and refused at the byte that passes the limit (``server.max_request_bytes``;
  the Plisio callback keeps its own, smaller ``server.max_body_bytes``, checked and tallied by the receiver);
- under ``/v1/`` the bearer token is checked first: missing, unknown or revoked is a 401 with the body
  unread (FastAPI would otherwise read and parse a body before any dependency runs); the user found is left
  in the request's state for :class:`persona.http_auth.Auth`, which then does not look it up again;
- an address whose tokens failed ``server.auth_failures_per_minute`` times in the last minute gets 429 with
  ``Retry-After`` until the oldest failure leaves the window, its token not even looked up (no oracle).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from persona.users import Users
from tools.redaction import scrub

log = structlog.get_logger(__name__)

AUTHENTICATED = "persona_user"
"""Key in the request's ``state``: the (token, user) the middleware found."""
REFUSED = (
    "a valid API token is required (Authorization: Bearer <token>; `persona users token EMAIL` issues one)"
)
WINDOW_S = 60.0


class FailedAttempts:
    """Failed token checks per address over the last minute, for at most ``max_addresses`` addresses (the
    least recently failing forgotten first: memory stays bounded under a flood from many addresses)."""

    def __init__(
        self, limit: int, *, window_s: float = WINDOW_S, max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.limit, self.window_s, self.max_addresses, self.clock = limit, window_s, max_addresses, clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> int | None:
        """Whole seconds until ``address`` may try again, or None if it may now."""
        failures = self._failures.get(address)
        if failures is None:
            return None
        now = self.clock()
        while failures and now - failures[0] >= self.window_s:
            failures.popleft()
        if len(failures) < self.limit:
            return None
        return max(1, math.ceil(self.window_s - (now - failures[0])))

    def failed(self, address: str) -> None:
        failures = self._failures.pop(address, None) or deque(maxlen=self.limit)
        failures.append(self.clock())
        self._failures[address] = failures
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)

    def __len__(self) -> int:
        return len(self._failures)


class RequestLimits:
    """The middleware (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, *, users: Users, max_request_bytes: int, failures: FailedAttempts,
        exempt: tuple[str, ...] = ("/webhooks/plisio",), authenticated: tuple[str, ...] = ("/v1/",),
    ) -> None:  # fmt: skip
        self.app, self.users, self.max_bytes, self.failures = app, users, max_request_bytes, failures
        self.exempt, self.authenticated = exempt, authenticated

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _refuse(send, 413, "payload_too_large", self._too_large())
            return
        if scope["path"].startswith(self.authenticated):
            address = scope["client"][0] if scope.get("client") else "unknown"
            refusal = await self._authenticate(scope, headers.get("authorization", ""), address)
            if refusal is not None:
                status, kind, message, extra = refusal
                await _refuse(send, status, kind, message, extra)
                return
        await self._bounded(scope, receive, send)

    async def _authenticate(
        self, scope: Scope, header: str, address: str
    ) -> tuple[int, str, str, dict[str, str]] | None:
        wait = self.failures.retry_after(address)
        if wait is not None:
            log.warning("http_auth_throttled", path=scope["path"], peer=address, retry_after_s=wait)
            message = f"too many failed tokens from this address; retry in {wait} s"
            return 429, "too_many_requests", message, {"retry-after": str(wait)}
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            log.info("http_auth_refused", path=scope["path"], reason="no bearer token")
            return 401, "unauthorized", REFUSED, {"www-authenticate": "Bearer"}
        user = await asyncio.to_thread(self.users.authenticate, token)
        if user is None:
            self.failures.failed(address)
            log.info("http_auth_refused", path=scope["path"], reason="unknown, revoked or disabled token")
            return 401, "unauthorized", REFUSED, {"www-authenticate": "Bearer"}
        scope.setdefault("state", {})[AUTHENTICATED] = (token, user)
        return None

    async def _bounded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with a ``receive`` that counts: at the byte past the limit the 413 is sent and the app
        is told the client left (FastAPI turns any error while reading a body into a 400 of its own, so the
        refusal cannot travel as an exception); whatever the app answers after that is dropped."""
        seen, started, refused = 0, False, False

        async def counted() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes and not started:
                    refused = True
                    log.info("http_body_refused", path=scope["path"], limit=self.max_bytes)
                    await _refuse(send, 413, "payload_too_large", self._too_large())
                    return {"type": "http.disconnect"}
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except Exception:
            if not refused:
                raise

    def _too_large(self) -> str:
        return f"request bodies are limited to {self.max_bytes} bytes (server.max_request_bytes)"


async def _refuse(
    send: Send, status: int, kind: str, message: str, extra: dict[str, str] | None = None
) -> None:
    body = json.dumps({"error": {"type": kind, "message": scrub(message)}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


__all__ = ["AUTHENTICATED", "REFUSED", "WINDOW_S", "FailedAttempts", "RequestLimits"]
