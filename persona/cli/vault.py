"""``persona connect``, ``persona connections`` and ``persona grants``: the credentials vault.

A key is never a command-line argument (it would land in the shell history and in ``ps``): it is
read from a hidden prompt, or from standard input with ``--key-stdin``. Nothing prints a key:
listings show a 12-hex fingerprint.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from persona.cli.output import AsJson, AsJsonl

if TYPE_CHECKING:
    from persona.audit import AuditLog
    from persona.settings import Settings
    from persona.store.engine import Store
    from persona.users import Users
    from persona.vault import Actor, ClientFactory, GrantInfo, Grants, Vault

T = TypeVar("T")

connect_app = typer.Typer(
    rich_markup_mode=None,
    help="Store a provider key, encrypted, after checking it works.",
    no_args_is_help=True,
)
connections_app = typer.Typer(
    rich_markup_mode=None, help="Stored Plisio keys: list, rotate, revoke, rekey.", no_args_is_help=True
)
grants_app = typer.Typer(
    rich_markup_mode=None,
    help="Which persona may use which connection, for which tools and caps.",
    no_args_is_help=True,
)

By = Annotated[
    str | None,
    typer.Option(
        "--by",
        help="Who does this, for the audit log: a user's email, checked once users exist (default: local:<OS user>).",
    ),
]
KeyStdin = Annotated[
    bool, typer.Option("--key-stdin", help="Read the key from standard input instead of a hidden prompt.")
]


@dataclass
class VaultContext:
    """What the vault commands work with: no Plisio client and no LLM needed."""

    settings: Settings
    store: Store
    audit: AuditLog
    vault: Vault
    grants: Grants
    users: Users

    def actor(self, by: str | None) -> Actor:
        """A given ``--by`` must be a user (:func:`persona.cli.identity.resolve_actor`); without one, the OS
        account is recorded (``local:<name>``: not an email, so never taken for a user)."""
        from persona.cli.identity import resolve_actor
        from persona.vault import Actor

        return Actor("cli", local_user() if by is None else resolve_actor(self, by))


def local_user() -> str:
    import pwd

    try:
        return "local:" + pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"local:uid-{os.getuid()}"


@contextlib.contextmanager
def vault_context() -> Iterator[VaultContext]:
    from persona.audit import AuditLog
    from persona.cli.state import STATE
    from persona.masterkey import MasterKeySource
    from persona.store.engine import Store
    from persona.store.schema import prepare
    from persona.users import Users
    from persona.vault import Grants, Vault

    settings = STATE.settings()
    store = Store.open(settings.store_url())
    audit = AuditLog(store)
    try:

        def now() -> datetime:
            return datetime.now(UTC)

        prepare(store, now=now)

        vault = Vault(store, MasterKeySource.from_settings(settings), audit, now)
        audit.use_keys(vault.audit_keys())
        yield VaultContext(settings, store, audit, vault, Grants(vault, settings), Users(store, audit, now))
    finally:
        audit.close()
        store.close()


def with_vault(work: Callable[[VaultContext], Coroutine[Any, Any, T]]) -> T:
    with vault_context() as ctx:
        import asyncio

        return asyncio.run(work(ctx))


def read_key(from_stdin: bool, prompt: str) -> str:
    import sys

    from persona.errors import VaultError
    from tools.redaction import register_secret

    key = sys.stdin.readline() if from_stdin else typer.prompt(prompt, hide_input=True)
    key = key.strip()
    register_secret(key)
    if not key:
        raise VaultError("no key was given; nothing was stored")
    return key


async def _verifying(ctx: VaultContext, key: str, run: Callable[[ClientFactory], Awaitable[T]]) -> T:
    """Run ``run(client_for)`` with clients on the configured Plisio (or the in-process sandbox)."""
    from persona.app import connect_plisio

    conn = connect_plisio(ctx.settings, key=key)
    try:
        assert conn.client_for is not None
        return await run(conn.client_for)
    finally:
        await conn.aclose()


@connect_app.command("plisio")
def connect_plisio_key(
    name: Annotated[str, typer.Option("--name", help="A name for this key, e.g. shop-main.")],
    key_stdin: KeyStdin = False,
    by: By = None,
) -> None:
    """Check a Plisio secret key with GET /shops, then store it encrypted."""
    from rich.console import Console

    from persona.vault import ConnectionInfo, connect

    key = read_key(key_stdin, "Plisio secret key (input hidden)")

    async def work(ctx: VaultContext) -> ConnectionInfo:
        return await _verifying(ctx, key, lambda make: connect(ctx.vault, name, key, make, ctx.actor(by)))

    info = with_vault(work)
    Console(highlight=False).print(
        f"connection {info.name} stored (fingerprint {info.fingerprint}; verified with GET /shops).\n"
        f"Personas need a grant to use it: persona grants add --persona <name> --connection {info.name}"
    )


@connections_app.command("list")
def list_connections(as_json: AsJson = False, as_jsonl: AsJsonl = False) -> None:
    """Connections with their fingerprints, times and grants (never a key)."""
    from persona.cli.output import emit_list
    from persona.jsonutil import jsonable as plain
    from persona.vault import ConnectionInfo

    async def work(ctx: VaultContext) -> tuple[list[ConnectionInfo], dict[str, list[str]]]:
        held: dict[str, list[str]] = {}
        for grant in ctx.grants.list():
            held.setdefault(grant.connection, []).append(grant.persona)
        return ctx.vault.connections(), held

    rows, held = with_vault(work)
    emit_list(
        f"{len(rows)} connection(s)",
        ("name", "status", "fingerprint", "created", "by", "rotated", "old key until", "grants"),
        [
            (
                c.name,
                c.status,
                c.fingerprint,
                c.created_at,
                c.created_by,
                c.rotated_at,
                c.previous_valid_until,
                ", ".join(held.get(c.name, [])) or "-",
            )
            for c in rows
        ],
        [{**plain(c), "grants": held.get(c.name, [])} for c in rows],
        as_json=as_json,
        as_jsonl=as_jsonl,
    )


@connections_app.command("rotate")
def rotate(name: str, key_stdin: KeyStdin = False, by: By = None) -> None:
    """Replace a connection's key: stored as pending, verified, promoted; the old one still verifies callbacks."""
    from rich.console import Console

    from persona.vault import ConnectionInfo
    from persona.vault import rotate as rotate_key

    key = read_key(key_stdin, f"New Plisio secret key for {name} (input hidden)")

    async def work(ctx: VaultContext) -> ConnectionInfo:
        grace = ctx.settings.webhooks.previous_key_grace_hours
        return await _verifying(
            ctx, key, lambda make: rotate_key(ctx.vault, name, key, make, ctx.actor(by), grace)
        )

    info = with_vault(work)
    until = info.previous_valid_until.strftime("%Y-%m-%d %H:%M UTC") if info.previous_valid_until else "-"
    Console(highlight=False).print(
        f"connection {info.name} rotated: now fingerprint {info.fingerprint}; callbacks signed with the previous"
        f" key are accepted until {until}"
    )


