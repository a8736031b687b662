"""The ASGI middleware and metrics_app() against real Starlette and FastAPI applications."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket
from support.registry import unique, value

import bizmetrics
import bizmetrics._http
import bizmetrics.asgi
from bizmetrics.asgi import MetricsMiddleware, metrics_app

# Written for status classes (4xx): the exact codes of the default are in test_helpers_http_status.py.
pytestmark = pytest.mark.usefixtures("http_status_classes")


def count(endpoint: str, tenant: str, status: str = "2xx", method: str = "GET") -> float:
    return value("api_requests_total", method=method, endpoint=endpoint, status=status, tenant_id=tenant)


def errors(endpoint: str, tenant: str, status: str, method: str = "GET") -> float:
    return value("api_errors_total", method=method, endpoint=endpoint, status=status, tenant_id=tenant)


def observed(endpoint: str, method: str = "GET") -> float:
    return value("api_request_duration_count", method=method, endpoint=endpoint)


class Boom(Exception):
    pass


async def homepage(request: Request) -> PlainTextResponse:
    return PlainTextResponse("home")


async def user(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.path_params["user_id"], "tenant": bizmetrics.current_tenant()})


async def boom(request: Request) -> PlainTextResponse:
    raise Boom("handler failed")


async def org_item(request: Request) -> PlainTextResponse:
    return PlainTextResponse("item")


async def echo(ws: WebSocket) -> None:
    await ws.accept()
    await ws.send_text(await ws.receive_text())
    await ws.close()


def starlette_app(**options: Any) -> Starlette:
    users = [Route("/users/{user_id:int}", user)]
    sub = Starlette(routes=[Route("/items/{item_id}", org_item)])
    return Starlette(
        routes=[
            Route("/", homepage),
            Route("/users/{user_id:int}", user, methods=["GET"]),
            Route("/boom", boom),
            Route("/health", homepage),
            Mount("/v1", routes=users),
            Mount("/orgs/{org}", app=sub),
            Mount("/nested", routes=[Mount("/v2", routes=users)]),
            WebSocketRoute("/ws", echo),
        ],
        middleware=[Middleware(MetricsMiddleware, **options)],
    )


async def get(app: Any, path: str, method: str = "GET", **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.request(method, path, headers=headers)


def run(app: Any, *paths: str, method: str = "GET", **headers: str) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        return [await get(app, p, method, **headers) for p in paths]

    return asyncio.run(main())


def test_starlette_routes_are_recorded_by_template_and_tenant_header():
    """Path parameters, mounts with parameters and nested mounts record their full template, per tenant."""
    tenant = unique()
    app = starlette_app(tenant="X-Tenant-ID")
    paths = {
        "/users/{user_id}": ["/users/1", "/users/2", "/users/3"],
        "/v1/users/{user_id}": ["/v1/users/7"],
        "/orgs/{org}/items/{item_id}": ["/orgs/acme/items/1", "/orgs/beta/items/2"],
        "/nested/v2/users/{user_id}": ["/nested/v2/users/9"],
        "/": ["/"],
    }
    before = {t: (count(t, tenant), observed(t)) for t in paths}
    answers = run(app, *(p for ps in paths.values() for p in ps), **{"X-Tenant-ID": tenant})
    assert [a.status_code for a in answers] == [200] * 8
    assert answers[0].json() == {"id": 1, "tenant": tenant}, "the handler sees the tenant in tenant_context"
    for template, raw in paths.items():
        assert count(template, tenant) - before[template][0] == len(raw), template
        assert observed(template) - before[template][1] == len(raw), template
        assert value("api_requests_total", method="GET", endpoint=template, status="5xx", tenant_id=tenant) == 0
    for raw in paths.values():
        for path in raw:
            if path != template:
                assert count(path, tenant) == 0, "never the raw path"


def test_fastapi_router_prefixes_and_mounted_apps_give_the_full_template():
    """APIRouter prefixes (nested) and a mounted FastAPI sub-application record /v1/users/{user_id}."""
    tenant = unique()
    users = APIRouter(prefix="/users")

    @users.get("/{user_id}")
    def read_user(user_id: int) -> dict[str, Any]:
        return {"id": user_id, "tenant": bizmetrics.current_tenant()}

    v1 = APIRouter(prefix="/v1")
    v1.include_router(users)
    app = FastAPI()
    app.include_router(v1)
    sub = FastAPI()

    @sub.get("/items/{item_id}")
    def read_item(item_id: str) -> dict[str, str]:
        return {"item": item_id}

    app.mount("/shop/{shop}", sub)
    app.add_middleware(MetricsMiddleware, tenant="X-Tenant-ID")

    before = count("/v1/users/{user_id}", tenant), count("/shop/{shop}/items/{item_id}", tenant)
    answers = run(app, "/v1/users/1", "/v1/users/2", "/shop/a/items/x", **{"X-Tenant-ID": tenant})
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].json() == {"id": 1, "tenant": tenant}
    assert count("/v1/users/{user_id}", tenant) - before[0] == 2
    assert count("/shop/{shop}/items/{item_id}", tenant) - before[1] == 1

    unmatched = count("__unmatched__", tenant, "4xx")
    answers = run(app, "/v1/nope", "/shop/a/nope", **{"X-Tenant-ID": tenant})
    assert [a.status_code for a in answers] == [404, 404]
    assert count("__unmatched__", tenant, "4xx") - unmatched == 2, "a 404 inside a mount is unmatched too"


@given(st.lists(st.from_regex(r"\A/[a-z0-9._-][a-z0-9/._-]{0,29}\Z"), min_size=1, max_size=8))
def test_404_scans_land_in_one_unmatched_series(paths: list[str]):
    """Any number of unknown raw paths adds to one series, endpoint="__unmatched__", and no other."""
    tenant = unique()
    app = Starlette(routes=[Route("/known/{x}", homepage)], middleware=[Middleware(MetricsMiddleware)])
    answers = asyncio.run(_many(app, paths, tenant))
    notfound = sum(1 for a in answers if a.status_code == 404)
    redirected = sum(1 for a in answers if a.status_code == 307)
    matched = len(answers) - notfound - redirected
    assert count("__unmatched__", tenant, "4xx") == notfound
    assert count("__unmatched__", tenant, "3xx") == redirected
    assert count("/known/{x}", tenant) == matched
    assert errors("__unmatched__", tenant, "4xx") == notfound


async def _many(app: Any, paths: list[str], tenant: str) -> list[httpx.Response]:
    with bizmetrics.tenant_context(tenant):
        return [await get(app, p) for p in paths]


def test_unmatched_label_is_configurable():
    tenant = unique()
    app = starlette_app(tenant="X-Tenant-ID", unmatched="none")
    run(app, "/missing", **{"X-Tenant-ID": tenant})
    assert count("none", tenant, "4xx") == 1
    assert count("__unmatched__", tenant, "4xx") == 0


def test_405_records_the_route_template_as_a_4xx_error():
    tenant = unique()
    answers = run(starlette_app(tenant="X-Tenant-ID"), "/users/5", method="DELETE", **{"X-Tenant-ID": tenant})
    assert answers[0].status_code == 405
    assert count("/users/{user_id}", tenant, "4xx", "DELETE") == 1
    assert errors("/users/{user_id}", tenant, "4xx", "DELETE") == 1


def test_exception_before_the_response_is_a_500_and_propagates_unchanged():
    """The handler's own exception object reaches the caller; the request counts as 5xx, in api_errors_total too."""
    tenant = unique()
    failure = Boom("mine")

    async def raw_app(scope: Any, receive: Any, send: Any) -> None:
        raise failure

    app = MetricsMiddleware(raw_app, tenant="X-Tenant-ID")
    with pytest.raises(Boom) as info:
        asyncio.run(_call(app, "/boom", headers=[(b"x-tenant-id", tenant.encode())]))
    assert info.value is failure
    assert count("__unmatched__", tenant, "5xx") == 1
    assert errors("__unmatched__", tenant, "5xx") == 1

    # In a Starlette app: ServerErrorMiddleware answers 500, the route template is kept.
    answers = run(starlette_app(tenant="X-Tenant-ID"), "/boom", **{"X-Tenant-ID": tenant})
    assert answers[0].status_code == 500
    assert count("/boom", tenant, "5xx") == 1


