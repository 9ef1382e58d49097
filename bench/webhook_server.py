"""``python -m bench.webhook_server CONFIG``: ``persona serve``'s app, plus a bare endpoint for the ceiling.

Built as ``persona serve`` builds it (``Runtime.build`` from the config file, ``create_app`` with the
worker in process, ``settle_heap()``, uvicorn with ``lifespan="on"``, no access log), on 127.0.0.1 and a free port
(printed as ``@@bench port N``). The worker's schedules (reconciler, churn scan) are off so every inbox
row is one of the benchmark's callbacks. The bench adds ``POST /_bench/bare`` to its own copy of the
app: it reads the body and answers 200, with no verification and no storage: the same server's
ceiling. Stops when stdin closes, then prints its CPU time as ``@@bench exit {...}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time

PREFIX = "@@bench "


async def serve(config_path: str) -> None:
    import uvicorn
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    from persona import log
    from persona.app import Runtime, settle_heap
    from persona.config import load_settings
    from persona.server import create_app
    from persona.worker import Worker

    settings = load_settings(config_path, env={})
    log.configure(settings.log.level, settings.log.format)
    rt = Runtime.build(settings)
    try:
        app = create_app(
            rt, start_worker=True, worker=lambda r: Worker(r.worker, churn=None, schedules=False)
        )

        async def bare(request: Request) -> Response:
            await request.body()
            return JSONResponse({"ok": True})

        app.add_route("/_bench/bare", bare, methods=["POST"], include_in_schema=False)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, lifespan="on", log_level=settings.log.level,
            access_log=False, server_header=False,
        )  # fmt: skip
        server = uvicorn.Server(config)
        settle_heap()  # as `persona serve` does before serving

        def stop_on_eof() -> None:
            sys.stdin.read()
            server.should_exit = True

        threading.Thread(target=stop_on_eof, daemon=True).start()

        async def announce() -> None:
            while not server.started:
                await asyncio.sleep(0.01)
            port = server.servers[0].sockets[0].getsockname()[1]
            print(f"{PREFIX}port {port}", flush=True)

        task = asyncio.create_task(announce())
        await server.serve()
        task.cancel()
    finally:
        await rt.aclose()


def main(argv: list[str]) -> None:
    asyncio.run(serve(argv[0]))
    print(f"{PREFIX}exit {json.dumps({'cpu_s': time.process_time()})}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
