"""``persona serve``, ``persona worker`` and ``persona inbox``: the long-running side of the service.

``serve`` runs the HTTP app (callbacks, chat, operator endpoints) and, unless told otherwise,
the worker in the same process; ``worker`` runs only the worker, for deployments that keep
them apart or run several. ``inbox`` shows what arrived and re-queues what failed.
"""

from __future__ import annotations

from typing import Annotated

import typer

from persona.cli.output import AsJson, AsJsonl

inbox_app = typer.Typer(
    rich_markup_mode=None,
    help="The Plisio callback inbox: list rows, retry failed ones.",
    no_args_is_help=True,
)

Opt = typer.Option
_STATES = ("pending", "processing", "done", "failed", "poison", "all")


def serve(
    host: Annotated[str | None, Opt("--host", help="Interface (default: server.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, Opt("--port", "-p", help="TCP port (default: server.port).")] = None,
    worker: Annotated[
        bool | None,
        Opt(
            "--worker/--no-worker", help="Run the worker in this process (default: server.in_process_worker)."
        ),
    ] = None,
) -> None:
    """Serve the review console at /, the HTTP API under /v1 (docs at /docs), POST /webhooks/plisio, /healthz."""
    import asyncio

    import uvicorn
    from rich.console import Console

    from persona.app import Runtime, settle_heap
    from persona.cli.state import STATE
    from persona.server import create_app

    settings = STATE.settings()
    bind_host = host or settings.server.host
    bind_port = port or settings.server.port
    in_process = settings.server.in_process_worker if worker is None else worker

    async def main() -> None:
        rt = Runtime.build(settings)
        try:
            app = create_app(rt, start_worker=in_process)
            config = uvicorn.Config(
                app, host=bind_host, port=bind_port, lifespan="on", log_level=settings.log.level,
                access_log=settings.log.level == "debug", server_header=False,
            )  # fmt: skip
            Console(stderr=True).print(
                f"persona on http://{bind_host}:{bind_port} (review console: /; API docs: /docs; callbacks: "
                f"/webhooks/plisio; worker: {'in process' if in_process else 'separate'}). Ctrl-C stops it.",
                highlight=False,
                soft_wrap=True,
            )
            settle_heap()
            await uvicorn.Server(config).serve()
        finally:
            await rt.aclose()

    asyncio.run(main())


def worker(
    once: Annotated[bool, Opt("--once", help="Process what is due, run due schedules, then exit.")] = False,
    schedules: Annotated[
        bool,
        Opt(
            "--schedules/--no-schedules",
            help="Also run the reconciler and the churn scan on their schedules.",
        ),
    ] = True,
) -> None:
    """Process the callback inbox and run the schedules until stopped (SIGINT/SIGTERM)."""
    import asyncio
    import signal

    from persona.app import Runtime, settle_heap
    from persona.cli.runtime import with_runtime
    from persona.worker import Worker

    async def work(rt: Runtime) -> None:
        runner = Worker(rt.worker, schedules=schedules)
        if once:
            await runner.scheduler.tick()
            done = await runner.drain()
            typer.echo(f"processed {len(done)} inbox row(s)")
            return
        settle_heap()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        typer.echo(f"worker {runner.owner} running; Ctrl-C stops it", err=True)
        await runner.run(stop)

    with_runtime(work)


@inbox_app.command("list")
def list_rows(
    state: Annotated[str, Opt("--state", help="pending, processing, done, failed, poison or all.")] = "all",
    limit: Annotated[int, Opt("--limit", help="At most this many rows (newest first).")] = 50,
    as_json: AsJson = False,
    as_jsonl: AsJsonl = False,
) -> None:
    """List inbox rows, newest first (``--state poison`` shows signed callbacks we could not use)."""
    from persona.app import Runtime
    from persona.cli.options import choice
    from persona.cli.output import emit_list
    from persona.cli.runtime import with_runtime
    from persona.inbox import Inbox, InboxRow

    choice(state, _STATES, "--state")

    async def work(rt: Runtime) -> list[InboxRow]:
        return Inbox(rt.store).list(state, limit=limit)

    rows = with_runtime(work)
    emit_list(
        f"{len(rows)} inbox row(s) · {state}",
        ("id", "state", "source", "txn_id", "status", "plisio", "action", "tries", "received", "error"),
        [
            (
                r.id,
                r.state,
                r.source,
                r.txn_id,
                r.status,
                r.plisio_status,
                r.action,
                r.attempts,
                r.received_at,
                " ".join((r.error or "").split()),
            )
            for r in rows
        ],
        rows,
        as_json=as_json,
        as_jsonl=as_jsonl,
    )


@inbox_app.command("retry")
def retry(
    row_id: Annotated[int, typer.Argument(help="The inbox row id, exactly (see `persona inbox list`).")],
) -> None:
    """Queue a failed (or poison) row again, with its attempts reset."""
    from persona.app import Runtime
    from persona.cli.runtime import with_runtime
    from persona.events import Source
    from persona.operations import retry_inbox_row

    async def work(rt: Runtime) -> None:
        row = await retry_inbox_row(
            rt.operator, row_id, by=None, source=Source.CLI
        )  # a number: never a prefix
        typer.echo(f"inbox row {row.id} ({row.txn_id} {row.status}) is pending again")

    with_runtime(work)
