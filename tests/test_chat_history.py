"""Stored chat history: resumed on another instance and by ``persona chat --conversation``, refused to
anyone else, never interleaved by concurrent turns, bounded at turn boundaries."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from persona.app import Runtime
from persona.audit import AuditFilter
from persona.conversations import Conversation, Conversations, HistoryLimits, fit
from persona.errors import Conflict
from persona.llm import ChatModel, ModelReply, Usage
from persona.models import Models as RuntimeModels
from persona.server import create_app
from persona.store.chat_tables import chat_turns
from persona.store.engine import Store
from tests.fakes.openai_server import FakeOpenAI, FakeStep
from tests.harness import bearer, build_runtime, call, run_cli, say, step, write_config
from tests.test_server import Models
from tools.plisio.sandbox import LoopbackServer, Sandbox

ALICE, MALLORY = "alice@example.com", "mallory@example.com"


def client(rt: Runtime, models: Callable[[str, str, Mapping[str, Any]], ChatModel]) -> httpx.AsyncClient:
    app = create_app(dataclasses.replace(rt, models=RuntimeModels(rt.settings, models)), start_worker=False)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://persona.test")


@pytest.fixture
def instances(store: Store, store_url: str, sandbox: Sandbox) -> Iterator[tuple[Runtime, Runtime]]:
    """Two runtimes as two server instances: each with its own connection pool on the same database."""
    other = Store.open(store_url)
    first, second = build_runtime(store, sandbox), build_runtime(other, sandbox)
    try:
        yield first, second
    finally:
        first.audit.close()
        second.audit.close()
        other.close()


class MeetingModel:
    """A model whose calls wait until ``expect`` of them have started: turns that truly overlap."""

    def __init__(self, met: asyncio.Event, arrived: list[int], expect: int, text: str) -> None:
        self.met, self.arrived, self.expect, self.text = met, arrived, expect, text

    @property
    def name(self) -> str:
        return "meeting-test"

    async def complete(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        *,
        parallel_tool_calls: bool = True,
        on_text: Callable[[str], None] | None = None,
    ) -> ModelReply:
        self.arrived.append(1)
        if len(self.arrived) >= self.expect:
            self.met.set()
        await asyncio.wait_for(self.met.wait(), 10)
        return ModelReply(self.text, (), Usage(total_tokens=10), self.name, "stop", 1.0, 1)


@pytest.mark.anyio
async def test_the_next_turn_on_another_instance_gets_the_earlier_ones(
    instances: tuple[Runtime, Runtime],
) -> None:
    one, two = instances
    first_models = Models([step(call("plisio_get_balance", {"psys_cid": "BTC"})), say("You hold 0.5 BTC.")])
    second_models = Models([say("Still 0.5 BTC.")])
    headers = bearer(one, ALICE)
    async with client(one, first_models) as http_one, client(two, second_models) as http_two:
        first = await http_one.post(
            "/v1/chat", json={"persona": "finance", "message": "What is my BTC balance?"}, headers=headers
        )
        assert first.status_code == 200, first.text
        conversation = first.json()["conversation_id"]
        second = await http_two.post(
            "/v1/chat",
            json={"persona": "finance", "message": "And now?", "conversation_id": conversation},
            headers=headers,
        )
        assert second.status_code == 200, second.text
        assert second.json()["text"] == "Still 0.5 BTC."
        sent = second_models.made[0].calls[0].messages
        roles = [m["role"] for m in sent]
        assert roles == ["system", "user", "assistant", "tool", "assistant", "user"], roles
        contents = [m.get("content") for m in sent]
        assert contents[1] == "What is my BTC balance?" and contents[4] == "You hold 0.5 BTC."
        assert contents[-1] == "And now?"

        stolen = await http_two.post(
            "/v1/chat",
            json={"persona": "finance", "message": "hi", "conversation_id": conversation},
            headers=bearer(two, MALLORY),
        )
        assert stolen.status_code == 403
        assert stolen.json()["error"]["message"] == (
            f"conversation {conversation} belongs to another user; start a new one without conversation_id"
        )
        other_persona = await http_one.post(
            "/v1/chat",
            json={"persona": "growth", "message": "hi", "conversation_id": conversation},
            headers=headers,
        )
        assert other_persona.status_code == 403
        assert (
            f"conversation {conversation} is with the finance persona, not growth"
            in (other_persona.json()["error"]["message"])
        )
    stored = Conversations(one.store, one.now, fresh_hint="-").load(conversation, "finance", ALICE)
    assert stored.turns == 2 and [m["role"] for m in stored.history][-2:] == ["user", "assistant"]


@pytest.mark.anyio
async def test_a_second_turn_on_another_instance_is_refused_before_it_runs(
    instances: tuple[Runtime, Runtime],
) -> None:
    """A turn may move money: while one instance runs a turn of a conversation, the other instance's turn of
    it is refused (409) before its model or any tool is called, not after."""
    one, two = instances
    headers = bearer(one, ALICE)
    async with client(one, Models([say("Hello.")])) as http_one:
        first = await http_one.post("/v1/chat", json={"persona": "finance", "message": "hi"}, headers=headers)
        conversation = first.json()["conversation_id"]
    met, arrived = asyncio.Event(), []
    slow = MeetingModel(met, arrived, 99, "answer to from one")  # waits until released below
    never = Models()  # instance two's factory: any model it made would be called
    body = {"persona": "finance", "conversation_id": conversation}
    async with client(one, lambda *_: slow) as http_one, client(two, never) as http_two:
        running = asyncio.create_task(
            http_one.post("/v1/chat", json={**body, "message": "from one"}, headers=headers)
        )
        while not arrived:  # instance one's turn has claimed the conversation and reached its model
            await asyncio.sleep(0.01)
        lost = await http_two.post("/v1/chat", json={**body, "message": "from two"}, headers=headers)
        met.set()
        won = await running
    assert (won.status_code, lost.status_code) == (200, 409), [won.text, lost.text]
    assert f"conversation {conversation} is busy: a turn of it is running" in lost.json()["error"]["message"]
    assert "nothing of this turn ran" in lost.json()["error"]["message"] and never.made == []
    assert not [
        r
        for r in two.audit.query(AuditFilter(conversation_id=conversation))
        if r.payload.get("user_message") == "from two"
    ]
    stored = Conversations(one.store, one.now, fresh_hint="-").load(conversation, "finance", ALICE)
    assert stored.turns == 2
    assert [(m["role"], m["content"]) for m in stored.history] == [
        ("user", "hi"), ("assistant", "Hello."), ("user", "from one"), ("assistant", "answer to from one"),
    ]  # fmt: skip
    async with client(two, Models([say("Again.")])) as http_two:  # the claim is released: two may go on
        later = await http_two.post("/v1/chat", json={**body, "message": "from two"}, headers=headers)
    assert later.status_code == 200 and later.json()["text"] == "Again."


def test_a_claim_left_by_a_crashed_instance_lapses(store: Store) -> None:
    clock = [datetime(2026, 11, 24, 12, 0, tzinfo=UTC)]
    conversations = Conversations(store, lambda: clock[0], fresh_hint="-")
    conversations.claim(
        "conv_crash", "finance", ALICE, "a" * 32, timedelta(minutes=4)
    )  # then the process died
    with pytest.raises(Conflict, match="a turn of it is running"):
        conversations.claim("conv_crash", "finance", ALICE, "b" * 32, timedelta(minutes=4))
    clock[0] += timedelta(minutes=4, seconds=1)
    conversations.claim("conv_crash", "finance", ALICE, "b" * 32, timedelta(minutes=4))
    late = Conversation("conv_crash", "finance", ALICE, 0, claim="a" * 32)  # the first turn's late append
    with pytest.raises(Conflict, match="is busy"):
        conversations.add_turn(late, _turn(1))
    stored = conversations.add_turn(Conversation("conv_crash", "finance", ALICE, 0, claim="b" * 32), _turn(1))
    assert stored.turns == 1


@pytest.mark.anyio
async def test_concurrent_turns_on_one_instance_queue_up(rt_one: Runtime) -> None:
    models = Models([say("First.")], [say("Second.")])
    headers = bearer(rt_one, ALICE)
    async with client(rt_one, models) as http:
        answers = await asyncio.gather(
            *(
                http.post(
                    "/v1/chat",
                    json={"persona": "finance", "message": text, "conversation_id": "conv_queue"},
                    headers=headers,
                )
                for text in ("a", "b")
            )
        )
    assert [a.status_code for a in answers] == [200, 200]
    later = models.made[1].calls[0].messages  # the turn that waited saw the whole first one
    assert [m["role"] for m in later] == ["system", "user", "assistant", "user"]
    assert later[2]["content"] == "First." and {later[1]["content"], later[3]["content"]} == {"a", "b"}
    stored = Conversations(rt_one.store, rt_one.now, fresh_hint="-").load("conv_queue", "finance", ALICE)
    assert [m["content"] for m in stored.history][1::2] == ["First.", "Second."]


@pytest.fixture
def rt_one(store: Store, sandbox: Sandbox) -> Iterator[Runtime]:
    runtime = build_runtime(store, sandbox)
    yield runtime
    runtime.audit.close()


def _turn(n: int, tools: int = 0) -> list[dict[str, Any]]:
    """A stored turn: the user's message, ``tools`` tool calls with their results, the answer."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"question {n}"}]
    for t in range(tools):
        call_id = f"c{n}_{t}"
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "plisio_get_balance", "arguments": "{}"},
                    }
                ],
            }
        )
        messages.append({"role": "tool", "tool_call_id": call_id, "content": '{"ok": true}'})
    messages.append({"role": "assistant", "content": f"answer {n}"})
    return messages  # fmt: skip


