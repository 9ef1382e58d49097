"""Signed invoice callbacks (IPN), POSTed the way Plisio does, with every delivery recorded.

Form-encoded by default, JSON when the callback URL's query has ``json=true`` (plisio-api.md §4.1).
Signing is ``tools.plisio.callbacks``'s job; this module only chooses fields, encoding and target.
A delivery failure is recorded and reported, never raised: Plisio does not stop because a merchant's
endpoint is down, and neither do the sandbox's control actions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import httpx

from tools.plisio.callbacks import (
    FORM_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    encode_form_callback,
    encode_json_callback,
)
from tools.plisio.sandbox import dto
from tools.plisio.sandbox.records import Operation, Shop

CALLBACK_TIMEOUT_S: Final = 10.0
USER_AGENT: Final = "Plisio-Sandbox-IPN/1.0"
SUCCESS_STATUSES: Final = frozenset({"completed", "mismatch"})
FAILURE_STATUSES: Final = frozenset({"expired", "cancelled", "error"})


@dataclass(frozen=True)
class CallbackDelivery:
    """What happened to one callback POST; ``status_code`` is None when no answer came back."""

    url: str
    txn_id: str
    status: str
    encoding: str
    status_code: int | None
    error: str | None
    at: int

    def report(self) -> dict[str, Any]:
        return {"url": self.url, "status_code": self.status_code, "error": self.error}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wants_json(url: str) -> bool:
    return any(k == "json" and v == "true" for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True))


def encode(op: Operation, shop: Shop, secret: str, url: str) -> tuple[bytes, str]:
    """The body and Content-Type for ``url``: JSON (expire_utc an int) or form (all strings)."""
    fields = dto.callback_fields(op, shop)
    if wants_json(url):
        return encode_json_callback(fields, secret), JSON_CONTENT_TYPE
    return encode_form_callback({k: str(v) for k, v in fields.items()}, secret), FORM_CONTENT_TYPE


class Notifier:
    """Sends callbacks through an injectable transport (None: the real network)."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None) -> None:
        self.transport = transport
        self.deliveries: list[CallbackDelivery] = []

    def targets(self, op: Operation, shop: Shop) -> tuple[str | None, list[str]]:
        """The status callback URL (or the shop's Status URL) and the success/fail extra targets."""
        primary = op.callback_url or shop.status_url
        extra: list[str] = []
        if op.status in SUCCESS_STATUSES and op.success_callback_url:
            extra.append(op.success_callback_url)
        if op.status in FAILURE_STATUSES and op.fail_callback_url:
            extra.append(op.fail_callback_url)
        return primary, extra

    async def post(self, url: str, op: Operation, shop: Shop, secret: str, now: int) -> CallbackDelivery:
        body, content_type = encode(op, shop, secret, url)
        status_code: int | None = None
        error: str | None = None
        try:
            async with httpx.AsyncClient(transport=self.transport, timeout=CALLBACK_TIMEOUT_S) as http:
                response = await http.post(
                    url, content=body, headers={"Content-Type": content_type, "User-Agent": USER_AGENT}
                )
            status_code = response.status_code
            if status_code >= 400:
                error = f"HTTP {status_code}"
        except (httpx.HTTPError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        delivery = CallbackDelivery(
            url=url,
            txn_id=op.id,
            status=op.status,
            encoding="json" if content_type == JSON_CONTENT_TYPE else "form",
            status_code=status_code,
            error=error,
            at=now,
        )
        self.deliveries.append(delivery)
        return delivery

    async def notify(self, op: Operation, shop: Shop, secret: str, now: int) -> dict[str, Any]:
        """Send the status callback (and success/fail extras); the report control endpoints return."""
        primary, extra = self.targets(op, shop)
        report: dict[str, Any] = {"callback": None}
        if primary is not None:
            report["callback"] = (await self.post(primary, op, shop, secret, now)).report()
        if extra:
            report["extra_callbacks"] = [(await self.post(u, op, shop, secret, now)).report() for u in extra]
        return report
