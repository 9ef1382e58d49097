"""The review console in headless Chromium: sign-in, every page, the two decisions that move money or
reach a customer, role denials, CSRF refusal, sign-out; no console error anywhere."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from persona.audit import AuditFilter
from persona.drafts import DraftStore
from tests.browser.conftest import Watched
from tests.console_world import ADMIN, OPERATOR, World, invoices_billed_to

SCREENSHOTS = os.environ.get("PERSONA_SCREENSHOTS_DIR")
"""Set (e.g. to docs/) to keep the screenshots the README shows; otherwise they go to a temporary folder."""


def _shot(page: Watched, name: str, tmp_path: Path) -> Path:
    folder = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    out = folder / name
    page.page.screenshot(path=str(out), full_page=True)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, "a real, non-blank screenshot"
    return out


def test_every_page_renders_for_an_admin_with_no_console_error(page: Watched, world: tuple[World, str],
                                                               tmp_path: Path) -> None:  # fmt: skip
    w, _ = world
    page.sign_in(w.tokens["admin"])
    assert page.page.url.endswith("/drafts")
    visits = {
        "/drafts": "Review queue", f"/drafts/{w.drafts[1].id}": f"Draft {w.drafts[1].id}",
        "/approvals": "Calls held for approval", "/refunds": "Refund decisions",
        f"/refunds/{w.refund_id}": "Refund decision", "/churn": "Churn reports", f"/churn/{w.churn_id}": "Churn report",
        "/inbox": "Callback inbox", "/audit": "Audit log", "/audit/records/1": "Audit record #1",
        f"/audit/conversations/{w.chat_conversation}": "Conversation", "/audit/verify": "Audit chain: verifies",
    }  # fmt: skip
    for path, heading in visits.items():
        response = page.open(path)
        assert response.status == 200, path
        assert heading in page.page.inner_text("h1"), (path, page.page.inner_text("h1"))
        assert page.page.eval_on_selector("link[rel=stylesheet]", "l => l.sheet.cssRules.length") > 10, path
    assert page.problems == []


def test_screenshots_of_the_queue_and_a_transcript(
    page: Watched, world: tuple[World, str], tmp_path: Path
) -> None:
    w, _ = world
    page.sign_in(w.tokens["operator"])
    page.open(f"/drafts/{w.drafts[1].id}")  # its model asked 400 USD billed to someone else: code fixed both
    assert page.page.locator(".warning").count() == 0
    link = page.page.inner_text("section[aria-label='Fresh link']")
    assert "240 USD" in link and "maria.garcia@example.com" in link and "someone.else" not in link
    assert "240 USD" in page.page.inner_text("section[aria-label='Failed invoice']")
    _shot(page, "console-draft.png", tmp_path)
    page.open("/drafts")
    assert page.page.locator("tbody tr").count() == 2
    _shot(page, "console-drafts.png", tmp_path)
    page.open(f"/audit/conversations/{w.chat_conversation}")
    assert "Invoice Acme 600 USD" in page.page.inner_text(".transcript")
    _shot(page, "console-conversation.png", tmp_path)
    assert page.problems == []


def test_operator_approves_a_draft_and_the_customer_message_goes_out(
    page: Watched, world: tuple[World, str]
) -> None:
    w, _ = world
    draft = w.drafts[0]
    before = len(w.outbox.requests)
    page.sign_in(w.tokens["operator"])
    page.open(f"/drafts/{draft.id}")
    form = page.page.locator(f"form[action='/drafts/{draft.id}/approve']")
    form.locator("input[name=note]").fill("checked the amount")
    form.locator("button").click()
    assert page.page.inner_text(".flash") == "Approved."
    assert "sent" in page.page.inner_text("h1")
    sent = w.outbox.payloads()[before:]
    assert [p["draft_id"] for p in sent] == [draft.id] and sent[0]["approved_by"] == OPERATOR
    records = w.rt.audit.query(AuditFilter(event="draft_approved"))
    assert [(r.source, r.user) for r in records if r.payload.get("draft_id") == draft.id] == [
        ("web", OPERATOR)
    ]
    assert page.page.locator(f"form[action='/drafts/{draft.id}/approve']").count() == 0, (
        "decided: no second button"
    )
    assert page.problems == []


def test_admin_approves_the_held_call_and_it_executes_once(page: Watched, world: tuple[World, str]) -> None:
    w, _ = world
    before = invoices_billed_to(w.sandbox, "billing@acme.example")
    page.sign_in(w.tokens["admin"])
    page.open("/approvals")
    card = page.page.locator(f"section[aria-label='Approval {w.approval_id}']")
    assert "600 USD" in card.inner_text() and OPERATOR in card.inner_text()
    card.locator(f"form[action='/approvals/{w.approval_id}/approve'] button").click()
    assert page.page.inner_text(".flash") == "Approved and executed once."
    assert invoices_billed_to(w.sandbox, "billing@acme.example") == before + 1
    page.open("/approvals?status=all")
    assert "executed" in page.page.locator(f"section[aria-label='Approval {w.approval_id}']").inner_text()
    granted = [r for r in w.rt.audit.query(AuditFilter(event="approval_granted"))
               if r.payload.get("approval_id") == w.approval_id]  # fmt: skip
    assert [(r.source, r.user, r.payload["approved_by"]) for r in granted] == [("web", ADMIN, ADMIN)]
    assert page.problems == []


def test_roles_see_only_their_pages(page: Watched, world: tuple[World, str]) -> None:
    w, _ = world
    page.sign_in(w.tokens["viewer"])
    assert page.page.url.endswith("/audit")
    assert page.page.locator("header nav a").all_inner_texts() == ["Audit log"]
    denied = page.open("/drafts")
    assert denied.status == 403
    assert "Role viewer may not work the review queue" in page.page.inner_text(".error")
    page.page.context.clear_cookies()
    page.sign_in(w.tokens["operator"])
    assert page.open("/approvals").status == 403
    assert "Role operator may not decide approvals (it needs: admin)" in page.page.inner_text(".error")
    assert "Approvals" not in page.page.locator("header nav").inner_text()
    assert [p for p in page.problems if "403" not in p] == []


def test_a_form_without_the_session_token_is_refused_and_changes_nothing(
    page: Watched, world: tuple[World, str]
) -> None:
    w, base = world
    draft = w.drafts[1]
    page.sign_in(w.tokens["operator"])
    # The browser's own cookie, a forged form: what another site's page could make it send.
    forged = page.page.context.request.post(f"{base}/drafts/{draft.id}/reject", form={"note": "forged"})
    assert forged.status == 403 and "Form refused" in forged.text()
    assert DraftStore(w.rt.store).get(draft.id).status == "pending_review"
    # From another origin the cookie is not even sent (SameSite=Strict): the request meets the sign-in page.
    cookie = next(c for c in page.page.context.cookies() if c["name"] == "persona_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"


def test_a_bad_token_is_refused_and_sign_out_ends_the_session(
    page: Watched, world: tuple[World, str]
) -> None:
    w, _ = world
    page.sign_in("pp_not-a-token")
    assert "That token is not valid" in page.page.inner_text(".error")
    page.sign_in(w.tokens["operator"])
    cookies: list[Any] = page.page.context.cookies()
    page.page.click("button:has-text('Sign out')")
    assert page.page.url.endswith("/sign-in")
    page.page.context.add_cookies(cookies)  # the old cookie, replayed: the session is over on the server
    page.open("/drafts")
    assert "/sign-in?next=/drafts" in page.page.url
    assert [p for p in page.problems if "401" not in p] == []


def test_the_api_docs_load_nothing_from_elsewhere(page: Watched, world: tuple[World, str]) -> None:
    _, base = world
    asked: list[str] = []
    page.page.on("request", lambda r: asked.append(r.url))
    assert page.open("/docs").status == 200
    assert (
        "POST /v1/drafts/{draft_id}/approve"
        in " ".join(page.page.locator("nav").all_inner_texts()).replace("\n", " ")
        or page.page.locator("text=/v1/drafts/{draft_id}/approve").count() > 0
    )
    assert asked and all(url.startswith(base) for url in asked), asked
    assert page.problems == []
