"""Plisio callback receiver: bound the body, verify the signature, store in the inbox, then 2xx.

The answer tells Plisio whether to send again, so it is decided by one question: is the callback
durably stored (or known to be a duplicate)? Then 200, whatever its content. The cases:

=========================================  ====  ==========================================
received                                   HTTP  effect
=========================================  ====  ==========================================
body over ``server.max_body_bytes``        413   counted while streaming, no row; every refusal
                                                 is logged, and audited as ``webhook_rejected``,
                                                 one record per address and minute
body we cannot parse (not UTF-8, not JSON,
duplicate keys, nested JSON values, a form
name PHP would merge or re-key)            400   no row (tallied as above). An unparsable body cannot be
                                                 signature-checked, so it is not stored. (Form
                                                 names in PHP's nested syntax are read as PHP does.)
``verify_hash`` missing, empty, malformed
or not matching any accepted key           401   no row (tallied: which check failed)
signed, but unusable (no txn_id, unknown
status ``111``, amount not a number)       200   row in state ``poison`` + audit
signed, already stored (same body, or same
txn_id + status)                           200   audit ``webhook_duplicate``; nothing else
signed and new                             200   row ``pending`` + audit ``webhook_received``
store unavailable                          503   nothing stored; Plisio retries
=========================================  ====  ==========================================

Plisio does not document the Content-Type of its callbacks, so the variant is decided by what is known
(tools/plisio/callbacks.py ``verify``): ``?json=true`` on the callback URL means JSON; else a
``multipart/form-data`` body is read as its parts, a body opening with ``{`` (after blanks) is JSON and
any other is a form (``text/plain`` or a form type on JSON text alike). Every refusal says why in its body.

The accepted keys come from a callable (``secrets() -> list[str]``, current first, run in a worker
thread): the credentials vault once it holds a connection (current keys of active connections, and
a rotated-out key until ``webhooks.previous_key_grace_hours`` have passed), else the settings.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from persona.audit import AuditEvent
from persona.deps import ReceiverDeps, SecretsSource
from persona.errors import StoreError, StoreUnavailable
from persona.events import Source, WebhookEvent
from persona.inbox import UnusableCallback, parse_callback
from persona.rejections import Rejections, Tally, kind_of
from persona.settings import PlisioMode, Settings
from persona.vault import Vault, callback_secrets
from tools.errors import CallbackFormatError, CallbackSignatureError
from tools.plisio.callbacks import VerifiedCallback, verify

log = structlog.get_logger(__name__)


def settings_secrets(settings: Settings) -> SecretsSource:
    """Keys from the settings: the current Plisio key (the sandbox's in sandbox mode), then the previous one."""

    def secrets() -> list[str]:
        keys: list[str] = []
        if settings.plisio.mode == PlisioMode.SANDBOX:
            from tools.plisio.sandbox import SANDBOX_API_KEY

            keys.append(SANDBOX_API_KEY)
        elif settings.plisio_api_key is not None:
            keys.append(settings.plisio_api_key.get_secret_value())
        if settings.plisio_previous_api_key is not None:
            keys.append(settings.plisio_previous_api_key.get_secret_value())
        return [k for i, k in enumerate(keys) if k and k not in keys[:i]]

    return secrets


def vault_secrets(settings: Settings, vault: Vault) -> SecretsSource:
    """The vault's keys once it holds a connection; until then the settings' (the single-user path)."""
    fallback = settings_secrets(settings)

    def secrets() -> list[str]:
        return fallback() if vault.is_empty() else callback_secrets(vault)

    return secrets


SECRETS_TTL_S = 1.0


class _TooLarge(Exception):
    pass


@dataclass(frozen=True)
class Verdict:
    """What the receiver answered and why (also handy in tests)."""

    status: int
    body: dict[str, Any]


def _answer(verdict: Verdict) -> Response:
    return JSONResponse(verdict.body, status_code=verdict.status)


def _error(status: int, kind: str, message: str) -> Verdict:
    return Verdict(status, {"error": {"type": kind, "message": message}})


class Receiver:
    """The ``POST /webhooks/plisio`` handler: verify, store once, acknowledge (see the module docstring)."""

    def __init__(self, deps: ReceiverDeps) -> None:
        self.deps = deps
        self.secrets, self.max_body = deps.secrets, deps.max_body
        self.inbox, self.writer = deps.inbox, deps.writer
        self._secrets: tuple[float, list[str]] | None = None
        self.rejections = Rejections(self._audit_tally)
        """Refusals tallied per address and minute (:mod:`persona.rejections`): flush them at shutdown."""

    async def __call__(self, request: Request) -> Response:
        return _answer(await self.receive(request))

    async def receive(self, request: Request) -> Verdict:
        peer = request.client.host if request.client else None
        content_type = request.headers.get("content-type", "")
        json_query = request.query_params.get("json", "").lower() in ("true", "1")
        try:
            body = await self._read(request)
        except _TooLarge:
            await self._reject("body too large", peer, limit=self.max_body)
            return _error(413, "payload_too_large", f"callback bodies are limited to {self.max_body} bytes")
        except ClientDisconnect:
            return _error(400, "bad_request", "the client went away")
        try:
            secrets = await self._current_secrets()
        except StoreError as exc:
            log.error("webhook_secrets_unavailable", error=str(exc))
            return _error(503, "store_unavailable", "callbacks cannot be verified right now; retry later")
        if not secrets:
            log.error("webhook_no_secret", reason="no Plisio key configured to verify callbacks")
            return _error(503, "not_configured", "callbacks cannot be verified right now")
        try:
            verified = verify(body, content_type=content_type, secrets=secrets, json_query=json_query)
        except CallbackFormatError as exc:
            await self._reject(
                f"malformed body: {exc}", peer, bytes=len(body), content_type=content_type[:100]
            )
            return _error(400, "bad_request", f"the body is not a Plisio callback: {exc}")
        except CallbackSignatureError as exc:
            await self._reject(f"signature: {exc}", peer, bytes=len(body), content_type=content_type[:100])
            public = re.sub(
                r" \([^)]*key\(s\)\)", "", str(exc)
            )  # how many keys are accepted stays in the audit
            return _error(401, "bad_signature", f"the callback's signature does not hold: {public}")
        return await self._store(body, verified, peer)

    async def _current_secrets(self) -> list[str]:
        """The verification keys, re-read at most every ``SECRETS_TTL_S`` (a revoked or rotated key stops
        verifying within that time; reading the vault for every callback would cap the ingest rate)."""
        now = self.deps.now().timestamp()  # the injected clock: a grace window's end is seen at once
        cached = self._secrets
        if cached is not None and now - cached[0] < SECRETS_TTL_S:
            return cached[1]
        keys = await asyncio.to_thread(self.secrets)
        self._secrets = (now, keys)
        return keys

    async def _read(self, request: Request) -> bytes:
        """The raw body, refused as soon as it passes the limit (Content-Length is only a hint)."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    async def _store(self, body: bytes, verified: VerifiedCallback, peer: str | None) -> Verdict:
        fields = verified.fields
        try:
            callback = parse_callback(fields)
            error = None
        except UnusableCallback as exc:
            callback, error = None, str(exc)
        try:
            recorded = await self.writer.record(
                source="callback", body=body, encoding=verified.encoding, fields=fields, callback=callback,
                error=error, now=self.deps.now(),
            )  # fmt: skip
        except StoreError as exc:
            log.error("webhook_store_failed", error=str(exc), unavailable=isinstance(exc, StoreUnavailable))
            return _error(503, "store_unavailable", "the callback could not be stored; retry later")
        payload = {
            "inbox_id": recorded.id,
            "txn_id": fields.get("txn_id"),
            "status": fields.get("status"),
            "encoding": verified.encoding,
            "key": "current" if verified.key_index == 0 else "previous",
        }
        reason: str | None
        if recorded.duplicate:
            event, reason = (
                WebhookEvent.DUPLICATE,
                f"already in the inbox (row {recorded.id}, {recorded.state})",
            )
        elif callback is None:
            event, reason = WebhookEvent.POISON, error
        else:
            event, reason = WebhookEvent.RECEIVED, None
        log.info(event, peer=peer, reason=reason, **payload)
        self._audit_soon(event, reason, payload)
        return Verdict(200, {"ok": True, "inbox_id": recorded.id, "duplicate": recorded.duplicate,
                             "state": recorded.state})  # fmt: skip

    def _audit_soon(self, event: str, reason: str | None, payload: dict[str, Any]) -> None:
        """The callback is durable in the inbox already; its audit record goes to the audit writer now
        and is committed with its next batch, so the 2xx does not wait for a second commit."""
        try:
            self.deps.audit.record(
                AuditEvent(event=event, source=Source.WEBHOOK, reason=reason, payload=payload)
            )
            self.deps.audit.send()
        except Exception as exc:  # the store may be down: the log line still records it
            log.error("webhook_audit_failed", audit_event=event, error=f"{type(exc).__name__}: {exc}")

    async def _reject(self, reason: str, peer: str | None, **payload: Any) -> None:
        """Log and count a refusal now; the audit log gets the address's tally when its minute closes."""
        log.warning(WebhookEvent.REJECTED, reason=reason, peer=peer, **payload)
        if self.deps.metrics is not None:
            self.deps.metrics.rejected.labels(kind_of(reason)).inc()
        size = payload.get("bytes", 0)
        await self.rejections.add(peer, reason, size if isinstance(size, int) else 0, self.deps.now())

    async def _audit_tally(self, tally: Tally) -> None:
        reason = (
            f"{tally.count} callback(s) refused from {tally.peer} in the minute (first: {tally.first_reason})"
        )
        await self._audit(WebhookEvent.REJECTED, reason, tally.payload(), decision="rejected")

    async def _audit(
        self, event: str, reason: str | None, payload: dict[str, Any], decision: str | None = None
    ) -> None:
        """Audit, but never let a failing audit write change the answer (the inbox is what counts)."""
        try:
            await self.deps.audit.append(
                AuditEvent(
                    event=event, source=Source.WEBHOOK, reason=reason, decision=decision, payload=payload
                )
            )
        except Exception as exc:  # the store may be down: the log line still records it
            log.error("webhook_audit_failed", audit_event=event, error=f"{type(exc).__name__}: {exc}")
