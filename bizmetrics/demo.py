"""The demo service: realistic traffic through every family of the catalogue.

``python -m bizmetrics demo`` serves a small JSON API and ``/metrics`` on the
standard library's ``wsgiref`` server, through ``bizmetrics.wsgi``'s
middleware, and drives WordPress- and HubSpot-like connectors, workflows, AI
agents, DB queries, a connection pool, a cache and real HTTP requests to its
own API for a few tenants, with some failures, through the public API.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import os
import queue
import random
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any, TextIO
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY

import bizmetrics
from bizmetrics import (
    instrument_agent,
    instrument_cache_lookup,
    instrument_connector_operation,
    instrument_db_query,
    instrument_sync_operation,
    instrument_tool,
    instrument_workflow,
    instrument_workflow_step,
)
from bizmetrics import jobs as bizjobs
from bizmetrics.metrics import NAMESPACE
from bizmetrics.wsgi import MetricsMiddleware, metrics_app

TENANTS = ("tenant_123", "tenant_456", "tenant_789")

#: An example price table (USD per million tokens), set unless BIZMETRICS_PRICES gives one.
#: The in-house model of the triage bot has no price: its tokens land in agent_unpriced_tokens_total.
EXAMPLE_PRICES = {
    "gpt-4o": {"input": 2.5, "cache_read": 1.25, "output": 10.0},
    "claude-sonnet": {"input": 3.0, "cache_read": 0.3, "cache_write": 3.75, "output": 15.0},
}
#: Monthly budgets (USD) of the demo's tenants, small enough that tenant_123 burns through its own.
EXAMPLE_BUDGETS = {"tenant_123": 0.05, "tenant_456": 5.0, "tenant_789": 50.0}
_rng = random.Random()


class ConnectorError(Exception):
    """The remote API failed."""


class HTTPStatusError(Exception):
    """The remote API answered an HTTP error, as httpx's error does (``bizmetrics.http_error_type`` reads it)."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"remote API answered {status_code}")
        self.status_code = status_code


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

    # HTTP errors classed by status: http_401, http_503 ... instead of one class name.
    @instrument_connector_operation("create_deal", error_type=bizmetrics.http_error_type)
    def create_deal(self, name: str) -> str:
        time.sleep(_rng.uniform(0.002, 0.02))
        _calls["deal"] += 1
        if _calls["deal"] % 6 == 1 or _rng.random() < 0.1:
            raise HTTPStatusError(_rng.choice((401, 429, 500, 503)))
        return name


@dataclass
class PromptDetails:
    cached_tokens: int


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    prompt_tokens_details: PromptDetails


@dataclass
class Reply:
    """Shaped like an OpenAI Chat Completions response."""

    text: str
    model: str
    usage: Usage


@instrument_tool("search_docs")
async def search_docs(query: str) -> list[str]:
    await _work(5, 60)
    if _rng.random() < 0.1:
        raise TimeoutError("search timed out")
    return ["doc"]


@instrument_agent("support_agent", error_type=bizmetrics.http_error_type)
async def support_agent(question: str, tenant_id: str) -> Reply:
    try:
        await search_docs(question)  # a tool call: agent_id="support_agent" from the context
    except TimeoutError:
        pass
    await _work(100, 600)
    _maybe_fail(0.05, every=7, site="agent")
    prompt = _rng.randint(50, 400)
    return Reply("answer", "gpt-4o", Usage(prompt, _rng.randint(20, 300), PromptDetails(_rng.randint(0, prompt))))


@instrument_agent("content_writer")
async def content_writer(topic: str) -> AsyncIterator[dict[str, Any]]:
    """Streams Anthropic-shaped raw events: input tokens at the start, output tokens at the end."""
    start = {"input_tokens": _rng.randint(100, 300), "output_tokens": 1, "cache_read_input_tokens": 50}
    yield {"type": "message_start", "message": {"model": "claude-sonnet", "usage": start}}
    for _ in range(_rng.randint(3, 8)):
        await _work(20, 80)
        yield {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "..."}}
    yield {"type": "message_delta", "usage": {"output_tokens": _rng.randint(200, 900)}}


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


# --- The API, served through bizmetrics.wsgi.MetricsMiddleware -----------------------

#: What the demo asks its own API: (method, path); ids from 40 on are not found.
REQUESTS = (
    ("GET", "/api/posts"),
    ("GET", "/api/posts/{id}"),
    ("POST", "/api/posts"),
    ("GET", "/api/contacts"),
    ("GET", "/api/workflows"),
    ("GET", "/wp-login.php"),  # a scanner: recorded as endpoint="__unmatched__"
)
_ROUTE = "bizmetrics.demo.route"
_METRICS = metrics_app()


def _reply(
    start_response: Callable[..., Any],
    status: str,
    payload: object,
    headers: list[tuple[str, str]] = [],  # noqa: B006
) -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers])
    return [body]


