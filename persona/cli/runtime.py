"""Building and closing the runtime for one CLI command."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from persona.app import Runtime

T = TypeVar("T")


def with_runtime(
    work: Callable[[Runtime], Awaitable[T]], *, plisio: Any = None, keys_optional: bool = False
) -> T:
    """Run ``work`` with a runtime built from the CLI's settings, always closing it (``keys_optional``: see
    :meth:`Runtime.build`)."""
    from persona.cli.state import STATE

    async def main() -> T:
        runtime = Runtime.build(STATE.settings(), plisio=plisio, keys_optional=keys_optional)
        try:
            return await work(runtime)
        finally:
            await runtime.aclose()

    import asyncio

    return asyncio.run(main())
