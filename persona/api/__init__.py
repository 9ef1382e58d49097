"""The HTTP API, one router per noun: chat, drafts, approvals, flows (refunds, churn), ops.

:func:`persona.server.create_app` builds each from the runtime's bundle (:mod:`persona.deps`): each
router module exposes ``router(deps, auth) -> APIRouter`` (``docs.router()`` needs neither); a route does what the CLI command of the
same name does, through the same domain call, and records its source as ``http``. Errors are the
domain's (:mod:`persona.errors`), turned into ``{"error": {...}}`` bodies by :mod:`persona.api.errors`;
this package defines none of its own.
"""
