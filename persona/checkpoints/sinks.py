"""Sinks outside the database for signed checkpoints: an HTTP endpoint that keeps each one.

A checkpoint only helps if a copy lives where whoever can rewrite the database cannot reach it.
:class:`WebhookSink` POSTs the signed note exactly as :meth:`NoteSigner.sign` wrote it::

    POST <audit.checkpoint_webhook_url>
    Content-Type: text/plain; charset=utf-8
    X-Persona-Delivery: checkpoint-<tree size>          (the same value is the same checkpoint, sent again)
    X-Persona-Signature: sha256=<hex HMAC-SHA256(secret, body)>   (when a secret is configured)

The receiver answers 2xx once it kept the note; anything else, a connection error or a timeout is a
:class:`SinkError` (the caller retries later). The note's Ed25519 signature is what proves the checkpoint;
the HMAC only tells the receiver the POST came from this service (see ``persona.webhook_signature``).
Messages never carry the secret or the URL's query or password: a webhook URL often holds a token.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import httpx

from persona.errors import PersonaError
from persona.settings import Settings
from persona.webhook_signature import DELIVERY_HEADER, SIGNATURE_HEADER, sign
from tools.redaction import REDACTED, register_secret, scrub

CONTENT_TYPE = "text/plain; charset=utf-8"


class SinkError(PersonaError):
    """A checkpoint could not be handed to a sink: unreachable, too slow, or it refused it."""

    def __init__(self, message: str, *, size: int, status_code: int | None = None) -> None:
        super().__init__(message)
        self.size, self.status_code = size, status_code


def delivery_id(size: int) -> str:
    return f"checkpoint-{size}"


def _url_secrets(url: str) -> list[str]:
    """The parts of a URL that may be credentials: the password, the query and each of its values."""
    parts = urlsplit(url)
    found = [parts.password or "", parts.query, *(value for _, value in parse_qsl(parts.query))]
    return [s for s in found if s]


def shown_url(url: str) -> str:
    """The URL as messages show it: no user or password, the query masked."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}" + (f"?{REDACTED}" if parts.query else "")


class WebhookSink:
    """POSTs signed checkpoints to one URL. ``transport`` None means the network (tests inject one)."""

    def __init__(
        self,
        url: str,
        *,
        secret: str | None = None,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        env_var: str = "PERSONA_CHECKPOINT_SECRET",
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError("a checkpoint webhook URL starts with http:// or https://")
        self.url, self._secret, self._timeout, self._transport = url, secret, timeout_s, transport
        self._env_var = env_var
        self._hidden = [*_url_secrets(url), *([secret] if secret else [])]
        parts = urlsplit(url)
        for value in (secret, parts.password, parts.query):  # whole values only: a query value may be a word
            register_secret(value)  # so httpx's request log and any other line never show them either
        self.shown = shown_url(url)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> WebhookSink | None:
        """The sink ``audit.checkpoint_webhook_url`` configures, or None when it is unset."""
        audit = settings.audit
        if audit.checkpoint_webhook_url is None:
            return None
        secret = settings.checkpoint_secret
        return cls(
            audit.checkpoint_webhook_url,
            secret=secret.get_secret_value() if secret is not None else None,
            timeout_s=audit.checkpoint_timeout_s,
            transport=transport,
            env_var=audit.checkpoint_secret_env,
        )

    def scrub(self, text: str) -> str:
        """``text`` without this sink's secret, or its URL's password, query or query values."""
        return scrub(text, self._hidden)

    async def deliver(self, note: str, *, size: int) -> int:
        """POST the signed note of the checkpoint of ``size`` records; its status code, or :class:`SinkError`."""
        body = note.encode("utf-8")
        headers = {"Content-Type": CONTENT_TYPE, DELIVERY_HEADER: delivery_id(size)}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(body, self._secret)
        what = f"checkpoint {size} could not be delivered to {self.shown}"
        try:
            async with httpx.AsyncClient(transport=self._transport, timeout=self._timeout) as client:
                response = await client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise SinkError(
                self.scrub(f"{what}: no answer within {self._timeout:g}s ({type(exc).__name__}) (fix: check "
                            "that the receiver is up and quick, or raise audit.checkpoint_timeout_s)"),
                size=size,
            ) from None  # fmt: skip
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise SinkError(
                self.scrub(f"{what}: {detail} (fix: check audit.checkpoint_webhook_url and that the "
                            "receiver is reachable from this host)"),
                size=size,
            ) from None  # fmt: skip
        code = response.status_code
        if not 200 <= code < 300:
            answer = " ".join(response.text[:200].split())
            if code in (401, 403):
                fix = f"check that ${self._env_var} is the secret the receiver verifies with"
            else:
                fix = "see the receiver's logs; a 2xx answer means it kept the checkpoint"
            raise SinkError(
                self.scrub(f"{what}: the receiver answered {code}" + (f" {answer!r}" if answer else "")
                            + f" (fix: {fix})"),
                size=size, status_code=code,
            )  # fmt: skip
        return code
