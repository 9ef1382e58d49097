"""What the CLI accepts, checked the same way everywhere: a filter value from its list (the valid ones named in
the error), an id by any unique prefix (an ambiguous one lists its matches)."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta

from persona.errors import ConfigError, NotFound

PREFIX_MATCHES = 10
"""How many matches an ambiguous prefix lists (one more is fetched, to know there are more)."""


def choice(value: str, allowed: Collection[str], flag: str) -> str:
    """``value`` if it is one of ``allowed``; else a :class:`ConfigError` naming the flag and every valid value."""
    if value not in allowed:
        raise ConfigError(f"unknown value {value!r}", key=flag, fix="use one of " + ", ".join(allowed))
    return value


def resolve_id(given: str, starting_with: Callable[[str, int], Sequence[str]], what: str) -> str:
    """The one id that is ``given`` or starts with it. ``starting_with(prefix, limit)`` lists stored ids that
    start with ``prefix``. None: :class:`NotFound`; several: a :class:`ConfigError` that lists them."""
    if not given:
        raise ConfigError(f"an empty {what} id", fix=f"give the {what} id, or its first characters")
    found = list(starting_with(given, PREFIX_MATCHES + 1))
    if given in found:
        return given
    if len(found) == 1:
        return found[0]
    if not found:
        raise NotFound(f"no {what} {given!r} (nor one whose id starts with it)")
    shown = ", ".join(found[:PREFIX_MATCHES]) + (", …" if len(found) > PREFIX_MATCHES else "")
    raise ConfigError(
        f"{given!r} is the start of {'more than ' if len(found) > PREFIX_MATCHES else ''}"
        f"{min(len(found), PREFIX_MATCHES)} {what} ids: {shown}",
        fix="give more characters of the id",
    )


_AGO = re.compile(r"^(\d{1,5})([hd])$")


def moment(value: str, flag: str, now: datetime) -> datetime:
    """A time given as ISO 8601 (no offset: UTC) or as an age (``72h``, ``30d``: that long before ``now``)."""
    ago = _AGO.match(value.strip())
    if ago:
        amount, unit = int(ago.group(1)), ago.group(2)
        return now - (timedelta(hours=amount) if unit == "h" else timedelta(days=amount))
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(
            f"{value!r} is not a time", key=flag, fix="use ISO 8601 (2026-11-24T09:00, UTC unless an offset is"
            " given) or an age such as 72h or 30d"
        ) from None  # fmt: skip
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
