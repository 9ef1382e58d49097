"""Grants: which persona may use which Plisio connection, for which tools, within which extra caps.

A grant can only narrow what ``config.yaml`` gives a persona: its tools are a subset of the
persona's scope (``@read`` allowed) and its caps apply on top of the persona's invoice caps (the
stricter wins, in the persona's invoice-policy currency). A persona holds at most one active
grant, so "which key does this persona use" always has one answer. While the vault holds no
connection at all, nothing here applies: the single-user ``PLISIO_API_KEY`` path is unchanged.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import select, update

from persona.clock import as_utc
from persona.errors import Conflict, Forbidden, NotFound, VaultError
from persona.events import VaultEvent
from persona.policy import ExtraCaps, GrantDenial
from persona.settings import Settings, resolve_tools
from persona.store.vault_tables import connections, grants
from persona.vault.connections import Vault
from persona.vault.types import Actor, no_grant


@dataclass(frozen=True)
class GrantInfo:
    id: str
    connection: str
    connection_id: str
    persona: str
    tools: tuple[str, ...]
    max_amount: Decimal | None
    daily_total: Decimal | None
    status: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    revoked_by: str | None

    @property
    def clause(self) -> str:
        return f"grants.{self.connection}"


def expand(entries: Sequence[str]) -> tuple[str, ...]:
    """Tool names with ``@read`` expanded (the same rule as a persona's scope)."""
    from tools.plisio.tools import PLISIO_TOOLS

    names: list[str] = []
    for entry in entries:
        expanded = [t.name for t in PLISIO_TOOLS if t.read_only] if entry == "@read" else [entry]
        names += [n for n in expanded if n not in names]
    return tuple(names)


def _info(row: Any) -> GrantInfo:
    return GrantInfo(
        row.id, row.name, row.connection_id, row.persona, tuple(json.loads(row.tools)), row.max_amount,
        row.daily_total, row.status, as_utc(row.created_at), row.created_by, as_utc(row.revoked_at),
        row.revoked_by,
    )  # fmt: skip


def _cap(value: Decimal | str | None, what: str) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise VaultError(f"{what} must be a number, not {value!r}") from None
    if not amount.is_finite() or amount <= 0:
        raise VaultError(f"{what} must be a positive number")
    return amount


_SELECT = select(grants, connections.c.name).join(connections, connections.c.id == grants.c.connection_id)


class Grants:
    """Add, list and remove grants; answer the dispatcher (scope) and the policy (caps)."""

    def __init__(self, vault: Vault, settings: Settings) -> None:
        self.vault, self.settings = vault, settings

    def list(
        self, *, persona: str | None = None, connection: str | None = None, all: bool = False
    ) -> list[GrantInfo]:
        query = _SELECT.order_by(grants.c.created_at)
        if persona:
            query = query.where(grants.c.persona == persona)
        if connection:
            query = query.where(connections.c.name == connection)
        if not all:
            query = query.where(grants.c.status == "active")
        with self.vault.store.read("read grants") as conn:
            return [_info(r) for r in conn.execute(query)]

    def active(self, persona: str) -> GrantInfo | None:
        found = self.list(persona=persona)
        return found[0] if found else None

    def add(
        self,
        *,
        persona: str,
        connection: str,
        tools: Sequence[str] | None,
        max_amount: Decimal | str | None,
        daily_total: Decimal | str | None,
        actor: Actor,
    ) -> GrantInfo:
        """Grant ``connection`` to ``persona``; the key is re-wrapped for that persona's own row."""
        settings = self.settings.persona(persona)
        scope = resolve_tools(settings)
        chosen = tuple(tools) if tools else settings.tools
        for tool in chosen:
            if tool != "@read" and tool not in scope:
                raise Forbidden(
                    f"{tool} is not among the tools of persona {persona} (personas.{persona}.tools in"
                    f" {self.settings.source}); a grant can only narrow them: {', '.join(scope) or 'none'}"
                )
        caps = _cap(max_amount, "--max-amount"), _cap(daily_total, "--daily-total")
        if any(c is not None for c in caps) and settings.invoice_policy is None:
            raise VaultError(
                f"persona {persona} cannot create invoices, so invoice caps on its grant mean nothing"
            )
        info = self.vault.connection(connection)
        if info.status != "active":
            raise Conflict(f"connection {connection} is revoked; grant an active one")
        held = self.active(persona)
        if held is not None:
            raise Conflict(
                f"persona {persona} already holds a grant on connection {held.connection}; a persona holds one"
                f" (fix: persona grants remove --persona {persona} --connection {held.connection} first)"
            )
        grant_id = f"grant_{secrets.token_hex(6)}"
        row = {
            "id": grant_id, "connection_id": info.id, "persona": persona, "tools": json.dumps(list(chosen)),
            "max_amount": caps[0], "daily_total": caps[1], "status": "active", "created_at": self.vault.now(),
            "created_by": actor.user or actor.source,
        }  # fmt: skip
        self.vault.wrap_for(info.id, persona, lambda conn: conn.execute(grants.insert().values(**row)), actor)
        [added] = [g for g in self.list(persona=persona) if g.id == grant_id]
        self.vault.record(
            VaultEvent.GRANT_ADDED, actor, f"persona {persona} may use connection {connection}",
            grant_id=grant_id, persona=persona, connection=connection, tools=list(chosen),
            max_amount=caps[0], daily_total=caps[1],
        )  # fmt: skip
        return added

    def remove(self, *, persona: str, connection: str, actor: Actor) -> GrantInfo:
        """Revoke the grant; the persona's ciphertext is deleted, so its next call has nothing to use."""
        found = [g for g in self.list(persona=persona, connection=connection)]
        if not found:
            raise NotFound(f"persona {persona} holds no active grant on connection {connection!r}")
        grant = found[0]
        now, by = self.vault.now(), actor.user or actor.source
        self.vault.unwrap_for(
            grant.connection_id, persona,
            lambda conn: conn.execute(update(grants).where(grants.c.id == grant.id).values(
                status="revoked", revoked_at=now, revoked_by=by)),
        )  # fmt: skip
        self.vault.record(
            VaultEvent.GRANT_REMOVED, actor, f"persona {persona} may no longer use connection {connection}",
            grant_id=grant.id, persona=persona, connection=connection,
        )  # fmt: skip
        return grant


async def grant(
    grants: Grants,
    *,
    persona: str,
    connection: str,
    tools: Sequence[str] | None = None,
    max_amount: Decimal | str | None = None,
    daily_total: Decimal | str | None = None,
    actor: Actor,
) -> GrantInfo:
    """Let ``persona`` use ``connection`` (optionally for fewer tools, within tighter caps): the key is
    re-wrapped for that persona's own row (see :meth:`Grants.add`)."""
    return await asyncio.to_thread(
        grants.add, persona=persona, connection=connection, tools=tools, max_amount=max_amount,
        daily_total=daily_total, actor=actor,
    )  # fmt: skip


class GrantGate:
    """The dispatcher's grant check and the policy's extra caps, both read per call (no cache)."""

    def __init__(self, grants: Grants) -> None:
        self.grants = grants

    def _check(self, persona: str, tool: str) -> GrantDenial | None:
        if self.grants.vault.is_empty():
            return None
        grant = self.grants.active(persona)
        if grant is None:
            reason = str(no_grant(persona, self.grants.vault.why_no_grant(persona)))
            return GrantDenial("no_plisio_access", "grants", reason)
        allowed = expand(grant.tools)
        if tool not in allowed:
            return GrantDenial(
                "grant_denied", f"{grant.clause}.tools",
                f"{tool} is outside the grant of persona {persona} on connection {grant.connection};"
                f" the grant allows: {', '.join(allowed) or 'nothing'}",
            )  # fmt: skip
        return None

    async def check(self, persona: str, tool: str) -> GrantDenial | None:
        if self.grants.vault.known_empty():
            return None
        return await asyncio.to_thread(self._check, persona, tool)

    def _caps(self, persona: str) -> ExtraCaps | None:
        if self.grants.vault.is_empty():
            return None
        grant = self.grants.active(persona)
        if grant is None or (grant.max_amount is None and grant.daily_total is None):
            return None
        return ExtraCaps(grant.clause, grant.max_amount, grant.daily_total)

    async def caps(self, persona: str) -> ExtraCaps | None:
        if self.grants.vault.known_empty():
            return None
        return await asyncio.to_thread(self._caps, persona)
