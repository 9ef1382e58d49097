"""The fake Plisio API: every documented route under ``/api/v1``, all ``GET``, key in the query.

Each handler validates like Plisio (see ``envelope.ASSUMPTIONS`` for the undocumented parts),
reads or changes the shop's ``ShopState`` and answers with Plisio's envelope. Routing errors
(unknown path, wrong method) also get the envelope, as Yii's error handler would produce.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, Final, Protocol
from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from tools.plisio.sandbox import dto
from tools.plisio.sandbox.catalog import (
    COINS,
    PLAN_NAMES,
    Coin,
    currency_entry,
    fee_for,
    fee_plan,
    withdraw_commission,
)
from tools.plisio.sandbox.envelope import (
    ApiError,
    insufficient_funds,
    not_found,
    success,
    unauthorized,
    validation_error,
)
from tools.plisio.sandbox.invoicing import create_invoice
from tools.plisio.sandbox.records import OPERATION_TYPES, STATUSES, Operation
from tools.plisio.sandbox.state import OperationFilter, ShopState
from tools.plisio.sandbox.validation import FieldErrors, amounts_for, coin_or_105, fiat_or_105, flag

API_PREFIX: Final = "/api/v1"
DEFAULT_PAGE_SIZE: Final = 20
PAGE_SIZE_LIMIT: Final = (1, 50)
_PHP_INT: Final = re.compile(r"^\s*([+-]?\d+)")


class ApiHost(Protocol):
    """What the routes need from the sandbox (state is re-read per request: reset replaces it)."""

    api_key: str
    send_creation_callbacks: bool

    @property
    def state(self) -> ShopState: ...

    def now_ts(self) -> int: ...

    async def announce(self, op: Operation) -> dict[str, Any]: ...


Handler = Callable[[Request, dict[str, str]], Awaitable[Any]]


def _php_int(raw: str | None, default: int) -> int:
    """PHP's ``(int)`` cast, which Yii's Pagination applies to ``page`` and ``limit``."""
    if raw is None:
        return default
    match = _PHP_INT.match(raw)
    return int(match.group(1)) if match else 0


def _check_funds(state: ShopState, coin: Coin, amounts: list[Decimal], fee: Decimal) -> None:
    total = sum(amounts, Decimal(0))
    if coin.contract_of is None:
        short = total + fee > state.balances[coin.cid]
    else:
        short = total > state.balances[coin.cid] or fee > state.balances[coin.contract_of]
    if short:
        raise insufficient_funds()


class Api:
    """Route handlers bound to one sandbox."""

    def __init__(self, host: ApiHost) -> None:
        self.host = host

    def routes(self) -> list[BaseRoute]:
        table: list[tuple[str, Handler, bool]] = [
            ("/invoices/new", self.invoice_new, True),
            ("/invoices/email/{id}", self.invoice_by_email, True),
            ("/invoices/{id}", self.invoice, True),
            ("/operations", self.operations, True),
            ("/operations/fee/{psys_cid}", self.fee, True),
            ("/operations/fee-plan/{psys_cid}", self.plans, True),
            ("/operations/commission/{psys_cid}", self.commission, True),
            ("/operations/{id}", self.operation, True),
            ("/balances", self.balance_legacy, True),
            ("/balances/{psys_cid}", self.balance, True),
            ("/currencies", self.currencies, False),
            ("/currencies/{fiat}", self.currencies, False),
            ("/shops", self.shop, True),
        ]
        # The product has no withdrawal tool: the route does not exist here at all.
        routes: list[BaseRoute] = [
            Route(f"{API_PREFIX}/operations/withdraw", self._no_route, methods=["GET"])
        ]
        routes += [
            Route(API_PREFIX + path, self._wrap(fn, auth), methods=["GET"]) for path, fn, auth in table
        ]
        return routes

    async def _no_route(self, request: Request) -> Response:
        return not_found().response()

    def _wrap(self, fn: Handler, auth: bool) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            query = dict(request.query_params)  # a repeated parameter: the last one wins, as in PHP
            try:
                key = query.get("api_key", "")
                if auth and not secrets.compare_digest(key.encode(), self.host.api_key.encode()):
                    raise unauthorized()
                result = await fn(request, query)
            except ApiError as error:
                return error.response()
            return result if isinstance(result, Response) else success(result)

        return endpoint

    @property
    def state(self) -> ShopState:
        return self.host.state

    # ---------------------------------------------------------------- invoices

    async def invoice_new(self, request: Request, query: dict[str, str]) -> Any:
        state = self.state
        op, created = create_invoice(state, query, self.host.now_ts())
        if created and self.host.send_creation_callbacks:
            await self.host.announce(op)
        if flag(query, "redirect_to_invoice") and not state.shop.white_label:
            return RedirectResponse(dto.invoice_url(op), status_code=302)
        return dto.created(op, state.shop, self.host.api_key)

    def _invoice(self, op_id: str) -> Operation:
        op = self.state.get(op_id)
        if op is None or not op.is_invoice:
            raise not_found("Invoice not found.")
        return op

    async def invoice(self, request: Request, query: dict[str, str]) -> Any:
        return dto.invoice_details(self._invoice(request.path_params["id"]), self.state.shop)

    async def invoice_by_email(self, request: Request, query: dict[str, str]) -> Any:
        errors = FieldErrors(query)
        email = errors.email(required=True)
        errors.raise_if_any()
        assert email is not None
        op = self._invoice(request.path_params["id"])
        if op.email is not None and op.email.casefold() != email.casefold():
            raise not_found("Invoice not found.")
        return dto.invoice_details(op, self.state.shop)

    # -------------------------------------------------------------- operations

    async def operations(self, request: Request, query: dict[str, str]) -> Any:
        errors = FieldErrors(query)
        op_type = errors.choice("type", OPERATION_TYPES)
        status = errors.choice("status", STATUSES)
        errors.raise_if_any()
        currency = query.get("currency") or None
        if currency is not None:
            coin_or_105(currency)
        found = self.state.newest_first(
            OperationFilter(
                op_type, status, currency, query.get("shop_id") or None, query.get("search") or None
            )
        )
        low, high = PAGE_SIZE_LIMIT
        per_page = min(max(_php_int(query.get("limit"), DEFAULT_PAGE_SIZE), low), high)
        total = len(found)
        page_count = -(-total // per_page)
        page = min(max(_php_int(query.get("page"), 1) - 1, 0), max(page_count - 1, 0))
        shop = self.state.shop
        return {
            "operations": [dto.operation(op, shop) for op in found[page * per_page : (page + 1) * per_page]],
            "_links": self._links(request, query, page, page_count, per_page),
            "_meta": {
                "totalCount": total,
                "pageCount": page_count,
                "currentPage": page + 1,
                "perPage": per_page,
            },
        }

    def _links(
        self, request: Request, query: dict[str, str], page: int, page_count: int, per_page: int
    ) -> dict[str, dict[str, str]]:
        """Yii ``Pagination::getLinks(true)``: the request's own query (key included) + page/limit."""
        base = f"{request.url.scheme}://{request.url.netloc}{request.url.path}"

        def href(index: int) -> dict[str, str]:
            params = dict(query)
            params["page"] = str(index + 1)
            if per_page != DEFAULT_PAGE_SIZE:
                params["limit"] = str(per_page)
            else:
                params.pop("limit", None)
            return {"href": f"{base}?{urlencode(params)}"}

        links = {"self": href(page)}
        if page_count > 0:
            links["first"] = href(0)
            links["last"] = href(page_count - 1)
            if page > 0:
                links["prev"] = href(page - 1)
            if page < page_count - 1:
                links["next"] = href(page + 1)
        return links

    async def operation(self, request: Request, query: dict[str, str]) -> Any:
        op = self.state.get(request.path_params["id"])
        if op is None:
            raise not_found("Operation not found.")
        return dto.operation(op, self.state.shop)

    async def fee(self, request: Request, query: dict[str, str]) -> Any:
        coin = coin_or_105(request.path_params["psys_cid"])
        errors = FieldErrors(query)
        addresses, amounts = amounts_for(errors, required=True)
        plan = errors.choice("feePlan", PLAN_NAMES, "normal")
        errors.raise_if_any()
        assert plan is not None
        fee = fee_for(coin, plan, len(addresses))
        _check_funds(self.state, coin, amounts, fee)
        return {
            "fee": COINS[coin.fee_coin].fmt(fee),
            "psys_cid": coin.cid,
            "currency": coin.currency,
            "plan": plan,
        }

    async def plans(self, request: Request, query: dict[str, str]) -> Any:
        coin = coin_or_105(request.path_params["psys_cid"])
        return {plan: fee_plan(coin, plan) for plan in PLAN_NAMES}

    async def commission(self, request: Request, query: dict[str, str]) -> Any:
        coin = coin_or_105(request.path_params["psys_cid"])
        fee_coin = COINS[coin.fee_coin]
        errors = FieldErrors(query)
        addresses, amounts = amounts_for(errors, required=False)
        kind = errors.choice("type", ("cash_out", "mass_cash_out"), "cash_out")
        plan = errors.choice("feePlan", PLAN_NAMES, "normal")
        if kind == "cash_out" and len(addresses) > 1:
            errors.add("addresses", "{attribute} must hold exactly one address for type cash_out.")
        errors.raise_if_any()
        assert plan is not None
        outputs = max(len(addresses), 1)
        fee = fee_for(coin, plan, outputs)
        if amounts:
            _check_funds(self.state, coin, amounts, fee)
        # Plisio's own cut alone: the network fee is its own field (DOC-COM: "commission":"0.00000000"
        # beside "fee":"0.00001020"), in the fee coin (feeUnit, OAS) -- the parent chain's for a token.
        commission = withdraw_commission(coin, sum(amounts, Decimal(0)))
        plans = {
            p: {**fee_plan(coin, p), "value": fee_coin.fmt(fee_for(coin, p, outputs))} for p in PLAN_NAMES
        }
        return {
            "commission": coin.fmt(commission),
            "fee": fee_coin.fmt(fee),
            "feeUnit": fee_coin.cid,
            "plan": plan,
            "useWallet": "false",
            "useWalletBalance": "null",
            "plans": plans,
        }

    # ------------------------------------------------------------ shop & coins

    async def balance(self, request: Request, query: dict[str, str]) -> Any:
        coin = coin_or_105(request.path_params["psys_cid"])
        return {
            "psys_cid": coin.cid,
            "currency": coin.currency,
            "balance": coin.fmt(self.state.balances[coin.cid]),
        }

    async def balance_legacy(self, request: Request, query: dict[str, str]) -> Any:
        """``balances?currency=BTC``, the form the PHP plugins still call."""
        if not query.get("currency"):
            raise validation_error({"currency": "Currency cannot be blank."})
        coin = coin_or_105(query["currency"])
        return {
            "psys_cid": coin.cid,
            "currency": coin.currency,
            "balance": coin.fmt(self.state.balances[coin.cid]),
        }

    async def currencies(self, request: Request, query: dict[str, str]) -> Any:
        fiat = fiat_or_105(request.path_params.get("fiat", "USD"))
        return [currency_entry(coin, fiat) for coin in COINS.values()]

    async def shop(self, request: Request, query: dict[str, str]) -> Any:
        return dto.shop_info(self.state.shop)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's 404/405 as Plisio/Yii envelopes (control paths get the same shape; harmless)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "GET, HEAD")
        message = f"Method Not Allowed. This URL can only handle the following request methods: {allowed}."
        return ApiError(405, message, headers={"Allow": allowed}).response()
    if exc.status_code == 404:
        return not_found().response()
    return ApiError(exc.status_code, exc.detail).response()
