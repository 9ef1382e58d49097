"""``python -m bench.webhook_load PORT PATH SECONDS CONNECTIONS``: post signed callbacks, bounded in time.

A closed-loop load generator on loopback: CONNECTIONS keep-alive HTTP/1.1 connections, each posting
one callback, waiting for the answer, and posting the next, until SECONDS have passed. Bodies are
Plisio form callbacks signed with the sandbox key (``encode_form_callback``), each for a distinct
invoice so none is a duplicate, all made before the clock starts; the client is a few lines of
asyncio streams so it takes as little of the machine's CPU from the server as possible. Prints one
JSON line: answers by status, ack latency percentiles, rate, and the generator's own CPU.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import sys
import time
from collections import Counter
from collections.abc import Iterator

MAX_RATE = 4000  # bodies made per second of the run: more than the server is expected to take


def bodies(count: int) -> list[bytes]:
    """``count`` distinct signed callbacks: a completed invoice of the seeded shop, new txn_id each."""
    from tools.plisio.callbacks import encode_form_callback
    from tools.plisio.sandbox import SANDBOX_API_KEY, Sandbox
    from tools.plisio.sandbox.dto import callback_fields

    box = Sandbox(seed=7)
    op = next(o for o in box.state.operations.values() if o.status == "completed" and o.is_invoice)
    template = {k: str(v) for k, v in callback_fields(op, box.state.shop).items()}
    out = []
    for i in range(count):
        fields = {**template, "txn_id": secrets.token_hex(12), "order_number": str(10**15 + i)}
        out.append(encode_form_callback(fields, SANDBOX_API_KEY))
    return out


async def connection(
    port: int,
    path: str,
    source: Iterator[bytes],
    deadline: float,
    latencies: list[float],
    statuses: Counter[int],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: "
    ).encode()
    try:
        while time.perf_counter() < deadline:
            body = next(source, None)
            if body is None:
                statuses[0] += 1  # ran out of prepared bodies (reported as status 0)
                return
            started = time.perf_counter()
            writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            statuses[int(status_line.split()[1]) if status_line else 0] += 1
    finally:
        writer.close()


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def load(
    port: int, path: str, seconds: float, connections: int, prepared: list[bytes]
) -> dict[str, object]:
    # The bare endpoint stores nothing, so it may see a body twice; the real one gets each once.
    source = itertools.cycle(prepared) if path.startswith("/_bench/") else iter(prepared)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    cpu0 = time.process_time()
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(
        *(connection(port, path, source, deadline, latencies, statuses) for _ in range(connections))
    )
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "statuses": {str(k): v for k, v in statuses.items()},
        "answered": len(latencies),
        "elapsed_s": elapsed,
        "rate": len(latencies) / elapsed,
        "p50_s": percentile(latencies, 0.50),
        "p99_s": percentile(latencies, 0.99),
        "p999_s": percentile(latencies, 0.999),
        "max_s": latencies[-1] if latencies else None,
        "client_cpu_s": time.process_time() - cpu0,
    }


def main(argv: list[str]) -> None:
    port, path, seconds, connections = int(argv[0]), argv[1], float(argv[2]), int(argv[3])
    prepared = bodies(int(MAX_RATE * seconds))
    print(json.dumps(asyncio.run(load(port, path, seconds, connections, prepared))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
