"""The review console over HTTP (no browser): sessions, cookies, CSRF, roles, refusals, audit, secrets.

The browser suite (tests/browser, ``make browser-test``) drives the same pages in Chromium; these pin the
security properties one request at a time, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from persona.app import Runtime
from persona.audit import AuditFilter
from persona.drafts import DraftStore
from persona.flows import recovery
from persona.server import create_app
from persona.store.engine import Store
from persona.users import Users
from persona.vault import Actor
from tests.conftest import NOW
from tests.harness import build_runtime
from tests.test_checkpoint_sinks import all_logs
from tests.test_recovery import failed_invoice, recovery_script
from tools.plisio.sandbox import Sandbox

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.at = NOW

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
async def world(store: Store, sandbox: Sandbox) -> AsyncIterator[dict[str, Any]]:
    clock = Clock()
    rt = build_runtime(store, sandbox, now=clock)
    rt.model_factory = lambda flow, persona, facts: recovery_script(facts)
    users, actor = Users(rt.store, rt.audit, rt.now), Actor("cli", "test-setup")
    tokens = {}
    for email, role in (
        ("ada@example.com", "admin"),
        ("oscar@example.com", "operator"),
        ("vera@example.com", "viewer"),
    ):
        users.add(email, role, actor)
        tokens[role] = users.issue_token(email, actor)
    draft = await recovery.handle_failure(rt.flows, await failed_invoice(rt, sandbox), trigger="webhook")
    assert draft is not None
    yield {"rt": rt, "tokens": tokens, "draft": draft, "clock": clock, "users": users}
    await rt.plisio.aclose()


def client(rt: Runtime, base: str = "http://console.test") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(create_app(rt, start_worker=False)), base_url=base)


async def sign_in(c: httpx.AsyncClient, token: str, next_: str = "") -> httpx.Response:
    form = await c.get("/sign-in")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    return await c.post("/sign-in", data={"token": token, "csrf": csrf.group(1), "next": next_})


def form_token(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return found.group(1)


def events(rt: Runtime, event: str) -> list[Any]:
    return rt.audit.query(AuditFilter(event=event))


async def test_sign_in_sets_a_strict_http_only_cookie_and_is_audited(world: dict[str, Any]) -> None:
    rt = world["rt"]
    async with client(rt) as c:
        with all_logs() as logs:
            signed = await sign_in(c, world["tokens"]["operator"])
        assert signed.status_code == 303 and signed.headers["location"] == "/drafts"
        cookie = next(h for h in signed.headers.get_list("set-cookie") if h.startswith("persona_session="))
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert (
            "Max-Age=28800" in cookie and "Secure" not in cookie
        )  # plain http: a Secure cookie would never return
        page = await c.get("/drafts")
        assert page.status_code == 200 and "oscar@example.com · operator" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"
    [record] = events(rt, "console_signed_in")
    assert (record.source, record.user) == ("web", "oscar@example.com")
    token, value = world["tokens"]["operator"], cookie.split(";")[0].split("=", 1)[1]
    assert not [e for e in logs if token in repr(e) or value in repr(e)], "no token or session id in logs"


async def test_behind_https_the_cookie_is_secure(world: dict[str, Any]) -> None:
    async with client(world["rt"], "https://console.test") as c:
        signed = await sign_in(c, world["tokens"]["operator"])
    cookie = next(h for h in signed.headers.get_list("set-cookie") if h.startswith("persona_session="))
    assert "Secure" in cookie


async def test_a_bad_token_and_a_forged_sign_in_are_refused(world: dict[str, Any]) -> None:
    async with client(world["rt"]) as c:
        with all_logs() as logs:
            bad = await sign_in(c, "pp_guessed")
        assert bad.status_code == 401 and "That token is not valid" in bad.text
        assert "persona_session" not in bad.headers.get("set-cookie", "")
        assert [e["event"] for e in logs if e["event"].startswith("web_")] == ["web_signin_refused"]
        c.cookies.clear()  # a form posted from another site carries no sign-in cookie
        forged = await c.post("/sign-in", data={"token": world["tokens"]["admin"], "csrf": "x", "next": ""})
        assert forged.status_code == 403 and "persona_session" not in forged.headers.get("set-cookie", "")


async def test_next_never_leads_off_the_server(world: dict[str, Any]) -> None:
    async with client(world["rt"]) as c:
        for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
            c.cookies.clear()
            signed = await sign_in(c, world["tokens"]["operator"], target)
            assert signed.headers["location"] == "/drafts", target
        c.cookies.clear()
        assert (await sign_in(c, world["tokens"]["operator"], "/inbox")).headers["location"] == "/inbox"


async def test_without_a_session_every_page_leads_to_sign_in(world: dict[str, Any]) -> None:
    async with client(world["rt"]) as c:
        for path in ("/drafts", "/approvals", "/audit", f"/drafts/{world['draft'].id}"):
            answer = await c.get(path)
            assert answer.status_code == 303 and answer.headers["location"] == f"/sign-in?next={path}"
        post = await c.post(f"/drafts/{world['draft'].id}/approve", data={"csrf": "x"})
        assert post.status_code == 303 and post.headers["location"] == "/sign-in?next=/"
    assert DraftStore(world["rt"].store).get(world["draft"].id).status == "pending_review"


async def test_a_post_without_the_session_form_token_changes_nothing(world: dict[str, Any]) -> None:
    rt, draft = world["rt"], world["draft"]
    async with client(rt) as c:
        await sign_in(c, world["tokens"]["operator"])
        with all_logs() as logs:
            for data in ({"note": "x"}, {"note": "x", "csrf": "not-the-token"}):
                refused = await c.post(f"/drafts/{draft.id}/reject", data=data)
                assert refused.status_code == 403 and "Form refused" in refused.text
        assert [e["event"] for e in logs if e["event"] == "web_csrf_refused"] == ["web_csrf_refused"] * 2
        assert DraftStore(rt.store).get(draft.id).status == "pending_review"
        page = await c.get(f"/drafts/{draft.id}")
        done = await c.post(
            f"/drafts/{draft.id}/mark-sent", data={"csrf": form_token(page), "note": "phoned her"}
        )
        assert done.status_code == 303 and done.headers["location"] == f"/drafts/{draft.id}?done=marked_sent"
        assert "Recorded as sent by hand." in (await c.get(done.headers["location"])).text
    [record] = events(rt, "draft_marked_sent")
    assert (record.source, record.user) == ("web", "oscar@example.com")
    assert DraftStore(rt.store).get(draft.id).status == "sent"


async def test_roles_are_the_api_roles(world: dict[str, Any]) -> None:
    async with client(world["rt"]) as c:
        await sign_in(c, world["tokens"]["viewer"])
        for path in ("/drafts", "/refunds", "/inbox", "/churn", "/approvals"):
            denied = await c.get(path)
            assert denied.status_code == 403 and "Role viewer may not" in denied.text, path
        assert (await c.get("/audit")).status_code == 200
        page = await c.get("/audit")
        post = await c.post(f"/drafts/{world['draft'].id}/approve", data={"csrf": form_token(page)})
        assert post.status_code == 403
        c.cookies.clear()
        await sign_in(c, world["tokens"]["operator"])
        assert (await c.get("/approvals")).status_code == 403
        assert (await c.get("/audit")).status_code == 200


async def test_domain_refusals_are_pages_with_the_reason(world: dict[str, Any]) -> None:
    rt, draft = world["rt"], world["draft"]
    async with client(rt) as c:
        await sign_in(c, world["tokens"]["operator"])
        csrf = form_token(await c.get("/drafts"))
        long_note = await c.post(f"/drafts/{draft.id}/reject", data={"csrf": csrf, "note": "x" * 2001})
        assert long_note.status_code == 400 and "at most 2000" in long_note.text
        assert DraftStore(rt.store).get(draft.id).status == "pending_review"
        # No outbound channel is configured: approve says so and changes nothing; mark-sent is the way.
        no_channel = await c.post(f"/drafts/{draft.id}/approve", data={"csrf": csrf})
        assert no_channel.status_code == 503 and "outbound.webhook_url" in no_channel.text
        assert (await c.post(f"/drafts/{draft.id}/reject", data={"csrf": csrf})).status_code == 303
        again = await c.post(f"/drafts/{draft.id}/reject", data={"csrf": csrf})
        assert again.status_code == 409 and "rejected" in again.text
        missing = await c.get("/drafts/nope")
        assert missing.status_code == 404 and "nope" in missing.text
        bad = await c.get("/inbox?state=bogus")
        assert bad.status_code == 400 and "use one of" in bad.text
        bad_time = await c.get("/audit?since=yesterday")
        assert bad_time.status_code == 400 and "is not a date or time" in bad_time.text


async def test_sign_out_revocation_disabling_and_expiry_end_the_session(world: dict[str, Any]) -> None:
    rt, users = world["rt"], world["users"]
    async with client(rt) as c:
        await sign_in(c, world["tokens"]["operator"])
        page = await c.get("/drafts")
        out = await c.post("/sign-out", data={"csrf": form_token(page)})
        assert out.status_code == 303 and out.headers["location"] == "/sign-in"
    [record] = events(rt, "console_signed_out")
    assert (record.source, record.user) == ("web", "oscar@example.com")
    async with client(rt) as c:  # a second instance over the same store: sessions are shared
        await sign_in(c, world["tokens"]["operator"])
        async with client(rt) as other:
            other.cookies.update(c.cookies)
            assert (await other.get("/drafts")).status_code == 200
        world["clock"].at = NOW + timedelta(minutes=rt.settings.server.console_session_minutes, seconds=1)
        assert (await c.get("/drafts")).status_code == 303, "expired"
        world["clock"].at = NOW
        assert (await c.get("/drafts")).status_code == 200
        users.disable("oscar@example.com", Actor("cli", "test"))
        assert (await c.get("/drafts")).status_code == 303, "a disabled user's session ends"


async def test_inbox_retry_from_the_console_is_audited_with_its_user(world: dict[str, Any]) -> None:
    from persona.inbox import Inbox

    rt = world["rt"]
    row = Inbox(rt.store).record(source="callback", body=b"status=bogus", encoding="form", fields={"status": "bogus"},
                                 callback=None, error="txn_id is missing", now=NOW)  # fmt: skip
    async with client(rt) as c:
        await sign_in(c, world["tokens"]["operator"])
        page = await c.get("/inbox?state=poison")
        assert f'action="/inbox/{row.id}/retry"' in page.text
        done = await c.post(f"/inbox/{row.id}/retry", data={"csrf": form_token(page)})
        assert done.status_code == 303
        again = await c.post(f"/inbox/{row.id}/retry", data={"csrf": form_token(page)})
        assert again.status_code == 409
    [record] = events(rt, "inbox_retried")
    assert (record.source, record.user, record.payload["inbox_id"]) == ("web", "oscar@example.com", row.id)


async def test_text_from_the_store_is_escaped_never_markup(world: dict[str, Any]) -> None:
    rt, draft = world["rt"], world["draft"]
    await rt.reviews.reject(draft.id, by="oscar@example.com", note='<script>alert("x")</script><b>bold</b>')
    async with client(rt) as c:
        await sign_in(c, world["tokens"]["operator"])
        page = await c.get(f"/drafts/{draft.id}")
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;b&gt;" in page.text
    assert "<script" not in page.text and "<b>bold" not in page.text


async def test_forms_are_bounded_and_sign_in_keeps_the_page_asked_for(world: dict[str, Any]) -> None:
    rt, draft = world["rt"], world["draft"]
    async with client(rt) as c:
        asked = await c.get("/audit?event=draft_created&limit=5")
        assert asked.headers["location"] == "/sign-in?next=/audit%3Fevent%3Ddraft_created%26limit%3D5"
        signed = await sign_in(c, world["tokens"]["operator"], "/audit?event=draft_created&limit=5")
        assert signed.headers["location"] == "/audit?event=draft_created&limit=5"
        csrf = form_token(await c.get("/drafts"))
        huge = await c.post(f"/drafts/{draft.id}/reject", data={"csrf": csrf, "note": "x" * 70_000})
        assert huge.status_code == 413 and "at most 64 KiB" in huge.text
    assert DraftStore(rt.store).get(draft.id).status == "pending_review"


async def test_a_failed_delivery_is_not_reported_as_done(world: dict[str, Any]) -> None:
    from tests.test_recovery import Capture, with_outbound

    rt, draft = world["rt"], world["draft"]
    with_outbound(rt, Capture(status=503))
    async with client(rt) as c:
        await sign_in(c, world["tokens"]["operator"])
        page = await c.get(f"/drafts/{draft.id}")
        done = await c.post(f"/drafts/{draft.id}/approve", data={"csrf": form_token(page)})
        assert done.headers["location"] == f"/drafts/{draft.id}?done=send_failed"
        shown = await c.get(done.headers["location"])
    assert "the delivery failed" in shown.text and 'action="/drafts/' + draft.id + '/send"' in shown.text
