"""``Sandbox``: one fake Plisio shop, as an ASGI app plus the same controls as Python methods.

Composition only: state comes from ``seed``, routes from ``app``/``control``, callbacks from
``notifier``, faults and the request log from ``faults``. The clock is injected so tests can move
time (expiry, ``tick``) without sleeping; nothing else here reads the wall clock.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from tools.plisio.sandbox import dto
from tools.plisio.sandbox.app import Api, http_error
from tools.plisio.sandbox.control import Control
from tools.plisio.sandbox.demo_shop import make_shop
from tools.plisio.sandbox.faults import FaultInjector, FaultMiddleware, RequestRecord
from tools.plisio.sandbox.notifier import CallbackDelivery, Notifier
from tools.plisio.sandbox.records import Customer, Operation
from tools.plisio.sandbox.seed import build_state
from tools.plisio.sandbox.state import ShopState

SANDBOX_API_KEY: Final = "sk_sandbox_4f1c9e7a2b6d8035"


def utc_now() -> datetime:
    return datetime.now(UTC)


class Sandbox:
    """A seeded, stateful fake of Plisio for one shop whose secret key is ``api_key``."""

    def __init__(
        self,
        *,
        api_key: str = SANDBOX_API_KEY,
        seed: int = 7,
        now: Callable[[], datetime] = utc_now,
        white_label: bool = False,
        callback_transport: httpx.AsyncBaseTransport | None = None,
        send_creation_callbacks: bool = False,
        status_url: str | None = None,
        seed_at: datetime | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("the sandbox needs a non-empty api_key (it also signs callbacks)")
        self.api_key = api_key
        self.seed = seed
        self.white_label = white_label
        self.status_url = status_url
        self.send_creation_callbacks = send_creation_callbacks
        self._now = now
        self._seed_at = seed_at
        """When the seeded history ends (default: ``now``). Pinning it keeps seeded ids stable across
        processes, e.g. CLI commands run a minute apart against their own in-process sandbox."""
        self.faults = FaultInjector()
        self.requests: list[RequestRecord] = []
        self.notifier = Notifier(callback_transport)
        self._state = self._fresh_state()
        starlette = Starlette(
            routes=[*Api(self).routes(), *Control(self).routes()],
            exception_handlers={HTTPException: http_error},
        )
        starlette.router.redirect_slashes = False
        self.app: ASGIApp = FaultMiddleware(starlette, self.faults, self.requests)

    def _fresh_state(self) -> ShopState:
        seed_at = self._seed_at
        seed_now = self.now_ts if seed_at is None else (lambda: int(seed_at.timestamp()))
        return build_state(
            make_shop(white_label=self.white_label, status_url=self.status_url), self.seed, seed_now
        )

    # ------------------------------------------------------------------ access

    @property
    def state(self) -> ShopState:
        return self._state

    @property
    def callbacks(self) -> list[CallbackDelivery]:
        """Every callback POST so far (including failed deliveries)."""
        return self.notifier.deliveries

    def now_ts(self) -> int:
        moment = self._now()
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp())

    def transport(self) -> httpx.ASGITransport:
        """In-process transport for ``httpx.AsyncClient(transport=..., base_url='http://sandbox/api/v1')``."""
        return httpx.ASGITransport(app=self.app)

    def customers(self) -> list[Customer]:
        return list(self._state.customers)

    def invoice(self, txn_id: str) -> dict[str, Any]:
        """The invoice as ``/invoices/{id}`` shows it (``UnknownInvoiceError`` if there is none)."""
        return dto.invoice(self._state.invoice(txn_id))

    def reset(self) -> None:
        """Back to the freshly seeded shop (at the clock's current time); faults and logs cleared."""
        self._state = self._fresh_state()
        self.faults.clear()
        self.requests.clear()
        self.notifier.deliveries.clear()

    # --------------------------------------------------------------- lifecycle

    async def _move(self, action: Callable[[str, int], Operation], txn_id: str) -> dict[str, Any]:
        now = self.now_ts()
        op = action(txn_id, now)
        report = await self.notifier.notify(op, self._state.shop, self.api_key, now)
        return {"invoice": dto.invoice(op), **report}

    async def announce(self, op: Operation) -> dict[str, Any]:
        """The creation callback (status ``new``) when ``send_creation_callbacks`` is on."""
        report = await self.notifier.notify(op, self._state.shop, self.api_key, self.now_ts())
        return {"invoice": dto.invoice(op), **report}

    async def pay(self, txn_id: str, amount: Decimal | None = None) -> dict[str, Any]:
        """Pay the rest (None -> completed), part of it (-> pending) or too much (-> mismatch)."""
        state = self._state
        return await self._move(lambda tid, now: state.pay(tid, amount, now), txn_id)

    async def expire(self, txn_id: str) -> dict[str, Any]:
        return await self._move(self._state.expire, txn_id)

    async def cancel(self, txn_id: str) -> dict[str, Any]:
        return await self._move(self._state.cancel, txn_id)

    async def error(self, txn_id: str) -> dict[str, Any]:
        return await self._move(self._state.fail, txn_id)

    async def tick(self) -> list[dict[str, Any]]:
        """Expire every open invoice whose ``expire_utc`` has passed, sending each callback."""
        return [await self.expire(txn_id) for txn_id in self._state.due_for_expiry(self.now_ts())]
