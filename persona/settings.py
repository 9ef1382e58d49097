"""The settings as one frozen pydantic model: what ``config.yaml`` (and a few secrets from the environment) say.

Loaded once, by :func:`persona.config.load_settings` (the only module that reads ``os.environ``); every
component is given what it needs of it. ``extra="forbid"`` everywhere: an unknown key is a mistake to name,
not a value to ignore.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from persona.errors import ConfigError
from persona.llm.profiles import ProviderName


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PlisioMode(StrEnum):
    SANDBOX = "sandbox"
    LIVE = "live"


class TimeoutSettings(Frozen):
    connect: float = Field(5.0, gt=0, le=120)
    read: float = Field(20.0, gt=0, le=600)
    write: float = Field(10.0, gt=0, le=600)
    pool: float = Field(5.0, gt=0, le=120)


class RetrySettings(Frozen):
    max_attempts: int = Field(4, ge=1, le=10)
    base_delay: float = Field(0.25, ge=0, le=30)
    max_delay: float = Field(4.0, ge=0, le=120)
    deadline: float = Field(30.0, gt=0, le=600)


class SandboxSettings(Frozen):
    url: str | None = None
    """Base URL of a running ``persona sandbox``; null runs the sandbox in-process."""
    seed: int = 7


class PlisioSettings(Frozen):
    mode: PlisioMode = PlisioMode.SANDBOX
    base_url: str = Field("https://api.plisio.net/api/v1", pattern=r"^https?://")
    callback_url: str | None = Field(None, pattern=r"^https?://")
    timeouts: TimeoutSettings = TimeoutSettings()
    retry: RetrySettings = RetrySettings()
    sandbox: SandboxSettings = SandboxSettings()


class LLMSettings(Frozen):
    """Any OpenAI-compatible Chat Completions endpoint: OpenAI, Azure, Ollama, vLLM, llama.cpp."""

    base_url: str | None = Field(None, pattern=r"^https?://")
    model: str | None = None
    api_key_env: str = Field("OPENAI_API_KEY", pattern=r"^[A-Z_][A-Z0-9_]*$")
    timeout: float = Field(60.0, gt=0, le=600)
    max_retries: int = Field(2, ge=0, le=10)
    stream: bool = True
    provider: ProviderName | None = None
    """Which server this is (persona/llm/profiles.py): what it gets back of its own reply fields. Left out:
    detected from base_url."""


class StoreSettings(Frozen):
    url: str = "sqlite:///var/persona.sqlite3"
    """SQLite path (relative to the config file) or ``postgresql+psycopg://...`` for several instances."""


StopReason = Literal["max_steps", "max_tool_calls", "wall_clock", "max_tokens", "loop_guard", "model_error"]
"""Why a turn ended before the model finished: a limit below, the loop guard, or a model failure."""


class Limits(Frozen):
    """Bounds of one turn: whatever the model asks for, the turn ends within these."""

    max_steps: int = Field(8, ge=1, le=100)
    max_tool_calls: int = Field(16, ge=0, le=500)
    wall_clock_s: float = Field(120.0, gt=0, le=3600)
    max_tokens: int = Field(100_000, ge=100)
    tool_timeout_s: float = Field(30.0, gt=0, le=600)
    loop_guard_repeats: int = Field(2, ge=1, le=10)


class ModelSettings(Frozen):
    model: str | None = None
    """Overrides ``llm.model`` for this persona."""
    temperature: float | None = Field(0.2, ge=0, le=2)
    max_tokens: int | None = Field(1024, ge=16)
    parallel_tool_calls: bool = True


class InvoicePolicy(Frozen):
    """Caps on ``plisio_create_invoice``, in ``currency`` (invoices in other currencies are converted)."""

    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    max_amount: Decimal = Field(gt=0)
    daily_total: Decimal = Field(gt=0)
    approval_above: Decimal | None = Field(None, ge=0)


class PersonaSettings(Frozen):
    description: str = ""
    prompt: str
    """Template file in ``prompts_dir`` (Jinja2, StrictUndefined)."""
    chat: bool = True
    """False for a persona that only writes for a flow (its prompt needs the flow's facts): chat refuses it."""
    tools: tuple[str, ...] = ()
    """Tool names; ``"@read"`` stands for every read-only tool."""
    limits: Limits = Limits()
    model: ModelSettings = ModelSettings()
    invoice_policy: InvoicePolicy | None = None


