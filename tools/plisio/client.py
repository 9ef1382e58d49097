"""Async Plisio API client on httpx: one method per route, typed results, typed errors.

Why it is written the way it is:

* Plisio puts the secret key in the query string, so the key is fetched per call from a
  ``KeySource`` (a revoked key stops working on the next call), never stored in a repr,
  scrubbed out of every answer, and httpx's own URL logging is filtered.
* Reads are retried (connect errors, timeouts, 429 with ``Retry-After``, 502/503/504) with
  capped exponential backoff and jitter under an overall deadline. ``/invoices/new`` is
  retried only when the request provably never left (connect phase); after that an
  ambiguous failure (timeout, dropped connection, a gateway's 502/503/504, a 5xx or an unreadable
  answer) raises :class:`PlisioOutcomeUnknown` and is never re-sent blindly: the caller looks the
  order up. Only Plisio's own error envelope below 500 (and 429) is a definite "not applied".
* Clock, sleeper, random source and transport are injected, so tests run instantly and
  against the in-process sandbox.

How an answer is read (the envelope, error envelopes, HTML pages, ``Retry-After``) is in ``answers.py``.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, TypeVar

import httpx
import structlog
from pydantic import BaseModel, ValidationError

from tools.errors import (
    PlisioApiError,
    PlisioDeadlineExceeded,
    PlisioError,
    PlisioExistingInvoice,
    PlisioOutcomeUnknown,
    PlisioProtocolError,
    PlisioTransportError,
)
from tools.plisio.answers import error_for, retry_after, unwrap
from tools.plisio.args import ROUTE_WORDS
from tools.plisio.existing import InvoiceAsk, Unverifiable
from tools.plisio.models import (
    Balance,
    Commission,
    Currency,
    FeeEstimate,
    FeePlan,
    FeePlanName,
    InvoiceCreated,
    InvoiceDetails,
    Operation,
    OperationsPage,
    OperationStatus,
    OperationType,
    Shop,
    SkippedRow,
    WithdrawalType,
)
from tools.redaction import install_log_scrubbing, register_secret, scrub

DEFAULT_BASE_URL: Final = "https://api.plisio.net/api/v1"
USER_AGENT: Final = "plisio-persona/0.1 (+httpx)"

KeySource = Callable[[], Awaitable[str]]
M = TypeVar("M", bound=BaseModel)

log = structlog.get_logger("tools.plisio.client")

_SEGMENT = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def static_key(key: str) -> KeySource:
    """Wrap a fixed key (the ``PLISIO_API_KEY`` path) as a ``KeySource``."""
    register_secret(key)

    async def _key() -> str:
        return key

    return _key


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    read: float = 20.0
    write: float = 10.0
    pool: float = 5.0

    def to_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter, bounded by attempts and by an overall deadline."""

    max_attempts: int = 4
    base_delay: float = 0.25
    max_delay: float = 4.0
    deadline: float = 30.0
    retry_statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 502, 503, 504}))

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Delay before attempt ``attempt + 1``: full-range jitter over [cap/2, cap]."""
        cap = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        jitter: float = rng.random()
        return cap / 2 + jitter * cap / 2


class _Retry(Exception):
    """Internal signal: this attempt failed in a way that may be retried."""

    def __init__(self, error: PlisioError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def _segment(value: str, what: str) -> str:
    """An id as one path segment: never ``..``, never a route's own word (``withdraw``, ``new``)."""
    if not _SEGMENT.fullmatch(value) or value in {".", ".."} or value.casefold() in ROUTE_WORDS:
        raise ValueError(f"{what} {value!r} is not a valid Plisio identifier")
    return value


def _csv(values: Sequence[object] | None) -> str | None:
    return None if not values else ",".join(str(v) for v in values)


def _amount(value: Decimal | None) -> str | None:
    """Decimal to Plisio's plain decimal string (no exponent, no trailing zeros)."""
    if value is None:
        return None
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


