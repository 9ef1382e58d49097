"""Hand-wired Plisio tools for the peers and the hand-written loops: plain ``httpx`` to the sandbox.

What a developer would write without our registry: one GET per tool, the envelope's ``data`` back as
compact JSON, lists projected to the fields a model needs (and never the ``_links``, which carry the
API key). The tool definitions offered to the model are the same 13 strict schemas our persona sends
(passed in by the parent), so every adapter sends the same request; only the 5 tools the scenario
calls are wired, the other 8 answer that they are not part of the benchmark.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx

_OPERATION_FIELDS = (
    "id", "type", "status", "psys_cid", "amount", "actual_sum", "commission", "confirmations",
    "created_at_utc", "finished_at_utc", "tx_url",
)  # fmt: skip
_PARAM_FIELDS = ("order_number", "order_name", "email", "source_amount", "source_currency")


class ToolFailed(Exception):
    """A Plisio error envelope or a tool the scenario does not use."""


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class SandboxTools:
    def __init__(self, base_url: str, api_key: str) -> None:
        self._key = api_key
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/") + "/", timeout=30.0)
        self._handlers: dict[str, Callable[[Mapping[str, Any]], Awaitable[Any]]] = {
            "plisio_get_shop_info": self.get_shop_info,
            "plisio_get_balance": self.get_balance,
            "plisio_get_fee_plans": self.get_fee_plans,
            "plisio_list_transactions": self.list_transactions,
            "plisio_create_invoice": self.create_invoice,
        }

    async def aclose(self) -> None:
        await self.http.aclose()

    async def call(self, name: str, args: Mapping[str, Any]) -> str:
        """Run one tool; the result (or the error) as the text handed back to the model."""
        handler = self._handlers.get(name)
        if handler is None:
            raise ToolFailed(f"{name} is not wired in this benchmark")
        return dumps(await handler(args))

    async def call_json(self, name: str, arguments: str | None) -> str:
        return await self.call(name, json.loads(arguments or "{}"))

    async def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        query["api_key"] = self._key
        response = await self.http.get(path, params=query)
        doc = response.json()
        if doc.get("status") != "success":
            raise ToolFailed(dumps(doc.get("data")))
        return doc["data"]

    async def get_shop_info(self, args: Mapping[str, Any]) -> Any:
        return await self._get("shops")

    async def get_balance(self, args: Mapping[str, Any]) -> Any:
        return await self._get(f"balances/{args['psys_cid']}")

    async def get_fee_plans(self, args: Mapping[str, Any]) -> Any:
        return await self._get(f"operations/fee-plan/{args['psys_cid']}")

    async def list_transactions(self, args: Mapping[str, Any]) -> Any:
        keys = ("type", "status", "currency", "search", "page", "limit")
        data = await self._get("operations", {k: args.get(k) for k in keys})
        meta = data.get("_meta") or {}
        operations = []
        for op in data.get("operations") or []:
            item = {k: op.get(k) for k in _OPERATION_FIELDS if op.get(k) is not None}
            params = op.get("params") or {}
            item.update({k: params[k] for k in _PARAM_FIELDS if params.get(k) is not None})
            operations.append(item)
        return {
            "operations": operations,
            "page": meta.get("currentPage"),
            "page_count": meta.get("pageCount"),
            "total_count": meta.get("totalCount"),
        }

    async def create_invoice(self, args: Mapping[str, Any]) -> Any:
        cids = args.get("allowed_psys_cids")
        params = {
            "order_number": str(10**15 + uuid.uuid4().int % (8 * 10**15)),  # digits, as Plisio asks
            "order_name": args.get("order_name"),
            "source_amount": args.get("source_amount"),
            "source_currency": args.get("source_currency"),
            "amount": args.get("amount"),
            "currency": args.get("currency"),
            "allowed_psys_cids": ",".join(cids) if cids else None,
            "description": args.get("description"),
            "email": args.get("email"),
            "expire_min": args.get("expire_min"),
            "return_existing": "1",
        }
        return await self._get("invoices/new", params)
