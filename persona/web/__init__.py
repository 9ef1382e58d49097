"""The review console: server-rendered pages at ``/`` for the finance team.

Sign-in exchanges an API token for a session cookie (:mod:`persona.web.sessions`); every form
carries the session's CSRF token. Pages read through the same stores the API reads, and every
action calls the same domain function the API and the CLI call, recorded with source ``web``.
No JavaScript: the pages work with plain forms, and the Content-Security-Policy allows no script.

Exceptions (raised inside the package, answered by :func:`persona.web.site.install`)::

    WebRefusal                the request cannot be served as asked; carries the page to answer with
    ├── SignInNeeded          no live session: 303 to the sign-in page
    └── FormRefused           a POST without this session's CSRF token: 403
"""

from __future__ import annotations

from fastapi.responses import Response

__all__ = ["FormRefused", "SignInNeeded", "WebRefusal"]


class WebRefusal(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


class SignInNeeded(WebRefusal):
    pass


class FormRefused(WebRefusal):
    pass
