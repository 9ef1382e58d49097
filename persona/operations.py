"""Operator actions the CLI, the HTTP API and the review console share, so each is one code path.

Each function does the domain work and its audit record; callers only say who acts and from where
(``source``: :class:`~persona.events.Source`). Nothing here prints or knows about HTTP.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from persona.audit import AuditEvent
from persona.deps import OperatorDeps
from persona.errors import Conflict
from persona.events import OperatorEvent
from persona.inbox import Inbox, InboxRow

if TYPE_CHECKING:
    from persona.checkpoints.verification import Finding
    from persona.effects.ledger import Effect

log = structlog.get_logger(__name__)


async def retry_inbox_row(deps: OperatorDeps, row_id: int, *, by: str | None, source: str) -> InboxRow:
    """Queue a failed (or poison) inbox row again, attempts reset, and audit who did it from where.

    ``row_id`` is the exact id (never a prefix: it changes a row). Unknown: NotFound; a row in any other
    state: Conflict. ``by`` is the acting user's email (None when the CLI does not know one)."""
    row = await asyncio.to_thread(Inbox(deps.store).retry, row_id, now=deps.now())
    await deps.audit.append(
        AuditEvent(
            event=OperatorEvent.INBOX_RETRIED, source=source, user=by,
            payload={"inbox_id": row.id, "txn_id": row.txn_id, "status": row.status},
        )
    )  # fmt: skip
    log.info("inbox_row_retried", inbox_id=row.id, by=by, source=source)
    return row


def verify_audit(deps: OperatorDeps, *, expect_head: str | None = None) -> list[Finding]:
    """``persona audit verify`` against this service's log: the chain, the MACs, the latest prune and the
    latest signed checkpoint in ``audit.checkpoint_dir``, checked with this server's own verifier key.

    Read-only (the signing key is never created here); the log verifies when no finding is ``bad``."""
    from persona.checkpoints.note import NoteVerifier
    from persona.checkpoints.signed import CheckpointDir
    from persona.checkpoints.signing import load_signer
    from persona.checkpoints.verification import verify_log

    folder = CheckpointDir(deps.settings.checkpoint_path())
    return verify_log(
        deps.audit, checkpoint=folder.latest(), folder=folder.path,
        verifier=lambda: NoteVerifier.from_vkey(load_signer(deps.settings, create=False).vkey),
        expect_head=None if expect_head is None else expect_head.strip().lower(),
    )  # fmt: skip


async def resolve_effect(deps: OperatorDeps, effect_id: str, *, source: str) -> Effect:
    """Look one unresolved effect (``claimed`` or ``unknown``) up at Plisio now, by its order number.

    Found: ``applied``; not found: left as it is until the sweep's time is up. Any other state: Conflict."""
    from persona.effects.ledger import UNRESOLVED

    executor = deps.dispatcher.effects
    effect = await asyncio.to_thread(executor.ledger.get, effect_id)
    if effect.state not in UNRESOLVED:
        raise Conflict(f"effect {effect.id} is {effect.state.value}: there is nothing to resolve")
    return await executor.resolve(effect, final=False, source=source)
