"""Serve an ASGI app on a loopback port: in a background thread for tests, blocking for the CLI.

``LoopbackServer`` is generic (any ASGI app: the sandbox, a callback receiver, a fake LLM) so that
end-to-end tests exercise real sockets, real HTTP parsing and real connection drops.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from types import TracebackType
from typing import Final

import anyio.to_thread
import uvicorn
from starlette.types import ASGIApp

from tools.plisio.sandbox.faults import ConnectionDropped
from tools.plisio.sandbox.sandbox import Sandbox

START_TIMEOUT_S: Final = 10.0
STOP_TIMEOUT_S: Final = 5.0


class _HideDeliberateDrops(logging.Filter):
    """uvicorn logs an app exception as an error; a ``drop_after_commit`` fault is not one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ConnectionDropped))


_KEY_IN_QUERY: Final = re.compile(r"((?:^|[?&])api_key=)[^&\s]*")


class _ScrubAccessLog(logging.Filter):
    """uvicorn's access line carries the full path; Plisio keys travel in the query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _KEY_IN_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args
            )
        return True


_DROP_FILTER: Final = _HideDeliberateDrops()
_ACCESS_FILTER: Final = _ScrubAccessLog()


def _install_log_filters() -> None:
    for name, log_filter in (("uvicorn.error", _DROP_FILTER), ("uvicorn.access", _ACCESS_FILTER)):
        logger = logging.getLogger(name)
        if log_filter not in logger.filters:
            logger.addFilter(log_filter)


class LoopbackServer:
    """uvicorn in a daemon thread; ``with LoopbackServer(app) as srv: srv.base_url`` ..."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        lifespan: str = "off",
    ) -> None:
        self.app = app
        self.lifespan = lifespan
        """``"on"`` runs the app's startup/shutdown (e.g. the in-process worker of ``persona serve``)."""
        self.host = host
        self.port = port
        self.log_level = log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the server is not running; use it as a context manager")
        return f"http://{self.host}:{self.port}"

    def start(self) -> LoopbackServer:
        """Start serving and wait until the socket accepts connections."""
        _install_log_filters()
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_level=self.log_level,
            lifespan=self.lifespan,  # type: ignore[arg-type]
            access_log=False,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=f"loopback-{self.host}:{self.port}", daemon=True)
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive():
                self._server = None
                raise RuntimeError(f"uvicorn could not start on {self.host}:{self.port}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"uvicorn did not start within {START_TIMEOUT_S}s")
            time.sleep(0.005)
        self.port = server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit, wait; force it if connections linger."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(STOP_TIMEOUT_S)
        if thread.is_alive():
            server.force_exit = True
            thread.join(STOP_TIMEOUT_S)
        self._server = self._thread = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> LoopbackServer:
        return await anyio.to_thread.run_sync(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await anyio.to_thread.run_sync(self.stop)


def serve(sock: socket.socket, *, sandbox: Sandbox, log_level: str = "warning") -> None:
    """Blocking: serve the sandbox on a bound socket until Ctrl-C (``persona sandbox --port N``); uvicorn logs
    at ``log_level`` (the caller's ``log.level``: its access lines only at debug)."""
    _install_log_filters()
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        sandbox.app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=log_level == "debug",
        lifespan="off",
    )
    uvicorn.Server(config).run(sockets=[sock])
