"""Outgoing HTTP (httpx sync and async, requests, aiohttp) against a real API on loopback.

Each request is sent by a real client to a real server answering 200, 404,
429 with Retry-After, 503 with and without it, and slowly; the connector
series are compared with what was sent.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.registry import sample, unique, value
from support.servers import ANSWERS, free_port, http_api

import bizmetrics
import bizmetrics.aiohttp
import bizmetrics.httpx
import bizmetrics.requests
from bizmetrics import _log

ROUTES = ("/crm/v3/objects/{object}", "POST /shop")
PATHS = sorted(ANSWERS)
METHODS = ("GET", "POST")


@pytest.fixture(scope="module")
def api() -> Iterator[int]:
    with http_api() as port:
        yield port


# One request: (path, method, tenant or None, declared target?)
Request = tuple[str, str, str | None, bool]


def _httpx(requests: list[tuple[str, str, str | None]], targets: Any, transport: bool) -> None:
    import httpx

    if transport:
        client = httpx.Client(transport=bizmetrics.httpx.transport(targets=targets, routes=ROUTES))
    else:
        client = bizmetrics.httpx.instrument(httpx.Client(), targets=targets, routes=ROUTES)
    with client:
        for method, url, tenant in requests:
            with bizmetrics.tenant_context(tenant) if tenant else _nothing():
                client.request(method, url)


def _httpx_async(requests: list[tuple[str, str, str | None]], targets: Any, transport: bool) -> None:
    import httpx

    async def main() -> None:
        if transport:
            t = bizmetrics.httpx.transport(targets=targets, routes=ROUTES, asynchronous=True)
            client = httpx.AsyncClient(transport=t)
        else:
            client = bizmetrics.httpx.instrument(httpx.AsyncClient(), targets=targets, routes=ROUTES)
        async with client:
            for method, url, tenant in requests:
                with bizmetrics.tenant_context(tenant) if tenant else _nothing():
                    await client.request(method, url)

    asyncio.run(main())


def _requests(requests: list[tuple[str, str, str | None]], targets: Any, transport: bool) -> None:
    import requests as requests_lib

    with bizmetrics.requests.instrument(requests_lib.Session(), targets=targets, routes=ROUTES) as session:
        for method, url, tenant in requests:
            with bizmetrics.tenant_context(tenant) if tenant else _nothing():
                session.request(method, url)


def _aiohttp(requests: list[tuple[str, str, str | None]], targets: Any, transport: bool) -> None:
    """``transport``: through ``bizmetrics.aiohttp.middleware`` instead of ``trace_config``."""
    import aiohttp

    if transport and "middlewares" not in inspect.signature(aiohttp.ClientSession).parameters:
        pytest.skip(f"aiohttp {aiohttp.__version__} has no client middlewares (3.12 and later)")

    async def main() -> None:
        if transport:
            hooks: dict[str, Any] = {"middlewares": [bizmetrics.aiohttp.middleware(targets=targets, routes=ROUTES)]}
        else:
            hooks = {"trace_configs": [bizmetrics.aiohttp.trace_config(targets=targets, routes=ROUTES)]}
        async with aiohttp.ClientSession(**hooks) as session:
            for method, url, tenant in requests:
                with bizmetrics.tenant_context(tenant) if tenant else _nothing():
                    async with session.request(method, url) as response:
                        await response.read()

    asyncio.run(main())


class _nothing:
    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        pass


CLIENTS: dict[str, tuple[Callable[..., None], bool]] = {
    "httpx": (_httpx, False),
    "httpx-transport": (_httpx, True),
    "httpx-async": (_httpx_async, False),
    "httpx-async-transport": (_httpx_async, True),
    "requests": (_requests, False),
    "aiohttp": (_aiohttp, False),
    "aiohttp-middleware": (_aiohttp, True),
}


def _operation(path: str, method: str) -> str:
    if path.startswith("/crm/v3/objects/"):
        return "/crm/v3/objects/{object}"
    if path == "/shop" and method == "POST":
        return "POST /shop"
    return method


def _remaining(path: str) -> float | None:
    headers = {k.lower(): v for k, v in ANSWERS[path][1].items()}
    if "x-ratelimit-remaining" in headers:
        return float(headers["x-ratelimit-remaining"])
    if "x-hubspot-ratelimit-remaining" in headers:
        return float(headers["x-hubspot-ratelimit-remaining"])
    if "x-shopify-shop-api-call-limit" in headers:
        used, limit = headers["x-shopify-shop-api-call-limit"].split("/")
        return float(limit) - float(used)
    return None


def _check(sent: list[Request], connector: str) -> None:
    """The connector series hold exactly what the declared requests were answered."""
    ops: Counter[tuple[str, str, str]] = Counter()
    errors: Counter[tuple[str, str, str]] = Counter()
    timed: Counter[str] = Counter()
    limited: Counter[str] = Counter()
    remaining: dict[str, float] = {}
    for path, method, tenant, declared in sent:
        if not declared:
            continue
        tenant = tenant or "default_tenant"
        status, headers = ANSWERS[path]
        op = _operation(path, method)
        ops[(op, "success" if status < 400 else "error", tenant)] += 1
        timed[op] += 1
        if status >= 400:
            errors[(op, f"http_{status}", tenant)] += 1
        if status == 429 or (status == 503 and "Retry-After" in headers):
            limited[tenant] += 1
        left = _remaining(path)
        if left is not None:
            remaining[tenant] = left
    tenants = {t or "default_tenant" for _, _, t, _ in sent}
    for op in {_operation(p, m) for p, m, _, _ in sent}:
        assert value("connector_operation_duration_count", connector_type=connector, operation=op) == timed[op]
        for tenant in tenants:
            for status in ("success", "error"):
                got = value(
                    "connector_operations_total",
                    connector_type=connector,
                    operation=op,
                    status=status,
                    tenant_id=tenant,
                )
                assert got == ops[(op, status, tenant)], (op, status, tenant)
            for code in (404, 429, 503):
                got = value(
                    "connector_errors_total",
                    connector_type=connector,
                    operation=op,
                    error_type=f"http_{code}",
                    tenant_id=tenant,
                )
                assert got == errors[(op, f"http_{code}", tenant)]
    for tenant in tenants:
        assert value("connector_rate_limited_total", connector_type=connector, tenant_id=tenant) == limited[tenant]
        assert sample("connector_rate_limit_remaining", connector_type=connector, tenant_id=tenant) == remaining.get(
            tenant
        )
    # Never a raw URL: operations are templates or methods.
    for metric in bizmetrics.metrics.CONNECTOR_OPERATIONS.collect():
        for s in metric.samples:
            if s.labels["connector_type"] == connector:
                assert s.labels["operation"] in {"GET", "POST", *ROUTES}, s.labels


requests_strategy = st.lists(
    st.tuples(
        st.sampled_from(PATHS), st.sampled_from(METHODS), st.sampled_from([None, "acme", "globex"]), st.booleans()
    ),
    min_size=1,
    max_size=6,
)


@pytest.mark.parametrize("kind", sorted(CLIENTS))
@settings(max_examples=8)
@given(sent=requests_strategy)
def test_declared_targets_recorded_exactly(api: int, kind: str, sent: list[Request]) -> None:
    """Only declared targets are recorded, with their operation, status, errors, rate limits and quota."""
    connector = unique("hubspot")
    run, transport = CLIENTS[kind]
    # The same server under two names: 127.0.0.1 is a declared target, localhost is not.
    targets = {f"127.0.0.1:{api}": connector}
    calls = [
        (method, f"http://{'127.0.0.1' if declared else 'localhost'}:{api}{path}", tenant)
        for path, method, tenant, declared in sent
    ]
    run(calls, targets, transport)
    _check(sent, connector)


@pytest.mark.parametrize("kind", sorted(CLIENTS))
def test_callable_targets_and_slow_responses(api: int, kind: str) -> None:
    """A callable maps URLs to a connector type or None; a slow response's duration is observed."""
    connector = unique("wordpress")
    run, transport = CLIENTS[kind]

    def targets(url: str) -> str | None:
        return connector if "/slow" in url or "/ok" in url else None

    run(
        [("GET", f"http://127.0.0.1:{api}/slow", "acme"), ("GET", f"http://127.0.0.1:{api}/missing", "acme")],
        targets,
        transport,
    )
    assert (
        value(
            "connector_operations_total", connector_type=connector, operation="GET", status="success", tenant_id="acme"
        )
        == 1
    )
    assert value("connector_operation_duration_count", connector_type=connector, operation="GET") == 1
    assert value("connector_operation_duration_sum", connector_type=connector, operation="GET") >= 200
    # /missing was not a target of the callable.
    assert (
        value("connector_operations_total", connector_type=connector, operation="GET", status="error", tenant_id="acme")
        == 0
    )


