"""Typed dependency bundles: what a handler, a flow or the worker needs, in its signature.

In the spirit of pydantic-ai's ``RunContext[Deps]`` (a run is given a typed ``deps`` object instead of
reaching for globals): each consumer declares a frozen bundle of exactly what it uses, and the composition
root (:mod:`persona.app`, built only by the entry points) fills it. A test builds the same bundle from fakes,
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
from persona.effects.executor import EffectExecutor
from persona.inbox import Inbox, InboxWriter
from persona.llm import ChatModel
from persona.prompts import PromptLibrary
from persona.settings import Settings
from persona.store.engine import Store
from tools.plisio.client import PlisioClient
from tools.plisio.tools import PlisioContext

__all__ = ["FlowDeps", "FlowModels", "ReceiverDeps", "SecretsSource", "WorkerDeps"]

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
