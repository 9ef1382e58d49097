"""``persona sandbox``: serve the Plisio sandbox on loopback for demos and end-to-end tests."""

from __future__ import annotations

from typing import Annotated

import typer


def sandbox(
    port: Annotated[int, typer.Option("--port", "-p", help="TCP port on 127.0.0.1.")] = 8765,
    host: Annotated[
        str, typer.Option("--host", help="Interface to bind (loopback by default).")
    ] = "127.0.0.1",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the demo shop's data.")] = 7,
    creation_callbacks: Annotated[
        bool,
        typer.Option("--creation-callbacks/--no-creation-callbacks", help="Post a 'new' callback on create."),
    ] = True,
    white_label: Annotated[
        bool,
        typer.Option("--white-label", help="A white-label shop: invoices answer with the payment details."),
    ] = False,
) -> None:
    """Serve a faithful fake of Plisio's API (and its signed callbacks) with a seeded demo shop."""
    from rich.console import Console

    from persona.cli.listening import listen
    from persona.cli.state import STATE
    from tools.plisio.sandbox import SANDBOX_API_KEY, Sandbox
    from tools.plisio.sandbox.server import serve

    level = STATE.settings().log.level
    sock = listen(host, port, key="--port")
    box = Sandbox(seed=seed, send_creation_callbacks=creation_callbacks, white_label=white_label)
    Console(stderr=True).print(
        f"Plisio sandbox{' (white-label shop)' if white_label else ''} on http://{host}:{port}/api/v1 "
        f"(api_key={SANDBOX_API_KEY}; "
        f"control endpoints under /_sandbox/). Ctrl-C stops it.",
        highlight=False,
    )
    serve(sock, sandbox=box, log_level=level)