@pytest.mark.parametrize(
    "kind", ["httpx-transport", "httpx-async-transport", "requests", "aiohttp", "aiohttp-middleware"]
)
def test_failure_without_response_counted_by_exception_class(kind: str) -> None:
    """A declared target that refuses connections: the request raises as before, counted by its exception class."""
    connector = unique("shopify")
    port = free_port()  # nothing listens there
    run, transport = CLIENTS[kind]
    with pytest.raises(Exception) as raised:
        run([("GET", f"http://127.0.0.1:{port}/x", "acme")], {f"127.0.0.1:{port}": connector}, transport)
    error_type = type(raised.value).__name__
    assert (
        value("connector_operations_total", connector_type=connector, operation="GET", status="error", tenant_id="acme")
        == 1
    )
    found = [
        s.labels["error_type"]
        for m in bizmetrics.metrics.CONNECTOR_ERRORS.collect()
        for s in m.samples
        if s.labels["connector_type"] == connector and s.value == 1
    ]
    assert len(found) == 1 and not found[0].startswith("http_"), found
    assert error_type  # the application saw the client's own exception


def test_remaining_headers_configurable(api: int) -> None:
    """remaining_headers= replaces the headers read for the quota; IETF RateLimit and used/limit forms are read."""
    import httpx

    connector = unique("custom")
    client = bizmetrics.httpx.instrument(
        httpx.Client(), targets={f"127.0.0.1:{api}": connector}, remaining_headers=["x-shopify-shop-api-call-limit"]
    )
    with client:
        client.get(f"http://127.0.0.1:{api}/ok")  # x-ratelimit-remaining only: not read
        assert sample("connector_rate_limit_remaining", connector_type=connector, tenant_id="default_tenant") is None
        client.get(f"http://127.0.0.1:{api}/shop")
    assert value("connector_rate_limit_remaining", connector_type=connector, tenant_id="default_tenant") == 8
    from bizmetrics._outgoing import remaining_of

    assert remaining_of("limit=100, remaining=42, reset=30") == 42
    assert remaining_of('"default";r=7;t=30') == 7
    assert remaining_of("soon") is None


