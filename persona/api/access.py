"""Route access as the routers declare it: the role check, and the roles written into the OpenAPI schema.

``Security(..., scopes=roles)`` instead of ``Depends``: the same check (:meth:`Auth.require`), and
FastAPI then lists the roles in the operation's security requirement (OpenAPI 3.1 allows role names
there for non-OAuth schemes), which is where ``/docs`` reads them from.
"""

from __future__ import annotations

from typing import Any

from fastapi import Security

from persona.http_auth import Auth


def requires(auth: Auth, roles: tuple[str, ...], action: str) -> Any:
    """The dependency a route's ``user`` parameter defaults to: a valid token of one of ``roles``."""
    return Security(auth.require(roles, action), scopes=list(roles))
