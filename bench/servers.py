"""The servers the adapters talk to, each in its own process so their CPU is never the client's.

``python -m bench.servers openai`` serves the scripted fake OpenAI endpoint (``tests.fakes``) playing
:mod:`bench.scenario`; ``python -m bench.servers sandbox`` serves the Plisio sandbox. Both listen on
127.0.0.1 (a free port, printed as ``@@bench port N``), add ``GET /_bench/stats`` and
``POST /_bench/reset``, and stop when their standard input closes. :class:`ServerProcess` is the
parent's handle on one of them.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "@@bench "


class ServerProcess:
    """A server child process: started, asked for stats, reset, stopped."""

    def __init__(self, role: str, *args: str) -> None:
        self.role = role
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.servers", role, *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        port = None
        for line in self.proc.stdout:
            if line.startswith(PREFIX + "port "):
                port = int(line.split()[-1])
                break
        if port is None:
            self.proc.kill()
            raise RuntimeError(f"the {role} server did not start (exit {self.proc.wait()})")
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self._http = httpx.Client(base_url=self.base_url, timeout=30)
        # Keep draining stdout so a chatty server never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def stats(self) -> dict[str, Any]:
        response = self._http.get("/_bench/stats")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def reset(self) -> None:
        self._http.post("/_bench/reset").raise_for_status()

    def stop(self) -> None:
        self._http.close()
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


# ----------------------------------------------------------------------------- in the child


def _openai_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    from bench import scenario
    from tests.fakes.openai_server import FakeOpenAI, FakeStep

    counts: Counter[str] = Counter()
    errors: list[str] = []

    def script(body: dict[str, Any]) -> FakeStep:
        fake.requests.clear()  # the fake keeps every body; a long run must not
        counts["requests"] += 1
        if body.get("stream"):
            counts["streamed"] += 1
        reply = scenario.next_reply(body)
        if reply.error is not None:
            counts["invalid"] += 1
            errors.append(reply.error)
            del errors[:-5]
            return FakeStep(
                status=400,
                error_body={"error": {"message": f"bench: {reply.error}", "type": "invalid_request_error"}},
            )
        if reply.final:
            counts["completed"] += 1
            return FakeStep(text=reply.text)
        return FakeStep(tool_calls=[{"id": i, "name": n, "arguments": a} for n, a, i in reply.tool_calls])

    fake = FakeOpenAI(script, model=scenario.MODEL)

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse({**counts, "tool_calls_served": fake.tool_calls_served, "errors": errors})

    async def reset(request: Request) -> JSONResponse:
        counts.clear()
        errors.clear()
        fake.tool_calls_served = 0
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/_bench/stats", stats, methods=["GET"]),
            Route("/_bench/reset", reset, methods=["POST"]),
            Mount("/", app=fake.app),
        ]
    )


def _sandbox_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    from tools.plisio.sandbox import Sandbox

    box = Sandbox(seed=7)
    paths: Counter[str] = Counter()
    failed: Counter[str] = Counter()

    def fold() -> None:
        for record in box.requests:
            paths[record.path] += 1
            if record.status is None or record.status >= 400:
                failed[record.path] += 1
        box.requests.clear()

    async def stats(request: Request) -> JSONResponse:
        fold()
        return JSONResponse({"paths": dict(paths), "failed": dict(failed), "total": sum(paths.values())})

    async def reset(request: Request) -> JSONResponse:
        box.reset()  # a fresh shop for every adapter: no one pays for another's invoices
        paths.clear()
        failed.clear()
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/_bench/stats", stats, methods=["GET"]),
            Route("/_bench/reset", reset, methods=["POST"]),
            Mount("/", app=box.app),
        ]
    )


def main(argv: list[str]) -> None:
    from tools.plisio.sandbox import LoopbackServer

    role = argv[0]
    if role == "openai":
        app = _openai_app()
    elif role == "sandbox":
        app = _sandbox_app()
    else:
        raise SystemExit(f"unknown server role {role!r}; use openai or sandbox")
    with LoopbackServer(app, host="127.0.0.1", port=0) as server:
        print(f"{PREFIX}port {server.port}", flush=True)
        sys.stdin.read()  # until the parent closes our stdin (or dies)


if __name__ == "__main__":
    main(sys.argv[1:])
