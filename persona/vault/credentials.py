"""Credentials in use: verify a key with Plisio before storing it, rotate, and hand personas clients.

``connect`` and ``rotate`` call ``GET /shops`` with the candidate key (the in-process sandbox in
sandbox mode, which only accepts its own key; Plisio in live mode) and store nothing the check
did not accept. :class:`PersonaAccess` is the dispatcher's ``access(persona)``: one client per
persona, whose key source decrypts that persona's own grant row on every request attempt, so a
revoke or a grant removal stops the very next request, and no plaintext outlives one call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from sqlalchemy import select

from persona.calls import current_call
from persona.errors import VaultError
from persona.store.vault_tables import connections
from persona.vault.connections import CONNECTION_ROW, Vault
from persona.vault.types import Actor, ConnectionInfo, check_key_text
from tools.errors import PlisioApiError, PlisioError
from tools.plisio.client import KeySource, PlisioClient, static_key
from tools.plisio.models import Shop
from tools.redaction import scrub

log = structlog.get_logger(__name__)

ClientFactory = Callable[[KeySource], PlisioClient]
"""Builds a client on the configured Plisio (or sandbox) with the given key source."""


async def verify_key(key: str, client_for: ClientFactory) -> Shop:
    """``GET /shops`` with ``key``; a refusal or an unreachable Plisio is a VaultError (nothing stored)."""
    client = client_for(static_key(key))
    try:
        return await client.get_shop()
    except PlisioApiError as exc:
        raise VaultError(
            f"Plisio refused the key (GET /shops: {scrub(exc.message)}); nothing was stored"
            " (fix: copy the secret key of the right shop from the Plisio dashboard, API settings)"
        ) from None
    except PlisioError as exc:
        raise VaultError(
            f"the key could not be verified (GET /shops: {scrub(str(exc))}); nothing was stored"
            " (fix: check the network and plisio.base_url, then try again)"
        ) from None
    finally:
        await client.aclose()


async def connect(
    vault: Vault, name: str, key: str, client_for: ClientFactory, actor: Actor
) -> ConnectionInfo:
    """Verify ``key`` with Plisio, then store it encrypted as connection ``name``."""
    key = check_key_text(key)
    await asyncio.to_thread(_name_is_free, vault, name)
    shop = await verify_key(key, client_for)
    log.info("vault_key_verified", connection=name, shop=shop.name)
    return await asyncio.to_thread(vault.add_connection, name, key, actor)


def _name_is_free(vault: Vault, name: str) -> None:
    from persona.errors import Conflict, NotFound

    try:
        vault.connection(name)
    except NotFound:
        return
    raise Conflict(f"a connection named {name!r} exists; rotate it or pick another name")


async def rotate(
    vault: Vault, name: str, key: str, client_for: ClientFactory, actor: Actor, grace_hours: float
) -> ConnectionInfo:
    """New key stored as pending, read back and verified with Plisio, then promoted (grants re-wrapped)."""
    key = check_key_text(key)
    await asyncio.to_thread(vault.stage_pending, name, key)
    try:
        staged = await asyncio.to_thread(vault.pending_key, name, actor)
        await verify_key(staged, client_for)
    except BaseException:
        await asyncio.to_thread(vault.drop_pending, name)
        raise
    return await asyncio.to_thread(vault.promote, name, actor, grace_hours)


async def revoke(vault: Vault, name: str, actor: Actor) -> tuple[ConnectionInfo, int]:
    """Revoke connection ``name`` and its grants (how many is the second value): their ciphertexts are
    deleted, so every persona using it is refused from its very next request."""
    return await asyncio.to_thread(vault.revoke, name, actor)


def _actor() -> Actor:
    ctx = current_call.get()
    if ctx is None:
        return Actor("worker")
    return Actor(ctx.source, ctx.user, ctx.conversation_id)


class PersonaAccess:
    """``access(persona)`` for the dispatcher: the shared client while the vault is empty, else a
    per-persona client that decrypts the persona's grant row on every request (no grant: Forbidden
    from the key source, at the first request)."""

    def __init__(self, vault: Vault, shared: PlisioClient, client_for: ClientFactory | None) -> None:
        self.vault, self.shared, self._client_for = vault, shared, client_for
        self._clients: dict[str, PlisioClient] = {}

    async def __call__(self, persona: str) -> PlisioClient:
        if self.vault.known_empty() or await asyncio.to_thread(self.vault.is_empty):
            return self.shared
        client = self._clients.get(persona)
        if client is None:
            if self._client_for is None:
                raise VaultError("this Plisio connection cannot build per-persona clients")
            client = self._clients[persona] = self._client_for(self._key_source(persona))
        return client

    def _key_source(self, persona: str) -> KeySource:
        vault = self.vault

        async def key() -> str:
            return await asyncio.to_thread(vault.persona_key, persona, _actor())

        return key

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


def service_key(vault: Vault, actor: Actor) -> str:
    """The connection-level key of the oldest active connection, for one use."""
    with vault.store.read("read the vault") as conn:
        found = conn.execute(
            select(connections.c.id)
            .where(connections.c.status == "active")
            .order_by(connections.c.created_at)
        ).first()
    if found is None:
        raise VaultError("every Plisio connection is revoked (fix: persona connect plisio --name NAME)")
    return vault.read_key(found.id, "current", CONNECTION_ROW, actor)


def service_key_source(vault: Vault) -> KeySource:
    """The service's own key (worker re-reads, reconciler, price lookups) in live mode with a vault."""

    async def key() -> str:
        return await asyncio.to_thread(service_key, vault, _actor())

    return key


def callback_secrets(vault: Vault) -> list[str]:
    """Current keys of active connections, then previous keys still inside their grace window.

    A row that cannot be decrypted (tampered: audited) is left out; the others still verify."""
    now = vault.now()
    current: list[str] = []
    previous: list[str] = []
    for info in vault.connections():
        if info.status != "active":
            continue
        slots = ["current"]
        if info.previous_valid_until is not None and info.previous_valid_until > now:
            slots.append("previous")
        for slot in slots:
            try:
                key = vault.read_key(info.id, slot, CONNECTION_ROW, Actor("webhook"))
            except VaultError as exc:
                log.error("vault_callback_key_unusable", connection=info.name, slot=slot, error=str(exc))
                continue
            (current if slot == "current" else previous).append(key)
    return list(dict.fromkeys(current + previous))
