"""Every exception the ``tools`` package raises on purpose.

Third-party errors (httpx, json, pydantic) are converted into this tree where they
enter, so callers never need to know which library failed and no third-party
exception (whose message may carry a URL with the API key) escapes unscrubbed.

    ToolsError
    ├── ServiceError                 a tool's call to its service failed (any integration; the gate's view)
    │   ├── OutcomeUnknown           a write may have been applied: look it up by its key, never re-send
    │   ├── EffectDiffers            the service holds another effect under this key than the one asked
    │   └── PlisioError              talking to Plisio (or the sandbox) failed
    │       ├── PlisioTransportError     the network failed: connect, read, timeout
    │       │   └── PlisioOutcomeUnknown the request may have been applied (also an OutcomeUnknown)
    │       ├── PlisioDeadlineExceeded   retries ran out of the overall deadline
    │       ├── PlisioProtocolError      HTML, empty, truncated or non-envelope body
    │       ├── PlisioExistingInvoice    return_existing gave back another invoice (also an EffectDiffers)
    │       └── PlisioApiError           Plisio answered {"status": "error", ...}
    │           └── PlisioRateLimited    HTTP 429, with the Retry-After it asked for
    ├── CallbackError                a Plisio callback cannot be trusted or read
    │   ├── CallbackFormatError      the body is not a callback (bad encoding, not an object)
    │   └── CallbackSignatureError   verify_hash missing, empty or not matching
    └── ToolDefinitionError          a tool was declared wrongly (a bug: raised at import/registration)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ToolsError(Exception):
    """Root of the tools package's errors."""


class ServiceError(ToolsError):
    """A tool's call to the service behind it failed; ``kind`` and :meth:`to_dict` say how (what the model is
    answered). The generic gate (``tools.registry.run``, the effects executor) catches these three classes,
    never an integration's own: a new integration raises its errors as subclasses of them."""

    kind = "service_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "message": self.message}


class OutcomeUnknown(ServiceError):
    """A state-changing request left the machine and no answer came back: the service may have applied it.
    Never "failed": the effect is looked up by its key (``Tool.lookup``) before anything is tried again."""

    kind = "outcome_unknown"


class EffectDiffers(ServiceError):
    """The service already holds an effect under this effect's key, and it is not the one asked for (another
    amount, payer, or a dead one). The effect did not happen; the other one is named, never passed off."""

    kind = "effect_differs"


class PlisioError(ServiceError):
    """A Plisio call failed. ``route`` is the path template, never the full URL (it has the key)."""

    kind = "plisio_error"

    def __init__(self, message: str, *, route: str = "") -> None:
        super().__init__(message)
        self.route = route

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "route": self.route}


class PlisioTransportError(PlisioError):
    """The request did not complete at the network level (connect refused, timeout, reset)."""

    kind = "plisio_unreachable"


class PlisioOutcomeUnknown(PlisioTransportError, OutcomeUnknown):
    """A state-changing request left the machine and no answer came back.

    Plisio may have applied it. The client never re-sends such a request blindly; the caller
    must look the result up (e.g. by ``order_number``) before trying again.
    """

    kind = "plisio_outcome_unknown"


class PlisioDeadlineExceeded(PlisioError):
    """Retries of a read would run past the overall deadline."""

    kind = "plisio_deadline_exceeded"


class PlisioProtocolError(PlisioError):
    """Plisio's answer is not its JSON envelope: an HTML page, an empty or truncated body."""

    kind = "plisio_protocol_error"

    def __init__(self, message: str, *, route: str = "", http_status: int | None = None) -> None:
        super().__init__(message, route=route)
        self.http_status = http_status

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "http_status": self.http_status}


class PlisioExistingInvoice(PlisioError, EffectDiffers):
    """``/invoices/new`` with ``return_existing`` answered with the invoice its order number already has,
    and that invoice is not what was asked for (another amount, coin or payer, or expired/cancelled).
    It is not a new invoice: the effect did not happen, and the old one is named, not passed off."""

    kind = "existing_invoice_differs"

    def __init__(self, message: str, *, route: str = "", txn_id: str, differences: list[str]) -> None:
        super().__init__(message, route=route)
        self.txn_id, self.differences = txn_id, differences

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "txn_id": self.txn_id, "differences": self.differences}


class PlisioApiError(PlisioError):
    """Plisio's error envelope: ``{"status":"error","data":{"name","message","code"}}``.

    ``field_errors`` holds ``data.message`` decoded when Plisio sent JSON inside the string
    (``"{\\"balance\\":\\"Insufficient funds on balance\\"}"``).
    """

    kind = "plisio_api_error"

    def __init__(
        self,
        message: str,
        *,
        route: str = "",
        code: int | None = None,
        name: str = "",
        http_status: int | None = None,
        field_errors: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, route=route)
        self.code = code
        self.name = name
        self.http_status = http_status
        self.field_errors: dict[str, Any] = dict(field_errors or {})

    def __str__(self) -> str:
        code = f" (code {self.code})" if self.code is not None else ""
        return f"Plisio {self.route}: {self.message}{code}"

    def to_dict(self) -> dict[str, Any]:
        out = {**super().to_dict(), "code": self.code, "name": self.name, "http_status": self.http_status}
        if self.field_errors:
            out["field_errors"] = self.field_errors
        return out


class PlisioRateLimited(PlisioApiError):
    """HTTP 429. ``retry_after`` is the delay Plisio asked for, in seconds, when it sent one."""

    kind = "plisio_rate_limited"

    def __init__(self, message: str, *, route: str = "", retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, route=route, **kw)
        self.retry_after = retry_after


class CallbackError(ToolsError):
    """A callback body cannot be accepted."""


class CallbackFormatError(CallbackError):
    """The body is not a Plisio callback at all (wrong encoding, not an object, bad UTF-8)."""


class CallbackSignatureError(CallbackError):
    """``verify_hash`` is missing, empty, malformed or does not match any accepted key."""


class ToolDefinitionError(ToolsError):
    """A tool declaration is inconsistent (duplicate name, schema not strict-compatible). A bug."""
