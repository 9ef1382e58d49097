"""Executing one planned step: reads together, writes one at a time, and no write ever cut off.

Reads of the step run in a ``TaskGroup``: if one of them raises (a bug), its sibling reads are
cancelled. Calls with a side effect run strictly one after another, in the model's order, in a task of
their own outside that group, so a failing read never cancels an in-flight write; each write is also
shielded in the dispatcher, so even a cancelled turn sees its write through and recorded. Once the
writes are done (or stopped before the next one), the read's error goes on up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from persona.calls import Dispatched
from persona.loop.planning import Planned

Run = Callable[[Planned], Coroutine[Any, Any, Dispatched]]


async def execute(runnable: Sequence[Planned], is_read: Callable[[str], bool], one: Run) -> list[Dispatched]:
    """Run the step's calls; results in the order: reads, then writes (the caller orders the messages)."""
    if len(runnable) == 1:  # the common step: no tasks to schedule
        return [await one(runnable[0])]
    reads = [p for p in runnable if is_read(p.call.name)]
    writes = [p for p in runnable if not is_read(p.call.name)]
    if not writes:
        return await _reads(reads, one)

    stop = asyncio.Event()

    async def sequential() -> list[Dispatched]:
        done = []
        for planned in writes:
            if stop.is_set():  # a read failed: no further write starts
                break
            done.append(await one(planned))
        return done

    writer = asyncio.ensure_future(sequential())
    try:
        read = await _reads(reads, one)
    except BaseException:
        # A read failed or the turn was cancelled: no further write starts, and the one in flight
        # finishes and is recorded (its result reaches the turn's record); then the error goes on.
        stop.set()
        await asyncio.gather(writer, return_exceptions=True)
        raise
    return [*read, *await writer]


async def _reads(reads: Sequence[Planned], one: Run) -> list[Dispatched]:
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(p)) for p in reads]
    except BaseExceptionGroup as group:  # one failing read is the turn's error, not a group of one
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    return [t.result() for t in tasks]
