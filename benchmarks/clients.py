"""``python -m benchmarks.clients``: the cost the client instrumentations add, against the OpenTelemetry peer.

Per query (SQLAlchemy on SQLite in memory), per Redis command (a real
redis-server on loopback, ``GET``), per HTTP request (httpx and requests on
an in-process transport, aiohttp against a loopback aiohttp server): the
bare client, the client instrumented by bizmetrics, and the client
instrumented by OpenTelemetry (an SDK tracer provider, no exporter: the
least it costs).  One interleaved run: every round times each variant in
turn (reversed every other round); each row is the median over rounds of
the per-round difference to the bare client.

``--instructions CLIENT`` counts instead the instructions per operation of
each variant of one client with callgrind (valgrind), which a loaded
machine does not disturb: each variant in a process of its own, 50
operations to warm up, then 200 inside ``operator.call`` with collection
toggled on that function only. aiohttp's variants add the floors (a
middleware that only awaits the handler, an empty ``TraceConfig``) and
bizmetrics' ``TraceConfig``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import operator
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

#: Added ns per operation that bizmetrics must stay under.
TARGETS = {"sqlalchemy": 2000.0, "redis": 2000.0, "httpx": 5000.0, "requests": 5000.0, "aiohttp": 5000.0}

Run = Callable[[int], float]  # calls -> seconds


def _timed(call: Callable[[], Any]) -> Run:
    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            call()
        return time.perf_counter() - start

    return run


def _provider() -> Any:
    from opentelemetry.sdk.trace import TracerProvider

    return TracerProvider()


def sqlalchemy_cases() -> dict[str, Run]:
    import sqlalchemy as sa
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    import bizmetrics.sqlalchemy

    cases = {}
    for name in ("bare", "bizmetrics", "opentelemetry"):
        engine = sa.create_engine("sqlite://")
        if name == "bizmetrics":
            bizmetrics.sqlalchemy.instrument(engine, pool="bench")
        elif name == "opentelemetry":
            # Its version check refuses SQLAlchemy 2.1, which its event listeners handle.
            SQLAlchemyInstrumentor().instrument(engine=engine, tracer_provider=_provider(), skip_dep_check=True)
        conn = engine.connect()
        statement = sa.text("SELECT 1")
        cases[name] = _timed(lambda conn=conn, statement=statement: conn.execute(statement))
    return cases


def redis_cases(port: int) -> dict[str, Run]:
    import redis
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    import bizmetrics.redis

    cases = {}
    for name in ("bare", "bizmetrics", "opentelemetry"):
        client = redis.Redis(port=port)
        client.set("bench", "x")
        if name == "bizmetrics":
            bizmetrics.redis.instrument(client, cache="bench")
        elif name == "opentelemetry":
            RedisInstrumentor.instrument_client(client, tracer_provider=_provider())
        cases[name] = _timed(lambda client=client: client.get("bench"))
    return cases


def httpx_cases() -> dict[str, Run]:
    import httpx
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    import bizmetrics.httpx

    def answer(request: Any) -> Any:
        return httpx.Response(200, headers={"x-ratelimit-remaining": "41"}, content=b"{}")

    cases = {}
    for name in ("bare", "bizmetrics", "opentelemetry"):
        client = httpx.Client(transport=httpx.MockTransport(answer))
        if name == "bizmetrics":
            bizmetrics.httpx.instrument(client, targets={"api.hubapi.com": "hubspot"})
        elif name == "opentelemetry":
            HTTPXClientInstrumentor.instrument_client(client, tracer_provider=_provider())
        cases[name] = _timed(lambda client=client: client.get("https://api.hubapi.com/crm/v3/objects/contacts"))
    return cases


def requests_cases() -> dict[str, Run]:
    import requests
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from requests.adapters import BaseAdapter

    import bizmetrics.requests

    class Canned(BaseAdapter):  # type: ignore[misc]
        def send(self, request: Any, **kwargs: Any) -> Any:
            response = requests.Response()
            response.status_code = 200
            response.headers["x-ratelimit-remaining"] = "41"
            response._content = b"{}"
            response.url = request.url
            response.request = request
            return response

        def close(self) -> None:
            pass

    url = "https://api.hubapi.com/crm/v3/objects/contacts"
    cases = {}
    instrumentor = RequestsInstrumentor()
    for name in ("bare", "bizmetrics", "opentelemetry"):
        session = requests.Session()
        session.mount("https://", Canned())
        if name == "bizmetrics":
            bizmetrics.requests.instrument(session, targets={"api.hubapi.com": "hubspot"})
        if name == "opentelemetry":
            # RequestsInstrumentor patches Session.send for every session: on only while its case runs.
            def run(n: int, session: Any = session) -> float:
                instrumentor.instrument(tracer_provider=_provider())
                try:
                    return _timed(lambda: session.get(url))(n)
                finally:
                    instrumentor.uninstrument()

            cases[name] = run
        else:
            cases[name] = _timed(lambda session=session: session.get(url))
    return cases


def aiohttp_cases(loop: asyncio.AbstractEventLoop) -> dict[str, Run]:
    """bare; bizmetrics (the middleware); OpenTelemetry; the floors and bizmetrics' TraceConfig."""
    import aiohttp
    from aiohttp import web
    from opentelemetry.instrumentation.aiohttp_client import create_trace_config

    import bizmetrics.aiohttp

    async def handler(request: Any) -> Any:
        return web.Response(body=b"{}", headers={"x-ratelimit-remaining": "41"})

    async def start() -> int:
        app = web.Application()
        app.router.add_get("/crm/v3/objects/contacts", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port: int = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return port

    async def floor(request: Any, handler: Any) -> Any:
        return await handler(request)

    port = loop.run_until_complete(start())
    url = f"http://127.0.0.1:{port}/crm/v3/objects/contacts"
    targets = {f"127.0.0.1:{port}": "hubspot"}
    variants: dict[str, dict[str, Any]] = {
        "bare": {},
        "bizmetrics": {"middlewares": [bizmetrics.aiohttp.middleware(targets=targets)]},
        "opentelemetry": {"trace_configs": [create_trace_config(tracer_provider=_provider())]},
        "floor_middleware": {"middlewares": [floor]},
        "floor_trace_config": {"trace_configs": [aiohttp.TraceConfig()]},
        "bizmetrics_trace_config": {"trace_configs": [bizmetrics.aiohttp.trace_config(targets=targets)]},
    }
    cases = {}
    for name, options in variants.items():

        async def make(options: dict[str, Any] = options) -> Any:
            return aiohttp.ClientSession(**options)

        session = loop.run_until_complete(make())

        async def many(n: int, session: Any = session) -> float:
            start = time.perf_counter()
            for _ in range(n):
                async with session.get(url) as response:
                    await response.read()
            return time.perf_counter() - start

        cases[name] = lambda n, many=many: loop.run_until_complete(many(n))
    return cases


def measure(cases: dict[str, Run], rounds: int, calls: int) -> dict[str, float]:
    """Median over rounds of each instrumented variant's added ns per call, and the bare ns per call."""
    names = list(cases)
    for name in names:
        cases[name](max(1, calls // 10))
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        gc.collect()
        gc.disable()
        try:
            for name in names if r % 2 == 0 else reversed(names):
                per_round[name].append(cases[name](calls) / calls * 1e9)
        finally:
            gc.enable()
    bare = per_round["bare"]
    out = {"bare_ns": statistics.median(bare)}
    for name in names[1:]:
        out[f"{name}_added_ns"] = statistics.median(a - b for a, b in zip(per_round[name], bare, strict=True))
    return out


def _redis_server() -> tuple[subprocess.Popen[bytes], int, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: apt-get install -y redis-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    work = tempfile.mkdtemp(prefix="bizmetrics-bench-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", work, "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, port, work


def _cases_of(client: str, stack: contextlib.ExitStack) -> dict[str, Run]:
    """The variants of one client's case; what they start is stopped when ``stack`` closes."""
    if client == "redis":
        proc, port, work = _redis_server()
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        stack.callback(proc.wait)
        stack.callback(proc.terminate)
        return redis_cases(port)
    if client == "aiohttp":
        loop = asyncio.new_event_loop()
        stack.callback(loop.close)
        return aiohttp_cases(loop)
    builders: dict[str, Callable[[], dict[str, Run]]] = {
        "sqlalchemy": sqlalchemy_cases,
        "httpx": httpx_cases,
        "requests": requests_cases,
    }
    return builders[client]()


#: Operations before counting, then counted, per variant under callgrind.
WARM_UP, COUNTED = 50, 200


def count(client: str, variant: str) -> None:
    """Run one variant's operations for callgrind: only those inside ``operator.call`` are counted."""
    with contextlib.ExitStack() as stack:
        run = _cases_of(client, stack)[variant]
        run(WARM_UP)
        gc.collect()
        operator.call(run, COUNTED)


def instructions(client: str, repeat: int = 3) -> dict[str, dict[str, Any]]:
    """Instructions per operation of each variant of ``client``, counted by callgrind in processes of their own.

    Each variant runs ``repeat`` times, interleaved with the others; its count is the median. Under
    callgrind the counts of one variant still differ by about 1% between runs (how often the event
    loop or the server's thread wakes up before data is ready), a few thousand instructions a request.
    """
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed: apt-get install -y valgrind")
    with contextlib.ExitStack() as stack:
        variants = list(_cases_of(client, stack))
    runs: dict[str, list[float]] = {variant: [] for variant in variants}
    with tempfile.TemporaryDirectory(prefix="bizmetrics-callgrind-") as work:
        for _ in range(repeat):
            for variant in variants:
                data = os.path.join(work, f"{variant}.out")
                subprocess.run(
                    [
                        valgrind,
                        "--tool=callgrind",
                        f"--callgrind-out-file={data}",
                        "--collect-atstart=no",
                        "--toggle-collect=_operator_call",
                        sys.executable,
                        "-m",
                        "benchmarks.clients",
                        "--count",
                        f"{client}:{variant}",
                    ],
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env={**os.environ, "PYTHONHASHSEED": "0"},
                )
                with open(data) as lines:
                    total = next(int(line.split()[1]) for line in lines if line.startswith(("summary:", "totals:")))
                runs[variant].append(total / COUNTED)
    bare = statistics.median(runs["bare"])
    out = {}
    for variant, counts in runs.items():
        median = statistics.median(counts)
        out[variant] = {"median": median, "added": median - bare, "runs": counts}
        print(f"{client:<10}{variant:<26}{median:>12,.0f}{median - bare:>+12,.0f}   runs: {counts}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.clients", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rounds and calls")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument(
        "--instructions",
        metavar="CLIENT",
        choices=sorted(TARGETS),
        help="count instructions per operation of each variant of CLIENT with callgrind instead of timing",
    )
    parser.add_argument("--repeat", type=int, default=3, help="with --instructions: runs of each variant")
    parser.add_argument("--count", metavar="CLIENT:VARIANT", help=argparse.SUPPRESS)  # the process callgrind runs
    args = parser.parse_args(argv)
    if args.count:
        count(*args.count.split(":"))
        return 0
    if args.instructions:
        counted = instructions(args.instructions, args.repeat)
        if args.json:
            with open(args.json, "w") as out:
                json.dump({"client": args.instructions, "counted": COUNTED, "instructions": counted}, out, indent=2)
        return 0
    rounds, calls = (3, 200) if args.quick else (31, 1000)
    proc, port, work = _redis_server()
    loop = asyncio.new_event_loop()
    try:
        results = {
            "sqlalchemy": measure(sqlalchemy_cases(), rounds, calls),
            "redis": measure(redis_cases(port), rounds, calls),
            "httpx": measure(httpx_cases(), rounds, calls),
            "requests": measure(requests_cases(), rounds, calls),
            "aiohttp": measure(aiohttp_cases(loop), rounds, max(1, calls // 4)),
        }
    finally:
        loop.close()
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'client':<12}{'bare ns':>12}{'+bizmetrics ns':>16}{'+OpenTelemetry ns':>20}{'target':>10}")
    for name, row in results.items():
        print(
            f"{name:<12}{row['bare_ns']:>12.0f}{row['bizmetrics_added_ns']:>16.0f}"
            f"{row['opentelemetry_added_ns']:>20.0f}{TARGETS[name]:>10.0f}"
        )
    report = {"rounds": rounds, "calls": calls, "targets_added_ns": TARGETS, "results": results}
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
