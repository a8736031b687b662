"""Our own API's ``status``: the exact code by default, the class with BIZMETRICS_HTTP_STATUS=class or http_status=."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import httpx
import pytest
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from support.registry import unique, value

import bizmetrics
from bizmetrics import helpers
from bizmetrics.asgi import MetricsMiddleware
from bizmetrics.wsgi import MetricsMiddleware as WsgiMiddleware

CODES = (200, 201, 204, 301, 404, 409, 429, 500, 503)


async def answer(request: Request) -> PlainTextResponse:
    return PlainTextResponse("x", status_code=int(request.path_params["code"]))


def _asgi(codes: list[int], tenant: str, **options: Any) -> None:
    app = Starlette(routes=[Route("/answer/{code}", answer)], middleware=[Middleware(MetricsMiddleware, **options)])

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            with bizmetrics.tenant_context(tenant):
                for code in codes:
                    assert (await client.get(f"/answer/{code}")).status_code == code

    asyncio.run(main())


def _count(status: str, tenant: str, endpoint: str = "/answer/{code}") -> float:
    return value("api_requests_total", method="GET", endpoint=endpoint, status=status, tenant_id=tenant)


def _errors(status: str, tenant: str, endpoint: str = "/answer/{code}") -> float:
    return value("api_errors_total", method="GET", endpoint=endpoint, status=status, tenant_id=tenant)


@given(st.lists(st.sampled_from(CODES), min_size=1, max_size=12))
def test_asgi_records_exact_codes_by_default(codes: list[int]) -> None:
    """A 429 is told from a 404: each code is its own series; 4xx and 5xx codes are errors too."""
    tenant = unique()
    _asgi(codes, tenant)
    for code in CODES:
        assert _count(str(code), tenant) == codes.count(code)
        assert _errors(str(code), tenant) == (codes.count(code) if code >= 400 else 0)
        assert _count(f"{code // 100}xx", tenant) == 0


def test_asgi_argument_keeps_classes() -> None:
    tenant = unique()
    _asgi([429, 404, 200, 503], tenant, http_status="class")
    assert _count("4xx", tenant) == 2 and _errors("4xx", tenant) == 2
    assert _count("2xx", tenant) == 1 and _count("5xx", tenant) == 1
    assert _count("429", tenant) == 0


def test_wsgi_exact_codes_and_argument() -> None:
    app = Flask("status")

    @app.route("/answer/<int:code>")
    def flask_answer(code: int) -> tuple[str, int]:
        return "x", code

    for mode, expect in ((None, "429"), ("class", "4xx")):
        tenant = unique()
        wrapped = WsgiMiddleware(
            app.wsgi_app, tenant="X-T", http_status=mode, route=lambda environ: "/answer/<int:code>"
        )
        app.wsgi_app = wrapped  # type: ignore[method-assign]
        client = app.test_client()
        response = client.get("/answer/429", headers={"X-T": tenant})
        response.close()
        assert response.status_code == 429
        app.wsgi_app = wrapped.app  # type: ignore[method-assign]
        assert _count(expect, tenant, "/answer/<int:code>") == 1


def test_record_api_request_exact_code() -> None:
    tenant = unique()
    for code in (429, 404, 503, "503", 200):
        helpers.record_api_request("GET", "/x", code, 1.0, tenant)  # type: ignore[arg-type]
    assert _count("429", tenant, "/x") == 1
    assert _count("503", tenant, "/x") == 2 and _errors("503", tenant, "/x") == 2
    assert _count("200", tenant, "/x") == 1 and _errors("200", tenant, "/x") == 0


def test_bad_status_and_bad_mode_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    tenant = unique()
    helpers.record_api_request("GET", "/x", 999, 1.0, tenant)
    assert _count("unknown", tenant, "/x") == 1 and _errors("unknown", tenant, "/x") == 0
    assert helpers.http_status("classes")(404) == "404"
    assert any("neither 'code' nor 'class'" in r.getMessage() for r in caplog.records)


def test_server_error_series_exists_at_zero_from_the_first_request() -> None:
    """The SLOs divide by status=~"5..": a 500 series exists at 0 before any server error."""
    tenant = unique()
    _asgi([200], tenant)
    assert value("api_requests_total", method="GET", endpoint="/answer/{code}", status="500", tenant_id=tenant) == 0
    from support.registry import exists

    assert exists("api_requests_total", method="GET", endpoint="/answer/{code}", status="500", tenant_id=tenant)


def _fresh(code: str, env: dict[str, str]) -> Any:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


RECORD = """
    import json, bizmetrics
    from prometheus_client import REGISTRY
    bizmetrics.record_api_request("GET", "/x", 429, 1.0, "t")
    print(json.dumps(sorted(s.labels["status"] for m in REGISTRY.collect() if m.name == "api_requests"
                            for s in m.samples if s.name == "api_requests_total")))
"""


@pytest.mark.parametrize(
    ("env", "expect"), [("", ["429", "500"]), ("class", ["4xx", "5xx"]), ("CLASS", ["4xx", "5xx"])]
)
def test_environment_setting_in_a_fresh_interpreter(env: str, expect: list[str]) -> None:
    """BIZMETRICS_HTTP_STATUS=class keeps the classes of 0.2; unset, the exact codes."""
    environ = {"BIZMETRICS_HTTP_STATUS": env} if env else {}
    clean = {k: v for k, v in os.environ.items() if k != "BIZMETRICS_HTTP_STATUS"}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RECORD)],
        env={**clean, **environ},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expect


def test_importing_bizmetrics_imports_no_client() -> None:
    """Importing bizmetrics, and each instrumentation module, imports none of the clients."""
    clients = ["sqlalchemy", "redis", "httpx", "requests", "aiohttp", "psycopg", "asyncpg"]
    code = f"""
        import json, sys
        import bizmetrics, bizmetrics.asgi, bizmetrics.wsgi
        import bizmetrics.sqlalchemy, bizmetrics.redis, bizmetrics.httpx, bizmetrics.requests, bizmetrics.aiohttp
        print(json.dumps([name for name in {clients!r} if name in sys.modules]))
    """
    assert _fresh(code, {}) == []
