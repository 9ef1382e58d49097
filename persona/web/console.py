"""The console's wiring: who is signed in, what their role may see, and the sign-in pages.

:func:`install` adds the pages (:mod:`persona.web.pages`), the actions (:mod:`persona.web.actions`)
and the stylesheet to the app. A page asks for a :class:`Gate` dependency: no live session is a
303 to the sign-in page, a role that may not see the page is a 403 page, and a POST whose CSRF
field is not this session's is refused before the handler runs.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from persona.audit import AuditEvent
from persona.deps import ConsoleDeps
from persona.events import OperatorEvent, Source
from persona.http_auth import ADMIN, READERS, STAFF
from persona.web import FormRefused, SignInNeeded, WebRefusal
from persona.web.render import Pages
from persona.web.sessions import Session, WebSessions

log = structlog.get_logger(__name__)

COOKIE = "persona_session"
MAX_FORM_BYTES = 64 * 1024
"""A note is at most 2000 characters: no console form comes near this."""
SIGNIN_COOKIE = "persona_signin"
NAV: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("/drafts", "Drafts", STAFF),
    ("/approvals", "Approvals", ADMIN),
    ("/refunds", "Refunds", STAFF),
    ("/churn", "Churn", STAFF),
    ("/inbox", "Inbox", STAFF),
    ("/audit", "Audit log", READERS),
)


@dataclass(frozen=True)
class Console:
    """What every console handler needs: its dependencies, the sessions, the page renderer."""

    deps: ConsoleDeps
    sessions: WebSessions
    pages: Pages

    def page(self, request: Request, session: Session | None, template: str, code: int = 200, /,
             **values: Any) -> Response:  # fmt: skip
        nav = [] if session is None else [(h, t) for h, t, roles in NAV if session.user.role in roles]
        return self.pages.render(
            template, code, request=request, session=session, nav=nav, path=request.url.path, **values
        )

    def refusal(
        self, request: Request, session: Session | None, code: int, title: str, message: str
    ) -> Response:
        return self.page(request, session, "error.html.j2", code, title=title, message=message)

    def gate(self, roles: tuple[str, ...], action: str) -> Callable[[Request], Awaitable[Session]]:
        """The dependency of a page (GET) or an action (POST) that ``roles`` may use."""

        async def signed_in(request: Request) -> Session:
            session = await asyncio.to_thread(self.sessions.get, request.cookies.get(COOKIE))
            if session is None:
                target = "/"
                if request.method == "GET":  # back to the same page, its filters too
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                raise SignInNeeded(
                    RedirectResponse(f"/sign-in?next={quote(target, safe='/')}", status_code=303)
                )
            if request.method == "POST":
                form = await self.form(request, session)
                sent = form.get("csrf")
                if not session.form_ok(sent if isinstance(sent, str) else None):
                    log.warning("web_csrf_refused", path=request.url.path, user=session.user.email)
                    raise FormRefused(self.refusal(
                        request, session, 403, "Form refused",
                        "This form did not carry this session's form token (an old page, or a form sent from "
                        "another site). Reload the page and try again.",
                    ))  # fmt: skip
            if session.user.role not in roles:
                log.info(
                    "web_role_refused", path=request.url.path, user=session.user.email, role=session.user.role
                )
                raise WebRefusal(self.refusal(
                    request, session, 403, "Not for your role",
                    f"Role {session.user.role} may not {action} (it needs: {', '.join(roles)}).",
                ))  # fmt: skip
            return session

        return signed_in

    async def form(self, request: Request, session: Session | None) -> Any:
        """The posted form, refused (413, unread) when it is larger than any console form can be."""
        length = request.headers.get("content-length", "")
        if not length.isdigit() or int(length) > MAX_FORM_BYTES:
            raise WebRefusal(self.refusal(
                request, session, 413, "Form refused",
                f"A console form is at most {MAX_FORM_BYTES // 1024} KiB, sent with its length.",
            ))  # fmt: skip
        return await request.form(max_files=0, max_fields=20)

    async def record(self, event: str, session: Session, reason: str, **payload: Any) -> None:
        await self.deps.operator.audit.append(
            AuditEvent(
                event=event, source=Source.WEB, user=session.user.email, reason=reason, payload=payload
            )
        )


def home_for(role: str) -> str:
    return "/drafts" if role in STAFF else "/audit"


def local_path(target: str | None) -> str | None:
    """``next`` only ever leads to a page of this server (never ``//host`` or ``https://...``)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    return target


def secure_cookie(request: Request, console: Console) -> bool:
    public = console.deps.operator.settings.server.public_url or ""
    return request.url.scheme == "https" or public.startswith("https://")


def signin_router(console: Console) -> APIRouter:
    web = APIRouter(include_in_schema=False)
    any_role = console.gate(READERS, "use the console")

    @web.get("/")
    async def home(request: Request) -> Response:
        session = await asyncio.to_thread(console.sessions.get, request.cookies.get(COOKIE))
        target = "/sign-in" if session is None else home_for(session.user.role)
        return RedirectResponse(target, status_code=303)

    @web.get("/sign-in")
    async def sign_in_page(request: Request, next: str | None = None) -> Response:
        return _sign_in_form(console, request, local_path(next))

    @web.post("/sign-in")
    async def sign_in(request: Request) -> Response:
        expected = request.cookies.get(SIGNIN_COOKIE) or ""
        form = await console.form(request, None) if expected else {}  # no sign-in cookie: nothing is read
        token, sent, target = (str(form.get(k) or "") for k in ("token", "csrf", "next"))
        if not expected or not secrets.compare_digest(sent.encode(), expected.encode()):
            log.warning("web_csrf_refused", path="/sign-in", user=None)
            return _sign_in_form(console, request, local_path(target), 403,
                                 "The sign-in form expired or came from another site; try again.")  # fmt: skip
        started = await asyncio.to_thread(console.sessions.start, token.strip())
        if started is None:
            log.warning("web_signin_refused", reason="unknown, revoked or disabled token")
            return _sign_in_form(console, request, local_path(target), 401,
                                 "That token is not valid: unknown, revoked, or its user is disabled. "
                                 "`persona users token EMAIL` issues a new one.")  # fmt: skip
        cookie, session = started
        await console.record(
            OperatorEvent.CONSOLE_SIGNED_IN, session, f"{session.user.email} signed in to the console"
        )
        log.info("web_signed_in", user=session.user.email, role=session.user.role)
        response = RedirectResponse(local_path(target) or home_for(session.user.role), status_code=303)
        response.set_cookie(
            COOKIE, cookie, max_age=int(console.deps.operator.settings.server.console_session_minutes * 60), httponly=True,
            samesite="strict", secure=secure_cookie(request, console), path="/",
        )  # fmt: skip
        response.delete_cookie(SIGNIN_COOKIE, path="/sign-in")
        return response

    @web.post("/sign-out")
    async def sign_out(request: Request) -> Response:
        session = await any_role(request)
        await asyncio.to_thread(console.sessions.end, request.cookies.get(COOKIE) or "")
        await console.record(
            OperatorEvent.CONSOLE_SIGNED_OUT, session, f"{session.user.email} signed out of the console"
        )
        response = RedirectResponse("/sign-in", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    return web


def _sign_in_form(
    console: Console, request: Request, target: str | None, status: int = 200, error: str | None = None
) -> Response:
    value = secrets.token_urlsafe(24)
    response = console.page(
        request, None, "sign_in.html.j2", status, csrf=value, next=target or "", error=error
    )
    response.set_cookie(SIGNIN_COOKIE, value, max_age=900, httponly=True, samesite="strict",
                        secure=secure_cookie(request, console), path="/sign-in")  # fmt: skip
    return response