class ApprovalSettings(Frozen):
    require_different_user: bool = True
    """Four eyes: whoever asked for a call cannot approve it."""


class ReadinessSettings(Frozen):
    """What ``GET /readyz`` requires besides a reachable store at this release's schema."""

    expect_worker: bool = True
    """A worker (in this process or another on the same store) must have beaten within ``worker_max_silence_s``;
    false for an instance that only receives callbacks while no worker runs anywhere (they wait in the inbox)."""
    worker_max_silence_s: float = Field(30.0, ge=2, le=3600)
    backlog_max_age_s: float = Field(300.0, ge=1, le=7 * 86_400)
    """The oldest inbox row waiting to be processed may be at most this old."""


class ServerSettings(Frozen):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    max_body_bytes: int = Field(16_384, ge=1024, le=10_000_000)
    """Callback bodies above this get 413 before anything is parsed."""
    max_request_bytes: int = Field(1_048_576, ge=1024, le=100_000_000)
    """Every other request body (API, console) above this gets 413, counted before it is read."""
    auth_failures_per_minute: int = Field(10, ge=1, le=100_000)
    """Failed API tokens an address may send in a minute; then 429 with ``Retry-After`` until one expires."""
    public_url: str | None = Field(None, pattern=r"^https?://")
    """How Plisio reaches this server; ``<public_url>/webhooks/plisio`` becomes the invoices' callback_url."""
    in_process_worker: bool = True
    ready: ReadinessSettings = ReadinessSettings()
    console_session_minutes: int = Field(480, ge=5, le=7 * 24 * 60)
    """How long a console sign-in lasts (then the token is asked for again); signing out ends it at once."""


class WebhookSettings(Frozen):
    previous_key_grace_hours: float = Field(72, ge=0, le=24 * 90)
    """After a key rotation, callbacks signed with the previous key are accepted this long."""


class VaultSettings(Frozen):
    """Where the master key that encrypts stored Plisio keys lives (unless ``PERSONA_MASTER_KEY`` is set)."""

    master_key_file: str | None = None
    """Key file (relative to this config file); null: ``master.key`` next to the SQLite store
    (``var/master.key`` with the default store, and for PostgreSQL). Created with mode 0600 on first use."""


class WorkerSettings(Frozen):
    poll_interval_s: float = Field(1.0, gt=0, le=60)
    lease_s: float = Field(120.0, ge=5, le=3600)
    """A claimed inbox row is retried by another worker when its lease runs out (a crashed worker)."""
    claim_batch: int = Field(16, ge=1, le=500)
    """Inbox rows a worker claims per transaction (processed in order, leases renewed together)."""
    max_attempts: int = Field(5, ge=1, le=100)
    retry_backoff_s: float = Field(30.0, ge=0, le=3600)
    reconcile_every_s: float = Field(300.0, ge=10, le=86_400)
    reconcile_pages: int = Field(2, ge=1, le=20)
    """Pages (50 operations each, newest first) the reconciler reads per failure status."""
    reconcile_max_age_h: float | None = Field(72.0, gt=0)
    """The reconciler ignores invoices that failed longer ago, and any that failed before the store was first
    initialised (a first start never chases a shop's history: ``persona reconcile --since`` does, on request)."""
    heartbeat_s: float = Field(5.0, ge=0.5, le=300)
    """How often a running worker records that it is alive (readiness reads it)."""


class AuditSettings(Frozen):
    origin: str = Field("plisio-persona/audit", pattern=r"^[^\s+]{1,100}$")
    """The checkpoints' origin line and signing key name (a host/path naming this log)."""
    checkpoint_dir: str | None = None
    """Where signed checkpoints are written and found (relative to this file); null: ``checkpoints/``
    next to the SQLite store (``var/checkpoints``). Keep it outside the database's reach (another disk,
    a mounted bucket): a checkpoint there is what a rewrite of the database cannot match."""
    checkpoint_every_s: float | None = Field(300.0, ge=10, le=86_400)
    """The worker signs a checkpoint this often when the log grew, and once more when it stops; null: no
    time schedule (with ``checkpoint_every_records`` null too, only ``persona audit checkpoint`` signs)."""
    signing_key_file: str | None = None
    """The Ed25519 checkpoint signing key (unless ``PERSONA_AUDIT_SIGNING_KEY`` is set); null:
    ``audit-signing.key`` next to the SQLite store. Created with mode 0600 on first use. Not the master key."""
    checkpoint_every_records: int | None = Field(10_000, ge=1, le=10_000_000)
    """The worker also signs a checkpoint once this many records were appended since the last one (checked
    on every poll, one read of the log's head); null: only on the ``checkpoint_every_s`` schedule."""
    checkpoint_webhook_url: str | None = Field(None, pattern=r"^https?://")
    """Where the worker POSTs each new checkpoint (the signed note as text/plain): a witness or another
    system outside the database's reach that keeps them; null: checkpoints stay in ``checkpoint_dir``."""
    checkpoint_secret_env: str = Field("PERSONA_CHECKPOINT_SECRET", pattern=r"^[A-Z_][A-Z0-9_]*$")
    """The variable holding the secret that signs checkpoint deliveries (``X-Persona-Signature``, the scheme
    of the outbound webhook); unset: deliveries go unsigned (the note itself is still Ed25519-signed)."""
    checkpoint_timeout_s: float = Field(10.0, gt=0, le=120)
    """One checkpoint delivery's timeout; a failed delivery is retried by the worker later."""