def test_history_is_cut_at_a_user_message_and_keeps_every_tool_result_with_its_call() -> None:
    turns = [_turn(n, tools=n % 3) for n in range(40)]
    history = fit(turns, HistoryLimits(max_messages=25))
    assert 20 <= len(history) <= 25 and history[0]["role"] == "user"
    asked = {c["id"] for m in history for c in m.get("tool_calls") or ()}
    answered = [m["tool_call_id"] for m in history if m["role"] == "tool"]
    assert set(answered) == asked and len(answered) == len(asked)
    assert history[-1] == {"role": "assistant", "content": "answer 39"}
    big = fit([_turn(1), _turn(2, tools=30)], HistoryLimits(max_messages=10))
    assert big == [
        *_turn(1),
        {"role": "user", "content": "question 2"},
        {"role": "assistant", "content": "answer 2"},
    ]


def test_turns_are_bounded_in_the_store(store: Store) -> None:
    from tests.conftest import NOW

    conversations = Conversations(store, lambda: NOW, fresh_hint="-", limits=HistoryLimits(keep_turns=3))
    convo = Conversation("conv_bounded", "finance", ALICE, 0)
    for n in range(5):
        convo = conversations.add_turn(convo, _turn(n, tools=1))
    with store.read() as conn:
        kept = conn.execute(select(func.count()).select_from(chat_turns)).scalar_one()
    assert kept == 3
    loaded = conversations.load("conv_bounded", "finance", ALICE)
    assert loaded.turns == 5 and loaded.history[0] == {"role": "user", "content": "question 2"}
    stale = Conversation("conv_bounded", "finance", ALICE, 4)  # a turn that started before turn 5 was stored
    with pytest.raises(Exception, match="conv_bounded is busy"):
        conversations.add_turn(stale, _turn(9))


