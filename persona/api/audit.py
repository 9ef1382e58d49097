"""The audit log over HTTP, for every role (viewers too): records, one record, a conversation as a
transcript, and the chain's verification, the calls ``persona audit list|show|verify`` make.

Read-only: verifying never creates a key nor signs anything (:func:`persona.operations.verify_audit`).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from persona.api import examples as ex
from persona.api.access import requires
from persona.audit import AuditFilter
from persona.deps import OperatorDeps
from persona.errors import ConfigError, NotFound
from persona.events import SOURCES, Event
from persona.http_auth import READERS, Auth
from persona.operations import verify_audit
from persona.transcript import transcript
from persona.users import User

MAX_SEQ = 2**63 - 1
"""The largest record number a store can hold (a BIGINT): a larger ``after_seq`` is a 422, not a 500."""


def router(deps: OperatorDeps, auth: Auth) -> APIRouter:
    api = APIRouter(tags=["audit"])
    reader = requires(auth, READERS, "read the audit log")

    @api.get(
        "/v1/audit", summary="Audit records (the filters of `persona audit list`)",
        responses=ex.responses(ex.AUDIT_RECORDS, 422),
    )  # fmt: skip
    async def audit(
        user: Annotated[str | None, Query(max_length=254)] = None,
        persona: Annotated[str | None, Query(max_length=64)] = None,
        conversation: Annotated[str | None, Query(alias="conversation_id", max_length=64)] = None,
        event: Annotated[str | None, Query(max_length=64)] = None,
        tool: Annotated[str | None, Query(max_length=64)] = None,
        source: Annotated[str | None, Query(max_length=32)] = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after_seq: Annotated[
            int | None, Query(ge=0, le=MAX_SEQ, description="Records after this seq, oldest first.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        _: User = reader,
    ) -> dict[str, Any]:
        await asyncio.to_thread(_check_filters, deps, event=event, tool=tool, source=source)
        flt = AuditFilter(
            user=user, persona=persona, conversation_id=conversation, event=event, tool=tool, source=source,
            since=since, until=until, limit=limit, after_seq=after_seq, newest=after_seq is None,
        )  # fmt: skip
        records = await asyncio.to_thread(deps.audit.query, flt)
        return {"count": len(records), "records": [r.model_dump(mode="json") for r in records]}

    @api.get(
        "/v1/audit/verify",
        summary="Check the hash chain, the MACs and the latest signed checkpoint (`persona audit verify`)",
        responses=ex.responses(ex.AUDIT_VERIFY),
    )
    async def verify(
        expect_head: Annotated[
            str | None, Query(pattern="^[0-9a-fA-F]{64}$", description="A head hash written down earlier.")
        ] = None,
        _: User = reader,
    ) -> dict[str, Any]:
        findings = await asyncio.to_thread(verify_audit, deps, expect_head=expect_head)
        seq, head = await asyncio.to_thread(deps.audit.head)
        return {
            "ok": all(f.level != "bad" for f in findings),
            "head": {"seq": seq, "hash": head},
            "findings": [{"level": f.level, "title": f.title, "detail": f.detail} for f in findings],
        }

    @api.get(
        "/v1/audit/{seq}", summary="One audit record in full (`persona audit show SEQ`)",
        responses=ex.responses(ex.AUDIT_RECORD, 404, 422),
    )  # fmt: skip
    async def record(seq: Annotated[int, Path(ge=0, le=2**63 - 1)], _: User = reader) -> dict[str, Any]:
        found = await asyncio.to_thread(deps.audit.get, seq)
        if found is None:
            raise NotFound(f"no audit record with seq {seq}")
        return {"record": found.model_dump(mode="json")}

    @api.get(
        "/v1/conversations/{conversation_id}",
        summary="A conversation's audit records and its readable transcript (`persona audit show ID`)",
        responses=ex.responses(ex.CONVERSATION, 404),
    )
    async def conversation(conversation_id: str, _: User = reader) -> dict[str, Any]:
        records = await asyncio.to_thread(deps.audit.conversation, conversation_id)
        if not records:
            raise NotFound(f"no audit record belongs to conversation {conversation_id!r}")
        first = records[0]
        return {
            "conversation_id": conversation_id, "persona": first.persona, "user": first.user,
            "count": len(records), "transcript": transcript(records),
            "records": [r.model_dump(mode="json") for r in records],
        }  # fmt: skip

    return api


def _check_filters(deps: OperatorDeps, *, event: str | None, tool: str | None, source: str | None) -> None:
    """A filter names a value records can have (a known event or tool, or one the log holds), or the
    422 lists them: a typo must not look like "no such records"."""
    checks = (
        ("event", event, {e.value for e in Event} | set(deps.audit.known("event"))),
        ("tool", tool, set(deps.dispatcher.registry.names()) | set(deps.audit.known("tool"))),
        ("source", source, set(SOURCES)),
    )
    for name, value, valid in checks:
        if value is not None and value not in valid:
            raise ConfigError(f"no audit record can have {name} {value!r}", key=name,
                              fix=f"use one of: {', '.join(sorted(valid))}")  # fmt: skip
