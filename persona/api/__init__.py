"""The HTTP API, one router per noun: chat, drafts, approvals, flows (refunds, churn), ops.

:func:`persona.server.create_app` composes them around a :class:`~persona.app.Runtime`. Each
router module exposes ``router(rt, auth) -> APIRouter``; a route does what the CLI command of the
same name does, through the same domain call, and records its source as ``http``. Errors are the
domain's (:mod:`persona.errors`), turned into ``{"error": {...}}`` bodies by :mod:`persona.api.errors`;
this package defines none of its own.
"""
