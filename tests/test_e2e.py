"""End to end on loopback: a sandbox invoice expires, its signed callback reaches `persona serve`,
the worker drafts a recovery message with real tool calls, and the audit log shows the whole chain."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from persona.demo import run_story
from tests.harness import REPO, repo_settings, write_config

pytestmark = pytest.mark.anyio


async def test_failed_payment_story_over_loopback(tmp_path: Path) -> None:
    lines: list[str] = []
    story = await run_story(repo_settings(), root=REPO, workdir=tmp_path, say=lines.append)
    assert story.callback_status == 200 and story.callback_encoding == "form"
    assert story.draft is not None and story.draft.status == "pending_review"
    assert story.draft.txn_id == story.txn_id and story.draft.customer_email == "maria.garcia@example.com"
    assert story.draft.payment_link and story.draft.new_txn_id != story.txn_id
    assert sorted(story.tool_calls) == [  # the two reads run concurrently: any order
        ("plisio_create_invoice", "succeeded"),
        ("plisio_get_invoice", "succeeded"),
        ("plisio_list_transactions", "succeeded"),
    ]
    assert story.report is not None and story.report.ok
    chain = [r.event for r in story.chain]
    assert chain == ["webhook_received", "draft_created", "inbox_processed"]
    received, created, processed = story.chain
    assert (
        received.payload["txn_id"] == processed.payload["txn_id"] == created.payload["txn_id"] == story.txn_id
    )
    assert processed.payload["plisio_status"] == "expired" and processed.payload["action"] == "recovery"
    assert any("6. persona audit verify: chain intact" in line for line in lines)


@pytest.mark.slow
def test_make_demo_command_prints_the_story(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)  # the demo works beside its config: its var/ and scenarios/
    shutil.copytree(REPO / "scenarios", tmp_path / "scenarios")
    proc = subprocess.run(
        [sys.executable, "-m", "persona", "--config", str(cfg), "demo"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "COLUMNS": "120"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for needle in ["then answers 200", "plisio_get_invoice", "waits for review", "chain intact", "Done in"]:
        assert needle in proc.stdout
    assert "Traceback" not in proc.stderr
