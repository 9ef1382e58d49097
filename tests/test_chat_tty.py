"""``persona chat`` as a person sees it: in a pseudo-terminal (a spinner, Ctrl-C cancelling a turn, a second
one leaving) and piped (streamed text exactly as the model sent it, no spinner)."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import select as sql_select

from persona.store.audit_tables import audit_log
from persona.store.engine import Store
from tests.fakes.openai_server import FakeOpenAI, FakeStep
from tests.harness import run_cli, write_config
from tools.plisio.sandbox import LoopbackServer

ALICE = "alice@example.com"
# The child becomes a session leader (start_new_session) and takes the pty as its controlling terminal, so
# the terminal's Ctrl-C reaches it as SIGINT, as in a shell; then it runs persona.
_TAKE_TTY = "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); os.execv(sys.argv[1], sys.argv[1:])"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


class SlowModel:
    """An OpenAI-compatible endpoint whose chat requests numbered in ``hang`` think for a while, stream
    their first words, then hang until the test ends; the other requests are the FakeOpenAI's."""

    def __init__(self, fake: FakeOpenAI, hang: set[int], think_s: float = 1.0) -> None:
        self.fake, self.hang, self.think_s = fake, hang, think_s
        self.count = 0
        self.released = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/chat/completions"):
            self.count += 1
            if self.count in self.hang:
                await self._hang(receive, send)
                return
        await self.fake.app(scope, receive, send)

    async def _hang(self, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await self._wait(self.think_s)
        chunk = {"id": "chatcmpl-slow", "object": "chat.completion.chunk", "created": 0, "model": "fake-model",
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Let me think"},
                              "finish_reason": None}]}  # fmt: skip
        await send(
            {
                "type": "http.response.body",
                "body": f"data: {json.dumps(chunk)}\n\n".encode(),
                "more_body": True,
            }
        )
        await self._wait(60.0)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    async def _wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.released.is_set() and time.monotonic() < deadline:
            await anyio.sleep(0.05)


class Terminal:
    """``persona ARGS`` on a pseudo-terminal of 100 columns; what it shows is read with deadlines."""

    def __init__(self, cfg: Path, *args: str) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _TAKE_TTY, sys.executable, "-m", "persona", "--config", str(cfg), *args],
            stdin=slave, stdout=slave, stderr=slave, start_new_session=True, cwd=cfg.parent,
            env={"PATH": "/usr/bin:/bin", "TERM": "xterm-256color"},
        )  # fmt: skip
        os.close(slave)
        self.master = master
        self.raw = b""
        self.mark = 0

    @property
    def shown(self) -> str:
        return _ANSI.sub("", self.raw.decode("utf-8", "replace"))

    def expect(self, needle: str, timeout: float = 20.0) -> None:
        """Wait until ``needle`` shows after the last thing expected."""
        deadline = time.monotonic() + timeout
        while needle not in self.shown[self.mark :]:
            if time.monotonic() > deadline or not self._read(deadline):
                raise AssertionError(
                    f"{needle!r} did not show within {timeout}s; the terminal shows:\n{self.shown}"
                )
        self.mark = self.shown.index(needle, self.mark) + len(needle)

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def exit_status(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(deadline)
        self._read(time.monotonic() + 0.5)
        status = self.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        return status

    def _read(self, deadline: float) -> bool:
        """Read what is there (up to 0.2 s); False once the terminal is closed."""
        ready, _, _ = select.select([self.master], [], [], max(min(deadline - time.monotonic(), 0.2), 0))
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the process closed its end
            return False
        self.raw += data
        return bool(data)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self.master)


@pytest.fixture
def slow() -> Iterator[tuple[SlowModel, LoopbackServer]]:
    fake = FakeOpenAI([FakeStep(text="Back again.")])
    model = SlowModel(fake, hang={1, 3})
    server = LoopbackServer(model)  # type: ignore[arg-type]
    with server:
        try:
            yield model, server
        finally:
            model.released.set()


