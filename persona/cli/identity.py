"""Who a CLI command acts as: every ``--by`` / ``--user`` goes through :func:`resolve_actor`.

The CLI has no login: whoever can run it with the config and the database is trusted as the user they name.
What it checks is that the name is a user: once any user exists, the value must be the email of an existing,
enabled one (normalised by :func:`persona.users.normalise_email`, so ``Bob@Example.com`` is
``bob@example.com``). Before any user exists, the CLI is the single local operator: the value is accepted
(still normalised, still an email) and the command says so once on stderr.
"""

from __future__ import annotations

from typing import Any

from persona.errors import ConfigError, PersonaError

NO_USERS_NOTICE = (
    "no users yet: the CLI is the single local operator; `persona users add` makes --by and --user checked"
)

_told = False


def resolve_actor(source: Any, value: str, option: str = "--by") -> str:
    """The normalised email ``value`` names, checked against the users (see the module docstring).

    ``source`` is a :class:`~persona.store.engine.Store` or anything with one as ``.store`` (the runtime,
    the vault context). Bad input is a :class:`ConfigError` naming ``option`` (exit status 2)."""
    from persona.store.engine import Store
    from persona.users import any_users, find_user, normalise_email

    store: Store = source if isinstance(source, Store) else source.store
    try:
        email = normalise_email(value)
    except PersonaError as exc:
        raise ConfigError(
            str(exc), key=option, fix="name a user by their email, e.g. alice@example.com"
        ) from None
    user = find_user(store, email)
    if user is None:
        if any_users(store):
            raise ConfigError(
                f"no user {email!r}",
                key=option,
                fix="`persona users list` shows them; `persona users add` adds one",
            )
        _notice()
        return email
    if user.status != "active":
        raise ConfigError(f"user {user.email} is disabled", key=option)
    return user.email


def _notice() -> None:
    global _told
    if _told:
        return
    _told = True
    import sys

    print(NO_USERS_NOTICE, file=sys.stderr, flush=True)
