"""Plisio's JSON envelope, its errors, and the choices the sandbox had to make where docs are silent.

Plisio runs on Yii2 (its ``/operations`` answer is Yii's HATEOAS serializer), so the gaps are
filled with Yii2 REST defaults: Yii's status names (``"Unprocessable entity"``), its validator
messages (``"Order Number cannot be blank."``), its auth and rate-limit messages, and field errors
as a JSON object serialised into ``data.message``.

Every such choice is listed in ``ASSUMPTIONS`` below, marked ``[sandbox assumption]``, so that a
client written against the sandbox knows which behaviours are evidence and which are guesses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

from starlette.responses import Response

# Codes Plisio documents (plisio-api.md §1.5).
CODE_UNSUPPORTED_CURRENCY: Final = 105
CODE_INSUFFICIENT_FUNDS: Final = 116
# [sandbox assumption] codes: Plisio publishes no full table.
CODE_HTTP: Final = 0  # Yii HttpException's default code: auth, not found, method, rate limit, 5xx
CODE_VALIDATION: Final = 100  # any field validation failure not covered by a documented code
CODE_DUPLICATE_ORDER: Final = 104  # order_number already used and return_existing not set

ASSUMPTIONS: Final[tuple[tuple[str, str], ...]] = (
    # (behaviour, what the sandbox does): every row is a [sandbox assumption].
    (
        "missing or wrong api_key",
        'HTTP 401, name "Unauthorized", code 0, "Your request was made with invalid credentials." (Yii)',
    ),
    (
        "api_key on /currencies",
        "optional (NODE and the PHP plugins call it as a guest); a wrong key is ignored there",
    ),
    (
        "unknown invoice / operation id",
        'HTTP 404, name "Not Found", code 0, "Invoice not found." / "Operation not found."',
    ),
    (
        "unknown route, incl. /operations/withdraw and trailing slashes",
        'HTTP 404, name "Not Found", code 0, "Page not found." (checked before the key)',
    ),
    ("non-GET method on a route", 'HTTP 405, name "Method Not Allowed", code 0, Allow header'),
    (
        "field validation: blank, not a number, bad enum/email/url, count mismatch",
        'HTTP 422, name "Unprocessable entity", code 100, message = JSON text of {field: Yii message}',
    ),
    (
        "order_number that is not an integer on /invoices/new",
        'HTTP 422, code 100, {"order_number":"Order Number must be an integer."} (Yii\'s integer validator; '
        'the docs: "Must be an unique number in your store", the PY SDK types it int)',
    ),
    (
        "duplicate order_number on /invoices/new",
        'HTTP 422, code 104, {"order_number":"Order Number \\"X\\" has already been taken."}',
    ),
    (
        "return_existing=1|true on /invoices/new",
        "the live invoice for that order_number is returned, whatever its state, price or payer, before any"
        " check but the order number's own",
    ),
    (
        "unknown coin (path, currency, allowed_psys_cids); hidden coin on /invoices/new",
        'HTTP 422, code 105, "Unsupported currency attribute value: {\\"<attribute>\\":\\"<value>\\"}"',
    ),
    (
        "unknown fiat (/currencies/{fiat}, source_currency)",
        "HTTP 422, code 105, the same message with attribute fiat / source_currency",
    ),
    (
        "rate limit (fault injection only)",
        'HTTP 429, name "Too Many Requests", code 0, "Rate limit exceeded.", Retry-After, X-Rate-Limit-*',
    ),
    ("injected 5xx", "the status with Yii's name and code 0 (502 html: an nginx page)"),
    (
        "/operations pagination",
        "page 1-based (<1 -> 1, past the end -> last); limit default 20, clamped to [1, 50]; PHP (int) casts",
    ),
    (
        "/operations _links",
        "self, first, last, prev, next: absolute hrefs echoing the whole query, api_key included",
    ),
    ("/operations search", "case-insensitive substring of operation id, txids, order_number, email"),
    ("/operations filters", "unknown currency -> 105; unknown shop_id -> empty page; newest first"),
    ("/invoices/new currency omitted", "first of allowed_psys_cids, else the shop's first active coin (BTC)"),
    ("/invoices/new source_currency omitted", "USD"),
    ("/invoices/new amount and source_amount both given", "amount (crypto) wins"),
    ("/invoices/new expire_min omitted", "600 minutes"),
    ("/invoices/new minimum", "amount below the coin's min_sum_in -> 422 code 100 on amount"),
    ("/invoices/new redirect_to_invoice=1", "HTTP 302 to invoice_url (standard shops only)"),
    (
        "/invoices/email/{id}",
        "read-only lookup; email required and valid (422); 404 if the invoice has another payer email",
    ),
    ("source_rate", "coins per one fiat unit at coin precision (as in the DOC-TX / withdraw examples)"),
    ("fiat_rate on /currencies/{fiat}", "coins per one fiat unit at coin precision, like rate_usd"),
    ("commission_payment", "1 = the client pays (amount = invoice_sum + commission); 0 = the shop pays"),
    ("tx_url in OperationDto", "always a list of explorer URLs (the docs show a list and a string)"),
    (
        "/operations/commission feeUnit",
        "always sent: the cid of the coin the network fee is paid in (the parent chain's for a token)",
    ),
    (
        "/operations/commission commission",
        "Plisio's cut alone, 0.5% of the amounts; the network fee is not in it (read from DOC-COM's examples)",
    ),
    (
        "token fees (USDT, USDT_TRX)",
        "fee values are in the parent chain's coin; 116 checks amounts vs token, fee vs parent balance",
    ),
    (
        "/operations/commission type omitted",
        "cash_out",
    ),
    ("fee-plan for SOL", "value + feeUnit, like TON"),
    (
        "balance credit",
        "received * invoice_sum / invoice_total_sum, when an invoice ends completed, mismatch or expired",
    ),
    ("pending", "confirmations are instant: a partial payment stays pending until paid up or expired"),
    (
        "callbacks",
        'keys sorted; all strings except expire_utc (int in JSON); tx_urls JSON array text or "null"',
    ),
    ("no callback_url", "the shop's Status URL (Sandbox(status_url=...)); none -> no callback"),
)

_HTTP_NAMES: Final = {  # Yii2 Response::$httpStatuses spelling
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    422: "Unprocessable entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_DEFAULT_MESSAGES: Final = {
    500: "An internal server error occurred.",
    502: "Bad Gateway",
    503: "The service is temporarily unavailable. Please try again later.",
    504: "Gateway Timeout",
}


def http_name(status: int) -> str:
    return _HTTP_NAMES.get(status, "Error")


class ApiError(Exception):
    """An error Plisio would answer with its error envelope."""

    def __init__(
        self, status: int, message: str, code: int = CODE_HTTP, headers: Mapping[str, str] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})

    def payload(self) -> dict[str, Any]:
        return {
            "status": "error",
            "data": {"name": http_name(self.status), "message": self.message, "code": self.code},
        }

    def response(self) -> Response:
        return json_response(self.payload(), self.status, self.headers)


def field_label(attribute: str) -> str:
    """Yii ``generateAttributeLabel``: ``order_number`` -> ``Order Number``, ``feePlan`` -> ``Fee Plan``."""
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", attribute).replace("_", " ").replace("-", " ").split()
    return " ".join(w[:1].upper() + w[1:] for w in words)


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def validation_error(errors: Mapping[str, str], code: int = CODE_VALIDATION) -> ApiError:
    """422 whose message is the ``{field: first error}`` map serialised into the string."""
    return ApiError(422, compact_json(dict(errors)), code)


def unsupported_currency(attribute: str, value: str) -> ApiError:
    return ApiError(
        422,
        f"Unsupported currency attribute value: {compact_json({attribute: value})}",
        CODE_UNSUPPORTED_CURRENCY,
    )


def insufficient_funds() -> ApiError:
    return validation_error({"balance": "Insufficient funds on balance"}, CODE_INSUFFICIENT_FUNDS)


def not_found(message: str = "Page not found.") -> ApiError:
    return ApiError(404, message)


def unauthorized() -> ApiError:
    return ApiError(401, "Your request was made with invalid credentials.")


def server_error(status: int, message: str | None = None) -> ApiError:
    return ApiError(status, message or _DEFAULT_MESSAGES.get(status, http_name(status)))


def rate_limited(retry_after: int) -> ApiError:
    headers = {
        "Retry-After": str(retry_after),
        "X-Rate-Limit-Limit": "60",
        "X-Rate-Limit-Remaining": "0",
        "X-Rate-Limit-Reset": str(retry_after),
    }
    return ApiError(429, "Rate limit exceeded.", headers=headers)


def _encode(value: Any) -> str:
    """JSON text where ``Decimal`` becomes a number literal (no float detour) and text stays UTF-8."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, Mapping):
        return (
            "{"
            + ",".join(f"{json.dumps(str(k), ensure_ascii=False)}:{_encode(v)}" for k, v in value.items())
            + "}"
        )
    if isinstance(value, list | tuple):
        return "[" + ",".join(_encode(v) for v in value) + "]"
    if isinstance(value, float):
        raise TypeError("the sandbox never emits floats; use Decimal")
    return json.dumps(value, ensure_ascii=False)


def render(value: Any) -> bytes:
    """Yii's JSON formatter defaults: compact, unescaped slashes and Unicode."""
    return _encode(value).encode("utf-8")


def json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        render(payload),
        status_code=status,
        headers=dict(headers or {}),
        media_type="application/json; charset=UTF-8",
    )


def success(data: Any) -> Response:
    return json_response({"status": "success", "data": data})
