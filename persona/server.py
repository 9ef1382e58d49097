"""The HTTP face of the service: Plisio callbacks in, chat and operator endpoints, health.

``create_app(rt, start_worker=...)`` builds the FastAPI app around a :class:`Runtime`, so tests
assemble it around a test runtime (an injected ``model_factory``, the in-process sandbox) and
``persona serve`` around the configured one. The routes live in :mod:`persona.api`, one router per
noun; errors become ``{"error": {"type", "message"}}`` (:mod:`persona.api.errors`).

Every ``/v1`` endpoint needs ``Authorization: Bearer <API token>`` (see :mod:`persona.http_auth`
for the roles); ``/healthz`` and ``/webhooks/plisio`` (signed by Plisio) do not, nor do the OpenAPI
pages (the schema, no data). Who did something is the token's user, never a field of the body.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import Response

from persona.api import approvals, audit, chat, docs, drafts, effects, flows, ops
from persona.api.errors import install_errors
from persona.app import Runtime
from persona.deps import ReceiverDeps, SecretsSource
from persona.http_auth import Auth
from persona.http_limits import FailedAttempts, RequestLimits
from persona.inbox import Inbox, InboxWriter
from persona.jsonutil import jsonable
from persona.release import VERSION
from persona.users import Users
from persona.web.site import install as install_console
from persona.webhooks import Receiver, vault_secrets

if TYPE_CHECKING:
    from persona.worker import Worker

__all__ = ["create_app", "jsonable"]


def create_app(
    rt: Runtime,
    *,
    start_worker: bool,
    secrets: SecretsSource | None = None,
    worker: Callable[[Runtime], Worker] | None = None,
) -> FastAPI:
    """The app around ``rt``. ``start_worker`` runs a worker (``worker(rt)``, default ``Worker(rt.worker)``)
    in the app's lifespan, stopped when the server shuts down."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_close_tallies(receiver, rt.now, stop), name="persona-rejections")]
        if start_worker:
            from persona.worker import Worker

            runner = worker(rt) if worker is not None else Worker(rt.worker)
            tasks.append(asyncio.create_task(runner.run(stop), name="persona-worker"))
        try:
            yield
        finally:
            stop.set()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(task, timeout=30)

    app = FastAPI(
        title="plisio-persona",
        summary="LLM personas operating a Plisio account; Plisio callback receiver.",
        version=VERSION,
        lifespan=lifespan,
        docs_url=None,  # /docs is persona.api.docs: rendered here, nothing loaded from a CDN
        redoc_url=None,
    )
    inbox = Inbox(rt.store)
    receiver = Receiver(ReceiverDeps(
        inbox=inbox, writer=InboxWriter(inbox, rt.store), audit=rt.audit, now=rt.now,
        secrets=secrets or vault_secrets(rt.settings, rt.vault), max_body=rt.settings.server.max_body_bytes,
        metrics=rt.metrics,
    ))  # fmt: skip
    app.state.receiver = receiver  # tests flush its tallies of refused callbacks
    users = Users(rt.store, rt.audit, rt.now)
    auth = Auth(users)
    install_errors(app)
    server = rt.settings.server
    app.add_middleware(
        RequestLimits, users=users, max_request_bytes=server.max_request_bytes,
        failures=FailedAttempts(server.auth_failures_per_minute),
    )  # fmt: skip

    @app.post(
        "/webhooks/plisio",
        tags=["webhooks"],
        summary="Plisio status callback (form-encoded, or JSON with ?json=true)",
        responses={200: {"description": "stored, duplicate or poison"}, 400: {}, 401: {}, 413: {}, 415: {},
                   503: {"description": "not stored; Plisio should retry"}},
    )  # fmt: skip
    async def plisio_webhook(request: Request) -> Response:
        return await receiver(request)

    operator = rt.operator
    for router in (
        ops.router(operator, auth), audit.router(operator, auth), chat.router(rt.chat, auth),
        drafts.router(rt.console.reviews, auth), flows.router(rt.flows, auth), approvals.router(operator, auth),
        effects.router(operator, auth), docs.router(),
    ):  # fmt: skip
        app.include_router(router)
    install_console(app, rt.console, users)  # the review console at /: sign-in, pages, forms
    return app


TALLY_EVERY_S = 5.0


async def _close_tallies(receiver: Receiver, now: Callable[[], datetime], stop: asyncio.Event) -> None:
    """Audit the refused-callback tallies whose minute has closed, every few seconds; all of them at the end."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), TALLY_EVERY_S)
        await receiver.rejections.flush_due(now())
    await receiver.rejections.flush_all()
