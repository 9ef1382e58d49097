"""``/_sandbox/...``: the test-and-demo remote control, deliberately outside Plisio's ``/api/v1``.

Moves invoices through their life (each move sends the signed callback Plisio would send), expires
overdue invoices, resets the shop, arms faults and exposes the request and callback logs. Answers
are plain JSON (not Plisio's envelope) so nobody mistakes them for the real API.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tools.plisio.sandbox.envelope import ASSUMPTIONS, json_response
from tools.plisio.sandbox.faults import FaultInjector, FaultRule, RequestRecord
from tools.plisio.sandbox.notifier import CallbackDelivery
from tools.plisio.sandbox.records import Customer
from tools.plisio.sandbox.state import ControlInputError, SandboxStateError


class ControlHost(Protocol):
    faults: FaultInjector
    requests: list[RequestRecord]

    @property
    def callbacks(self) -> list[CallbackDelivery]: ...

    def customers(self) -> list[Customer]: ...

    def reset(self) -> None: ...

    async def pay(self, txn_id: str, amount: Decimal | None = None) -> dict[str, Any]: ...

    async def expire(self, txn_id: str) -> dict[str, Any]: ...

    async def cancel(self, txn_id: str) -> dict[str, Any]: ...

    async def error(self, txn_id: str) -> dict[str, Any]: ...

    async def tick(self) -> list[dict[str, Any]]: ...


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw, parse_float=Decimal)
    except ValueError as exc:
        raise ControlInputError(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ControlInputError("body must be a JSON object")
    return body


def _amount(body: dict[str, Any]) -> Decimal | None:
    raw = body.get("amount")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, str | int | Decimal):
        raise ControlInputError('"amount" must be a decimal string such as "0.0015"')
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        raise ControlInputError(f'"amount" is not a number: {raw!r}') from None
    if not value.is_finite():
        raise ControlInputError('"amount" must be finite')
    return value


class Control:
    """Control endpoints bound to one sandbox."""

    def __init__(self, host: ControlHost) -> None:
        self.host = host

    def routes(self) -> list[BaseRoute]:
        def route(path: str, fn: Callable[[Request], Awaitable[Any]], *methods: str) -> Route:
            return Route("/_sandbox" + path, self._wrap(fn), methods=list(methods))

        return [
            route("", self.index, "GET"),
            route("/invoices/{txn_id}/{action}", self.move, "POST"),
            route("/tick", self.tick, "POST"),
            route("/reset", self.reset, "POST"),
            route("/faults", self.faults, "GET", "POST", "DELETE"),
            route("/requests", self.requests, "GET", "DELETE"),
            route("/callbacks", self.callbacks, "GET"),
            route("/customers", self.customers, "GET"),
        ]

    def _wrap(self, fn: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                result = await fn(request)
            except SandboxStateError as exc:
                return json_response({"error": str(exc)}, exc.status)
            except ValidationError as exc:
                details = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
                return json_response({"error": "invalid fault rule", "details": details}, 422)
            return result if isinstance(result, Response) else json_response(result)

        return endpoint

    async def index(self, request: Request) -> Any:
        return {
            "control": [
                "POST /_sandbox/invoices/{txn_id}/pay  body {'amount': '...'} (optional)",
                "POST /_sandbox/invoices/{txn_id}/expire | /cancel | /error",
                "POST /_sandbox/tick",
                "POST /_sandbox/reset",
                "GET|POST|DELETE /_sandbox/faults",
                "GET|DELETE /_sandbox/requests",
                "GET /_sandbox/callbacks",
                "GET /_sandbox/customers",
            ],
            "assumptions": [{"behaviour": b, "sandbox": s} for b, s in ASSUMPTIONS],
        }

    async def move(self, request: Request) -> Any:
        txn_id, action = request.path_params["txn_id"], request.path_params["action"]
        if action == "pay":
            return await self.host.pay(txn_id, _amount(await _json_body(request)))
        moves = {"expire": self.host.expire, "cancel": self.host.cancel, "error": self.host.error}
        if action not in moves:
            return json_response(
                {"error": f"unknown action {action!r}; use pay, expire, cancel or error"}, 404
            )
        return await moves[action](txn_id)

    async def tick(self, request: Request) -> Any:
        return {"expired": await self.host.tick()}

    async def reset(self, request: Request) -> Any:
        self.host.reset()
        return {"reset": True}

    async def faults(self, request: Request) -> Any:
        if request.method == "POST":
            rule = FaultRule.model_validate(await _json_body(request))
            self.host.faults.add(rule)
            return json_response({"rule": rule.model_dump(), "rules": self.host.faults.rules}, 201)
        if request.method == "DELETE":
            return {"cleared": self.host.faults.clear()}
        return {"rules": self.host.faults.rules}

    async def requests(self, request: Request) -> Any:
        if request.method == "DELETE":
            count = len(self.host.requests)
            self.host.requests.clear()
            return {"cleared": count}
        return {"requests": [r.as_dict() for r in self.host.requests]}

    async def callbacks(self, request: Request) -> Any:
        return {"callbacks": [d.as_dict() for d in self.host.callbacks]}

    async def customers(self, request: Request) -> Any:
        return {"customers": [vars(c) for c in self.host.customers()]}
