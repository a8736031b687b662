"""aiohttp: the client middleware records what the TraceConfig records, against a real aiohttp server on loopback.

Every request mix is sent twice by real ``ClientSession``s, once through
``trace_config`` and once through ``middleware``, each under a connector
type of its own; the two connector series must be equal, and equal to what
was sent. (The responses and rate-limit headers of each client are checked
against ground truth in ``test_outgoing.py``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from support.registry import value
from support.servers import free_port

import bizmetrics
import bizmetrics.aiohttp
import bizmetrics.metrics
from bizmetrics import _deferred, _log

HAS_MIDDLEWARES = "middlewares" in inspect.signature(aiohttp.ClientSession).parameters

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not HAS_MIDDLEWARES, reason=f"aiohttp {aiohttp.__version__} has no client middlewares (3.12 and later)"
    ),
]

ROUTES = ("/status/{code}", "POST /drop-once/{token}")
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD")
QUOTA_HEADERS = ("x-ratelimit-remaining", "ratelimit-remaining", "x-shopify-shop-api-call-limit", "ratelimit")
QUOTA_VALUES = ("0", "41", "2.5", "32/40", "limit=100, remaining=42", "soon")


class Api:
    """An aiohttp server on loopback, in a thread of its own.

    ``/status/{code}`` answers ``code`` with the query's parameters as
    headers; ``/drop`` closes the connection without an answer;
    ``/drop-once/{token}`` does so the first time for each token and then
    answers 200; ``/slow`` answers after half a second.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.dropped: set[str] = set()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        self.ready.wait(30)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_route("*", "/status/{code}", self._status)
        app.router.add_route("*", "/drop", self._drop)
        app.router.add_route("*", "/drop-once/{token}", self._drop_once)
        app.router.add_route("*", "/slow", self._slow)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port: int = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.ready.set()
        self.loop.run_forever()

    async def _status(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=int(request.match_info["code"]), headers=dict(request.query))

    async def _drop(self, request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.abort()
        raise asyncio.CancelledError  # no answer: the connection is gone

    async def _drop_once(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if token not in self.dropped:
            self.dropped.add(token)
            return await self._drop(request)
        return web.Response(text="{}")

    async def _slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return web.Response(text="{}")

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture(scope="module")
def api() -> Iterator[Api]:
    server = Api()
    try:
        yield server
    finally:
        server.close()


# One request: method, what the server does ("status" with code and headers, "drop", "drop-once",
# or "refused": nothing listens), tenant or None, declared target?
Request = tuple[str, tuple[Any, ...], "str | None", bool]

outcomes = st.one_of(
    st.tuples(
        st.just("status"),
        st.sampled_from((200, 201, 204, 400, 401, 404, 409, 429, 500, 502, 503)),
        st.dictionaries(st.sampled_from((*QUOTA_HEADERS, "retry-after", "x-other")), st.sampled_from(QUOTA_VALUES)),
    ),
    st.tuples(st.sampled_from(("drop", "drop-once", "refused"))),
)
requests_strategy = st.lists(
    st.tuples(st.sampled_from(METHODS), outcomes, st.sampled_from((None, "acme", "globex")), st.booleans()),
    min_size=1,
    max_size=8,
)


def _url(api: Api, refused: int, outcome: tuple[Any, ...], declared: bool, run: str, i: int) -> str:
    host = "127.0.0.1" if declared else "localhost"
    kind = outcome[0]
    if kind == "refused":
        return f"http://{host}:{refused}/status/200"
    if kind == "drop":
        return f"http://{host}:{api.port}/drop"
    if kind == "drop-once":
        return f"http://{host}:{api.port}/drop-once/{run}-{i}"
    query = "&".join(f"{name}={value}" for name, value in outcome[2].items())
    return f"http://{host}:{api.port}/status/{outcome[1]}" + (f"?{query}" if query else "")


def send(
    api: Api, refused: int, sent: list[Request], hook: str, connector: str, **options: Any
) -> list[tuple[int | None, str | None]]:
    """Send ``sent`` through a session with the ``hook`` of bizmetrics; return each status, or exception class."""
    targets = {f"127.0.0.1:{api.port}": connector, f"127.0.0.1:{refused}": connector}
    run = uuid.uuid4().hex[:8]
    seen: list[tuple[int | None, str | None]] = []

    async def main() -> None:
        if hook == "middleware":
            session = aiohttp.ClientSession(
                middlewares=[bizmetrics.aiohttp.middleware(targets=targets, routes=ROUTES, **options)]
            )
        else:
            session = aiohttp.ClientSession(
                trace_configs=[bizmetrics.aiohttp.trace_config(targets=targets, routes=ROUTES, **options)]
            )
        async with session:
            for i, (method, outcome, tenant, declared) in enumerate(sent):
                url = _url(api, refused, outcome, declared, run, i)
                with bizmetrics.tenant_context(tenant) if tenant else contextlib.nullcontext():
                    try:
                        async with session.request(method, url) as response:
                            await response.read()
                            seen.append((response.status, None))
                    except Exception as error:
                        seen.append((None, type(error).__name__))

    asyncio.run(main())
    return seen


def series(connector: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every catalogue sample of ``connector`` but the timing ones, its connector type left out."""
    _deferred.drain()
    found = {}
    for metric in bizmetrics.metrics.CATALOGUE:
        for family in metric.collect():
            for s in family.samples:
                if s.labels.get("connector_type") != connector or s.name.endswith(("_sum", "_bucket", "_created")):
                    continue
                labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "connector_type"))
                found[(s.name, labels)] = s.value
    return found


_connectors = itertools.count()


def _connector(hook: str) -> str:
    return f"aio_{hook}_{next(_connectors)}_{uuid.uuid4().hex[:6]}"


@settings(max_examples=25)
@given(sent=requests_strategy)
def test_middleware_records_what_trace_config_records(api: Api, sent: list[Request]) -> None:
    """Statuses, quota headers, dropped and refused connections, methods, tenants: the same series either way."""
    refused = free_port()
    traced, middled = _connector("trace"), _connector("middleware")
    seen_traced = send(api, refused, sent, "trace_config", traced)
    seen_middled = send(api, refused, sent, "middleware", middled)
    assert seen_middled == seen_traced  # the application sees the same responses and exception classes
    assert series(middled) == series(traced)
    # And what was sent: one operation per declared request, retries of dropped connections not counted.
    declared = sum(1 for *_, is_target in sent if is_target)
    operations = sum(v for (name, _), v in series(middled).items() if name == "connector_operations_total")
    assert operations == declared


def test_middleware_records_each_outcome(api: Api) -> None:
    """Ground truth, without the TraceConfig: a middleware that recorded nothing, or wrongly, fails here."""
    refused = free_port()
    connector = _connector("truth")
    sent: list[Request] = [
        ("GET", ("status", 200, {"x-ratelimit-remaining": "41"}), "acme", True),
        ("POST", ("status", 429, {"retry-after": "2", "x-ratelimit-remaining": "0"}), "acme", True),
        ("GET", ("status", 503, {"retry-after": "1"}), None, True),
        ("GET", ("status", 503, {}), None, True),
        ("DELETE", ("drop",), "acme", True),
        ("POST", ("drop",), "acme", True),
        ("GET", ("drop-once",), "acme", True),
        ("GET", ("refused",), "acme", True),
        ("GET", ("status", 500, {}), "acme", False),  # localhost: not a target
    ]
    seen = send(api, refused, sent, "middleware", connector)
    assert [s[1] for s in seen[4:8]] == [
        "ServerDisconnectedError",
        "ServerDisconnectedError",
        None,
        "ClientConnectorError",
    ]

    def ops(operation: str, status: str, tenant: str) -> float:
        return value(
            "connector_operations_total", connector_type=connector, operation=operation, status=status, tenant_id=tenant
        )

    def errors(operation: str, error_type: str, tenant: str) -> float:
        return value(
            "connector_errors_total",
            connector_type=connector,
            operation=operation,
            error_type=error_type,
            tenant_id=tenant,
        )

    status = "/status/{code}"
    assert ops(status, "success", "acme") == 1
    assert ops(status, "error", "acme") == 2  # the 429 and the refused connection; the 500 went to localhost
    assert errors(status, "http_429", "acme") == 1
    assert ops(status, "error", "default_tenant") == 2
    assert errors(status, "http_503", "default_tenant") == 2
    assert value("connector_rate_limited_total", connector_type=connector, tenant_id="acme") == 1
    # 503 with Retry-After is rate limited, without it is not.
    assert value("connector_rate_limited_total", connector_type=connector, tenant_id="default_tenant") == 1
    assert value("connector_rate_limit_remaining", connector_type=connector, tenant_id="acme") == 0
    # The GET to /drop was sent again by aiohttp and dropped again: one error, as the application saw one.
    assert errors("DELETE", "ServerDisconnectedError", "acme") == 1
    assert errors("POST", "ServerDisconnectedError", "acme") == 1
    # /drop-once: the dropped first attempt is retried and answered; only the answer counts.
    assert errors("GET", "ServerDisconnectedError", "acme") == 0
    assert ops("GET", "success", "acme") == 1
    assert errors(status, "ClientConnectorError", "acme") == 1
    assert value("connector_operation_duration_count", connector_type=connector, operation=status) == 5


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A loopback port whose listener's backlog is full: connections to it hang until the client gives up."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(3):  # never accepted: the backlog fills and later SYNs are dropped
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
                fillers.append(filler)
            yield port
        finally:
            for filler in fillers:
                filler.close()


@pytest.mark.parametrize("where", ["response", "connect"])
@pytest.mark.parametrize("hook", ["trace_config", "middleware"])
def test_total_timeout_counted_as_timeout_error(api: Api, hook: str, where: str) -> None:
    """The session's total timeout raises TimeoutError: counted so by both hooks.

    While it connects, the middleware sees the request cancelled, and the
    session raises TimeoutError in its place.
    """
    connector = _connector(hook)

    async def main(port: int, path: str) -> None:
        targets = {f"127.0.0.1:{port}": connector}
        timeout = aiohttp.ClientTimeout(total=0.2)
        if hook == "middleware":
            hooks: dict[str, Any] = {"middlewares": [bizmetrics.aiohttp.middleware(targets=targets)]}
        else:
            hooks = {"trace_configs": [bizmetrics.aiohttp.trace_config(targets=targets)]}
        async with aiohttp.ClientSession(timeout=timeout, **hooks) as session:
            with pytest.raises(asyncio.TimeoutError):
                await session.get(f"http://127.0.0.1:{port}{path}")

    if where == "connect":
        with unanswered_port() as port:
            asyncio.run(main(port, "/x"))
    else:
        asyncio.run(main(api.port, "/slow"))
    assert (
        value(
            "connector_errors_total",
            connector_type=connector,
            operation="GET",
            error_type="TimeoutError",
            tenant_id="default_tenant",
        )
        == 1
    )


def test_exceptions_reach_the_application_as_the_same_object(api: Api) -> None:
    """What the next handler raises leaves the middleware as that very object, counted by its class."""
    connector = _connector("same")
    raised = LookupError("from inside")
    caught: list[BaseException] = []

    async def outer(request: Any, handler: Any) -> Any:
        try:
            return await handler(request)
        except LookupError as error:
            caught.append(error)
            raise

    async def inner(request: Any, handler: Any) -> Any:
        raise raised

    async def main() -> None:
        mw = bizmetrics.aiohttp.middleware(targets={f"127.0.0.1:{api.port}": connector})
        async with aiohttp.ClientSession() as session:
            # Per request: middlewares= of one call.
            with pytest.raises(LookupError) as seen:
                await session.get(f"http://127.0.0.1:{api.port}/status/200", middlewares=[outer, mw, inner])
            assert seen.value is raised
            async with session.get(f"http://127.0.0.1:{api.port}/status/204", middlewares=[mw]) as response:
                assert response.status == 204

    asyncio.run(main())
    assert caught == [raised] and caught[0] is raised
    assert (
        value(
            "connector_errors_total",
            connector_type=connector,
            operation="GET",
            error_type="LookupError",
            tenant_id="default_tenant",
        )
        == 1
    )
    assert (
        value(
            "connector_operations_total",
            connector_type=connector,
            operation="GET",
            status="success",
            tenant_id="default_tenant",
        )
        == 1
    )


def test_failure_inside_recording_never_changes_the_response(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    """A targets callable that raises is logged; the response is the server's, unrecorded."""
    _log.reset()  # the log is rate limited: an earlier test's failure must not hide this one's

    def broken(url: str) -> str | None:
        raise RuntimeError("boom")

    async def main() -> int:
        async with aiohttp.ClientSession(middlewares=[bizmetrics.aiohttp.middleware(targets=broken)]) as session:
            async with session.get(f"http://127.0.0.1:{api.port}/status/418?x-ratelimit-remaining=soon") as response:
                await response.read()
                return response.status

    assert asyncio.run(main()) == 418
    assert any("outgoing targets" in r.getMessage() for r in caplog.records)


def test_redirects_and_raise_for_status_per_hook(api: Api) -> None:
    """Where the hooks differ, as documented: the middleware records each request sent and each response seen.

    A redirect followed: ``trace_config`` records the session call once,
    with the final response; the middleware records the 302 and the request
    it leads to. ``raise_for_status=True``: ``trace_config`` sees only the
    exception (``ClientResponseError``), the middleware the response, so a
    429 is still ``http_429`` and rate limited.
    """
    location = f"http://127.0.0.1:{api.port}/status/200?x-ratelimit-remaining=9"
    redirect = f"http://127.0.0.1:{api.port}/status/302?location={location.replace('?', '%3F').replace('=', '%3D')}"
    limited = f"http://127.0.0.1:{api.port}/status/429?retry-after=1"
    recorded = {}
    for hook in ("trace_config", "middleware"):
        connector = _connector(hook)
        targets = {f"127.0.0.1:{api.port}": connector}

        async def main(hook: str = hook, targets: dict[str, str] = targets) -> None:
            if hook == "middleware":
                hooks: dict[str, Any] = {"middlewares": [bizmetrics.aiohttp.middleware(targets=targets, routes=ROUTES)]}
            else:
                hooks = {"trace_configs": [bizmetrics.aiohttp.trace_config(targets=targets, routes=ROUTES)]}
            async with aiohttp.ClientSession(**hooks) as session:
                async with session.get(redirect) as response:
                    assert response.status == 200 and len(response.history) == 1
                with pytest.raises(aiohttp.ClientResponseError):
                    await session.get(limited, raise_for_status=True)

        asyncio.run(main())
        recorded[hook] = series(connector)

    status = (("operation", "/status/{code}"),)
    assert recorded["trace_config"] == {
        ("connector_operations_total", (*status, ("status", "success"), ("tenant_id", "default_tenant"))): 1.0,
        ("connector_operations_total", (*status, ("status", "error"), ("tenant_id", "default_tenant"))): 1.0,
        (
            "connector_errors_total",
            (("error_type", "ClientResponseError"), *status, ("tenant_id", "default_tenant")),
        ): 1.0,
        ("connector_operation_duration_count", status): 2.0,
        ("connector_rate_limited_total", (("tenant_id", "default_tenant"),)): 0.0,  # the 429 went unseen
        ("connector_rate_limit_remaining", (("tenant_id", "default_tenant"),)): 9.0,
    }
    assert recorded["middleware"] == {
        ("connector_operations_total", (*status, ("status", "success"), ("tenant_id", "default_tenant"))): 2.0,
        ("connector_operations_total", (*status, ("status", "error"), ("tenant_id", "default_tenant"))): 1.0,
        ("connector_errors_total", (("error_type", "http_429"), *status, ("tenant_id", "default_tenant"))): 1.0,
        ("connector_operation_duration_count", status): 3.0,
        ("connector_rate_limited_total", (("tenant_id", "default_tenant"),)): 1.0,
        ("connector_rate_limit_remaining", (("tenant_id", "default_tenant"),)): 9.0,
    }


def test_a_dropped_connection_the_session_does_not_send_again_is_counted_once(api: Api) -> None:
    """aiohttp sends a dropped request again only for a call that began idempotent and whose body can be resent.

    A POST redirected by a 303 to a GET whose connection drops, and a PUT
    streaming its body, are not sent again: the application gets the error
    and the middleware counts it, once; a GET is sent again once, and the
    error of the second attempt is the one counted. The state of a call that
    ended is not left in the caller's context.
    """
    connector = _connector("middleware")
    targets = {f"127.0.0.1:{api.port}": connector}
    base = f"http://127.0.0.1:{api.port}"
    raised: list[str] = []

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 10

    async def main() -> object:
        async with aiohttp.ClientSession(middlewares=[bizmetrics.aiohttp.middleware(targets=targets)]) as session:
            for method, url, data in (
                ("POST", f"{base}/status/303?location=/drop", None),
                ("PUT", f"{base}/drop", body()),
                ("GET", f"{base}/drop", None),
            ):
                with pytest.raises(aiohttp.ServerDisconnectedError) as caught:
                    async with session.request(method, url, data=data):
                        pass
                raised.append(f"{method} {type(caught.value).__name__}")
        call = getattr(bizmetrics.aiohttp, "_CALL", None)
        return "no such state" if call is None else call.get()

    state = asyncio.run(main())
    assert len(raised) == 3
    tenant = ("tenant_id", "default_tenant")
    assert {key: n for key, n in series(connector).items() if n} == {
        ("connector_operations_total", (("operation", "POST"), ("status", "success"), tenant)): 1.0,
        ("connector_operation_duration_count", (("operation", "POST"),)): 1.0,
        # The redirected call's GET and the plain GET: one error each.
        **{
            key: 2.0 if method == "GET" else 1.0
            for method in ("GET", "PUT")
            for key in (
                ("connector_operations_total", (("operation", method), ("status", "error"), tenant)),
                ("connector_errors_total", (("error_type", "ServerDisconnectedError"), ("operation", method), tenant)),
                ("connector_operation_duration_count", (("operation", method),)),
            )
        },
    }
    assert state is None  # read inside the caller's task, after its calls