class EffectSettings(Frozen):
    resolve_after_s: float = Field(300.0, ge=1, le=7 * 86_400)
    """An effect left ``claimed`` or ``unknown`` this long is looked up by the sweep, and one Plisio has not
    heard of is then concluded ``failed`` (its reservation released). Keep it above every tool timeout."""
    resolve_every_s: float = Field(60.0, ge=5, le=86_400)
    """How often the worker runs the sweep."""


class OutboundSettings(Frozen):
    """Where approved customer messages go. Nothing is sent until a person approves a draft."""

    webhook_url: str | None = Field(None, pattern=r"^https?://")
    secret_env: str = Field("PERSONA_OUTBOUND_SECRET", pattern=r"^[A-Z_][A-Z0-9_]*$")
    timeout_s: float = Field(10.0, gt=0, le=120)


class RecoverySettings(Frozen):
    persona: str = "recovery"
    statuses: tuple[Literal["expired", "cancelled", "error"], ...] = ("expired", "cancelled", "error")
    offer_new_link: bool = True


class RefundPolicy(Frozen):
    """The written refund policy. The evaluator applies it deterministically and names the clause."""

    persona: str = "finance"
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    window_days: int = Field(14, ge=0, le=3650)
    eligible_statuses: tuple[str, ...] = ("completed", "mismatch")
    auto_approve_up_to: Decimal = Field(Decimal("100"), ge=0)
    max_amount: Decimal = Field(Decimal("2000"), gt=0)
    mismatch: Literal["overpayment_only", "full", "escalate"] = "overpayment_only"
    underpaid: Literal["escalate", "refund_received", "deny"] = "escalate"
    escalate_reasons: tuple[str, ...] = ("fraud", "chargeback", "dispute", "stolen", "lawyer")


class ChurnSettings(Frozen):
    persona: str = "growth"
    schedule: str | None = "0 6 * * 1"
    """Cron expression (UTC) for the scheduled scan; null disables it."""
    lookback_days: int = Field(90, ge=7, le=3650)
    recent_days: int = Field(30, ge=1, le=365)
    quiet_days: int = Field(45, ge=1, le=3650)
    min_completed: int = Field(3, ge=1)
    underpaid_min: int = Field(2, ge=1)
    coin_switch_min: int = Field(3, ge=2)


class FlowSettings(Frozen):
    recovery: RecoverySettings = RecoverySettings()
    refunds: RefundPolicy = RefundPolicy()
    churn: ChurnSettings = ChurnSettings()


class LogSettings(Frozen):
    level: Literal["debug", "info", "warning", "error"] = "warning"
    format: Literal["console", "json"] = "console"