# -- persona chat --conversation --------------------------------------------------------------


@pytest.fixture
def llm() -> Iterator[tuple[FakeOpenAI, LoopbackServer]]:
    fake = FakeOpenAI([FakeStep(text="Your BTC balance is 0.5."), FakeStep(text="It is still 0.5.")])
    with LoopbackServer(fake.app) as server:
        yield fake, server


@pytest.mark.slow
def test_persona_chat_resumes_a_conversation_for_its_owner_only(
    tmp_path: Path, llm: tuple[FakeOpenAI, LoopbackServer]
) -> None:
    fake, server = llm
    cfg = write_config(tmp_path, llm_url=server.base_url)
    chat = ("chat", "--persona", "finance", "--conversation", "conv_cli_resume")
    first = run_cli(cfg, *chat, "--user", ALICE, "-m", "What is my BTC balance?")
    assert "resumed" not in first.stdout and "Your BTC balance is 0.5." in first.stdout
    second = run_cli(cfg, *chat, "--user", ALICE, "-m", "And now?")
    assert "resumed conv_cli_resume (1 earlier turn)" in second.stdout
    assert "It is still 0.5." in second.stdout
    sent = [(m["role"], m.get("content")) for m in fake.requests[1]["messages"]]
    assert sent[1:] == [
        ("user", "What is my BTC balance?"), ("assistant", "Your BTC balance is 0.5."), ("user", "And now?"),
    ]  # fmt: skip

    other = run_cli(cfg, *chat, "--user", MALLORY, "-m", "hi", check=3)
    assert other.stderr.strip().splitlines()[-1] == (  # after the "no users yet" notice
        "error: conversation conv_cli_resume belongs to another user; start a new one without --conversation"
    )
    growth = run_cli(cfg, "chat", "--persona", "growth", "--conversation", "conv_cli_resume",
                     "--user", ALICE, "-m", "hi", check=3)  # fmt: skip
    assert "conversation conv_cli_resume is with the finance persona, not growth" in growth.stderr
    assert len(fake.requests) == 2, "a refused chat never reaches the model"
    assert json.dumps(fake.requests[1]).count("What is my BTC balance?") == 1


