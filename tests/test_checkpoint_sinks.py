"""Signed checkpoints handed to a sink outside the database: the HTTP sink and the worker's wiring.

The receiving end is a fake behind ``httpx.MockTransport`` that checks the HMAC the way a receiver
would (its own HMAC, constant-time compare); no network, no monkeypatching, the worker's clock injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from structlog.testing import capture_logs

from persona.app import Runtime
from persona.checkpoints.note import Checkpoint, NoteSigner, NoteVerifier
from persona.checkpoints.publisher import CHECKPOINT_RETRY_S
from persona.checkpoints.signed import CheckpointDir, open_file
from persona.checkpoints.signing import skey_of
from persona.checkpoints.sinks import SinkError, WebhookSink
from persona.config import load_settings
from persona.errors import AuditIntegrityError, ConfigError, PersonaError
from persona.store.engine import Store
from persona.worker import Worker
from tests.conftest import NOW
from tests.harness import build_runtime, repo_settings
from tests.test_audit import event
from tools.plisio.sandbox import Sandbox

pytestmark = pytest.mark.anyio

SECRET = "whsec-checkpoint-3f9a71"
TOKEN = "tok8c1d2e7f90ab"
URL = f"https://witness.example/v1/checkpoints?key={TOKEN}"
ORIGIN = "persona.test/audit"


@dataclass
class Receiver:
    """A checkpoint witness: keeps what verifies, answers what it is told to (a status, or an exception)."""

    secret: str | None = SECRET
    answers: list[int | type[httpx.RequestError]] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, type):
            raise answer(f"cannot reach {request.url} (secret {SECRET})", request=request)
        if self.secret is not None:
            expected = "sha256=" + hmac.new(self.secret.encode(), request.content, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(request.headers.get("X-Persona-Signature", ""), expected):
                return httpx.Response(401, text="bad signature")
        if answer == 200:
            self.kept[request.headers["X-Persona-Delivery"]] = request.content.decode("utf-8")
        return httpx.Response(answer, text=f"echo {request.url}")

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def sizes(self) -> list[int]:
        return [int(r.headers["X-Persona-Delivery"].removeprefix("checkpoint-")) for r in self.requests]


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner(ORIGIN, Ed25519PrivateKey.generate())


def note_of(signer: NoteSigner, size: int = 24) -> str:
    return signer.sign(Checkpoint(ORIGIN, size, hashlib.sha256(b"root").digest()))


def sink(receiver: Receiver, secret: str | None = SECRET) -> WebhookSink:
    return WebhookSink(URL, secret=secret, timeout_s=10, transport=receiver.transport())


# -- the sink ------------------------------------------------------------------------------------


async def test_the_sink_posts_the_note_as_is_with_an_hmac_the_receiver_can_check(signer: NoteSigner) -> None:
    receiver = Receiver()
    note = note_of(signer)
    assert await sink(receiver).deliver(note, size=24) == 200
    [request] = receiver.requests
    assert request.method == "POST" and str(request.url) == URL
    assert request.content == note.encode("utf-8")
    assert request.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert request.headers["X-Persona-Delivery"] == "checkpoint-24"
    assert receiver.kept == {"checkpoint-24": note}
    verifier = NoteVerifier.from_vkey(signer.vkey)
    assert verifier.open(receiver.kept["checkpoint-24"]).size == 24  # the witness can check it as it is


async def test_without_a_secret_the_post_is_unsigned_and_a_checking_receiver_refuses_it(
    signer: NoteSigner,
) -> None:
    receiver = Receiver()
    with pytest.raises(SinkError, match="answered 401") as info:
        await sink(receiver, secret=None).deliver(note_of(signer), size=24)
    assert "X-Persona-Signature" not in receiver.requests[0].headers
    assert "PERSONA_CHECKPOINT_SECRET" in str(info.value) and info.value.status_code == 401
    assert await sink(Receiver(secret=None), secret=None).deliver(note_of(signer), size=24) == 200


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (500, "the receiver answered 500"),
        (503, "the receiver answered 503"),
        (httpx.ConnectError, "ConnectError"),
        (httpx.ReadTimeout, "no answer within 10s"),
        (httpx.ConnectTimeout, "no answer within 10s"),
    ],
)
async def test_a_failed_delivery_raises_a_sink_error_that_names_the_fix_and_no_secret(
    signer: NoteSigner, answer: int | type[httpx.RequestError], says: str
) -> None:
    receiver = Receiver(answers=[answer])
    with all_logs() as logs, pytest.raises(SinkError) as info:
        await sink(receiver).deliver(note_of(signer), size=24)
    message = str(info.value)
    assert says in message and "checkpoint 24 could not be delivered" in message and "fix:" in message
    assert "https://witness.example/v1/checkpoints?***" in message
    assert info.value.size == 24
    assert isinstance(info.value, PersonaError) and not isinstance(info.value, AuditIntegrityError)
    for text in (message, repr(logs)):
        assert SECRET not in text and TOKEN not in text


def test_the_sink_refuses_a_url_that_is_not_http() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        WebhookSink("ftp://witness.example/cp")


# -- the worker -----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def key() -> str:
    return skey_of(ORIGIN, Ed25519PrivateKey.generate())


def runtime(store: Store, tmp_path: Path, key: str, receiver: Receiver | None, **audit: Any) -> Runtime:
    base = repo_settings(PERSONA_AUDIT_SIGNING_KEY=key, PERSONA_CHECKPOINT_SECRET=SECRET)
    update = {"checkpoint_dir": str(tmp_path / "cps"), "checkpoint_webhook_url": URL if receiver else None}
    settings = base.model_copy(update={"audit": base.audit.model_copy(update={**update, **audit})})
    rt = build_runtime(store, Sandbox(seed=7), settings=settings)
    rt.checkpoint_transport = receiver.transport() if receiver else None
    return rt


@pytest.fixture
def wall() -> Clock:
    return Clock()


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
async def rt(store: Store, tmp_path: Path, key: str, receiver: Receiver) -> AsyncIterator[Runtime]:
    runtime_ = runtime(store, tmp_path, key, receiver, checkpoint_every_s=10.0)
    yield runtime_
    await runtime_.aclose()


@contextlib.contextmanager
def all_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """``capture_logs`` at every level: the runtime configures structlog to drop info below warning."""
    wrapper = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(wrapper_class=wrapper)


def events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def test_the_worker_delivers_each_new_checkpoint_once_and_retries_a_failed_one_later(
    rt: Runtime, receiver: Receiver, wall: Clock, key: str
) -> None:
    for i in range(3):
        rt.audit.append_sync(event(i))
    worker = Worker(rt.worker, churn=None, now=wall)
    assert "audit_checkpoint" in [r.name for r in await worker.scheduler.tick()]
    with all_logs() as logs:
        await worker.checkpoints.step()
        first = await worker.checkpoints.delivered()
    assert first is not None and first >= 3 and receiver.sizes() == [first]
    assert events(logs, "audit_checkpoint_delivered") == [
        {"event": "audit_checkpoint_delivered", "size": first, "status_code": 200, "log_level": "info"}
    ]
    verifier = NoteVerifier.from_vkey(NoteSigner.from_skey(key).vkey)
    assert verifier.open(receiver.kept[f"checkpoint-{first}"]).size == first
    head = rt.audit.head()[0]
    await worker.checkpoints.step()  # nothing new: not delivered again, and no task started
    assert await worker.checkpoints.delivered() is None and receiver.sizes() == [first]
    assert rt.audit.head()[0] == head, "deliveries write no audit records"

    rt.audit.append_sync(event(9))
    worker.checkpoints.checkpoint()
    receiver.answers = [500]
    with all_logs() as logs:
        await worker.checkpoints.step()
        assert await worker.checkpoints.delivered() is None
    [failed] = events(logs, "audit_checkpoint_delivery_failed")
    second = rt.audit.head()[0]
    assert failed["size"] == second and "answered 500" in failed["error"]
    assert failed["retry_in_s"] == CHECKPOINT_RETRY_S
    assert SECRET not in repr(logs) and TOKEN not in repr(logs)

    wall.advance(CHECKPOINT_RETRY_S - 1)
    await worker.checkpoints.step()  # too soon to try again
    assert await worker.checkpoints.delivered() is None and receiver.sizes() == [first, second]
    wall.advance(1)
    await worker.checkpoints.step()
    assert await worker.checkpoints.delivered() == second and receiver.sizes() == [first, second, second]
    await worker.checkpoints.step()
    assert await worker.checkpoints.delivered() is None and len(receiver.requests) == 3

    # A new worker delivers the latest existing one at start.
    restarted = Worker(rt.worker, churn=None, now=wall)
    await restarted.checkpoints.step()
    assert await restarted.checkpoints.delivered() == second and receiver.sizes()[-1] == second

    rt.audit.append_sync(event(10))
    stop_now = asyncio.Event()
    stop_now.set()
    await worker.run(stop_now)  # the stop signs what came since, and delivers it once
    assert receiver.sizes()[-1] == rt.audit.head()[0] > second
    assert len(receiver.kept) == 3 and all(
        verifier.open(note).size == int(name.removeprefix("checkpoint-"))
        for name, note in receiver.kept.items()
    )


async def test_a_worker_without_a_webhook_url_posts_nothing(
    store: Store, tmp_path: Path, key: str, wall: Clock
) -> None:
    rt = runtime(store, tmp_path, key, None, checkpoint_every_s=10.0)
    try:
        rt.audit.append_sync(event(1))
        worker = Worker(rt.worker, churn=None, now=wall)
        worker.checkpoints.checkpoint()
        await worker.checkpoints.step()
        assert await worker.checkpoints.delivered() is None and await worker.checkpoints.deliver() is None
    finally:
        await rt.aclose()


async def test_every_n_records_signs_a_checkpoint_when_n_were_appended_and_not_before(
    store: Store, tmp_path: Path, key: str, receiver: Receiver, wall: Clock
) -> None:
    rt = runtime(store, tmp_path, key, receiver, checkpoint_every_s=None, checkpoint_every_records=5)
    folder = CheckpointDir(tmp_path / "cps")
    verifier = NoteVerifier.from_vkey(NoteSigner.from_skey(key).vkey)
    try:
        worker = Worker(rt.worker, churn=None, now=wall)
        assert [job.name for job in worker.scheduler.jobs] == ["reconcile", "resolve_effects"]
        for i in range(4):
            rt.audit.append_sync(event(i))
        await worker.checkpoints.step()
        assert folder.latest() is None and await worker.checkpoints.delivered() is None
        rt.audit.append_sync(event(4))
        await worker.checkpoints.step()
        latest = folder.latest()
        assert latest is not None and open_file(latest, verifier).size == 5
        assert await worker.checkpoints.delivered() == 5 and receiver.sizes() == [5]
        for i in range(4):
            rt.audit.append_sync(event(10 + i))
            await worker.checkpoints.step()
        assert folder.latest() == latest
        rt.audit.append_sync(event(20))
        await worker.checkpoints.step()
        assert folder.latest() is not None and folder.size_of(folder.latest()) == 10  # type: ignore[arg-type]
        assert await worker.checkpoints.delivered() == 10 and receiver.sizes() == [5, 10]
    finally:
        await rt.aclose()


async def test_with_both_triggers_off_the_worker_signs_nothing(
    store: Store, tmp_path: Path, key: str, receiver: Receiver, wall: Clock
) -> None:
    rt = runtime(store, tmp_path, key, receiver, checkpoint_every_s=None, checkpoint_every_records=None)
    try:
        for i in range(3):
            rt.audit.append_sync(event(i))
        worker = Worker(rt.worker, churn=None, now=wall)
        stop = asyncio.Event()
        stop.set()
        await worker.run(stop)
        assert CheckpointDir(tmp_path / "cps").latest() is None and receiver.requests == []
    finally:
        await rt.aclose()


# -- configuration -----------------------------------------------------------------------------------


def config_error(tmp_path: Path, audit: str) -> ConfigError:
    path = tmp_path / "config.yaml"
    path.write_text(f"audit:\n  origin: {ORIGIN}\n{audit}", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    return info.value


def test_a_checkpoint_webhook_url_that_is_not_http_is_refused(tmp_path: Path) -> None:
    err = config_error(tmp_path, "  checkpoint_webhook_url: ftp://witness.example/cp\n")
    assert err.key == "audit.checkpoint_webhook_url" and err.line == 3
    assert "https?://" in str(err) and "got 'ftp://witness.example/cp'" in str(err) and "fix:" in str(err)


def test_every_records_must_be_at_least_one(tmp_path: Path) -> None:
    err = config_error(tmp_path, "  checkpoint_every_records: 0\n")
    assert err.key == "audit.checkpoint_every_records" and err.line == 3
    assert "greater than or equal to 1" in str(err) and "got 0" in str(err)


def test_the_checkpoint_secret_comes_from_the_variable_the_config_names(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("audit:\n  checkpoint_secret_env: WITNESS_HMAC\n", encoding="utf-8")
    settings = load_settings(path, env={"WITNESS_HMAC": f" {SECRET}\n", "PERSONA_CHECKPOINT_SECRET": "other"})
    assert settings.checkpoint_secret is not None and settings.checkpoint_secret.get_secret_value() == SECRET
    assert SECRET not in repr(settings) and SECRET not in settings.model_dump_json()
    shipped = repo_settings()
    assert shipped.checkpoint_secret is None and shipped.audit.checkpoint_webhook_url is None
    assert shipped.audit.checkpoint_timeout_s == 10.0


def test_the_shipped_config_counts_records_between_checkpoints(tmp_path: Path) -> None:
    from tests.harness import config_text

    path = tmp_path / "config.yaml"
    path.write_text(config_text(), encoding="utf-8")
    settings = load_settings(path, env={})  # repo_settings() turns both off
    assert settings.audit.checkpoint_every_records == 10_000 and settings.audit.checkpoint_every_s == 300.0