def api(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The demo's WSGI API: posts, contacts and workflows of the tenant in ``X-Tenant-ID``."""
    path, method = environ.get("PATH_INFO") or "/", environ.get("REQUEST_METHOD")
    if path == "/metrics":
        return _METRICS(environ, start_response)
    tenant = str(bizmetrics.current_tenant() or "default_tenant")
    parts = path.strip("/").split("/")
    if path == "/api/posts":
        environ[_ROUTE] = "/api/posts"
        if method == "POST":
            return _reply(start_response, "201 Created", {"id": _rng.randint(1, 99)})
        return _reply(start_response, "200 OK", select_posts(tenant))
    if len(parts) == 3 and parts[:2] == ["api", "posts"]:
        environ[_ROUTE] = "/api/posts/{id}"
        if not parts[2].isdigit() or int(parts[2]) >= 40:
            return _reply(start_response, "404 Not Found", {"error": "no such post"})
        return _reply(start_response, "200 OK", {"id": int(parts[2])})
    if path == "/api/contacts":
        environ[_ROUTE] = "/api/contacts"
        if _rng.random() < 0.15:
            return _reply(start_response, "429 Too Many Requests", {"error": "slow down"})
        return _reply(start_response, "200 OK", [])
    if len(parts) == 5 and parts[:4] == ["provider", "crm", "v3", "objects"]:
        # Stands in for a third-party API (HubSpot) that the demo's connector calls through requests.
        environ[_ROUTE] = "/provider/crm/v3/objects/{type}"
        if _rng.random() < 0.15:
            return _reply(start_response, "429 Too Many Requests", {"error": "rate limited"}, [("Retry-After", "1")])
        left = str(_rng.randint(0, 100))
        return _reply(start_response, "200 OK", [], [("X-RateLimit-Remaining", left)])
    if path == "/api/workflows":
        environ[_ROUTE] = "/api/workflows"
        _maybe_fail(0.2)  # an unhandled exception: the server answers 500
        return _reply(start_response, "200 OK", [])
    return _reply(start_response, "404 Not Found", {"error": "not found"})


def app() -> Callable[..., Iterable[bytes]]:
    """Return the demo API wrapped in bizmetrics' WSGI middleware."""
    return MetricsMiddleware(api, tenant="X-Tenant-ID", route=lambda environ: environ.get(_ROUTE))


def _send(host: str, port: int, method: str, path: str, tenant: str) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path.replace("{id}", str(_rng.randint(1, 50))), headers={"X-Tenant-ID": tenant})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


class _Clients:
    """The demo's database (SQLite through SQLAlchemy) and provider session (requests), when both are installed.

    They fill the pool and rate-limit series of ``bizmetrics.sqlalchemy`` and ``bizmetrics.requests``.
    """

    def __init__(self, host: str, port: int) -> None:
        import requests
        import sqlalchemy

        import bizmetrics.requests
        import bizmetrics.sqlalchemy

        self.engine = sqlalchemy.create_engine(
            "sqlite://",
            poolclass=sqlalchemy.pool.QueuePool,
            pool_size=2,
            max_overflow=0,
            connect_args={"check_same_thread": False},
        )
        bizmetrics.sqlalchemy.instrument(self.engine, pool="demo_sqlite")
        self.text = sqlalchemy.text
        self.base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self.session = bizmetrics.requests.instrument(
            requests.Session(),
            targets={f"{host}:{port}": "hubspot"},
            routes=["/provider/crm/v3/objects/{type}"],
        )

    @classmethod
    def start(cls, host: str, port: int) -> _Clients | None:
        try:
            return cls(host, port)
        except ImportError:
            return None

    def round(self, tenant: str) -> None:
        with self.engine.connect() as conn:
            conn.execute(self.text("SELECT 1").execution_options(bizmetrics_operation="load_settings"))
            conn.execute(self.text("SELECT 2"))
        with bizmetrics.tenant_context(tenant):
            self.session.get(f"{self.base}/provider/crm/v3/objects/contacts", headers={"X-Tenant-ID": tenant})

    def close(self) -> None:
        self.session.close()
        self.engine.dispose()


_clients: _Clients | None = None


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # no access log: the summary line says what happened

    def get_stderr(self) -> io.StringIO:
        return io.StringIO()  # the failures are on purpose: no tracebacks


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


