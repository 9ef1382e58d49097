"""Group commit: one writer thread turns whatever is queued into one transaction.

The audit log and the callback inbox both need every caller to wait until its own row is durable,
and both would be bound by one fsync per row if each caller committed alone. Here callers queue
an item with a future; the writer takes everything queued (up to ``max_batch``), writes it in one
go and resolves each future. A failed batch fails each of its callers; the writer lives on.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - the item type
R = TypeVar("R")


class BatchWriter(Generic[I, R]):
    def __init__(
        self, write: Callable[[list[I]], list[R | BaseException]], *, name: str, max_batch: int = 512
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._write, self._name, self._max_batch = write, name, max_batch
        self._queue: queue.SimpleQueue[tuple[I, Future[R]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def put(self, item: I, future: Future[R] | None = None) -> Future[R]:
        """Queue ``item``; its future resolves once the batch it lands in is written."""
        future = future if future is not None else Future()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._queue.put((item, future))
        return future

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._handle(batch)
            if stop:
                return

    def _handle(self, batch: list[tuple[I, Future[R]]]) -> None:
        # A future cancelled by its waiter is still written: the record matters, not who waits for it.
        live = [(item, future if future.set_running_or_notify_cancel() else None) for item, future in batch]
        try:
            outcomes = self._write([item for item, _ in live])
        except BaseException as exc:  # every caller of the batch hears of it
            for _, future in live:
                if future is not None:
                    future.set_exception(exc)
            return
        for (_, future), outcome in zip(live, outcomes, strict=True):
            if future is None:
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


async def all_done(futures: Sequence[Future[Any]]) -> None:
    """Wait until every writer future is done (results not taken) with ONE event-loop wake-up:
    wrapping each future (``asyncio.wrap_future``) would cost a thread-safe call and a wake-up per item."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    left = [len(futures)]
    lock = threading.Lock()

    def release() -> None:
        if not done.done():
            done.set_result(None)

    def landed(_: Future[Any]) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            loop.call_soon_threadsafe(release)

    for future in futures:
        future.add_done_callback(landed)
    await done
