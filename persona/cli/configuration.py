"""``persona config check``: validate the configuration, then print what the service will actually run with.

Loading the settings is the validation (every error names the file, key and fix, and exits 2). What follows
is the effective configuration an operator otherwise reconstructs from defaults: each persona's tools and
caps, the model endpoint and the profile it gets, the Plisio mode, URL and where its key comes from, the
store (its password masked) and its schema, the schedules. Secrets are never printed, only whether they are
set and where from.
"""

from __future__ import annotations

from typing import Any

import typer

from persona.cli.output import AsJson, print_json

app = typer.Typer(
    rich_markup_mode=None,
    help="The configuration: check it and show what it amounts to.",
    no_args_is_help=True,
)


@app.command("check")
def check(as_json: AsJson = False) -> None:
    """Validate the config file and print the effective settings (exit status 2 when it does not load)."""
    from persona.cli.state import STATE

    settings = STATE.settings()
    report = effective(settings)
    if as_json:
        print_json(report)
        return
    for line in _lines(report):
        typer.echo(line)


def effective(settings: Any) -> dict[str, Any]:
    """The effective settings as a document (no secret in it)."""
    from persona.llm.profiles import profile
    from persona.release import VERSION
    from persona.settings import PlisioMode, resolve_tools

    llm = settings.llm
    chosen = profile(llm.provider, llm.base_url)
    plisio = settings.plisio
    store = _store(settings)
    if plisio.mode == PlisioMode.LIVE:
        key = "the vault (stored connections)" if store.get("connections") else (
            "PLISIO_API_KEY" if settings.plisio_api_key else "none: set PLISIO_API_KEY or `persona connect plisio`"
        )  # fmt: skip
        where = plisio.base_url
    else:
        key = "the sandbox's own"
        where = plisio.sandbox.url or f"in-process sandbox (seed {plisio.sandbox.seed})"
    worker = settings.worker
    churn = settings.flows.churn.schedule
    return {
        "config": settings.source,
        "release": VERSION,
        "store": store,
        "plisio": {"mode": plisio.mode.value, "url": where, "key_from": key, "callback_url": settings.callback_url()},
        "llm": {
            "base_url": llm.base_url, "model": llm.model, "profile": chosen.name,
            "profile_from": "llm.provider" if llm.provider else "detected from base_url", "stream": llm.stream,
            "key_from": llm.api_key_env, "key_set": settings.llm_api_key is not None,
        },
        "server": {
            "listen": f"{settings.server.host}:{settings.server.port}", "public_url": settings.server.public_url,
            "worker": "in process" if settings.server.in_process_worker else "separate (`persona worker`)",
            "ready": settings.server.ready.model_dump(),
        },
        "schedules": {
            "reconcile_every_s": worker.reconcile_every_s, "reconcile_max_age_h": worker.reconcile_max_age_h,
            "churn_scan": churn, "resolve_effects_every_s": settings.effects.resolve_every_s,
            "audit_checkpoint_every_s": settings.audit.checkpoint_every_s,
        },
        "personas": {
            name: {
                "chat": persona.chat, "tools": list(resolve_tools(persona)),
                "model": persona.model.model or llm.model,
                "invoice_policy": persona.invoice_policy.model_dump(mode="json") if persona.invoice_policy else None,
            }
            for name, persona in settings.personas.items()
        },
    }  # fmt: skip


def _store(settings: Any) -> dict[str, Any]:
    """The store's URL (password masked), and when it answers: its schema and whether it holds connections."""
    from sqlalchemy import func, select

    from persona.errors import StoreError
    from persona.store import schema
    from persona.store.engine import Store
    from persona.store.vault_tables import connections

    try:
        store = Store.open(settings.store_url())
    except StoreError as exc:
        return {"url": None, "schema": None, "problem": str(exc)}
    try:
        found = schema.status(store)
        held = 0
        if found.state == "current":
            with store.read("count the stored connections") as conn:
                held = conn.execute(
                    select(func.count()).select_from(connections).where(connections.c.status == "active")
                ).scalar_one()
        return {"url": store.url, "schema": found.state, "revision": found.current, "head": found.head,
                "connections": int(held)}  # fmt: skip
    except StoreError as exc:
        return {"url": store.url, "schema": None, "problem": str(exc)}
    finally:
        store.close()


def _lines(report: dict[str, Any]) -> list[str]:
    store, plisio, llm, server, sched = (report[k] for k in ("store", "plisio", "llm", "server", "schedules"))
    if store.get("problem"):
        store_line = f"{store['url'] or '-'} (does not answer: {store['problem']})"
    else:
        advice = {"current": "", "empty": ", created on first start",
                  "behind": ": run `persona db upgrade`", "ahead": ": a newer release wrote it"}[store["schema"]]  # fmt: skip
        store_line = (
            f"{store['url']} (schema: {store['schema']}{advice}; revision {store['revision'] or '-'})"
        )
    llm_line = (
        f"{llm['base_url']} model {llm['model']}, profile {llm['profile']} ({llm['profile_from']}),"
        f" stream {'on' if llm['stream'] else 'off'}, key {llm['key_from']} {'set' if llm['key_set'] else 'not set'}"
        if llm["base_url"] else "none (flows write from their templates; chat needs one: see `persona llm check`)"
    )  # fmt: skip
    ready = server["ready"]
    lines = [
        f"config     {report['config']} (valid)",
        f"release    persona {report['release']}",
        f"store      {store_line}",
        f"plisio     {plisio['mode']}: {plisio['url']}; key from {plisio['key_from']}",
        f"callbacks  {plisio['callback_url'] or 'none (set server.public_url: invoices then carry a callback_url)'}",
        f"llm        {llm_line}",
        f"server     {server['listen']}, worker {server['worker']}; ready when a worker beat within"
        f" {ready['worker_max_silence_s']:g} s{'' if ready['expect_worker'] else ' (not expected)'} and no callback"
        f" waits over {ready['backlog_max_age_s']:g} s",
        f"schedules  reconcile every {sched['reconcile_every_s']:g} s (failures at most"
        f" {sched['reconcile_max_age_h']:g} h old, none before the store's first start); churn scan"
        f" {sched['churn_scan'] or 'off'}; unknown effects resolved every {sched['resolve_effects_every_s']:g} s;"
        f" audit checkpoints {_every(sched['audit_checkpoint_every_s'])}",
        "personas",
    ]
    for name, persona in report["personas"].items():
        policy = persona["invoice_policy"]
        caps = "no invoice policy" if policy is None else (
            f"invoices ≤ {policy['max_amount']} {policy['currency']} each, {policy['daily_total']} {policy['currency']}"
            " a day" + (f", a person approves above {policy['approval_above']} {policy['currency']}"
                        if policy["approval_above"] is not None else "")
        )  # fmt: skip
        chat = "chat" if persona["chat"] else "flow only"
        lines.append(f"  {name}: {chat}; model {persona['model'] or '-'}; {caps}")
        lines.append(f"    tools: {', '.join(persona['tools']) or 'none'}")
    return lines


def _every(seconds: float | None) -> str:
    return "off" if not seconds else f"every {seconds:g} s"
