"""Typed dependency bundles: what a handler, a flow or the worker needs, in its signature.

In the spirit of pydantic-ai's ``RunContext[Deps]`` (a run is given a typed ``deps`` object instead of
reaching for globals): each consumer declares a frozen bundle of exactly what it uses, and the composition
root (:mod:`persona.app`, built by the entry points and the two world builders) fills it. A test builds the same bundle from fakes,
and a reader sees a component's real inputs without following a service locator.

This module is a low floor: it names types and is built nowhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from persona.audit import AuditLog
from persona.clock import Clock
from persona.dispatcher import Dispatcher
from persona.drafts import ReviewQueue
from persona.effects.executor import EffectExecutor
from persona.inbox import Inbox, InboxWriter
from persona.llm import ChatModel
from persona.metrics import Metrics
from persona.prompts import PromptLibrary
from persona.settings import Settings
from persona.store.engine import Store
from tools.plisio.client import PlisioClient
from tools.plisio.tools import PlisioContext

__all__ = [
    "ChatDeps", "ChatModels", "ConsoleDeps", "FlowDeps", "FlowModels", "OperatorDeps", "ReceiverDeps", "ReviewQueues", "SecretsSource",
    "WorkerDeps",
]  # fmt: skip

SecretsSource = Callable[[], list[str]]
"""Accepted callback keys, current first (index 0 is reported as ``current``)."""


@dataclass(frozen=True)
class ReceiverDeps:
    """The callback receiver's (``POST /webhooks/plisio``): where a verified callback lands, what it is
    checked with, and where a refusal is recorded."""

    inbox: Inbox
    writer: InboxWriter
    audit: AuditLog
    secrets: SecretsSource
    now: Clock
    max_body: int
    """``server.max_body_bytes``: a longer body is refused unread (413)."""
    metrics: Metrics | None = None


FlowModels = Callable[[str, str, Mapping[str, Any]], ChatModel | None]
"""(flow, persona, facts) -> the model that writes for that flow run, or None (the flow's template then)."""


@dataclass(frozen=True)
class FlowDeps:
    """The recovery, refund and churn flows': the store their runs and reports live in, the audit log, the
    service's own Plisio reads, the gate their persona's tool calls go through, and the persona's model."""

    settings: Settings
    store: Store
    audit: AuditLog
    plisio: PlisioClient
    """The service's own client (reads: the operation, the shop, rates); the persona's calls use the gate."""
    dispatcher: Dispatcher[PlisioContext]
    prompts: PromptLibrary
    now: Clock
    models: FlowModels


ChatModels = Callable[[str, str], ChatModel]
"""(persona, user) -> the model a chat turn runs on (NotConfigured when no endpoint is set). The runtime's
models are pooled and closed with it: a caller never closes one."""


@dataclass(frozen=True)
class ChatDeps:
    """A chat turn's (``POST /v1/chat``, ``persona chat``, a replayed chat): where the conversation and its
    idempotent answers are stored, the gate its tool calls go through, its system prompt and its model."""

    settings: Settings
    store: Store
    audit: AuditLog
    dispatcher: Dispatcher[PlisioContext]
    prompts: PromptLibrary
    now: Clock
    models: ChatModels


@dataclass(frozen=True)
class OperatorDeps:
    """The operator's endpoints and commands (the inbox, the audit log, approvals, effects): the store, the
    audit log their actions are recorded in, the gate that holds approvals and effects, the settings the
    checkpoint verifier reads."""

    settings: Settings
    store: Store
    audit: AuditLog
    dispatcher: Dispatcher[PlisioContext]
    now: Clock
    metrics: Metrics | None = None
    """Served at ``GET /metrics``; None: no metrics endpoint."""


ReviewQueues = Callable[[], ReviewQueue]
"""The draft review queue as it stands at the call: its outbound channel is read from the settings then."""


@dataclass(frozen=True)
class ConsoleDeps:
    """The review console's: the operator's parts (sessions, approvals, the audit log, the inbox), the
    flows' stored decisions and reports, and the review queue its forms decide drafts through."""

    operator: OperatorDeps
    flows: FlowDeps
    reviews: ReviewQueues


@dataclass(frozen=True)
class WorkerDeps:
    """The worker's: the inbox's store, the audit log, the service's own Plisio reads (an operation re-read
    before a flow acts on it, the reconciler's listing), the effects to sweep, the flows it hands work to."""

    settings: Settings
    store: Store
    audit: AuditLog
    plisio: PlisioClient
    effects: EffectExecutor[PlisioContext]
    flows: FlowDeps
    now: Clock
    checkpoint_transport: httpx.AsyncBaseTransport | None = None
    """Injected transport for the checkpoint sink (tests); None: the network."""
    metrics: Metrics | None = None
