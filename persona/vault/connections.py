"""Encrypted Plisio credentials: connect, rotate, revoke, re-key; decrypt on every call, never cache.

A connection's key is sealed once for the connection itself (persona ``*``: the source new grants
are wrapped from, and the key callbacks are verified with) and once per grant, each under
associated data naming (connection, persona, slot, master-key version). A persona therefore only
ever decrypts through its own grant row, and a ciphertext copied to any other row fails AES-GCM
authentication: that is audited as ``credential_tamper_detected`` and the caller gets a
:class:`VaultError` (fail closed). A failure on a row whose master-key version also fails its
key check is a wrong master key instead, reported as such.

Methods are synchronous (callers in async code use ``asyncio.to_thread``). Audit records are
appended only after the transaction that found the problem has ended: on SQLite the audit
writer needs the write lock a still-open transaction would hold.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog
from cryptography.exceptions import InvalidTag
from sqlalchemy import Connection as SqlConnection
from sqlalchemy import delete, func, select, update

from persona.audit import AuditEvent, AuditLog
from persona.audit_keys import MacKeys
from persona.errors import Conflict, NoMasterKey, NotFound, VaultError
from persona.events import VaultEvent
from persona.masterkey import CHECK_PLAINTEXT, Keyring, MasterKeySource, blob_aad, check_aad, seal, unseal
from persona.store.audit_tables import audit_log, audit_mac_keys
from persona.store.engine import Store
from persona.store.vault_tables import connections, credential_blobs, grants, master_key_checks
from persona.vault.types import (
    Actor,
    ConnectionInfo,
    RekeyReport,
    check_key_text,
    connection_info,
    fingerprint,
    no_grant,
)
from tools.redaction import register_secret

log = structlog.get_logger(__name__)

EMPTY_RECHECK_S = 2.0
NOT_EMPTY = -1.0
CONNECTION_ROW = "*"
"""The ``persona`` of a connection's own blobs (new grants are wrapped from it; callbacks verify with it)."""
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class _Tampered(Exception):
    """A blob failed authentication while its master-key version passed its check."""

    def __init__(self, row: Any) -> None:
        super().__init__("tampered credential row")
        self.row = row