@connections_app.command("revoke")
def revoke(name: str, by: By = None) -> None:
    """Revoke a connection: every persona using it is refused from its very next tool call."""
    from rich.console import Console

    async def work(ctx: VaultContext) -> int:
        from persona.vault import revoke

        return (await revoke(ctx.vault, name, ctx.actor(by)))[1]

    count = with_vault(work)
    Console(highlight=False).print(
        f"connection {name} revoked; {count} grant(s) revoked; its ciphertexts deleted"
    )


@connections_app.command("rekey")
def rekey(by: By = None) -> None:
    """Rotate the master key: a new version, every stored credential re-wrapped, old versions dropped."""
    from rich.console import Console

    async def work(ctx: VaultContext) -> str:
        report = ctx.vault.rekey(ctx.actor(by))
        dropped = ", ".join(map(str, report.dropped)) or "none"
        return (
            f"master key rotated to version {report.to_version} ({ctx.vault.keys.where}): {report.rows} row(s)"
            f" re-wrapped; versions dropped: {dropped}"
        )

    Console(highlight=False).print(with_vault(work))


Persona = Annotated[str, typer.Option("--persona", help="Persona name (config.yaml personas:).")]
Connection = Annotated[str, typer.Option("--connection", help="Connection name (persona connections list).")]


