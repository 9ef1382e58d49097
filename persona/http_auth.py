"""Bearer-token authentication and roles for the HTTP API.

Every route except ``/healthz`` and the Plisio callback (which carries its own signature) depends
on :meth:`Auth.require`. A missing, unknown, revoked or disabled token gets the same 401 answer,
so the response says nothing that helps guessing; a valid token with the wrong role gets 403.
The authenticated user's email is what the audit log records: request bodies carry no user.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from persona.errors import Forbidden, Unauthorized
from persona.http_limits import AUTHENTICATED, REFUSED
from persona.users import User, Users

log = structlog.get_logger(__name__)

ADMIN = ("admin",)
STAFF = ("admin", "operator")
READERS = ("admin", "operator", "viewer")

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiToken",
    description="An API token from `persona users token EMAIL`, sent as `Authorization: Bearer pp_...`.",
)


class Auth:
    """Builds the FastAPI dependencies that authenticate a request and check its role."""

    def __init__(self, users: Users) -> None:
        self.users = users

    def require(self, roles: tuple[str, ...], action: str) -> Callable[..., Awaitable[User]]:
        async def authenticated(
            request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)
        ) -> User:
            if credentials is None:
                log.info("http_auth_refused", path=request.url.path, reason="no bearer token")
                raise Unauthorized(REFUSED)
            found = getattr(request.state, AUTHENTICATED, None)  # persona.http_limits checked it first
            user: User | None
            if found is not None and found[0] == credentials.credentials:
                user = found[1]
            else:
                user = await asyncio.to_thread(self.users.authenticate, credentials.credentials)
            if user is None:
                log.info(
                    "http_auth_refused", path=request.url.path, reason="unknown, revoked or disabled token"
                )
                raise Unauthorized(REFUSED)
            if user.role not in roles:
                log.info("http_role_refused", path=request.url.path, user=user.email, role=user.role)
                raise Forbidden(f"role {user.role} may not {action} (it needs: {', '.join(roles)})")
            return user

        return authenticated
