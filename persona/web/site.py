"""The console mounted on the app: sign-in, pages, actions, the stylesheet, the refusal handler."""

from __future__ import annotations

from datetime import timedelta

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from persona.deps import ConsoleDeps
from persona.users import Users
from persona.web import WebRefusal, actions, pages
from persona.web.console import Console, signin_router
from persona.web.render import Pages
from persona.web.sessions import WebSessions


def install(app: FastAPI, deps: ConsoleDeps, users: Users) -> None:
    """Add the console to ``app``: sign-in, pages, actions, the stylesheet, the refusal handler."""
    ops = deps.operator
    ttl = timedelta(minutes=ops.settings.server.console_session_minutes)
    console = Console(deps, WebSessions(ops.store, users, ops.now, ttl), Pages())

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, WebRefusal)
        return exc.response

    app.add_exception_handler(WebRefusal, refused)
    app.include_router(signin_router(console))
    app.include_router(pages.router(console))
    app.include_router(actions.router(console))
    app.mount("/static", StaticFiles(packages=[("persona.web", "static")]), name="console-static")