def test_bad_targets_refused_at_setup() -> None:
    """targets must be a mapping or a callable: said at set-up, not at the first request."""
    import httpx

    with pytest.raises(TypeError):
        bizmetrics.httpx.instrument(httpx.Client(), targets=["api.hubapi.com"])  # type: ignore[arg-type]


def test_failing_targets_callable_never_reaches_the_application(api: int, caplog: pytest.LogCaptureFixture) -> None:
    """A targets callable that raises is logged; the request goes on unrecorded."""
    import httpx

    _log.reset()  # the log is rate limited: another test's failure in the same place must not hide this one's

    def broken(url: str) -> str | None:
        raise RuntimeError("boom")

    with bizmetrics.httpx.instrument(httpx.Client(), targets=broken) as client:
        assert client.get(f"http://127.0.0.1:{api}/ok").status_code == 200
    assert any("outgoing targets" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", sorted(CLIENTS))
def test_quota_header_by_rank_not_by_position(api: int, kind: str) -> None:
    """Each response's headers are read once: the first of remaining_headers present wins, wherever it comes."""
    connector = unique("ranked")
    run, transport = CLIENTS[kind]
    # /shop answers X-Shopify-Shop-Api-Call-Limit (8 left) first, then X-RateLimit-Remaining: 7, ranked first.
    run([("GET", f"http://127.0.0.1:{api}/shop?remaining=7", "acme")], {f"127.0.0.1:{api}": connector}, transport)
    assert value("connector_rate_limit_remaining", connector_type=connector, tenant_id="acme") == 7
    # No quota header at all: the gauge keeps the last quota reported.
    run([("GET", f"http://127.0.0.1:{api}/missing", "acme")], {f"127.0.0.1:{api}": connector}, transport)
    assert value("connector_rate_limit_remaining", connector_type=connector, tenant_id="acme") == 7
