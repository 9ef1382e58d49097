"""The composition root: :class:`Runtime` builds every long-lived part from the settings (the store, the
audit log, the vault, the Plisio client, the gate, the pooled models) and closes them together.

Its properties hand each consumer the typed bundle it takes (:mod:`persona.deps`: ``chat``, ``flows``,
``worker``, ``operator``); nothing below reaches into the runtime itself. Imported only by the entry points
(:mod:`persona.cli`, :mod:`persona.server`) and by the two modules that build a world of their own (the
demo, the replay runner), as ``tests/test_invariants.py`` holds.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import httpx
import structlog

from persona.approvals import ApprovalStore
from persona.audit import AuditLog
from persona.deps import ChatDeps, ConsoleDeps, FlowDeps, OperatorDeps, WorkerDeps
from persona.dispatcher import Dispatcher
from persona.effects.executor import EffectExecutor
from persona.effects.ledger import EffectLedger
from persona.effects.seal import Seal
from persona.errors import NoMasterKey, NotConfigured
from persona.masterkey import MasterKeySource
from persona.metrics import Metrics
from persona.models import ModelFactory, Models
from persona.policy import PlisioPrices, Policy
from persona.prompts import PromptLibrary
from persona.settings import PlisioMode, Settings
from persona.store import schema
from persona.store.engine import Store
from persona.vault import GrantGate, Grants, PersonaAccess, Vault, service_key_source
from tools.plisio.client import KeySource, PlisioClient, RetryPolicy, Timeouts
from tools.plisio.tools import PlisioContext, plisio_contexts, plisio_registry
from tools.registry import Registry

if TYPE_CHECKING:
    from persona.drafts import ReviewQueue
    from tools.plisio.sandbox import Sandbox

IN_PROCESS_SANDBOX_URL = "http://sandbox.invalid/api/v1"


@dataclass
class PlisioConnection:
    """A Plisio client and, in sandbox mode, the sandbox it talks to (in-process or remote)."""

    client: PlisioClient
    sandbox: Sandbox | None
    mode: PlisioMode
    client_for: Callable[[KeySource], PlisioClient] | None = None
    """Another client on the same Plisio (or sandbox) with another key source: per persona, or to verify a key."""

    async def aclose(self) -> None:
        await self.client.aclose()


def connect_plisio(
    settings: Settings,
    *,
    key: str | KeySource | None = None,
    sandbox: Sandbox | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> PlisioConnection:
    """Build the client the settings ask for.

    Sandbox mode needs no key: it uses the in-process sandbox (or ``plisio.sandbox.url``).
    Live mode needs ``PLISIO_API_KEY`` (or a ``key`` source from the vault).
    """
    cfg = settings.plisio
    timeouts = Timeouts(**cfg.timeouts.model_dump())
    retry = RetryPolicy(**cfg.retry.model_dump())
    if cfg.mode == PlisioMode.LIVE:
        if key is None:
            if settings.plisio_api_key is None:
                raise NotConfigured(
                    "plisio.mode is 'live' but no Plisio key is available: export PLISIO_API_KEY=<your secret key>"
                    " (Plisio dashboard, API settings) or store one with `persona connect plisio --name NAME`,"
                    " or set plisio.mode: sandbox in config.yaml"
                )
            key = settings.plisio_api_key.get_secret_value()

        def live(source: str | KeySource) -> PlisioClient:
            return PlisioClient(
                source, base_url=cfg.base_url, timeouts=timeouts, retry=retry, transport=transport
            )

        return PlisioConnection(live(key), None, cfg.mode, live)

    from tools.plisio.sandbox import SANDBOX_API_KEY, Sandbox

    if cfg.sandbox.url and sandbox is None and transport is None:
        url = cfg.sandbox.url

        def remote(source: str | KeySource) -> PlisioClient:
            return PlisioClient(source, base_url=url, timeouts=timeouts, retry=retry)

        return PlisioConnection(remote(key or SANDBOX_API_KEY), None, cfg.mode, remote)
    # Seeded history ends at today's midnight (UTC), so every CLI process sees the same seeded ids all day.
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    sandbox = sandbox or Sandbox(seed=cfg.sandbox.seed, seed_at=today)
    via = transport or sandbox.transport()

    def local(source: str | KeySource) -> PlisioClient:
        return PlisioClient(
            source, base_url=IN_PROCESS_SANDBOX_URL, timeouts=timeouts, retry=retry, transport=via
        )

    return PlisioConnection(local(key or SANDBOX_API_KEY), sandbox, cfg.mode, local)


def settle_heap() -> None:
    """Move what start-up built (app, routes, tables, models) out of the garbage collector's sight.

    A long-running server otherwise re-scans those objects in every full collection: measured under
    callback load, gen-2 pauses of ~90 ms that made the ack p99 (bench/). Call once, when serving starts.
    """
    gc.collect()
    gc.freeze()


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Runtime:
    """Everything a conversation needs, built once from the settings and closed together."""

    settings: Settings
    store: Store
    audit: AuditLog
    plisio: PlisioConnection
    registry: Registry[PlisioContext]
    policy: Policy
    approvals: ApprovalStore
    dispatcher: Dispatcher[PlisioContext]
    prompts: PromptLibrary
    now: Callable[[], datetime]
    vault: Vault
    grants: Grants
    access: PersonaAccess
    models: Models
    metrics: Metrics
    """Counted from the audit log as it is written (:mod:`persona.metrics`), served at ``GET /metrics``."""
    outbound_transport: httpx.AsyncBaseTransport | None = None
    """Injected transport for the outbound channel (tests); None means the network."""
    checkpoint_transport: httpx.AsyncBaseTransport | None = None
    """Injected transport for the checkpoint webhook (``audit.checkpoint_webhook_url``); None: the network."""

    @property
    def model_factory(self) -> ModelFactory | None:
        """Injected models for chat and flows (tests, replay, the demo); None means the configured LLM."""
        return self.models.factory

    @model_factory.setter
    def model_factory(self, factory: ModelFactory | None) -> None:
        self.models.factory = factory

    @property
    def reviews(self) -> ReviewQueue:
        """The draft review queue with its outbound channel."""
        from persona.drafts import DraftStore, Outbound, ReviewQueue

        outbound = Outbound(self.settings, transport=self.outbound_transport, now=self.now)
        return ReviewQueue(DraftStore(self.store), outbound, self.audit, self.now)

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        store: Store | None = None,
        plisio: PlisioConnection | None = None,
        now: Callable[[], datetime] = _utcnow,
        master_keys: MasterKeySource | None = None,
        keys_optional: bool = False,
    ) -> Runtime:
        """``keys_optional``: a read-only command (``persona audit verify``) on a host without the master key
        runs unkeyed (MACs not checked, nothing created) instead of failing."""
        from persona import log

        log.ensure_configured(settings.log.level, settings.log.format)
        store = store or Store.open(settings.store_url())
        schema.prepare(store, now=now)
        audit = AuditLog(store, now=now)
        metrics = Metrics(store, now)
        audit.observe_with(metrics.observe)
        vault = Vault(store, master_keys or MasterKeySource.from_settings(settings), audit, now)
        seal: Seal | None = None
        try:
            macs = vault.audit_keys(create=not keys_optional)
            audit.use_keys(macs)
            seal = Seal.of(macs)
        except NoMasterKey:
            if not keys_optional:
                raise
            structlog.get_logger(__name__).warning(
                "audit_unkeyed", reason="no master key: MACs are not checked"
            )
        if plisio is None:
            # Live mode with stored connections: the service's own reads use the vault, not PLISIO_API_KEY.
            vaulted = settings.plisio.mode == PlisioMode.LIVE and not vault.is_empty()
            plisio = connect_plisio(settings, key=service_key_source(vault) if vaulted else None)
        grants = Grants(vault, settings)
        gate = GrantGate(grants)
        registry = plisio_registry()
        policy = Policy(PlisioPrices(plisio.client), caps=gate.caps)
        access = PersonaAccess(vault, plisio.client, plisio.client_for)
        contexts = plisio_contexts(access, settings.callback_url())
        effects = EffectExecutor(
            ledger=EffectLedger(store, now, seal), audit=audit, registry=registry, contexts=contexts, now=now,
            resolve_after_s=settings.effects.resolve_after_s,
        )  # fmt: skip
        dispatcher = Dispatcher(
            settings=settings, registry=registry, policy=policy, audit=audit, effects=effects, contexts=contexts,
            now=now, grants=gate,
        )  # fmt: skip
        prompts = PromptLibrary(settings.prompts_path())
        return cls(
            settings, store, audit, plisio, registry, policy, dispatcher.approvals, dispatcher, prompts, now, vault,
            grants, access, Models(settings), metrics,
        )  # fmt: skip

    @property
    def worker(self) -> WorkerDeps:
        """What the worker needs (built at the call: a test may have replaced a part of the runtime)."""
        return WorkerDeps(
            settings=self.settings, store=self.store, audit=self.audit, plisio=self.plisio.client,
            effects=self.dispatcher.effects, flows=self.flows, now=self.now, checkpoint_transport=self.checkpoint_transport,
            metrics=self.metrics,
        )  # fmt: skip

    @property
    def flows(self) -> FlowDeps:
        """What the recovery, refund and churn flows need (the model as injected at the time of the call)."""
        return FlowDeps(
            settings=self.settings, store=self.store, audit=self.audit, plisio=self.plisio.client,
            dispatcher=self.dispatcher, prompts=self.prompts, now=self.now, models=self.models.flow,
        )  # fmt: skip

    @property
    def chat(self) -> ChatDeps:
        """What a chat turn needs (``POST /v1/chat``, ``persona chat``, a replayed chat)."""
        return ChatDeps(
            settings=self.settings, store=self.store, audit=self.audit, dispatcher=self.dispatcher,
            prompts=self.prompts, now=self.now, models=self.models.chat,
        )  # fmt: skip

    @property
    def console(self) -> ConsoleDeps:
        """What the review console needs (its review queue built per action, as the settings then say)."""
        return ConsoleDeps(operator=self.operator, flows=self.flows, reviews=lambda: self.reviews)

    @property
    def operator(self) -> OperatorDeps:
        """What the operator's endpoints and commands need (inbox, audit, approvals, effects)."""
        return OperatorDeps(
            settings=self.settings,
            store=self.store,
            audit=self.audit,
            dispatcher=self.dispatcher,
            now=self.now,
            metrics=self.metrics,
        )

    async def aclose(self) -> None:
        await self.models.aclose()
        await self.audit.aclose()
        await self.access.aclose()
        await self.plisio.aclose()
        self.store.close()