async def _one_round(round_no: int, host: str, port: int) -> None:
    jobs = []
    for tenant in TENANTS:
        wp = WordPressConnector(tenant)
        jobs += [wp.validate_credentials(), wp.get_posts(), wp.get_pages()]
        if round_no % 3 == 0:
            jobs.append(campaign_sync(tenant_id=tenant))
            jobs.append(support_agent("where is my order?", tenant_id=tenant))
    requests = [_rng.choices(REQUESTS, weights=(40, 30, 5, 15, 8, 2))[0] for _ in range(5 * len(TENANTS))]
    jobs += [
        asyncio.to_thread(_send, host, port, method, path, TENANTS[i % len(TENANTS)])
        for i, (method, path) in enumerate(requests)
    ]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    del results  # failures are the point: they are in the metrics

    for tenant in TENANTS:
        with bizmetrics.tenant_context(tenant):
            hubspot = HubSpotConnector(tenant)
            try:
                list(hubspot.iter_contacts())
                hubspot.create_deal("renewal")
            except (ConnectorError, RateLimitError, HTTPStatusError):
                pass
            if round_no % 5 == 0:
                async for _chunk in content_writer("spring sale"):
                    pass
            # A self-hosted model, recorded by hand: no price, so its tokens are counted apart.
            prompt, completion = _rng.randint(100, 500), _rng.randint(10, 80)
            bizmetrics.record_agent_invocation(
                "triage_bot",
                _rng.uniform(30, 120),
                prompt + completion,
                True,
                model="in-house-llama",
                usage={"input": prompt, "output": completion},
            )
            # Read-through: a miss loads the post into the cache. The tenant's
            # home page is read every round, so hits show up from round two.
            for key in (f"{tenant}:home", f"{tenant}:{_rng.randint(0, 9)}"):
                if cached_post(key) is None:
                    _CACHE[key] = "post"
        enqueue_report(tenant)
    bizmetrics.set_db_pool_size("primary", _rng.randint(5, 20))
    if _clients is not None:
        for tenant in TENANTS:
            await asyncio.to_thread(_clients.round, tenant)
    if round_no % 10 == 9:
        _CACHE.clear()  # an eviction now and then, so misses keep coming


# Background jobs: a home-made queue (a ``queue.Queue`` and a worker thread) measured with
# ``bizmetrics.jobs``, as an adapter for any queue would be: the publisher's tenant and the
# enqueue time travel in each message's headers.
_REPORTS: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()


def enqueue_report(tenant: str) -> None:
    """Publish a report job for ``tenant``, with the tenant in its headers."""
    with bizmetrics.tenant_context(tenant):
        _REPORTS.put(("build_report", bizjobs.headers()))


def _report_worker() -> None:
    while (message := _REPORTS.get()) is not None:
        task, headers = message
        try:
            with bizjobs.run_job("reports", task, headers) as job:
                time.sleep(_rng.uniform(0.002, 0.02))
                _calls["report run"] += 1
                if _calls["report run"] % 8 == 2:
                    job.retry()  # published again, with the tenant current in the job
                    _REPORTS.put((task, bizjobs.headers()))
                else:
                    _maybe_fail(0.1, every=9, site="report")
        except (ConnectorError, RateLimitError):
            pass


def _total(metric: str, **match: str) -> float:
    """The sum of the samples of ``metric`` (a catalogue name, without the namespace) that match ``match``."""
    name = f"{NAMESPACE}_{metric}" if NAMESPACE else metric
    total = 0.0
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in match.items()):
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


async def _drive(duration: float | None, every: float, out: TextIO, host: str, port: int, stop: threading.Event) -> int:
    start = last = time.monotonic()
    round_no = 0
    while not stop.is_set() and (duration is None or time.monotonic() - start < duration):
        await _one_round(round_no, host, port)
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
    """Serve the API and ``/metrics`` and drive traffic until Ctrl-C or ``duration`` seconds; return an exit code.

    The first Ctrl-C (SIGINT) lets the current round finish, so nothing is
    cancelled half-way; a second one stops at once.
    """
    _rng.seed(seed)
    if not os.environ.get("BIZMETRICS_PRICES"):
        bizmetrics.set_prices(EXAMPLE_PRICES)
    for tenant, budget in EXAMPLE_BUDGETS.items():
        bizmetrics.set_budget(tenant, budget)
    # Its key customer, as a service names its own: the per-tenant latency panels and SLOs fill.
    bizmetrics.track_tenant_latency(TENANTS[0])
    try:
        server = make_server(
            addr, port, app(), server_class=_Server6 if ":" in addr else _Server, handler_class=_Handler
        )
    except (OSError, OverflowError) as exc:
        print(f"bizmetrics demo: cannot listen on {addr}:{port}: {exc}", file=sys.stderr)
        return 1
    thread = threading.Thread(target=server.serve_forever, name="bizmetrics-demo-http", daemon=True)
    thread.start()
    reports = threading.Thread(target=_report_worker, name="bizmetrics-demo-jobs", daemon=True)
    reports.start()
    depth = bizjobs.QueueDepth(lambda: {"reports": _REPORTS.qsize()}).register()
    bound = server.server_address[1]
    host = f"[{addr}]" if ":" in addr else addr
    print(f"bizmetrics demo: serving http://{host}:{bound}/metrics and /api (Ctrl-C stops)", file=out, flush=True)
    local = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(addr, addr)
    stop = threading.Event()
    global _clients
    _clients = _Clients.start(local, bound)

    def on_sigint(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = None
    # Only the main thread may set handlers; an ignored SIGINT (nohup, a background job) stays ignored.
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        rounds = asyncio.run(_drive(duration, 5.0, out, local, bound, stop))
        if stop.is_set():
            print(f"\nbizmetrics demo: stopped; {summary()}", file=out, flush=True)
        else:
            print(f"bizmetrics demo: done after {rounds} rounds; {summary()}", file=out, flush=True)
    except KeyboardInterrupt:
        print(f"\nbizmetrics demo: stopped; {summary()}", file=out, flush=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if _clients is not None:
            _clients.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        _REPORTS.put(None)
        reports.join(timeout=5)
        REGISTRY.unregister(depth)
    return 0
