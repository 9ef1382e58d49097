"""Runs one adapter in a fresh interpreter and measures it: ``python -m bench.adapters._harness NAME CONFIG``.

Only the standard library is imported before the adapter module, so the adapter's import time is its
own. Then: build, warm up (and check the answer), report ``@@bench warm`` and wait for the parent to
say ``go`` on stdin (it first checks, on the servers, that the warm-up conversations really happened),
then the sequential phase (wall time per conversation, process CPU for the phase), the concurrent
phase (a fixed number of conversations, ``in_flight`` at a time), close, and ``@@bench result``.

Process CPU (``time.process_time``) covers every thread of this process (an audit writer, a thread
pool) and nothing else: the fake model and the sandbox run in other processes.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import resource
import sys
import time
import traceback
from typing import Any, Protocol

PREFIX = "@@bench "


class Conversation(Protocol):
    async def run(self) -> str: ...

    async def aclose(self) -> None: ...


def emit(kind: str, payload: dict[str, Any]) -> None:
    sys.stdout.write(f"{PREFIX}{kind} {json.dumps(payload)}\n")
    sys.stdout.flush()


def peak_rss_mb() -> float:
    """Peak RSS of this process image.

    ``VmHWM`` rather than ``ru_maxrss``: Linux carries ``ru_maxrss`` across ``execve``, so a child
    forked from a big parent would report the parent's peak. ``VmHWM`` starts afresh with the new image.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _check(text: str, cfg: dict[str, Any]) -> None:
    if text.strip() != cfg["final_text"].strip():
        raise RuntimeError(f"the conversation did not end with the scripted answer: {text[:200]!r}")


async def drive(module: Any, cfg: dict[str, Any], import_s: float) -> dict[str, Any]:
    rss_import = peak_rss_mb()
    t0 = time.perf_counter()
    conv: Conversation = await module.build(cfg)
    build_s = time.perf_counter() - t0
    for _ in range(cfg["warmup"]):
        _check(await conv.run(), cfg)
    rss_warm = peak_rss_mb()
    emit("warm", {"conversations": cfg["warmup"]})
    answer = await asyncio.to_thread(sys.stdin.readline)
    if answer.strip() != "go":
        await conv.aclose()
        raise SystemExit(3)

    walls: list[float] = []
    times0 = os.times()
    cpu0 = time.process_time()
    for _ in range(cfg["sequential"]):
        started = time.perf_counter()
        text = await conv.run()
        walls.append(time.perf_counter() - started)
        _check(text, cfg)
    seq_cpu = time.process_time() - cpu0
    times1 = os.times()
    rss_seq = peak_rss_mb()

    gate = asyncio.Semaphore(cfg["in_flight"])

    async def one() -> None:
        async with gate:
            _check(await conv.run(), cfg)

    cpu0, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(cfg["concurrent"])))
    conc_wall = time.perf_counter() - started
    conc_cpu = time.process_time() - cpu0

    extra: dict[str, Any] = {}
    finish = getattr(conv, "finish", None)
    if finish is not None:
        extra = await finish()
    await conv.aclose()
    return {
        "import_s": import_s,
        "build_s": build_s,
        "walls": walls,
        "seq_cpu_s": seq_cpu,
        "seq_sys_s": times1.system - times0.system,
        "conc_wall_s": conc_wall,
        "conc_cpu_s": conc_cpu,
        "conversations": cfg["warmup"] + cfg["sequential"] + cfg["concurrent"],
        "peak_rss_mb": peak_rss_mb(),
        "rss_phases_mb": {"import": rss_import, "warm": rss_warm, "sequential": rss_seq},
        "extra": extra,
    }


def main(argv: list[str]) -> None:
    name, config_path = argv[0], argv[1]
    started = time.perf_counter()
    module = importlib.import_module(f"bench.adapters.{name}")
    import_s = time.perf_counter() - started
    with open(config_path) as fh:
        cfg = json.load(fh)
    try:
        result = asyncio.run(drive(module, cfg, import_s))
    except SystemExit:
        raise
    except BaseException as exc:
        emit(
            "error", {"error": f"{type(exc).__name__}: {exc}"[:2000], "trace": traceback.format_exc()[-4000:]}
        )
        raise SystemExit(1) from None
    emit("result", result)


if __name__ == "__main__":
    main(sys.argv[1:])