@pytest.mark.slow
def test_ctrl_c_cancels_the_turn_in_flight_and_a_second_one_leaves(
    tmp_path: Path, slow: tuple[SlowModel, LoopbackServer]
) -> None:
    model, server = slow
    cfg = write_config(tmp_path, llm_url=server.base_url)
    term = Terminal(cfg, "chat", "--persona", "finance", "--user", ALICE)
    try:
        term.expect("you>")
        term.send("What is my balance?\r")
        term.expect("thinking…")  # the spinner, while the model has sent nothing yet
        term.expect("Let me think")
        term.send("\x03")
        term.expect("turn cancelled (Ctrl-C)")
        term.expect("you>")  # the session goes on

        term.send("Hello again\r")
        term.expect("Back again.")
        term.expect("you>")

        term.send("One more\r")
        term.expect("Let me think")
        term.send("\x03")
        term.expect("turn cancelled (Ctrl-C)")
        term.expect("you>")
        term.send("\x03")  # at the prompt: leave
        assert term.exit_status(timeout=10) == 130, term.shown
    finally:
        term.close()
    shown = term.shown
    conversation = re.search(
        r"left (conv_[0-9a-f]{16}) \(Ctrl-C\); resume it: persona chat --conversation", shown
    )
    assert conversation, shown
    assert "Traceback" not in shown and "error" not in shown.lower(), shown

    [kept] = model.fake.requests  # the turn between the cancelled ones: no trace of the first in its history
    assert [(m["role"], m.get("content")) for m in kept["messages"][1:]] == [("user", "Hello again")]
    store = Store.open(f"sqlite:///{tmp_path / 'persona.sqlite3'}")
    try:
        with store.read() as conn:
            rows = conn.execute(
                sql_select(audit_log.c.event, audit_log.c.source, audit_log.c.user_id, audit_log.c.persona,
                           audit_log.c.conversation_id, audit_log.c.reason)
                .where(audit_log.c.event.in_(["turn_failed", "turn_cancelled", "turn_ended"]))
                .order_by(audit_log.c.seq)
            ).all()  # fmt: skip
    finally:
        store.close()
    assert [(r.event, r.source, r.reason) for r in rows] == [
        ("turn_failed", "chat", "cancelled"), ("turn_cancelled", "cli", "ctrl_c"),
        ("turn_ended", "chat", None),
        ("turn_failed", "chat", "cancelled"), ("turn_cancelled", "cli", "ctrl_c"),
    ]  # fmt: skip
    assert {(r.user_id, r.persona, r.conversation_id) for r in rows} == {
        (ALICE, "finance", conversation.group(1))
    }


@pytest.mark.slow
def test_a_long_streamed_answer_piped_has_only_the_line_breaks_the_model_sent(tmp_path: Path) -> None:
    words = [f"{n}" + "x" * 117 for n in range(5)]  # each streamed chunk is longer than the 80 columns
    text = " ".join(words[:3]) + "\n" + " ".join(words[3:])
    fake = FakeOpenAI([FakeStep(text=text)])
    with LoopbackServer(fake.app) as server:
        cfg = write_config(tmp_path, llm_url=server.base_url)
        proc = run_cli(cfg, "chat", "--persona", "finance", "--user", ALICE, "-m", "Tell me a long story",
                       env={"COLUMNS": "80"})  # fmt: skip
    assert f"finance> {text}\n" in proc.stdout, proc.stdout
    assert proc.stdout.count(words[0]) == 1, "the final text is not printed again"
    assert "thinking" not in proc.stdout and "\x1b" not in proc.stdout, "no spinner in piped output"


@pytest.mark.anyio
async def test_a_second_ctrl_c_while_the_turn_winds_down_leaves() -> None:
    from persona.cli.chat import _CtrlC

    ctrl_c = _CtrlC(asyncio.get_running_loop())
    wound_down = asyncio.Event()

    async def turn() -> str:
        try:
            await asyncio.sleep(30)
        finally:
            await wound_down.wait()  # a write in flight finishing, its record being written
        return "never"

    running = asyncio.ensure_future(ctrl_c.run(turn()))
    await asyncio.sleep(0)
    ctrl_c._on_sigint(signal.SIGINT, None)
    await asyncio.sleep(0.01)
    ctrl_c._on_sigint(signal.SIGINT, None)
    assert ctrl_c.cancelled and ctrl_c.leave and not running.done()
    wound_down.set()
    assert await asyncio.wait_for(running, 5) is None