@grants_app.command("list")
def list_grants(
    persona: Annotated[str | None, typer.Option("--persona", help="Only this persona.")] = None,
    connection: Annotated[str | None, typer.Option("--connection", help="Only this connection.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Include removed grants.")] = False,
    as_json: AsJson = False,
    as_jsonl: AsJsonl = False,
) -> None:
    """List grants: persona, connection, tools, caps."""
    from persona.cli.options import choice
    from persona.cli.output import emit_list

    async def work(ctx: VaultContext) -> list[GrantInfo]:
        if persona or connection:  # a name that names nothing is a typo, not an empty list
            every = ctx.grants.list(all=True)
            if persona:
                choice(persona, sorted(set(ctx.settings.personas) | {g.persona for g in every}), "--persona")
            if connection:
                known = {c.name for c in ctx.vault.connections()} | {g.connection for g in every}
                choice(connection, sorted(known), "--connection")
        return ctx.grants.list(persona=persona, connection=connection, all=all_)

    rows = with_vault(work)
    emit_list(
        f"{len(rows)} grant(s)",
        ("persona", "connection", "status", "max/invoice", "max/day", "by", "created", "tools"),
        [
            (
                g.persona,
                g.connection,
                g.status,
                _amount(g.max_amount),
                _amount(g.daily_total),
                g.created_by,
                g.created_at,
                ", ".join(g.tools),
            )
            for g in rows
        ],
        [_grant_json(g) for g in rows],
        as_json=as_json,
        as_jsonl=as_jsonl,
    )


def _grant_json(g: GrantInfo) -> dict[str, Any]:
    """A grant in full, JSON-ready; caps as exact decimal strings (no trailing zeros), or null."""
    from persona.jsonutil import jsonable as plain

    data: dict[str, Any] = plain(g)
    data["max_amount"] = None if g.max_amount is None else _amount(g.max_amount)
    data["daily_total"] = None if g.daily_total is None else _amount(g.daily_total)
    return data


def _amount(value: object) -> str:
    from decimal import Decimal

    return "-" if value is None else format(Decimal(str(value)).normalize(), "f")


@grants_app.command("add")
def add_grant(
    persona: Persona,
    connection: Connection,
    tools: Annotated[
        str | None,
        typer.Option("--tools", help="Comma-separated tools (or @read); default: the persona's scope."),
    ] = None,
    max_amount: Annotated[
        str | None, typer.Option("--max-amount", help="Per-invoice cap, in the persona's policy currency.")
    ] = None,
    daily_total: Annotated[
        str | None, typer.Option("--daily-total", help="Daily cap, in the persona's policy currency.")
    ] = None,
    by: By = None,
) -> None:
    """Let a persona use a connection, optionally for fewer tools and within tighter caps."""
    from rich.console import Console

    chosen = [t.strip() for t in tools.split(",") if t.strip()] if tools else None

    async def work(ctx: VaultContext) -> str:
        from persona.vault import grant

        g = await grant(
            ctx.grants, persona=persona, connection=connection, tools=chosen, max_amount=max_amount,
            daily_total=daily_total, actor=ctx.actor(by),
        )  # fmt: skip
        return (
            f"grant {g.id}: {g.persona} may use {g.connection} for {', '.join(g.tools)}"
            f" (max/invoice {_amount(g.max_amount)}, max/day {_amount(g.daily_total)})"
        )

    Console(highlight=False).print(with_vault(work))


@grants_app.command("remove")
def remove_grant(persona: Persona, connection: Connection, by: By = None) -> None:
    """Take a connection away from a persona: its next tool call is refused."""
    from rich.console import Console

    async def work(ctx: VaultContext) -> str:
        g = ctx.grants.remove(persona=persona, connection=connection, actor=ctx.actor(by))
        return f"grant {g.id} removed: {persona} may no longer use {connection}"

    Console(highlight=False).print(with_vault(work))
