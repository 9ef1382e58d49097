"""Every exception the ``persona`` package raises on purpose.

User mistakes (a broken config file, an unknown persona, a missing key) are errors with
a message that says what, where and how to fix; the CLI prints that message, never a
stack trace. Bugs are not in this tree: they raise whatever they raise.

    PersonaError
    ├── ConfigError              config.yaml / environment is unusable (file, key, fix)
    ├── NotConfigured            a feature needs settings that are absent (e.g. no LLM endpoint)
    ├── NotFound                 a named thing does not exist (persona, approval, draft, record)
    ├── Unauthorized             no valid API token (HTTP 401; says nothing that helps guessing)
    ├── Forbidden                the caller is not allowed to do this (role, scope, grant)
    ├── Conflict                 the thing is not in a state that allows this (already approved)
    │   └── EffectUnresolved     a side effect was sent and its outcome is not known yet: retry later
    ├── StoreError               the database failed
    │   ├── StoreUnavailable     the database cannot be reached or written right now
    │   └── SchemaMismatch       the store's schema is not this release's (behind: `persona db upgrade`)
    ├── AuditIntegrityError      the audit chain does not verify (names the first bad record)
    ├── ModelError               the LLM endpoint failed after bounded retries
    │   └── ScriptExhausted      a scripted model was called past the end of its script
    ├── ScriptUnfinished         a scripted model's steps were left unused
    ├── VaultError               credentials cannot be decrypted / stored (fails closed)
    │   └── NoMasterKey          there is no master key here (and one may not be created)
    └── ScenarioError            a replay scenario file is invalid (file, line, field)
"""

from __future__ import annotations


class PersonaError(Exception):
    """Root of the persona package's errors. ``str(err)`` is the user-facing message."""

    exit_code = 1


class ConfigError(PersonaError):
    """The configuration cannot be used. Names the file, the key and the fix."""

    exit_code = 2

    def __init__(
        self, message: str, *, path: str = "", key: str = "", line: int | None = None, fix: str = ""
    ):
        self.path, self.key, self.line, self.fix, self.detail = path, key, line, fix, message
        where = path + (f":{line}" if line else "")
        parts = [f"{where}: " if where else "", f"{key}: " if key else "", message]
        if fix:
            parts.append(f" (fix: {fix})")
        super().__init__("".join(parts))


class NotConfigured(PersonaError):
    exit_code = 2


class NotFound(PersonaError):
    pass


class Unauthorized(PersonaError):
    exit_code = 3


class Forbidden(PersonaError):
    exit_code = 3


class Conflict(PersonaError):
    pass


class EffectUnresolved(Conflict):
    """Work that needs a side effect's result (a recovery draft needs its fresh link) waits until the
    effect is resolved; the worker retries it with back-off meanwhile."""


class StoreError(PersonaError):
    pass


class StoreUnavailable(StoreError):
    pass


class SchemaMismatch(StoreError):
    """The store's schema revision is behind this release (an upgrade is due) or ahead of it (a newer release
    wrote it): nothing runs on it until an operator acts."""

    exit_code = 2


class AuditIntegrityError(PersonaError):
    def __init__(self, message: str, *, seq: int | None = None):
        super().__init__(message)
        self.seq = seq


class ModelError(PersonaError):
    pass


class ScriptExhausted(ModelError):
    """A scripted model was asked for more steps than it has."""


class ScriptUnfinished(PersonaError):
    """A scripted model ended with steps nobody asked for."""


class VaultError(PersonaError):
    pass


class NoMasterKey(VaultError):
    """Neither ``PERSONA_MASTER_KEY`` nor the key file is there, and none may be made now."""


class ScenarioError(PersonaError):
    exit_code = 2
