"""Reading Plisio's answers: its ``{status, data}`` envelope, its error envelopes (with the JSON-in-a-string
field errors), the HTML pages a gateway sends instead, and ``Retry-After``.

Apart from the client so the transport and retry logic there reads on its own; every function here is
pure (the clock comes in as ``now``), and every failure is a :mod:`tools.errors` exception with the key
scrubbed out.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from tools.errors import PlisioApiError, PlisioError, PlisioProtocolError, PlisioRateLimited
from tools.redaction import scrub, scrub_data


def retry_after(response: httpx.Response, now: float) -> float | None:
    raw = response.headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        try:
            return max(0.0, float(parsedate_to_datetime(raw).timestamp()) - now)
        except (TypeError, ValueError):
            return None


def error_for(response: httpx.Response, route: str, key: str, now: float) -> PlisioError:
    """The error an answer amounts to (a 5xx with a success envelope is a protocol error too)."""
    try:
        unwrap(response, route, key, now)
    except PlisioError as exc:
        return exc
    return PlisioProtocolError(
        f"HTTP {response.status_code} with a success envelope",
        route=route,
        http_status=response.status_code,
    )


def unwrap(response: httpx.Response, route: str, key: str, now: float) -> Any:
    """The envelope's ``data`` (the key scrubbed out of it), or the error the answer is."""
    status = response.status_code
    body = response.content
    ctype = response.headers.get("content-type", "")
    if not body.strip():
        raise PlisioProtocolError(
            f"Plisio sent an empty body (HTTP {status}); expected its JSON envelope",
            route=route,
            http_status=status,
        )
    if "html" in ctype or body.lstrip()[:1] == b"<":
        raise PlisioProtocolError(
            f"Plisio sent an HTML page instead of JSON (HTTP {status}): {html_title(body)!r}",
            route=route,
            http_status=status,
        )
    try:
        doc = json.loads(body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PlisioProtocolError(
            f"Plisio sent truncated or invalid JSON (HTTP {status}, {len(body)} bytes): {exc}",
            route=route,
            http_status=status,
        ) from None
    if not isinstance(doc, dict) or doc.get("status") not in {"success", "error"}:
        raise PlisioProtocolError(
            f"Plisio's answer is not its {{status, data}} envelope (HTTP {status})",
            route=route,
            http_status=status,
        )
    data = scrub_data(doc.get("data"), (key,))
    if doc["status"] == "success":
        if status >= 400:
            raise PlisioProtocolError(
                f"HTTP {status} with a success envelope", route=route, http_status=status
            )
        return data
    raise api_error(data, route, status, retry_after(response, now))


def api_error(data: Any, route: str, status: int, retry_after: float | None) -> PlisioApiError:
    info = data if isinstance(data, dict) else {}
    raw_message = str(info.get("message") or info.get("name") or "unknown error")
    field_errors: dict[str, Any] = {}
    message = raw_message
    if raw_message.lstrip().startswith("{"):
        try:
            decoded = json.loads(raw_message)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            field_errors = decoded
            message = "; ".join(f"{k}: {v}" for k, v in decoded.items())
    code_raw = info.get("code")
    code = int(code_raw) if isinstance(code_raw, int | str) and str(code_raw).lstrip("-").isdigit() else None
    kwargs: dict[str, Any] = {
        "route": route,
        "code": code,
        "name": str(info.get("name") or ""),
        "http_status": status,
        "field_errors": field_errors,
    }
    if status == 429:
        return PlisioRateLimited(scrub(message), retry_after=retry_after, **kwargs)
    return PlisioApiError(scrub(message), **kwargs)


def html_title(body: bytes) -> str:
    text = body[:2000].decode("utf-8", "replace")
    match = re.search(r"<title>(.*?)</title>|<h1>(.*?)</h1>", text, re.I | re.S)
    if match:
        return (match.group(1) or match.group(2) or "").strip()[:120]
    return " ".join(re.sub(r"<[^>]+>", " ", text).split())[:120]