async def _call(app: Any, path: str, *, type_: str = "http", headers: Any = (), messages: Any = None) -> list[Any]:
    sent: list[Any] = []
    incoming = list(messages or [{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> Any:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": type_,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": list(headers),
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 5000),
    }
    await app(scope, receive, send)
    return sent


def test_streaming_response_is_timed_to_its_last_chunk(monkeypatch: pytest.MonkeyPatch):
    """The duration covers every chunk of a streaming body, not just the headers."""
    now = [0]
    monkeypatch.setattr(bizmetrics.asgi, "perf_counter_ns", lambda: now[0])

    async def chunks() -> AsyncIterator[bytes]:
        for step_ms in (5, 7):
            yield b"x"
            now[0] += step_ms * 1_000_000
        yield b"end"

    async def stream(request: Request) -> StreamingResponse:
        return StreamingResponse(chunks())

    tenant = unique()
    endpoint = "/" + unique("stream")
    app = Starlette(routes=[Route(endpoint, stream)], middleware=[Middleware(MetricsMiddleware, tenant="X-T")])
    before = value("api_request_duration_sum", method="GET", endpoint=endpoint)
    answers = run(app, endpoint, **{"X-T": tenant})
    assert answers[0].content == b"xxend"
    assert value("api_request_duration_sum", method="GET", endpoint=endpoint) - before == 12.0
    assert count(endpoint, tenant) == 1


def test_exception_after_the_response_started_records_the_status_sent():
    async def chunks() -> AsyncIterator[bytes]:
        yield b"partial"
        raise Boom("mid-stream")

    async def stream(request: Request) -> StreamingResponse:
        return StreamingResponse(chunks(), status_code=201)

    tenant = unique()
    app = MetricsMiddleware(Starlette(routes=[Route("/s", stream)]), tenant="X-T")
    with pytest.raises(Boom):
        asyncio.run(_call(app, "/s", headers=[(b"x-t", tenant.encode())]))
    assert count("/s", tenant) == 1, "201 was sent: 2xx"
    assert count("/s", tenant, "5xx") == 0


def test_websocket_and_lifespan_pass_through_and_record_nothing():
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    tenant = unique()
    app = Starlette(
        routes=[WebSocketRoute("/ws", echo)],
        middleware=[Middleware(MetricsMiddleware, tenant="X-T")],
        lifespan=lifespan,
    )
    headers = [(b"x-t", tenant.encode())]

    async def main() -> tuple[list[Any], list[Any]]:
        ws = await _call(
            app,
            "/ws",
            type_="websocket",
            headers=headers,
            messages=[{"type": "websocket.connect"}, {"type": "websocket.receive", "text": "hi"}],
        )
        life = await _call(
            app, "", type_="lifespan", messages=[{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        )
        return ws, life

    ws, life = asyncio.run(main())
    assert [m["type"] for m in ws] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert ws[1]["text"] == "hi"
    assert [m["type"] for m in life] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert events == ["startup", "shutdown"]
    for status in ("1xx", "2xx", "3xx", "4xx", "5xx"):
        assert count("/ws", tenant, status) == 0
        assert count("__unmatched__", tenant, status) == 0


def test_default_exclusions_and_custom_templates_are_not_recorded():
    tenant = unique()
    app = starlette_app(tenant="X-T")
    run(app, "/health", "/metrics", **{"X-T": tenant})
    assert count("/health", tenant) == 0
    assert count("__unmatched__", tenant, "4xx") == 0, "/metrics is excluded even when it is a 404"

    app = starlette_app(tenant="X-T", exclude=["/users/{user_id}"])
    run(app, "/users/1", "/health", **{"X-T": tenant})
    assert count("/users/{user_id}", tenant) == 0
    assert count("/health", tenant) == 1, "a custom exclude replaces the defaults"


def test_tenant_callable_and_missing_tenant():
    """A callable picks the tenant; without one the usual fallback applies; a failing callable is logged."""
    tenant = unique()
    app = starlette_app(tenant=lambda scope: dict(scope["headers"]).get(b"x-org", b"").decode() or None)
    run(app, "/users/1", **{"X-Org": tenant})
    assert count("/users/{user_id}", tenant) == 1

    outer = unique()

    async def in_context() -> None:
        with bizmetrics.tenant_context(outer):
            await get(app, "/users/1")

    asyncio.run(in_context())
    assert count("/users/{user_id}", outer) == 1, "no tenant from the request: the context's"

    def broken(scope: Any) -> str:
        raise RuntimeError("tenant lookup down")

    before = count("/users/{user_id}", "default_tenant")
    answers = run(starlette_app(tenant=broken), "/users/1")
    assert answers[0].status_code == 200
    assert count("/users/{user_id}", "default_tenant") - before == 1


def test_request_without_tenant_header_is_default_tenant_not_an_error():
    """The README middleware must not 500 on requests without the header (Prometheus' scrape has none)."""
    before = count("/users/{user_id}", "default_tenant")
    answers = run(starlette_app(tenant="X-Tenant-ID"), "/users/4")
    assert answers[0].status_code == 200
    assert answers[0].json()["tenant"] is None
    assert count("/users/{user_id}", "default_tenant") - before == 1


def test_nonstandard_method_is_other():
    tenant = unique()
    run(starlette_app(tenant="X-T"), "/users/1", method="PURGE", **{"X-T": tenant})
    assert count("/users/{user_id}", tenant, "4xx", "OTHER") == 1


def test_concurrent_requests_count_exactly():
    tenant = unique()
    app = starlette_app(tenant="X-T")

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await asyncio.gather(*(client.get(f"/users/{i}", headers={"X-T": tenant}) for i in range(200)))

    answers = asyncio.run(main())
    assert all(a.status_code == 200 for a in answers)
    assert count("/users/{user_id}", tenant) == 200


def test_a_failure_in_recording_never_changes_the_response(monkeypatch: pytest.MonkeyPatch, caplog):
    class Broken:
        def get(self, *args: Any) -> Any:
            raise RuntimeError("registry down")

    monkeypatch.setattr(bizmetrics._http, "API_FAMILY", Broken())
    bizmetrics._log.reset()
    with caplog.at_level(logging.ERROR, logger="bizmetrics"):
        answers = run(starlette_app(tenant="X-T"), "/users/1", "/missing")
    assert [a.status_code for a in answers] == [200, 404]
    assert answers[0].json() == {"id": 1, "tenant": None}
    assert "recording failed" in caplog.text


def test_routes_added_after_the_first_request_are_found():
    tenant = unique()
    app = starlette_app(tenant="X-T")
    run(app, "/users/1", **{"X-T": tenant})
    app.router.routes.append(Route("/late/{x}", homepage))
    run(app, "/late/1", **{"X-T": tenant})
    assert count("/late/{x}", tenant) == 1


# --- metrics_app ---------------------------------------------------------------------


def scrape_app(mount: bool) -> Starlette:
    route = Mount("/metrics", app=metrics_app()) if mount else Route("/metrics", metrics_app())
    return Starlette(routes=[route, Route("/users/{user_id}", user)], middleware=[Middleware(MetricsMiddleware)])


def test_metrics_app_as_a_route_answers_at_metrics_without_a_redirect():
    tenant = unique()
    app = scrape_app(mount=False)
    run(app, "/users/1", **{"X-Tenant-ID": tenant})
    answer = run(app, "/metrics")[0]
    assert answer.status_code == 200, "no 307 to /metrics/"
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'api_requests_total{endpoint="/users/{user_id}"' in answer.text


def test_metrics_app_mounted_serves_every_path_under_the_mount():
    app = scrape_app(mount=True)
    answer = run(app, "/metrics/")[0]
    assert answer.status_code == 200
    assert "api_requests_total" in answer.text


def test_metrics_app_negotiates_openmetrics_and_gzip():
    app = Starlette(routes=[Route("/metrics", metrics_app())])
    accept = {"Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"}
    answer = run(app, "/metrics", **accept)[0]
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    assert answer.headers.get("content-encoding") == "gzip"
    assert answer.text.rstrip().endswith("# EOF")
    raw = run(Starlette(routes=[Route("/metrics", metrics_app(compress=False))]), "/metrics")[0]
    assert "content-encoding" not in raw.headers
    assert gzip.compress(b"") and raw.text.startswith("# HELP")


def test_metrics_app_filters_by_name():
    tenant = unique()
    bizmetrics.record_api_request("GET", "/filtered", 200, 1.0, tenant)
    bizmetrics.record_connector_operation("wp", "filtered", 1.0, True, tenant)
    app = Starlette(routes=[Route("/metrics", metrics_app())])
    answer = run(app, "/metrics?name[]=api_requests_total")[0]
    names = {line.split("{")[0].split(" ")[0] for line in answer.text.splitlines() if not line.startswith("#")}
    assert names == {"api_requests_total"}


def test_metrics_app_handles_lifespan_when_it_is_the_whole_application():
    async def main() -> tuple[list[Any], list[Any]]:
        life = await _call(
            metrics_app(), "", type_="lifespan", messages=[{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        )
        return life, await _call(metrics_app(), "/anything")

    life, http = asyncio.run(main())
    assert [m["type"] for m in life] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert http[0]["status"] == 200


@pytest.mark.slow
def test_importing_the_middleware_modules_imports_no_framework():
    import subprocess
    import sys

    code = (
        "import sys, bizmetrics.asgi, bizmetrics.wsgi, bizmetrics.django;"
        "print(sorted(m for m in ('starlette', 'fastapi', 'flask', 'django', 'werkzeug') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@given(st.binary(min_size=0, max_size=200).filter(lambda b: b"\r" not in b and b"\n" not in b))
def test_any_tenant_header_value_is_recorded_once_under_its_cleaned_label(raw: bytes):
    """Whatever a client puts in the header, the request succeeds and counts once, under the cleaned tenant."""
    from bizmetrics._values import label

    text = raw.decode("latin-1").strip()
    expected = label(text, "tenant_id", "default_tenant") if text else "default_tenant"
    endpoint = "/" + unique("tenant")
    app = Starlette(routes=[Route(endpoint, user_free)], middleware=[Middleware(MetricsMiddleware, tenant="X-T")])
    before = count(endpoint, expected)
    sent = asyncio.run(_call(app, endpoint, headers=[(b"x-t", raw)]))
    assert sent[0]["status"] == 200
    assert count(endpoint, expected) - before == 1


async def user_free(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def test_route_callable_names_the_endpoint_for_other_frameworks():
    """A plain ASGI app (no Starlette router) gets its template from route=; None means unmatched."""

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        scope["my.template"] = "/things/{id}" if scope["path"].startswith("/things/") else None
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    tenant = unique()
    app = MetricsMiddleware(raw, tenant="X-T", route=lambda scope: scope.get("my.template"))

    async def main() -> None:
        for path in ("/things/1", "/things/2", "/other"):
            await _call(app, path, headers=[(b"x-t", tenant.encode())])

    asyncio.run(main())
    assert count("/things/{id}", tenant) == 2
    assert count("__unmatched__", tenant) == 1


def test_a_route_callable_that_raises_leaves_the_response_alone_and_counts_unmatched(caplog):
    """A failing route= callable: the client gets the app's response, the request counts as unmatched, it is logged."""
    from bizmetrics import _log

    async def raw(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def route(scope: Any) -> str:
        raise KeyError("my.template")

    tenant = unique()
    app = MetricsMiddleware(raw, tenant="X-T", route=route)
    _log.reset()
    with caplog.at_level("ERROR", logger="bizmetrics"):
        sent = asyncio.run(_call(app, "/things/1", headers=[(b"x-t", tenant.encode())]))
    assert sent[0]["status"] == 201 and sent[1]["body"] == b"ok"
    assert count("__unmatched__", tenant, "2xx") == 1
    assert "recording failed in asgi route" in caplog.text


def test_readme_tenant_middleware_answers_requests_without_the_header():
    """The tenants guide's tenant middleware, as pasted: no header (a Prometheus scrape) is a 200, not a KeyError."""
    import re
    from pathlib import Path

    from starlette.middleware.base import BaseHTTPMiddleware

    readme = (Path(__file__).parent.parent / "docs" / "guides" / "tenants.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "tenant_context(request.headers" in b)
    namespace: dict[str, Any] = {}
    exec(block, namespace)
    dispatch = next(v for k, v in namespace.items() if inspect.iscoroutinefunction(v) and not k.startswith("_"))
    app = Starlette(
        routes=[Route("/users/{user_id:int}", user)], middleware=[Middleware(BaseHTTPMiddleware, dispatch=dispatch)]
    )
    tenant = unique()
    anonymous, known = run(app, "/users/1")[0], run(app, "/users/2", **{"X-Tenant-ID": tenant})[0]
    assert anonymous.status_code == 200
    assert anonymous.json()["tenant"] is None
    assert known.json()["tenant"] == tenant


def test_app_returning_without_a_response_is_a_500():
    """The server answers 500 for an app that sends nothing: so does the metric (not status "unknown")."""

    async def silent(scope: Any, receive: Any, send: Any) -> None:
        pass

    tenant = unique()
    asyncio.run(_call(MetricsMiddleware(silent, tenant="X-T"), "/x", headers=[(b"x-t", tenant.encode())]))
    assert count("__unmatched__", tenant, "5xx") == 1
    assert count("__unmatched__", tenant, "unknown") == 0
