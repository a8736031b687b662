"""The demo service: realistic traffic through every family of the catalogue.

``python -m bizmetrics demo`` serves ``/metrics`` with prometheus_client's
``start_http_server`` and drives WordPress- and HubSpot-like connectors,
workflows, AI agents, API requests, DB queries, a connection pool and a
cache for a few tenants, with some failures, through the public API.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from prometheus_client import REGISTRY, start_http_server

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

TENANTS = ("tenant_123", "tenant_456", "tenant_789")
_rng = random.Random()


class ConnectorError(Exception):
    """The remote API failed."""


class RateLimitError(Exception):
    """The remote API said: slow down."""


class WorkflowError(Exception):
    """A workflow could not finish."""


_calls: Counter[str] = Counter()


def _maybe_fail(rate: float, every: int = 0, site: str = "") -> None:
    """Fail at random with probability ``rate``, and also on every ``every``-th call of ``site``.

    The fixed failures make sure every error series shows up within the first seconds.
    """
    if every:
        _calls[site] += 1
        if _calls[site] % every == 1:
            raise (WorkflowError if site == "workflow" else ConnectorError)(f"{site} failed on purpose")
    roll = _rng.random()
    if roll < rate / 2:
        raise ConnectorError("remote API answered 502")
    if roll < rate:
        raise RateLimitError("remote API answered 429")


async def _work(low_ms: float, high_ms: float) -> None:
    await asyncio.sleep(_rng.uniform(low_ms, high_ms) / 1000)


@dataclass
class Config:
    id: str


@dataclass
class WordPressConnector:
    tenant_id: str
    config: Config = field(default_factory=lambda: Config("wordpress"))

    @instrument_connector_operation("validate_credentials")
    async def validate_credentials(self) -> bool:
        await _work(5, 40)
        _maybe_fail(0.05)
        return True

    @instrument_sync_operation("posts")
    async def get_posts(self, limit: int = 100) -> list[dict[str, Any]]:
        await _work(20, 150)
        _maybe_fail(0.08)
        return [{"id": i} for i in range(_rng.randint(0, limit))]

    @instrument_sync_operation("pages")
    async def get_pages(self, limit: int = 50) -> dict[str, Any]:
        await _work(10, 80)
        _maybe_fail(0.04)
        pages = [{"id": i} for i in range(_rng.randint(0, limit))]
        return {"items": pages, "total": 500}


@dataclass
class HubSpotConnector:
    tenant_id: str
    config: Config = field(default_factory=lambda: Config("hubspot"))

    @instrument_sync_operation("contacts")
    def iter_contacts(self, pages: int = 3) -> Iterator[dict[str, Any]]:
        for page in range(pages):
            time.sleep(_rng.uniform(0.001, 0.01))
            _maybe_fail(0.03)
            yield from ({"page": page, "id": i} for i in range(_rng.randint(5, 30)))

    @instrument_connector_operation("create_deal")
    def create_deal(self, name: str) -> str:
        time.sleep(_rng.uniform(0.002, 0.02))
        _maybe_fail(0.1, every=6, site="deal")
        return name


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Reply:
    text: str
    usage: Usage


@instrument_agent("support_agent")
async def support_agent(question: str, tenant_id: str) -> Reply:
    await _work(100, 600)
    _maybe_fail(0.05, every=7, site="agent")
    return Reply("answer", Usage(_rng.randint(50, 400), _rng.randint(20, 300)))


@instrument_agent("content_writer")
async def content_writer(topic: str) -> AsyncIterator[dict[str, Any]]:
    """Streams chunks; the last one carries the usage, as streaming LLM APIs do."""
    for _ in range(_rng.randint(3, 8)):
        await _work(20, 80)
        yield {"delta": "..."}
    yield {"usage": {"input_tokens": _rng.randint(100, 300), "output_tokens": _rng.randint(200, 900)}}


@instrument_workflow_step("fetch")
async def fetch_step(connector: WordPressConnector) -> list[dict[str, Any]]:
    return await connector.get_posts(limit=20)


@instrument_workflow_step("transform")
def transform_step(posts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    time.sleep(_rng.uniform(0.001, 0.02))
    return [dict(p, done=True) for p in posts]


@instrument_workflow("campaign_sync")
async def campaign_sync(tenant_id: str) -> int:
    posts = await fetch_step(WordPressConnector(tenant_id))
    _maybe_fail(0.05, every=5, site="workflow")
    return len(transform_step(posts))


@instrument_db_query("select_posts")
def select_posts(tenant_id: str) -> list[int]:
    time.sleep(_rng.uniform(0.0005, 0.01))
    return [1, 2, 3]


_CACHE: dict[str, str] = {}


@instrument_cache_lookup("posts")
def cached_post(key: str) -> str | None:
    return _CACHE.get(key)


async def _one_round(round_no: int) -> None:
    jobs = []
    for tenant in TENANTS:
        wp = WordPressConnector(tenant)
        jobs += [wp.validate_credentials(), wp.get_posts(), wp.get_pages()]
        if round_no % 3 == 0:
            jobs.append(campaign_sync(tenant_id=tenant))
            jobs.append(support_agent("where is my order?", tenant_id=tenant))
    results = await asyncio.gather(*jobs, return_exceptions=True)
    del results  # failures are the point: they are in the metrics

    for tenant in TENANTS:
        with bizmetrics.tenant_context(tenant):
            hubspot = HubSpotConnector(tenant)
            try:
                list(hubspot.iter_contacts())
                hubspot.create_deal("renewal")
            except (ConnectorError, RateLimitError):
                pass
            if round_no % 5 == 0:
                async for _chunk in content_writer("spring sale"):
                    pass
            for _ in range(5):
                endpoint = _rng.choice(("/api/posts", "/api/posts/{id}", "/api/contacts", "/api/workflows"))
                status = _rng.choices((200, 201, 404, 429, 500), weights=(80, 5, 8, 4, 3))[0]
                select_posts(tenant)
                bizmetrics.record_api_request(
                    _rng.choice(("GET", "POST")), endpoint, status, _rng.uniform(2, 300), tenant_id=tenant
                )
            # Read-through: a miss loads the post into the cache. The tenant's
            # home page is read every round, so hits show up from round two.
            for key in (f"{tenant}:home", f"{tenant}:{_rng.randint(0, 9)}"):
                if cached_post(key) is None:
                    _CACHE[key] = "post"
    bizmetrics.set_db_pool_size("primary", _rng.randint(5, 20))
    if round_no % 10 == 9:
        _CACHE.clear()  # an eviction now and then, so misses keep coming


def _total(metric: str, **match: str) -> float:
    total = 0.0
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in match.items()):
                total += sample.value
    return total


def summary() -> str:
    """One line of what the demo has recorded so far, read back from the registry."""
    return (
        f"connector ops {_total('connector_operations_total'):.0f} "
        f"(errors {_total('connector_operations_total', status='error'):.0f}), "
        f"records {_total('connector_sync_records_total'):.0f}, "
        f"workflows {_total('workflow_executions_total'):.0f}, "
        f"agent calls {_total('agent_invocations_total'):.0f}, "
        f"tokens {_total('agent_tokens_used_total'):.0f}, "
        f"api requests {_total('api_requests_total'):.0f}"
    )


async def _drive(duration: float | None, every: float, out: TextIO) -> int:
    start = last = time.monotonic()
    round_no = 0
    while duration is None or time.monotonic() - start < duration:
        await _one_round(round_no)
        round_no += 1
        if time.monotonic() - last >= every:
            last = time.monotonic()
            print(summary(), file=out, flush=True)
    return round_no


def run(
    port: int = 8000,
    addr: str = "127.0.0.1",
    duration: float | None = None,
    seed: int | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Serve ``/metrics`` and drive traffic until Ctrl-C or ``duration`` seconds; return an exit code."""
    _rng.seed(seed)
    try:
        server, thread = start_http_server(port, addr=addr)
    except OSError as exc:
        print(f"bizmetrics demo: cannot listen on {addr}:{port}: {exc}", file=sys.stderr)
        return 1
    host = f"[{addr}]" if ":" in addr else addr
    print(f"bizmetrics demo: serving http://{host}:{server.server_port}/metrics (Ctrl-C stops)", file=out, flush=True)
    try:
        rounds = asyncio.run(_drive(duration, 5.0, out))
        print(f"bizmetrics demo: done after {rounds} rounds; {summary()}", file=out, flush=True)
    except KeyboardInterrupt:
        print(f"\nbizmetrics demo: stopped; {summary()}", file=out, flush=True)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    return 0
