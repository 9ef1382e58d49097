"""The side-effects ledger over HTTP (admins only): list, show, resolve one whose answer was lost.

The same calls as ``persona effects list|show|resolve``; resolving is
:func:`persona.operations.resolve_effect`, audited with source ``http``.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query

from persona.api import examples as ex
from persona.api.access import requires
from persona.deps import OperatorDeps
from persona.effects.ledger import UNRESOLVED, Effect, State
from persona.events import Source
from persona.http_auth import ADMIN, Auth
from persona.jsonutil import jsonable
from persona.operations import resolve_effect
from persona.users import User

FILTERS = (*(s.value for s in State), "unresolved", "all")


def view(effect: Effect) -> dict[str, Any]:
    """An effect as JSON: every column, and its key as one text (as `persona effects show --json`)."""
    data: dict[str, Any] = jsonable(effect)
    data["key"] = str(effect.key)
    return data


def _states(state: str) -> tuple[State, ...] | None:
    return None if state == "all" else UNRESOLVED if state == "unresolved" else (State(state),)


def router(deps: OperatorDeps, auth: Auth) -> APIRouter:
    api = APIRouter(tags=["effects"])
    admin = requires(auth, ADMIN, "read and resolve side effects")
    ledger = deps.dispatcher.effects.ledger

    @api.get(
        "/v1/effects", summary="Side effects (invoices) made or tried, newest first",
        responses=ex.responses(ex.EFFECTS, 422),
    )  # fmt: skip
    async def effects(
        state: Annotated[
            str,
            Query(
                pattern="^(" + "|".join(FILTERS) + ")$",
                description="Only this state; `unresolved` is claimed and unknown together.",
            ),
        ] = "all",
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        _: User = admin,
    ) -> dict[str, Any]:
        found = await asyncio.to_thread(ledger.find, _states(state), limit=limit)
        return {"count": len(found), "effects": [view(e) for e in found]}

    @api.get(
        "/v1/effects/{effect_id}", summary="One effect in full: key, arguments, outcome, approval",
        responses=ex.responses(ex.EFFECT, 404),
    )  # fmt: skip
    async def effect(effect_id: str, _: User = admin) -> dict[str, Any]:
        return {"effect": view(await asyncio.to_thread(ledger.get, effect_id))}

    @api.post(
        "/v1/effects/{effect_id}/resolve",
        summary="Look an unresolved (claimed or unknown) effect up at Plisio now, by its order number",
        responses=ex.responses(ex.EFFECT, 404, 409),
    )
    async def resolve(effect_id: str, _: User = admin) -> dict[str, Any]:
        return {"effect": view(await resolve_effect(deps, effect_id, source=Source.HTTP))}

    return api