class Settings(Frozen):
    """Everything the service is configured with. Built once by :func:`load_settings`."""

    source: str = Field("<defaults>", exclude=True)
    base_dir: str = Field(".", exclude=True)
    plisio: PlisioSettings = PlisioSettings()
    llm: LLMSettings = LLMSettings()
    store: StoreSettings = StoreSettings()
    prompts_dir: str = "prompts"
    personas: dict[str, PersonaSettings] = Field(default_factory=dict)
    approvals: ApprovalSettings = ApprovalSettings()
    server: ServerSettings = ServerSettings()
    webhooks: WebhookSettings = WebhookSettings()
    vault: VaultSettings = VaultSettings()
    worker: WorkerSettings = WorkerSettings()
    effects: EffectSettings = EffectSettings()
    audit: AuditSettings = AuditSettings()
    outbound: OutboundSettings = OutboundSettings()
    flows: FlowSettings = FlowSettings()
    log: LogSettings = LogSettings()
    plisio_api_key: SecretStr | None = Field(None, exclude=True)
    """From ``PLISIO_API_KEY``; never from the file (a file gets committed)."""
    llm_api_key: SecretStr | None = Field(None, exclude=True)
    """From the variable ``llm.api_key_env`` names (``OPENAI_API_KEY`` by default)."""
    plisio_previous_api_key: SecretStr | None = Field(None, exclude=True)
    """From ``PLISIO_PREVIOUS_API_KEY``: still accepted on callbacks during a key rotation."""
    outbound_secret: SecretStr | None = Field(None, exclude=True)
    """From the variable ``outbound.secret_env`` names: signs approved messages sent out."""
    checkpoint_secret: SecretStr | None = Field(None, exclude=True)
    """From the variable ``audit.checkpoint_secret_env`` names: signs checkpoints POSTed to the webhook."""
    audit_signing_key: SecretStr | None = Field(None, exclude=True)
    """From ``PERSONA_AUDIT_SIGNING_KEY``: ``PRIVATE+KEY+<name>+<id>+<key>`` (Go sumdb/note signer format)."""
    master_key: SecretStr | None = Field(None, exclude=True)
    """From ``PERSONA_MASTER_KEY``: one base64url 32-byte key, or a JSON keyring; else the key file."""

    def callback_url(self) -> str | None:
        """Where Plisio should post invoice callbacks: explicit, or derived from ``server.public_url``."""
        if self.plisio.callback_url:
            return self.plisio.callback_url
        if self.server.public_url:
            return self.server.public_url.rstrip("/") + "/webhooks/plisio"
        return None

    def prompts_path(self) -> Path:
        return (Path(self.base_dir) / self.prompts_dir).resolve()

    def store_url(self) -> str:
        """The store URL with a relative SQLite path resolved against the config file's directory."""
        url = self.store.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite:///:memory:":
            return prefix + str((Path(self.base_dir) / url[len(prefix) :]).resolve())
        return url

    def master_key_path(self) -> Path:
        """The master key file: ``vault.master_key_file``, else ``master.key`` next to the SQLite store."""
        return self.beside_store(self.vault.master_key_file, "master.key")

    def beside_store(self, configured: str | None, default: str) -> Path:
        """A file the service keeps next to its SQLite store (``var/`` for PostgreSQL), or the configured one."""
        if configured:
            return (Path(self.base_dir) / configured).resolve()
        url = self.store_url()
        prefix = "sqlite:///"
        if url.startswith(prefix) and url != "sqlite:///:memory:" and "mode=memory" not in url:
            return Path(url[len(prefix) :].split("?", 1)[0]).parent / default
        return (Path(self.base_dir) / "var" / default).resolve()

    def checkpoint_path(self) -> Path:
        """Where signed audit checkpoints are kept: ``audit.checkpoint_dir``, else ``checkpoints/`` by the store."""
        return self.beside_store(self.audit.checkpoint_dir, "checkpoints")

    def persona(self, name: str) -> PersonaSettings:
        if name not in self.personas:
            from persona.errors import NotFound

            known = ", ".join(sorted(self.personas)) or "none"
            raise NotFound(f"no persona named {name!r} in {self.source}; the personas are: {known}")
        return self.personas[name]

    def chat_persona(self, name: str, doing: str = "chat with") -> PersonaSettings:
        """The persona, if people may chat with it (or call its tools by hand: a flow-only persona's looser
        policy, e.g. recovery's links without approval, holds only inside its flow); a flow-only one is
        refused, naming those that can chat."""
        found = self.persona(name)
        if not found.chat:
            can = ", ".join(sorted(n for n, p in self.personas.items() if p.chat)) or "none"
            raise ConfigError(
                f"persona {name!r} only writes for its flow (personas.{name}.chat: false in {self.source})",
                fix=f"{doing} one of: {can}",
            )  # fmt: skip
        return found


def resolve_tools(persona: PersonaSettings) -> tuple[str, ...]:
    """The persona's scope with ``@read`` expanded, in declaration order, without duplicates."""
    from tools.plisio.tools import PLISIO_TOOLS

    names: list[str] = []
    for entry in persona.tools:
        expanded = [t.name for t in PLISIO_TOOLS if t.read_only] if entry == "@read" else [entry]
        names += [n for n in expanded if n not in names]
    return tuple(names)
