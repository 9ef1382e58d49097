"""Identities are users: one normalised spelling of an email, every CLI ``--by`` / ``--user`` checked against
the users once any exist, and the four-eyes rule comparing normalised identities on every path."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from persona.app import Runtime
from persona.calls import call_context
from persona.config import load_settings
from persona.errors import Forbidden, PersonaError
from persona.server import create_app
from persona.store.engine import Store
from persona.users import Users, normalise_email, same_identity
from persona.vault import Actor
from tests.fakes.openai_server import FakeOpenAI, FakeStep
from tests.harness import bearer, build_runtime, call, run_cli, write_config
from tests.test_console import form_token, sign_in
from tools.plisio.sandbox import LoopbackServer, Sandbox

SETUP = Actor("cli", "test-setup")
NOTICE = "no users yet: the CLI is the single local operator"
INVOICE = {"order_name": "ACME retainer", "source_amount": "400", "source_currency": "USD"}


# -- one spelling ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Bob@Example.com", "bob@example.com"),
        ("  ADMIN@EXAMPLE.COM\t", "admin@example.com"),
        ("bob@example.com\n", "bob@example.com"),
        ("Straße@Example.de", "strasse@example.de"),  # case-folded, not only lower-cased
    ],
)
def test_an_email_has_one_spelling(given: str, expected: str) -> None:
    assert normalise_email(given) == expected
    assert same_identity(given, expected)


@pytest.mark.parametrize(
    "given", ["", "   ", "someone-else", "bob at example.com", "a@b@c", "bo b@example.com"]
)
def test_text_that_is_not_an_email_is_refused(given: str) -> None:
    with pytest.raises(PersonaError, match="is not an email address"):
        normalise_email(given)


def test_users_are_stored_and_found_by_the_normalised_email(store: Store) -> None:
    from persona.audit import AuditLog
    from tests.conftest import NOW

    audit = AuditLog(store)
    try:
        users = Users(store, audit, lambda: NOW)
        added = users.add("  Bob@Example.COM ", "admin", SETUP)
        assert added.email == "bob@example.com"
        assert users.get("BOB@example.com").id == added.id
        with pytest.raises(PersonaError, match="exists"):
            users.add("bob@EXAMPLE.com", "viewer", SETUP)
    finally:
        audit.close()


# -- the four-eyes rule, in process: HTTP, console, dispatcher ------------------------------------------


@pytest.fixture
def rt(store: Store, sandbox: Sandbox) -> Iterator[Runtime]:
    runtime = build_runtime(store, sandbox)
    yield runtime
    runtime.audit.close()


async def _held(rt: Runtime, user: str) -> str:
    done = await rt.dispatcher.dispatch(
        call("plisio_create_invoice", INVOICE), call_context(rt.settings, "finance", user)
    )
    assert done.outcome.value == "pending_approval" and done.approval_id
    return done.approval_id


@pytest.fixture
async def http(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(rt, start_worker=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://persona.test") as c:
        yield c


@pytest.mark.anyio
async def test_the_dispatcher_compares_normalised_identities(rt: Runtime) -> None:
    approval_id = await _held(rt, " Bob@Example.com")  # an asker recorded before identities were normalised
    with pytest.raises(Forbidden, match="cannot approve it"):
        await rt.dispatcher.approve(approval_id, by="bob@example.com")
    assert rt.approvals.get(approval_id).status == "pending"
    _, done = await rt.dispatcher.approve(approval_id, by="carol@example.com")
    assert done.outcome.value == "succeeded"


@pytest.mark.anyio
async def test_a_self_approval_over_http_is_refused_whatever_the_case(
    rt: Runtime, http: httpx.AsyncClient
) -> None:
    approval_id = await _held(rt, "Bob@Example.com")
    own = await http.post(
        f"/v1/approvals/{approval_id}/approve", headers=bearer(rt, "bob@example.com", "admin")
    )
    assert own.status_code == 403 and "cannot approve it" in own.json()["error"]["message"], own.text
    assert rt.approvals.get(approval_id).status == "pending"


@pytest.mark.anyio
async def test_a_self_approval_in_the_console_is_refused_whatever_the_case(rt: Runtime) -> None:
    users = Users(rt.store, rt.audit, rt.now)
    users.add("ada@example.com", "admin", SETUP)
    token = users.issue_token("ada@example.com", SETUP)
    approval_id = await _held(rt, "ADA@example.com")
    app = create_app(rt, start_worker=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://console.test") as c:
        assert (await sign_in(c, token)).status_code == 303
        page = await c.get("/approvals")
        refused = await c.post(f"/approvals/{approval_id}/approve", data={"csrf": form_token(page)})
    assert refused.status_code == 403 and "cannot approve it" in refused.text
    assert rt.approvals.get(approval_id).status == "pending"


# -- the CLI: real processes ----------------------------------------------------------------------------


def _cli_runtime(cfg: Path) -> Runtime:
    return Runtime.build(load_settings(cfg))


async def _hold_on(cfg: Path, user: str, count: int) -> list[str]:
    rt = _cli_runtime(cfg)
    try:
        return [await _held(rt, user) for _ in range(count)]
    finally:
        await rt.aclose()


async def _add_users(cfg: Path, *emails: tuple[str, str], disable: tuple[str, ...] = ()) -> None:
    rt = _cli_runtime(cfg)
    try:
        users = Users(rt.store, rt.audit, rt.now)
        for email, role in emails:
            users.add(email, role, SETUP)
        for email in disable:
            users.disable(email, SETUP)
    finally:
        await rt.aclose()


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.anyio
@pytest.mark.slow
async def test_approvals_approve_by_must_be_an_enabled_user_once_users_exist(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    first, second = await _hold_on(cfg, "alice@example.com", 2)

    # Before any user exists the CLI is the single local operator: accepted (normalised), said once.
    early = run_cli(cfg, "approvals", "approve", first, "--by", "Bob@Example.com")
    assert f"approval {first}: executed by bob@example.com" in early.stdout
    assert _flat(early.stderr).count(NOTICE) == 1
    own_early = run_cli(cfg, "approvals", "approve", second, "--by", "ALICE@example.com", check=3)
    assert "cannot approve it" in own_early.stderr  # the asker, in another case, is still the asker

    await _add_users(
        cfg, ("alice@example.com", "operator"), ("admin@example.com", "admin"), ("carol@example.com", "admin"),
        disable=("carol@example.com",),
    )  # fmt: skip
    unknown = run_cli(cfg, "approvals", "approve", second, "--by", "someone-else@example.com", check=2)
    assert _flat(unknown.stderr) == (
        "error: --by: no user 'someone-else@example.com' "
        "(fix: `persona users list` shows them; `persona users add` adds one)"
    )
    disabled = run_cli(cfg, "approvals", "approve", second, "--by", "Carol@Example.com", check=2)
    assert "--by: user carol@example.com is disabled" in _flat(disabled.stderr)
    not_email = run_cli(cfg, "approvals", "reject", second, "--by", "someone-else", check=2)
    assert "--by: 'someone-else' is not an email address" in _flat(not_email.stderr)
    own = run_cli(cfg, "approvals", "approve", second, "--by", " Alice@Example.COM ", check=3)
    assert "alice@example.com asked for this call and cannot approve it" in _flat(own.stderr)
    assert NOTICE not in _flat(unknown.stderr + disabled.stderr + own.stderr)
    listed = run_cli(cfg, "approvals", "list").stdout
    assert second in listed, "nothing was decided by the refused --by values"
    done = run_cli(cfg, "approvals", "approve", second[:6], "--by", "ADMIN@example.com")
    assert f"approval {second}: executed by admin@example.com" in done.stdout and NOTICE not in done.stderr


@pytest.mark.anyio
@pytest.mark.slow
async def test_drafts_approve_by_an_unknown_user_is_refused(tmp_path: Path) -> None:
    from persona.drafts import DraftStore
    from tests.conftest import NOW

    cfg = write_config(tmp_path)
    await _add_users(cfg, ("ops@example.com", "operator"))
    store = Store.open(f"sqlite:///{tmp_path / 'persona.sqlite3'}")
    try:
        draft, _ = DraftStore(store).create(
            flow_key="recovery:t9", txn_id="t9", order_number="ORD-9", customer_email="e@x.io", subject="Hi",
            body="Pay again?", payment_link=None, new_txn_id=None, context={}, drafted_by="template",
            conversation_id=None, now=NOW,
        )  # fmt: skip
    finally:
        store.close()
    refused = run_cli(cfg, "drafts", "approve", draft.id, "--by", "mallory@example.com", check=2)
    assert "--by: no user 'mallory@example.com'" in _flat(refused.stderr)
    shown = run_cli(cfg, "drafts", "show", draft.id).stdout
    assert "pending_review" in shown and "Decided by" not in shown


@pytest.fixture
def llm() -> Iterator[LoopbackServer]:
    steps = [
        FakeStep(tool_calls=[{"id": "c1", "name": "plisio_create_invoice",
                              "arguments": '{"order_name":"ACME retainer","source_amount":"400","source_currency":"USD"}'}]),
        FakeStep(text="The 400 USD invoice for ACME awaits approval."),
    ]  # fmt: skip
    with LoopbackServer(FakeOpenAI(steps).app) as server:
        yield server


@pytest.mark.anyio
@pytest.mark.slow
async def test_chat_as_bob_in_another_case_then_bob_approving_over_http_is_refused(
    tmp_path: Path, llm: LoopbackServer
) -> None:
    cfg = write_config(tmp_path, llm_url=llm.base_url)
    await _add_users(cfg, ("bob@example.com", "admin"))
    stranger = run_cli(cfg, "chat", "--user", "Eve@Example.com", "-m", "bill ACME 400", check=2)
    assert "--user: no user 'eve@example.com'" in _flat(stranger.stderr)
    chat = run_cli(cfg, "chat", "--persona", "finance", "--user", "Bob@Example.com", "-m", "bill ACME 400")
    assert "⏸ pending approval" in chat.stdout

    rt = _cli_runtime(cfg)
    try:
        [approval] = rt.approvals.find("pending")
        assert approval.user_id == "bob@example.com", "the asker is recorded by the normalised email"
        app = create_app(rt, start_worker=False)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://persona.test"
        ) as c:
            own = await c.post(
                f"/v1/approvals/{approval.id}/approve", headers=bearer(rt, "bob@example.com", "admin")
            )
        assert own.status_code == 403 and "cannot approve it" in own.json()["error"]["message"], own.text
        assert rt.approvals.get(approval.id).status == "pending"
        conversation = re.search(r"conv_[0-9a-f]{16}", chat.stdout)
        assert conversation
    finally:
        await rt.aclose()
