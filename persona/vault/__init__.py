"""The vault: stored Plisio keys, who may use them, and the master key's sealing of both.

Where each verb lives:

- ``connect`` / ``rotate`` / ``revoke`` (:mod:`.credentials`): a key verified with Plisio before it is
  stored, replaced with a grace period for callbacks, or revoked with every grant on it;
- ``grant`` (:mod:`.grants`): a persona may use a connection, for fewer tools and tighter caps;
- :class:`Vault` (:mod:`.connections`): the sealed rows themselves (AES-GCM, one row per persona);
- :class:`PersonaAccess` (:mod:`.credentials`): the dispatcher's client per persona, decrypting on every
  request; :class:`GrantGate` (:mod:`.grants`): the dispatcher's say-so per call;
- :mod:`.types`: names and values without I/O (``Actor``, ``ConnectionInfo``, ``fingerprint``).

The master key itself (:mod:`persona.masterkey`) sits a floor below: the audit log's MAC keys and the
approval seal are sealed with it too, and the vault records to the audit log.

Errors are :class:`persona.errors.VaultError` (fail closed: no plaintext fallback), ``Forbidden`` (no
grant), ``Conflict`` and ``NotFound``, all in the one tree of :mod:`persona.errors`.
"""

from persona.vault.connections import CONNECTION_ROW, Vault
from persona.vault.credentials import (
    ClientFactory,
    PersonaAccess,
    callback_secrets,
    connect,
    revoke,
    rotate,
    service_key,
    service_key_source,
    verify_key,
)
from persona.vault.grants import GrantGate, GrantInfo, Grants, grant
from persona.vault.types import Actor, ConnectionInfo, RekeyReport, check_key_text, fingerprint

__all__ = [
    "CONNECTION_ROW", "Actor", "ClientFactory", "ConnectionInfo", "GrantGate", "GrantInfo", "Grants",
    "PersonaAccess", "RekeyReport", "Vault", "callback_secrets", "check_key_text", "connect", "fingerprint",
    "grant", "revoke", "rotate", "service_key", "service_key_source", "verify_key",
]  # fmt: skip