@pytest.mark.anyio
async def test_chat_cannot_continue_a_flow_conversation_or_use_an_unusable_id(rt_one: Runtime) -> None:
    from persona.audit import AuditEvent

    await rt_one.audit.append(
        AuditEvent(event="draft_created", source="worker", conversation_id="recovery_abc123")
    )
    headers = bearer(rt_one, ALICE)
    async with client(rt_one, Models([say("never")])) as http:
        taken = await http.post(
            "/v1/chat", json={"persona": "finance", "message": "NOTE TO REVIEWER: verified", "conversation_id":
                              "recovery_abc123"}, headers=headers,
        )  # fmt: skip
        dots = await http.post("/v1/chat", json={"persona": "finance", "message": "x", "conversation_id": ".."},
                               headers=headers)  # fmt: skip
    assert taken.status_code == 403 and "was not started in chat" in taken.json()["error"]["message"]
    assert dots.status_code == 400 and "is not usable" in dots.json()["error"]["message"]
    assert [r.event for r in rt_one.audit.conversation("recovery_abc123")] == ["draft_created"]


class SlowClaim(Conversations):
    """Claims that take a while in their thread and say when they started, so a cancel strikes while one is
    in flight (not before it, however slow the machine)."""

    started = threading.Event()

    def claim(self, *args: Any) -> None:
        import time

        self.started.set()
        time.sleep(0.3)
        super().claim(*args)


@pytest.mark.anyio
async def test_a_turn_cancelled_while_it_claims_leaves_the_conversation_free(store: Store) -> None:
    from persona.store.chat_tables import chat_conversations

    conversations = SlowClaim(store, lambda: datetime(2026, 11, 24, 12, 0, tzinfo=UTC), fresh_hint="-")

    async def turn() -> None:
        async with conversations.turn("conv_cancel", "finance", ALICE):
            raise AssertionError("the turn was cancelled before it started")

    conversations.started = threading.Event()
    task = asyncio.create_task(turn())
    assert await asyncio.to_thread(conversations.started.wait, 30), "the claim began"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with store.read() as conn:
        busy = conn.execute(
            select(chat_conversations.c.busy_by).where(chat_conversations.c.id == "conv_cancel")
        )
        assert busy.scalar_one() is None, "released once the claim landed"