class Vault:
    """Connections, their sealed keys and the master-key checks, on a :class:`Store`."""

    def __init__(
        self, store: Store, keys: MasterKeySource, audit: AuditLog, now: Callable[[], datetime]
    ) -> None:
        self.store, self.keys, self.audit, self.now = store, keys, audit, now
        self._empty_checked_at: float | None = None

    # -- reading -----------------------------------------------------------------------------

    def known_empty(self) -> bool:
        """True when the cached answer of :meth:`is_empty` is a fresh "empty": no database read needed,
        so async callers can skip the thread hop (hot path: every tool call while the vault is unused)."""
        checked = self._empty_checked_at
        return checked is not None and checked != NOT_EMPTY and time.monotonic() - checked < EMPTY_RECHECK_S

    def is_empty(self) -> bool:
        """True while no connection was ever stored: then the PLISIO_API_KEY path applies unchanged.

        Asked on every tool call and callback. A stored connection is never deleted (revoked ones stay),
        so "not empty" is final; "empty" is trusted for ``EMPTY_RECHECK_S``, the most a first
        ``persona connect`` in another process takes to be seen here.
        """
        checked = self._empty_checked_at
        if checked == NOT_EMPTY:
            return False
        if checked is not None and time.monotonic() - checked < EMPTY_RECHECK_S:
            return True
        with self.store.read("read the vault") as conn:
            empty = conn.execute(select(connections.c.id).limit(1)).first() is None
        self._empty_checked_at = time.monotonic() if empty else NOT_EMPTY
        return empty

    def connections(self) -> list[ConnectionInfo]:
        with self.store.read("read the vault") as conn:
            return [
                connection_info(r)
                for r in conn.execute(select(connections).order_by(connections.c.created_at))
            ]

    def connection(self, name: str) -> ConnectionInfo:
        with self.store.read("read the vault") as conn:
            row = conn.execute(select(connections).where(connections.c.name == name)).first()
        if row is None:
            raise NotFound(f"no connection named {name!r} (`persona connections list` shows them)")
        return connection_info(row)

    def blob_versions(self) -> dict[int, int]:
        """Master-key version -> how many blobs it seals."""
        with self.store.read("read the vault") as conn:
            rows = conn.execute(
                select(credential_blobs.c.key_version, func.count()).group_by(credential_blobs.c.key_version)
            )
            return {int(v): int(n) for v, n in rows}

    # -- the master key ----------------------------------------------------------------------

    def keyring(self, *, create: bool = False) -> Keyring:
        """The keyring; created (0600 file) only when asked and while no ciphertext exists."""
        keyring = self.keys.load()
        if keyring is not None:
            return keyring
        count = sum(self.blob_versions().values())
        with self.store.read("read the master-key checks") as conn:
            checked = conn.execute(select(func.count()).select_from(master_key_checks)).scalar_one()
            # Keyed audit records, or sealed MAC keys, mean a master key was in use even if its check row is gone.
            checked += conn.execute(select(func.count()).select_from(audit_mac_keys)).scalar_one()
            checked += (
                conn.execute(select(audit_log.c.seq).where(audit_log.c.mac.is_not(None)).limit(1)).first()
                is not None
            )
        if count or checked or not create:
            had = (
                f", and the vault holds {count} encrypted credential(s)"
                if count
                else ", yet a master key was in use here (audit records are keyed with it)"
                if checked
                else ""
            )
            raise NoMasterKey(
                f"there is no master key: neither PERSONA_MASTER_KEY nor {self.keys.path or 'a key file'}{had}"
                " (fix: restore the key file from your backup or set PERSONA_MASTER_KEY; a new key cannot"
                " decrypt what an old one sealed, nor vouch for the records it keyed)"
            )
        keyring = self.keys.create()
        log.warning("vault_master_key_created", path=str(self.keys.path))
        return keyring

    def audit_keys(self, *, create: bool = True) -> MacKeys:
        """The audit log's MAC keys: the current master version's, and every older one still openable.

        Creates the master key (0600 file) on a store that never had one, like the first connection does,
        unless ``create`` is false (a read-only command): then :class:`NoMasterKey`."""
        keyring = self.keyring(create=create)
        with self.store.begin("check the master key") as conn:
            self._ensure_check(conn, keyring, keyring.current)
            sealed = conn.execute(select(audit_mac_keys)).all()
        return MacKeys.of(keyring, sealed)

    def _ensure_check(self, conn: SqlConnection, keyring: Keyring, version: int) -> None:
        row = conn.execute(
            select(master_key_checks).where(master_key_checks.c.key_version == version)
        ).first()
        key = keyring.key(version, self.keys.where)
        if row is None:
            nonce, sealed = seal(key, CHECK_PLAINTEXT, check_aad(version))
            conn.execute(
                master_key_checks.insert().values(
                    key_version=version, nonce=nonce, ciphertext=sealed, created_at=self.now()
                )
            )
        elif not _opens(key, row, check_aad(version)):
            raise self._wrong_key(version)

    def _wrong_key(self, version: int) -> VaultError:
        log.error("vault_wrong_master_key", key_version=version, where=self.keys.where)
        return VaultError(
            f"the master key in {self.keys.where} is not the one the vault was encrypted with"
            f" (version {version} fails its check); nothing was decrypted"
            " (fix: restore the right key file or PERSONA_MASTER_KEY)"
        )

    def _open(self, conn: SqlConnection, keyring: Keyring, row: Any) -> str:
        """Decrypt one blob row; ``_Tampered`` or VaultError (wrong key) on failure."""
        key = keyring.key(row.key_version, self.keys.where)
        aad = blob_aad(row.connection_id, row.persona, row.slot, row.key_version)
        try:
            plaintext = unseal(key, row.nonce, row.ciphertext, aad).decode()
        except InvalidTag:
            check = conn.execute(
                select(master_key_checks).where(master_key_checks.c.key_version == row.key_version)
            ).first()
            if check is None or not _opens(key, check, check_aad(row.key_version)):
                raise self._wrong_key(row.key_version) from None
            raise _Tampered(row) from None
        register_secret(plaintext)
        return plaintext

    def _seal(
        self, keyring: Keyring, connection_id: str, persona: str, slot: str, key: str
    ) -> dict[str, Any]:
        version = keyring.current
        nonce, sealed = seal(
            keyring.key(version, self.keys.where),
            key.encode(),
            blob_aad(connection_id, persona, slot, version),
        )
        return {"nonce": nonce, "ciphertext": sealed, "key_version": version}

    def tampered(self, err: _Tampered, actor: Actor, persona: str | None = None) -> VaultError:
        """Audit a tampered row (outside any transaction) and return the error to raise."""
        row = err.row
        with self.store.read("read the vault") as conn:
            name = conn.execute(
                select(connections.c.name).where(connections.c.id == row.connection_id)
            ).scalar()
        payload = {"connection": name, "connection_id": row.connection_id, "slot": row.slot,
                   "row_persona": row.persona, "key_version": row.key_version, "blob_id": row.id}  # fmt: skip
        log.error(VaultEvent.TAMPER, **payload)
        self.audit.append_sync(
            AuditEvent(
                event=VaultEvent.TAMPER, source=actor.source, user=actor.user, persona=persona,
                conversation_id=actor.conversation_id, decision="denied",
                reason="a stored credential failed authentication: it was altered or copied from another row",
                payload=payload,
            )
        )  # fmt: skip
        return VaultError(
            f"the stored Plisio credential of connection {name!r} ({row.slot}, {row.persona}) failed its integrity"
            " check: it was altered or copied from another row. Nothing was decrypted and the event is audited"
            f" (fix: revoke it with `persona connections revoke {name}` and connect the key again)"
        )

    def record(self, event: str, actor: Actor, reason: str, **payload: Any) -> None:
        self.audit.append_sync(
            AuditEvent(event=event, source=actor.source, user=actor.user, reason=reason, payload=payload)
        )

    # -- connections -------------------------------------------------------------------------

    def add_connection(self, name: str, key: str, actor: Actor) -> ConnectionInfo:
        """Store a key already verified with Plisio, sealed for the connection (persona ``*``)."""
        key = check_key_text(key)
        if not _NAME.fullmatch(name):
            raise VaultError(
                f"connection names are lowercase letters, digits, '.', '-' and '_'; not {name!r}"
            )
        keyring = self.keyring(create=True)
        now, connection_id = self.now(), f"conn_{secrets.token_hex(6)}"
        with self.store.begin("store a connection") as conn:
            if conn.execute(select(connections.c.id).where(connections.c.name == name)).first() is not None:
                raise Conflict(f"a connection named {name!r} exists; rotate it or pick another name")
            self._ensure_check(conn, keyring, keyring.current)
            conn.execute(
                connections.insert().values(
                    id=connection_id, name=name, provider="plisio", status="active", fingerprint=fingerprint(key),
                    created_at=now, created_by=actor.user or actor.source,
                )
            )  # fmt: skip
            conn.execute(
                credential_blobs.insert().values(
                    connection_id=connection_id, slot="current", persona=CONNECTION_ROW, created_at=now,
                    **self._seal(keyring, connection_id, CONNECTION_ROW, "current", key),
                )
            )  # fmt: skip
        self._empty_checked_at = NOT_EMPTY
        info = self.connection(name)
        self.record(VaultEvent.CONNECTION_CREATED, actor, f"Plisio key stored as connection {name}",
                    connection=name, connection_id=connection_id, fingerprint=info.fingerprint)  # fmt: skip
        return info

    def stage_pending(self, name: str, key: str) -> ConnectionInfo:
        """First step of a rotation: the new key is stored (sealed) as ``pending``, not used yet."""
        key = check_key_text(key)
        info = self._active(name)
        keyring = self.keyring()
        with self.store.begin("stage a new key") as conn:
            self._ensure_check(conn, keyring, keyring.current)
            conn.execute(delete(credential_blobs).where(*_slot(info.id, "pending")))
            conn.execute(
                credential_blobs.insert().values(
                    connection_id=info.id, slot="pending", persona=CONNECTION_ROW, created_at=self.now(),
                    **self._seal(keyring, info.id, CONNECTION_ROW, "pending", key),
                )
            )  # fmt: skip
        return info

    def pending_key(self, name: str, actor: Actor) -> str:
        return self.read_key(self._active(name).id, "pending", CONNECTION_ROW, actor)

    def drop_pending(self, name: str) -> None:
        info = self.connection(name)
        with self.store.begin("drop a pending key") as conn:
            conn.execute(delete(credential_blobs).where(*_slot(info.id, "pending")))

    def promote(self, name: str, actor: Actor, grace_hours: float) -> ConnectionInfo:
        """pending -> current, current -> previous (for callbacks, ``grace_hours``), grants re-wrapped."""
        info = self._active(name)
        keyring = self.keyring()
        now = self.now()
        try:
            with self.store.begin("promote a rotated key") as conn:
                rows = {(r.slot, r.persona): r for r in conn.execute(select(credential_blobs).where(
                    credential_blobs.c.connection_id == info.id))}  # fmt: skip
                if ("pending", CONNECTION_ROW) not in rows:
                    raise Conflict(f"connection {name} has no pending key to promote")
                new_key = self._open(conn, keyring, rows["pending", CONNECTION_ROW])
                old_key = self._open(conn, keyring, rows["current", CONNECTION_ROW])
                self._ensure_check(conn, keyring, keyring.current)
                conn.execute(delete(credential_blobs).where(credential_blobs.c.connection_id == info.id,
                                                            credential_blobs.c.slot.in_(("pending", "previous"))))  # fmt: skip
                personas = [p for (slot, p) in rows if slot == "current"]
                for persona in personas:
                    conn.execute(update(credential_blobs).where(*_slot(info.id, "current", persona)).values(
                        created_at=now, **self._seal(keyring, info.id, persona, "current", new_key)))  # fmt: skip
                conn.execute(
                    credential_blobs.insert().values(
                        connection_id=info.id, slot="previous", persona=CONNECTION_ROW, created_at=now,
                        **self._seal(keyring, info.id, CONNECTION_ROW, "previous", old_key),
                    )
                )  # fmt: skip
                valid_until = now + timedelta(hours=grace_hours)
                conn.execute(update(connections).where(connections.c.id == info.id).values(
                    fingerprint=fingerprint(new_key), rotated_at=now, previous_valid_until=valid_until))  # fmt: skip
        except _Tampered as err:
            raise self.tampered(err, actor) from None
        self.record(VaultEvent.CONNECTION_ROTATED, actor, f"connection {name} now uses a new Plisio key",
                    connection=name, connection_id=info.id, old_fingerprint=info.fingerprint,
                    new_fingerprint=fingerprint(new_key), grants_rewrapped=len(personas) - 1,
                    previous_valid_until=valid_until.isoformat())  # fmt: skip
        return self.connection(name)

    def revoke(self, name: str, actor: Actor) -> tuple[ConnectionInfo, int]:
        """Revoke a connection and its grants; its ciphertexts are deleted (nothing left to decrypt)."""
        info = self.connection(name)
        if info.status == "revoked":
            raise Conflict(f"connection {name} is already revoked")
        now, by = self.now(), actor.user or actor.source
        with self.store.begin("revoke a connection") as conn:
            conn.execute(update(connections).where(connections.c.id == info.id).values(
                status="revoked", revoked_at=now, previous_valid_until=None))  # fmt: skip
            revoked = conn.execute(update(grants).where(grants.c.connection_id == info.id, grants.c.status == "active")
                                   .values(status="revoked", revoked_at=now, revoked_by=by)).rowcount  # fmt: skip
            conn.execute(delete(credential_blobs).where(credential_blobs.c.connection_id == info.id))
        self.record(VaultEvent.CONNECTION_REVOKED, actor, f"connection {name} revoked with {revoked} grant(s)",
                    connection=name, connection_id=info.id, fingerprint=info.fingerprint, grants_revoked=revoked)  # fmt: skip
        return self.connection(name), revoked

    # -- grant rows -------------------------------------------------------------------------

    def wrap_for(
        self, connection_id: str, persona: str, write: Callable[[SqlConnection], Any], actor: Actor
    ) -> None:
        """In one transaction: ``write`` (the grant row) and the key re-wrapped for ``persona``'s own row."""
        keyring = self.keyring()
        try:
            with self.store.begin("wrap a key for a grant") as conn:
                source = conn.execute(
                    select(credential_blobs).where(*_slot(connection_id, "current"))
                ).first()
                if source is None:
                    raise VaultError(f"connection {connection_id} has no stored key (was it revoked?)")
                key = self._open(conn, keyring, source)
                self._ensure_check(conn, keyring, keyring.current)
                write(conn)
                conn.execute(delete(credential_blobs).where(credential_blobs.c.connection_id == connection_id,
                                                            credential_blobs.c.persona == persona))  # fmt: skip
                conn.execute(
                    credential_blobs.insert().values(
                        connection_id=connection_id, slot="current", persona=persona, created_at=self.now(),
                        **self._seal(keyring, connection_id, persona, "current", key),
                    )
                )  # fmt: skip
        except _Tampered as err:
            raise self.tampered(err, actor) from None

    def unwrap_for(self, connection_id: str, persona: str, write: Callable[[SqlConnection], Any]) -> None:
        """In one transaction: ``write`` (revoking the grant) and ``persona``'s ciphertext deleted."""
        with self.store.begin("remove a grant's key") as conn:
            write(conn)
            conn.execute(delete(credential_blobs).where(credential_blobs.c.connection_id == connection_id,
                                                        credential_blobs.c.persona == persona))  # fmt: skip

    def _active(self, name: str) -> ConnectionInfo:
        info = self.connection(name)
        if info.status != "active":
            raise Conflict(f"connection {name} is revoked; connect the key again under a new name")
        return info

    # -- master-key rotation -----------------------------------------------------------------

    def rekey(self, actor: Actor) -> RekeyReport:
        """Re-wrap every blob under a new master-key version in one transaction, then drop unused versions."""
        old = self.keyring()
        before = self.blob_versions()
        if self.keys.from_env:
            new = old
            if set(before) <= {new.current}:
                raise Conflict(
                    f"every credential is already sealed with master key version {new.current}, the current one in"
                    " PERSONA_MASTER_KEY (fix: add a new version to that keyring and make it current first)"
                )
        else:
            new = old.with_new_version()
            self.keys.save(new)  # old versions kept until every row is re-wrapped
        count = 0
        try:
            with self.store.begin("re-wrap the vault") as conn:
                self._ensure_check(conn, new, new.current)
                # The audit MAC keys of every version known so far, sealed under the new one: records keyed
                # before the rotation keep verifying once the old master versions are dropped.
                macs = MacKeys.of(new, conn.execute(select(audit_mac_keys)).all())
                # Rows it cannot open stay as they are: a restored master version may open them later.
                conn.execute(
                    delete(audit_mac_keys).where(audit_mac_keys.c.key_version.not_in(list(macs.unavailable)))
                )
                if rows := macs.sealed_rows(new):
                    conn.execute(audit_mac_keys.insert(), rows)
                for row in conn.execute(select(credential_blobs)).all():
                    plaintext = self._open(conn, new, row)
                    conn.execute(update(credential_blobs).where(credential_blobs.c.id == row.id).values(
                        **self._seal(new, row.connection_id, row.persona, row.slot, plaintext)))  # fmt: skip
                    count += 1
        except _Tampered as err:
            raise self.tampered(err, actor) from None
        dropped: tuple[int, ...] = ()
        if not self.keys.from_env:
            dropped = tuple(sorted(v for v in new.keys if v != new.current))
            self.keys.save(new.keep({new.current}))
            with self.store.begin("drop old master-key checks") as conn:
                conn.execute(delete(master_key_checks).where(master_key_checks.c.key_version.in_(dropped)))
        self.audit.use_keys(self.audit_keys())  # records from now on are keyed with the new version
        report = RekeyReport(tuple(sorted(before)), new.current, count, dropped)
        self.record(VaultEvent.MASTER_KEY_ROTATED, actor, f"{count} credential row(s) re-wrapped",
                    from_versions=list(report.from_versions), to_version=new.current, rows=count,
                    dropped_versions=list(dropped), where=self.keys.where)  # fmt: skip
        return report

    # -- per-call access ---------------------------------------------------------------------

    def read_key(self, connection_id: str, slot: str, persona: str, actor: Actor) -> str:
        """Decrypt one blob for one use; a tampered row is audited and refused."""
        keyring = self.keyring()
        try:
            with self.store.read("read a credential") as conn:
                row = conn.execute(
                    select(credential_blobs).where(*_slot(connection_id, slot, persona))
                ).first()
                if row is None:
                    raise VaultError(f"no {slot} credential row for {persona} on connection {connection_id}")
                return self._open(conn, keyring, row)
        except _Tampered as err:
            raise self.tampered(err, actor, None if persona == CONNECTION_ROW else persona) from None

    def persona_key(self, persona: str, actor: Actor) -> str:
        """The key a persona may use for ONE request, decrypted from its own grant row (never cached)."""
        with self.store.read("read a grant") as conn:
            found = conn.execute(
                select(grants.c.connection_id, connections.c.name, connections.c.status)
                .join(connections, connections.c.id == grants.c.connection_id)
                .where(grants.c.persona == persona, grants.c.status == "active")
            ).first()
        if found is None or found.status != "active":
            raise no_grant(persona, self.why_no_grant(persona))
        return self.read_key(found.connection_id, "current", persona, actor)

    def why_no_grant(self, persona: str) -> str:
        with self.store.read("read grants") as conn:
            last = conn.execute(
                select(grants.c.status, connections.c.name, connections.c.status.label("conn_status"))
                .join(connections, connections.c.id == grants.c.connection_id)
                .where(grants.c.persona == persona)
                .order_by(grants.c.created_at.desc())
                .limit(1)
            ).first()
        if last is None:
            return "it was never granted a connection"
        if last.conn_status == "revoked":
            return f"connection {last.name} was revoked"
        return f"its grant on connection {last.name} was removed"


def _slot(connection_id: str, slot: str, persona: str = CONNECTION_ROW) -> tuple[Any, ...]:
    c = credential_blobs.c
    return c.connection_id == connection_id, c.slot == slot, c.persona == persona


def _opens(key: bytes, row: Any, aad: bytes) -> bool:
    try:
        return unseal(key, row.nonce, row.ciphertext, aad) == CHECK_PLAINTEXT
    except InvalidTag:
        return False
