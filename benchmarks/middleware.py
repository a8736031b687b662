"""Per-request overhead of HTTP metrics middlewares on the same small Starlette app.

Four copies of one app (a route with a path parameter, and one in a mount):
bare, with ``bizmetrics.asgi.MetricsMiddleware`` (tenant from a header),
with starlette-exporter's ``PrometheusMiddleware`` (the tenant header as an
extra label, as close as it gets), and with prometheus-fastapi-instrumentator
(its default metrics; it has no per-request label hook).  Requests are made
by calling the ASGI app directly (no network), every case once per round in
A B C D order, reversed every other round, with the garbage collector off;
overheads are per-round differences to the bare app, and the reported
numbers are medians over rounds.

``python -m benchmarks.middleware`` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import platform
import statistics
import sys
from collections.abc import Awaitable, Callable
from time import perf_counter_ns
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

CASES = ("bare app", "bizmetrics", "starlette-exporter", "prometheus-fastapi-instrumentator")
PATHS = ("/users/42", "/v1/items/7")
TENANT_HEADER = "X-Tenant-ID"


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def build(case: str) -> Callable[..., Awaitable[None]]:
    """Return the benchmark app, instrumented as ``case`` says."""
    routes = [Route("/users/{user_id}", _ok), Mount("/v1", routes=[Route("/items/{item_id}", _ok)])]
    middleware: list[Middleware] = []
    if case == "bizmetrics":
        from bizmetrics.asgi import MetricsMiddleware

        middleware.append(Middleware(MetricsMiddleware, tenant=TENANT_HEADER))
    elif case == "starlette-exporter":
        from starlette_exporter import PrometheusMiddleware, from_header

        middleware.append(Middleware(PrometheusMiddleware, labels={"tenant_id": from_header(TENANT_HEADER)}))
    app = Starlette(routes=routes, middleware=middleware)
    if case == "prometheus-fastapi-instrumentator":
        from prometheus_fastapi_instrumentator import Instrumentator

        # Its own registry: it would otherwise refuse a second instance on the default one.
        Instrumentator(registry=CollectorRegistry()).instrument(app)  # type: ignore[arg-type]
    return app


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench"), (TENANT_HEADER.lower().encode(), b"tenant_bench")],
        "server": ("bench", 80),
        "client": ("127.0.0.1", 5000),
    }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Any) -> None:
    pass


async def _run(app: Callable[..., Awaitable[None]], n: int) -> int:
    scopes = [_scope(p) for p in PATHS]
    start = perf_counter_ns()
    for i in range(n):
        await app(dict(scopes[i & 1]), _receive, _send)
    return perf_counter_ns() - start


async def _sample(rounds: int, requests: int) -> dict[str, list[float]]:
    apps = {case: build(case) for case in CASES}
    for app in apps.values():  # warm up: lazily built middleware stacks, label children
        await _run(app, max(10, requests // 10))
    per_round: dict[str, list[float]] = {case: [] for case in CASES}
    for r in range(rounds):
        gc.collect()
        gc.disable()
        try:
            for case in CASES if r % 2 == 0 else reversed(CASES):
                per_round[case].append(await _run(apps[case], requests) / requests)
        finally:
            gc.enable()
    return per_round


def measure(rounds: int, requests: int) -> dict[str, Any]:
    """Run the benchmark; return per-case medians and bizmetrics' overhead ratios."""
    per_round = asyncio.run(_sample(rounds, requests))
    bare = per_round["bare app"]
    rows = []
    for case in CASES:
        times = per_round[case]
        overhead = [t - b for t, b in zip(times, bare, strict=True)]
        rows.append(
            {"case": case, "ns_per_request": statistics.median(times), "overhead_ns": statistics.median(overhead)}
        )
    ours = [t - b for t, b in zip(per_round["bizmetrics"], bare, strict=True)]
    ratios = {}
    for other in CASES[2:]:
        theirs = [t - b for t, b in zip(per_round[other], bare, strict=True)]
        ratios[f"bizmetrics overhead / {other} overhead"] = statistics.median(
            o / t for o, t in zip(ours, theirs, strict=True)
        )
    versions = {
        name: importlib.metadata.version(name)
        for name in ("starlette", "starlette-exporter", "prometheus-fastapi-instrumentator", "prometheus-client")
    }
    versions["python"] = platform.python_version()
    return {"rounds": rounds, "requests": requests, "rows": rows, "ratios": ratios, "versions": versions}


def report(result: dict[str, Any]) -> None:
    """Print the table and the ratios."""
    print(", ".join(f"{k} {v}" for k, v in result["versions"].items()))
    print(f"{'middleware (per request)':<36} {'ns/request':>11} {'+ns vs bare':>12}")
    for row in result["rows"]:
        print(f"{row['case']:<36} {row['ns_per_request']:>11.0f} {row['overhead_ns']:>12.0f}")
    for name, ratio in result["ratios"].items():
        verdict = "ok" if ratio <= 1.0 else "MISSED"
        print(f"  {name:<70} {ratio:>6.2f} (target <= 1: {verdict})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.middleware", description=__doc__)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--requests", type=int, default=2000, help="requests per case per round")
    args = parser.parse_args(argv)
    report(measure(args.rounds, args.requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
