"""The API documents itself offline: ``/docs`` is one server-rendered page (no script, no CDN, no URL to
load), every body has an example that its model accepts, every route's example has the keys it returns."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from persona.api import bodies
from persona.api import examples as ex
from persona.app import Runtime
from persona.flows import recovery
from persona.heartbeats import Heartbeats
from tests import test_api_parity as parity
from tests.harness import call, say, step
from tests.test_api_parity import BIG, Flows
from tests.test_recovery import Capture, failed_invoice, with_outbound
from tests.test_webhooks import callback_fields
from tools.plisio.callbacks import encode_form_callback
from tools.plisio.sandbox import SANDBOX_API_KEY, Sandbox

pytestmark = pytest.mark.anyio
rt, app, as_role = (
    parity.rt,
    parity.app,
    parity.as_role,
)  # the fixtures: a runtime, its app, a client per role

URL = re.compile(r"https?://[^\s\"'<>&)]+")
LOOPBACK = ("http://127.0.0.1", "http://localhost")
NOT_OURS: set[tuple[str, str]] = set()
"""Routes whose module this change does not own (persona/api/chat.py): their response has no example yet."""


async def docs_page(app: FastAPI) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://persona.test"
    ) as http:
        return await http.get("/docs")


def operations(app: FastAPI) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op) for path, item in app.openapi()["paths"].items() for method, op in item.items()
    ]


async def test_docs_is_one_self_contained_page_naming_every_operation(app: FastAPI) -> None:
    page = await docs_page(app)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    for path, method, op in operations(app):
        assert path in html, path
        anchor = "op-" + method + "-" + re.sub(r"[^A-Za-z0-9]+", "-", path).strip("-")
        assert f'id="{anchor}"' in html, (method, path)
        assert op["summary"].replace("'", "&#39;").replace('"', "&#34;").split("`")[0][:30] in html
    assert "<script" not in html.lower() and "@import" not in html
    links = re.findall(r"<link [^>]*>", html)
    assert links == ['<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">'], (
        "only this server's icon"
    )
    assert "url(" not in html and " src=" not in html
    hrefs = [h for h in re.findall(r'href="([^"]*)"', html) if h != "/static/favicon.svg"]
    assert all(href.startswith("#") for href in hrefs), "in-page links only"
    urls = URL.findall(html)
    assert urls and all(u.startswith(LOOPBACK) for u in urls), sorted(
        {u for u in urls if not u.startswith(LOOPBACK)}
    )
    assert "/docs" not in app.openapi()["paths"] and (await _get(app, "/redoc")).status_code == 404


async def _get(app: FastAPI, path: str) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://persona.test"
    ) as http:
        return await http.get(path)


async def test_docs_show_roles_parameters_bodies_and_examples(app: FastAPI) -> None:
    html = (await docs_page(app)).text

    def article(method: str, path: str) -> str:
        anchor = "op-" + method + "-" + re.sub(r"[^A-Za-z0-9]+", "-", path).strip("-")
        start = html.index(f'id="{anchor}"')
        return html[start : html.index("</article>", start)]

    assert "role admin<" in article("get", "/v1/effects") or "role admin</" in article("get", "/v1/effects")
    assert "role admin, operator, viewer" in article("get", "/v1/audit/verify")
    assert "role admin, operator" in article("post", "/v1/inbox/{row_id}/retry")
    assert "Access: no token" in article("get", "/healthz")
    drafts = article("get", "/v1/drafts")
    assert "one of: pending_review, approved, sending, sent, send_failed, rejected, obsolete, all" in drafts
    assert "&#34;payment_link&#34;" in drafts, "the example, pretty-printed and escaped"
    refund = article("post", "/v1/refund-requests")
    assert "<code>invoice</code>" in refund and "<code>invoice_id</code>" in refund and "deprecated" in refund
    assert "The Plisio invoice id (its txn_id)" in refund and "max length 2000" in refund
    assert "one of the ways to send it: invoice_id" in refund and "unknown fields are refused" in refund
    assert "≥ 1" in article("get", "/v1/inbox/{row_id}") and "integer" in article("get", "/v1/inbox/{row_id}")


async def test_the_page_escapes_what_the_schema_says(app: FastAPI) -> None:
    async def route() -> dict[str, str]:
        return {}

    app.add_api_route("/v1/odd", route, summary='<script>alert("x")</script> & <b>bold</b>')
    app.openapi_schema = None
    html = (await docs_page(app)).text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert "<script" not in html


def test_every_request_body_has_examples_its_model_accepts(app: FastAPI) -> None:
    schema = app.openapi()
    components = schema["components"]["schemas"]
    seen = set()
    for path, method, op in operations(app):
        body = op.get("requestBody")
        if body is None:
            continue
        ref = body["content"]["application/json"]["schema"]
        ref = next((o for o in ref.get("anyOf", [ref]) if "$ref" in o), ref)  # optional bodies: X | None
        name = ref["$ref"].rsplit("/", 1)[1]
        examples = components[name].get("examples")
        assert examples, f"{method.upper()} {path}: {name} has no example"
        model = getattr(bodies, name)
        for example in examples:
            model.model_validate(example)
        seen.add(name)
    assert seen == {"ChatRequest", "RefundRequest", "Decision", "ChurnScan"}


def test_the_refund_body_takes_invoice_or_its_deprecated_alias_and_documents_both(app: FastAPI) -> None:
    txn = "6a1b2c3d4e5f60718293a4b5"
    assert bodies.RefundRequest.model_validate({"invoice": txn, "reason": "r"}).invoice == txn
    assert bodies.RefundRequest.model_validate({"invoice_id": txn, "reason": "r"}).invoice == txn
    refund = app.openapi()["components"]["schemas"]["RefundRequest"]
    assert refund["properties"]["invoice"]["description"].startswith("The Plisio invoice id (its txn_id)")
    assert refund["properties"]["invoice_id"]["deprecated"] is True
    assert refund["anyOf"] == [{"required": ["invoice"]}, {"required": ["invoice_id"]}]
    assert refund["required"] == ["reason"]


# -- the response examples are real answers --------------------------------------------------------

EXAMPLES = {
    ("/v1/chat", "post"): "CHAT", ("/healthz", "get"): "HEALTH", ("/livez", "get"): "HEALTH", ("/readyz", "get"): "READY", ("/v1/inbox", "get"): "INBOX_ROWS", ("/v1/inbox/{row_id}", "get"): "INBOX_ROW",
    ("/v1/inbox/{row_id}/retry", "post"): "INBOX_RETRIED", ("/v1/audit", "get"): "AUDIT_RECORDS",
    ("/v1/audit/verify", "get"): "AUDIT_VERIFY", ("/v1/audit/{seq}", "get"): "AUDIT_RECORD",
    ("/v1/conversations/{conversation_id}", "get"): "CONVERSATION", ("/v1/drafts", "get"): "DRAFTS",
    ("/v1/drafts/{draft_id}", "get"): "DRAFT", ("/v1/drafts/{draft_id}/approve", "post"): "DRAFT_SENT",
    ("/v1/drafts/{draft_id}/send", "post"): "DRAFT_SENT",
    ("/v1/drafts/{draft_id}/mark-sent", "post"): "DRAFT_MARKED_SENT",
    ("/v1/drafts/{draft_id}/reject", "post"): "DRAFT_REJECTED", ("/v1/refund-requests", "post"): "REFUND",
    ("/v1/refunds", "get"): "REFUNDS", ("/v1/refunds/{decision_id}", "get"): "REFUND",
    ("/v1/churn/scan", "post"): "CHURN_REPORT", ("/v1/churn", "get"): "CHURN_REPORTS",
    ("/v1/churn/runs", "get"): "CHURN_RUNS", ("/v1/churn/{report_id}", "get"): "CHURN_REPORT",
    ("/v1/approvals", "get"): "APPROVALS", ("/v1/approvals/{approval_id}", "get"): "APPROVAL",
    ("/v1/approvals/{approval_id}/approve", "post"): "APPROVAL_EXECUTED",
    ("/v1/approvals/{approval_id}/reject", "post"): "APPROVAL_REJECTED", ("/v1/effects", "get"): "EFFECTS",
    ("/v1/effects/{effect_id}", "get"): "EFFECT", ("/v1/effects/{effect_id}/resolve", "post"): "EFFECT",
}  # fmt: skip


def without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def test_every_route_documents_its_answer_and_its_errors(app: FastAPI) -> None:
    plain = {("/webhooks/plisio", "post"), ("/metrics", "get")}  # form-encoded in, Prometheus text out
    documented = {(path, method) for path, method, _ in operations(app)} - plain
    assert documented - NOT_OURS == set(EXAMPLES)
    for (path, method), name in EXAMPLES.items():
        op = app.openapi()["paths"][path][method]
        shown = op["responses"]["200"]["content"]["application/json"]["example"]
        assert shown == without_nulls(getattr(ex, name)), (path, name)
        if path.startswith("/v1"):
            assert {"401", "403"} <= set(op["responses"]), path
            assert op["security"][0]["apiToken"], f"{path}: its roles are in the schema"


def keys(value: Any, depth: int = 2) -> Any:
    """The shape of an answer: the keys of its objects, two levels down (lists: their first item)."""
    if depth == 0:
        return None
    if isinstance(value, dict):
        return {k: keys(v, depth - 1) for k, v in value.items()}
    if isinstance(value, list):
        return [keys(value[0], depth)] if value else []
    return None


async def test_each_example_has_the_keys_its_route_really_returns(
    rt: Runtime, sandbox: Sandbox, as_role: dict[str, httpx.AsyncClient]
) -> None:
    rt.model_factory = Flows(
        [step(call("plisio_create_invoice", BIG)), say("It waits for approval.")],
        [step(call("plisio_create_invoice", {**BIG, "order_name": "Second"})), say("Held too.")],
    )
    real: dict[tuple[str, str], Any] = {}
    admin = as_role["admin"]

    async def at(route: tuple[str, str], send: Awaitable[httpx.Response]) -> Any:
        response = await send
        assert response.status_code == 200, (route, response.text)
        real[route] = response.json()
        return real[route]

    held = [
        (await admin.post("/v1/chat", json={"persona": "finance", "message": m})).json() for m in ("a", "b")
    ]
    first, second = (h["tool_calls"][0]["approval_id"] for h in held)
    real[("/v1/chat", "post")] = held[0]
    await at(("/v1/approvals", "get"), admin.get("/v1/approvals"))
    await at(("/v1/approvals/{approval_id}", "get"), admin.get(f"/v1/approvals/{first}"))
    await at(("/v1/approvals/{approval_id}/approve", "post"),
             as_role["approver"].post(f"/v1/approvals/{first}/approve", json={"note": "checked"}))  # fmt: skip
    await at(("/v1/approvals/{approval_id}/reject", "post"), admin.post(f"/v1/approvals/{second}/reject"))
    await at(("/v1/effects", "get"), admin.get("/v1/effects"))
    await at(("/v1/effects/{effect_id}", "get"), admin.get(f"/v1/effects/{first}"))
    real[("/v1/effects/{effect_id}/resolve", "post")] = real[("/v1/effects/{effect_id}", "get")]

    drafts = [
        await recovery.handle_failure(rt.flows, await failed_invoice(rt, sandbox), trigger="webhook")
        for _ in "abc"
    ]
    ids = [d.id for d in drafts if d is not None]
    with_outbound(rt, Capture(status=503))
    await at(("/v1/drafts", "get"), admin.get("/v1/drafts"))
    await at(("/v1/drafts/{draft_id}", "get"), admin.get(f"/v1/drafts/{ids[0]}"))
    await at(("/v1/drafts/{draft_id}/approve", "post"), admin.post(f"/v1/drafts/{ids[0]}/approve"))
    rt.outbound_transport = Capture()
    await at(("/v1/drafts/{draft_id}/send", "post"), admin.post(f"/v1/drafts/{ids[0]}/send"))
    await at(("/v1/drafts/{draft_id}/mark-sent", "post"), admin.post(f"/v1/drafts/{ids[1]}/mark-sent"))
    await at(("/v1/drafts/{draft_id}/reject", "post"), admin.post(f"/v1/drafts/{ids[2]}/reject"))

    created = await rt.plisio.client.create_invoice(
        order_number="9", order_name="Pro plan", currency="BTC", source_amount=Decimal("40")
    )
    await sandbox.pay(created.txn_id)
    rt.model_factory = None
    refund = await at(("/v1/refund-requests", "post"),
                      admin.post("/v1/refund-requests", json={"invoice": created.txn_id, "reason": "r"}))  # fmt: skip
    await at(("/v1/refunds", "get"), admin.get("/v1/refunds"))
    await at(("/v1/refunds/{decision_id}", "get"), admin.get(f"/v1/refunds/{refund['id']}"))
    report = await at(("/v1/churn/scan", "post"), admin.post("/v1/churn/scan"))
    await at(("/v1/churn", "get"), admin.get("/v1/churn"))
    await at(("/v1/churn/runs", "get"), admin.get("/v1/churn/runs"))
    await at(("/v1/churn/{report_id}", "get"), admin.get(f"/v1/churn/{report['id']}"))

    body = encode_form_callback(callback_fields("6a1b2c3d4e5f60718293a4b5", "22"), SANDBOX_API_KEY)
    await admin.post(
        "/webhooks/plisio", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    rows = await at(("/v1/inbox", "get"), admin.get("/v1/inbox"))
    await at(("/v1/inbox/{row_id}", "get"), admin.get(f"/v1/inbox/{rows['rows'][0]['id']}"))
    await at(("/v1/inbox/{row_id}/retry", "post"), admin.post(f"/v1/inbox/{rows['rows'][0]['id']}/retry"))
    await at(("/v1/audit", "get"), admin.get("/v1/audit", params={"limit": 2}))
    await at(("/v1/audit/verify", "get"), admin.get("/v1/audit/verify"))
    await at(("/v1/audit/{seq}", "get"), admin.get("/v1/audit/3"))
    conversation = held[0]["conversation_id"]
    await at(("/v1/conversations/{conversation_id}", "get"), admin.get(f"/v1/conversations/{conversation}"))
    await at(("/healthz", "get"), admin.get("/healthz"))
    await at(("/livez", "get"), admin.get("/livez"))
    await asyncio.to_thread(Heartbeats(rt.store).beat, "w-docs", rt.now())
    await at(("/readyz", "get"), admin.get("/readyz"))

    assert set(real) == set(EXAMPLES)
    for route, name in EXAMPLES.items():
        assert keys(getattr(ex, name)) == keys(real[route]), (route, name)
