"""Type-checked only (mypy --strict), never run: the public API as users' type checkers see it.

Misuses carry ``# type: ignore[code]``; with ``warn_unused_ignores`` a misuse
that stops being an error fails the check.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import bizmetrics
from bizmetrics import (
    instrument_agent,
    instrument_cache_lookup,
    instrument_connector_operation,
    instrument_db_query,
    instrument_sync_operation,
    instrument_workflow,
    instrument_workflow_step,
)


class Connector:
    tenant_id = "t"

    @instrument_connector_operation("validate_credentials")
    async def validate_credentials(self) -> bool:
        return True

    @instrument_sync_operation("posts", count="items")
    def get_posts(self, limit: int = 100) -> list[int]:
        return list(range(limit))

    @instrument_sync_operation("contacts")
    def iter_contacts(self) -> Iterator[int]:
        yield 1

    @instrument_connector_operation()
    @classmethod
    def ping(cls) -> str:
        return "pong"

    @staticmethod
    @instrument_connector_operation()
    def util(x: int) -> int:
        return x


@instrument_agent("support_agent", tokens=lambda r: 3)
async def answer(question: str) -> str:
    return question


@instrument_agent("writer")
async def stream() -> AsyncIterator[str]:
    yield "a"


@instrument_workflow("campaign_sync")
def run_campaign(tenant_id: str) -> int:
    return step_one(2)


@instrument_workflow_step("one")
def step_one(x: int) -> int:
    return x


@instrument_db_query("select")
def query() -> None: ...


@instrument_cache_lookup("posts")
def lookup(key: str) -> str | None:
    return None


# The decorated signatures are the originals'.
flag: bool = asyncio.run(Connector().validate_credentials())
posts: list[int] = Connector().get_posts(limit=3)
pong: str = Connector.ping()
n: int = Connector.util(1)
text: str = asyncio.run(answer("q"))
count: int = run_campaign("t")
hit: str | None = lookup("k")

bizmetrics.record_connector_operation("wp", "get_posts", 12.5, True, "tenant_123")
bizmetrics.record_connector_sync(connector_type="wp", resource_type="posts", record_count=3, tenant_id="t")
bizmetrics.record_workflow_execution("wf", 1.0, False, "t", error_type="Boom")
bizmetrics.record_agent_invocation("agent", 1.0, 10, True, "t")
bizmetrics.record_api_request("GET", "/x", 200, 1.0)
bizmetrics.report_usage({"input": 10, "output": 2}, model="gpt-4o")
with bizmetrics.tenant_context("tenant_123"):
    pass
bizmetrics.track_tenant_latency("acme", "globex")

# Misuses.
Connector().get_posts(limit="many")  # type: ignore[arg-type]
bad: str = step_one(1)  # type: ignore[assignment]
bizmetrics.record_connector_operation("wp", "op", 1.0)  # type: ignore[call-arg]
bizmetrics.report_usage({"input": 1}, "gpt-4o")  # type: ignore[call-arg]