class PlisioClient:
    """One method per Plisio route (withdrawals deliberately absent)."""

    def __init__(
        self,
        api_key: str | KeySource,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        install_log_scrubbing()
        self._key: KeySource = static_key(api_key) if isinstance(api_key, str) else api_key
        self._retry = retry or RetryPolicy()
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url + "/",
            timeout=(timeouts or Timeouts()).to_httpx(),
            transport=transport,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"PlisioClient(base_url={self.base_url!r}, api_key=***)"

    async def __aenter__(self) -> PlisioClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------ routes

    async def create_invoice(
        self,
        *,
        order_number: str,
        order_name: str,
        currency: str | None = None,
        amount: Decimal | None = None,
        source_currency: str | None = None,
        source_amount: Decimal | None = None,
        allowed_psys_cids: Sequence[str] | None = None,
        description: str | None = None,
        callback_url: str | None = None,
        email: str | None = None,
        expire_min: int | None = None,
        return_existing: bool = True,
    ) -> InvoiceCreated:
        """``/invoices/new``. ``return_existing`` makes a re-sent order number return the same invoice."""
        params = {
            "order_number": order_number,
            "order_name": order_name,
            "currency": currency,
            "amount": _amount(amount),
            "source_currency": source_currency,
            "source_amount": _amount(source_amount),
            "allowed_psys_cids": _csv(allowed_psys_cids),
            "description": description,
            "callback_url": callback_url,
            "email": email,
            "expire_min": None if expire_min is None else str(expire_min),
            "return_existing": "1" if return_existing else None,
        }
        data = await self._call("/invoices/new", "invoices/new", params, idempotent=False)
        try:
            created = self._model(InvoiceCreated, data, "/invoices/new")
        except PlisioProtocolError as exc:  # a success envelope we cannot read: the invoice exists
            raise _unknown("/invoices/new", exc.message) from None
        if return_existing:
            ask = InvoiceAsk(order_number, amount, currency, source_amount, source_currency, email)
            await self._is_the_one_asked(created.txn_id, ask)
        return created

    async def _is_the_one_asked(self, txn_id: str, ask: InvoiceAsk) -> None:
        """With ``return_existing`` Plisio answers with the invoice the order number already has, whatever
        it is: read its record back and refuse one that is not what was asked (tools/plisio/existing.py).
        What cannot be checked is an unknown outcome (the invoice exists), never a match."""
        try:
            differences = ask.against(await self.get_operation(txn_id))
        except (PlisioError, Unverifiable) as exc:
            raise _unknown(
                "/invoices/new",
                f"invoice {txn_id} was answered but could not be checked against the ask ({exc})",
            ) from None
        if differences:
            log.warning("plisio_existing_invoice_differs", txn_id=txn_id, differences=differences)
            raise PlisioExistingInvoice(
                f"Plisio answered with invoice {txn_id}, which order number {ask.order_number} already had: "
                f"{'; '.join(differences)}. It is not the invoice asked for, and is not taken as it",
                route="/invoices/new", txn_id=txn_id, differences=differences,
            )  # fmt: skip

    async def get_invoice(self, invoice_id: str) -> InvoiceDetails:
        path = f"invoices/{_segment(invoice_id, 'invoice id')}"
        return self._model(InvoiceDetails, await self._call("/invoices/{id}", path, {}), "/invoices/{id}")

    async def get_invoice_by_email(self, invoice_id: str, email: str) -> InvoiceDetails:
        route = "/invoices/email/{id}"
        path = f"invoices/email/{_segment(invoice_id, 'invoice id')}"
        return self._model(InvoiceDetails, await self._call(route, path, {"email": email}), route)

    async def list_operations(
        self,
        *,
        page: int | None = None,
        limit: int | None = None,
        shop_id: str | None = None,
        type: OperationType | None = None,
        status: OperationStatus | None = None,
        currency: str | None = None,
        search: str | None = None,
    ) -> OperationsPage:
        params = {
            "page": None if page is None else str(page),
            "limit": None if limit is None else str(limit),
            "shop_id": shop_id,
            "type": None if type is None else type.value,
            "status": None if status is None else status.value,
            "currency": currency,
            "search": search,
        }
        data = await self._call("/operations", "operations", params)
        return self._page(data, "/operations")

    def _page(self, data: Any, route: str) -> OperationsPage:
        """A page whose unreadable rows are set apart (count, ids, why; a log event), not a page lost."""
        rows = data.get("operations") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            return self._model(OperationsPage, data, route)  # the page itself is of another shape
        good: list[Any] = []
        skipped: list[SkippedRow] = []
        for index, row in enumerate(rows):
            try:
                Operation.model_validate(row)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first.get("loc", ())) or "row"
                row_id = row.get("id") if isinstance(row, dict) and isinstance(row.get("id"), str) else None
                skipped.append(SkippedRow(row_id, f"row {index}: {where}: {first.get('msg', 'invalid')}"))
                continue
            good.append(row)
        page = self._model(OperationsPage, {**data, "operations": good}, route)
        if skipped:
            log.warning(
                "plisio_rows_skipped", route=route, count=len(skipped), ids=[r.id for r in skipped],
                errors=[scrub(r.error) for r in skipped],
            )  # fmt: skip
            page = page.model_copy(update={"skipped": tuple(skipped)})
        return page

    async def get_operation(self, operation_id: str) -> Operation:
        path = f"operations/{_segment(operation_id, 'operation id')}"
        return self._model(Operation, await self._call("/operations/{id}", path, {}), "/operations/{id}")

    async def estimate_fee(
        self,
        psys_cid: str,
        *,
        addresses: Sequence[str],
        amounts: Sequence[Decimal],
        fee_plan: FeePlanName | None = None,
    ) -> FeeEstimate:
        route = "/operations/fee/{psys_cid}"
        params = {
            "addresses": _csv(addresses),
            "amounts": _csv([_amount(a) for a in amounts]),
            "feePlan": None if fee_plan is None else fee_plan.value,
        }
        data = await self._call(route, f"operations/fee/{_segment(psys_cid, 'psys_cid')}", params)
        return self._model(FeeEstimate, data, route)

    async def get_fee_plans(self, psys_cid: str) -> dict[str, FeePlan]:
        route = "/operations/fee-plan/{psys_cid}"
        data = await self._call(route, f"operations/fee-plan/{_segment(psys_cid, 'psys_cid')}", {})
        if not isinstance(data, dict):
            raise PlisioProtocolError("fee plans are not an object keyed by plan name", route=route)
        return {str(name): self._model(FeePlan, plan, route) for name, plan in data.items()}

    async def estimate_commission(
        self,
        psys_cid: str,
        *,
        addresses: Sequence[str] | None = None,
        amounts: Sequence[Decimal] | None = None,
        type: WithdrawalType | None = None,
        fee_plan: FeePlanName | None = None,
    ) -> Commission:
        route = "/operations/commission/{psys_cid}"
        params = {
            "addresses": _csv(addresses),
            "amounts": _csv([_amount(a) for a in amounts or ()]),
            "type": None if type is None else type.value,
            "feePlan": None if fee_plan is None else fee_plan.value,
        }
        data = await self._call(route, f"operations/commission/{_segment(psys_cid, 'psys_cid')}", params)
        return self._model(Commission, data, route)

    async def get_balance(self, psys_cid: str) -> Balance:
        route = "/balances/{psys_cid}"
        data = await self._call(route, f"balances/{_segment(psys_cid, 'psys_cid')}", {})
        return self._model(Balance, data, route)

    async def get_currencies(self, fiat: str | None = None) -> list[Currency]:
        route, path = ("/currencies", "currencies") if fiat is None else ("/currencies/{fiat}", "")
        if fiat is not None:
            path = f"currencies/{_segment(fiat, 'fiat code')}"
        data = await self._call(route, path, {})
        if not isinstance(data, list):
            raise PlisioProtocolError("the currency list is not a JSON array", route=route)
        return [self._model(Currency, item, route) for item in data]

    async def get_shop(self) -> Shop:
        return self._model(Shop, await self._call("/shops", "shops", {}), "/shops")

    # ------------------------------------------------------------- machinery

    def _model(self, model: type[M], data: Any, route: str) -> M:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "data"
            raise PlisioProtocolError(
                f"unexpected answer shape at {where}: {first.get('msg', 'invalid')}", route=route
            ) from None

    async def _call(
        self, route: str, path: str, params: Mapping[str, str | None], *, idempotent: bool = True
    ) -> Any:
        started = self._clock()
        deadline = started + self._retry.deadline
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._attempt(route, path, params, idempotent=idempotent)
            except _Retry as retry:
                error = retry.error
                now = self._clock()
                if attempt >= self._retry.max_attempts:
                    log.warning("plisio_retries_exhausted", route=route, attempts=attempt, error=error.kind)
                    raise error from None
                delay = self._retry.backoff(attempt, self._rng)
                if retry.retry_after is not None:
                    delay = max(delay, retry.retry_after)
                if now + delay > deadline:
                    log.warning("plisio_deadline_exceeded", route=route, attempts=attempt, error=error.kind)
                    raise PlisioDeadlineExceeded(
                        f"gave up after {attempt} attempt(s) within the {self._retry.deadline:g}s deadline;"
                        f" last error: {error.message}",
                        route=route,
                    ) from None
                log.info(
                    "plisio_retry", route=route, attempt=attempt, delay_s=round(delay, 3), error=error.kind
                )
                await self._sleep(delay)

    async def _attempt(
        self, route: str, path: str, params: Mapping[str, str | None], *, idempotent: bool
    ) -> Any:
        key = await self._key()
        register_secret(key)
        query = {k: v for k, v in params.items() if v is not None}
        query["api_key"] = key
        t0 = self._clock()
        try:
            response = await self._http.get(path, params=query)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # The request never left this machine: safe to retry, even for /invoices/new.
            raise _Retry(
                PlisioTransportError(
                    f"cannot connect to Plisio at {self.base_url}: {_reason(exc)}", route=route
                )
            ) from None
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            if not idempotent:
                raise _unknown(route, f"no complete answer came back ({_reason(exc)})") from None
            raise _Retry(
                PlisioTransportError(f"Plisio did not answer completely: {_reason(exc)}", route=route)
            ) from None
        except httpx.HTTPError as exc:
            if not idempotent:  # past the connect phase nothing says it did not arrive
                raise _unknown(route, f"HTTP error after sending ({_reason(exc)})") from None
            raise PlisioTransportError(f"HTTP error talking to Plisio: {_reason(exc)}", route=route) from None
        elapsed_ms = round((self._clock() - t0) * 1000, 1)
        log.debug("plisio_response", route=route, status=response.status_code, elapsed_ms=elapsed_ms)
        status = response.status_code
        if status in self._retry.retry_statuses:
            error = error_for(response, route, key, self._wall_clock())
            if idempotent:
                raise _Retry(error, retry_after(response, self._wall_clock()))
            if status != 429:  # a gateway's 502/503/504 says nothing about what the upstream did
                raise _unknown(route, f"HTTP {status} from Plisio's side ({error.message})") from None
            raise error
        if idempotent:
            return unwrap(response, route, key, self._wall_clock())
        try:
            return unwrap(response, route, key, self._wall_clock())
        except PlisioProtocolError as exc:  # an answer came, unreadable: the request did arrive
            raise _unknown(route, exc.message) from None
        except PlisioApiError as exc:
            if status >= 500:  # Plisio's own 5xx envelope: it may have failed half-way
                raise _unknown(route, str(exc)) from None
            raise


def _unknown(route: str, what: str) -> PlisioOutcomeUnknown:
    log.error("plisio_outcome_unknown", route=route, error=scrub(what))
    return PlisioOutcomeUnknown(
        f"the request reached Plisio but its outcome is unknown: {what}; it may have been applied,"
        " so it is not re-sent blindly",
        route=route,
    )


def _reason(exc: Exception) -> str:
    """An httpx error's reason, without the URL (which carries the key)."""
    text = scrub(str(exc)) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text
