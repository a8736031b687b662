"""The Django middleware against a real Django project, in WSGI and in ASGI (async) mode."""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import AsyncIterator, Iterator
from typing import Any

import django
import pytest
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.test import AsyncClient, Client
from django.urls import include, path, re_path
from helpers import unique, value

import bizmetrics
import bizmetrics.django

URLS = "bizmetrics_test_django_urls"


class Boom(Exception):
    pass


def user(request: HttpRequest, user_id: int) -> JsonResponse:
    return JsonResponse({"id": user_id, "tenant": bizmetrics.current_tenant()})


def item(request: HttpRequest, slug: str) -> HttpResponse:
    return HttpResponse(slug)


def archive(request: HttpRequest, year: str) -> HttpResponse:
    return HttpResponse(year)


def boom(request: HttpRequest) -> HttpResponse:
    raise Boom("view failed")


NOW = [0]
#: The tenant current while each streamed chunk was produced.
STREAMED_IN: list[object] = []


def stream(request: HttpRequest) -> StreamingHttpResponse:
    def chunks() -> Iterator[bytes]:
        STREAMED_IN.append(bizmetrics.current_tenant())
        yield b"a"
        NOW[0] += 3_000_000
        STREAMED_IN.append(bizmetrics.current_tenant())
        yield b"b"
        NOW[0] += 5_000_000

    return StreamingHttpResponse(chunks())


async def async_user(request: HttpRequest, user_id: int) -> JsonResponse:
    await asyncio.sleep(0)
    return JsonResponse({"id": user_id, "tenant": bizmetrics.current_tenant()})


async def async_stream(request: HttpRequest) -> StreamingHttpResponse:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"x"
        yield b"y"

    return StreamingHttpResponse(chunks())


def setup_module() -> None:
    if not settings.configured:
        urls = types.ModuleType(URLS)
        urls.urlpatterns = [  # type: ignore[attr-defined]
            path("users/<int:user_id>/", user),
            path(
                "v1/", include([path("items/<slug:slug>/", item), re_path(r"^archive/(?P<year>[0-9]{4})/$", archive)])
            ),
            path("boom/", boom),
            path("stream/", stream),
            path("async/users/<int:user_id>/", async_user),
            path("async/stream/", async_stream),
            path("health", item, {"slug": "ok"}),
            path("metrics", bizmetrics.django.metrics_view),
        ]
        sys.modules[URLS] = urls
        settings.configure(
            DEBUG=False,
            SECRET_KEY="test-only",
            ALLOWED_HOSTS=["testserver"],
            ROOT_URLCONF=URLS,
            MIDDLEWARE=["bizmetrics.django.MetricsMiddleware"],
            INSTALLED_APPS=[],
            BIZMETRICS_TENANT="X-Tenant-ID",
            LOGGING_CONFIG=None,
        )
        django.setup()


def count(endpoint: str, tenant: str, status: str = "2xx", method: str = "GET") -> float:
    return value("api_requests_total", method=method, endpoint=endpoint, status=status, tenant_id=tenant)


def client() -> Client:
    return Client(raise_request_exception=False)


def test_route_patterns_with_includes_and_tenant_header():
    tenant = unique()
    c = client()
    answers = [c.get(p, headers={"X-Tenant-ID": tenant}) for p in ("/users/1/", "/users/2/", "/v1/items/abc/")]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].json() == {"id": 1, "tenant": tenant}, "the view sees the tenant in tenant_context"
    assert count("/users/<int:user_id>/", tenant) == 2
    assert count("/v1/items/<slug:slug>/", tenant) == 1
    assert c.get("/v1/archive/2024/", headers={"X-Tenant-ID": tenant}).status_code == 200
    assert count("/v1/archive/(?P<year>[0-9]{4})/$", tenant) == 1
    assert count("/users/1/", tenant) == 0


def test_404_500_405_and_exclusions():
    tenant = unique()
    c = client()
    assert c.get("/wp-login.php", headers={"X-Tenant-ID": tenant}).status_code == 404
    assert c.get("/boom/", headers={"X-Tenant-ID": tenant}).status_code == 500
    assert c.get("/health", headers={"X-Tenant-ID": tenant}).status_code == 200
    assert c.get("/metrics", headers={"X-Tenant-ID": tenant}).status_code == 200
    assert count("__unmatched__", tenant, "4xx") == 1
    assert count("/boom/", tenant, "5xx") == 1
    assert value("api_errors_total", method="GET", endpoint="/boom/", status="5xx", tenant_id=tenant) == 1
    assert count("/health", tenant) == 0
    assert count("/metrics", tenant) == 0


def test_exception_escaping_django_is_a_500_and_propagates_unchanged():
    tenant = unique()
    with pytest.raises(Boom):
        Client(raise_request_exception=True).get("/boom/", headers={"X-Tenant-ID": tenant})
    assert count("/boom/", tenant, "5xx") == 1


def test_missing_tenant_header_is_default_tenant():
    before = count("/users/<int:user_id>/", "default_tenant")
    answer = client().get("/users/5/")
    assert answer.status_code == 200
    assert answer.json()["tenant"] is None
    assert count("/users/<int:user_id>/", "default_tenant") - before == 1


def test_streaming_response_is_timed_until_django_closes_it(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(bizmetrics.django, "perf_counter_ns", lambda: NOW[0])
    tenant = unique()
    before = value("api_request_duration_sum", method="GET", endpoint="/stream/")
    answer = client().get("/stream/", headers={"X-Tenant-ID": tenant})
    assert count("/stream/", tenant) == 0, "not recorded before the body is consumed"
    STREAMED_IN.clear()
    assert b"".join(answer.streaming_content) == b"ab"  # type: ignore[attr-defined]
    assert STREAMED_IN == [tenant, tenant], "the body is produced in the request's tenant context"
    assert count("/stream/", tenant) == 1
    assert value("api_request_duration_sum", method="GET", endpoint="/stream/") - before == 8.0


def test_async_views_through_the_async_middleware():
    tenant = unique()

    async def main() -> list[Any]:
        c = AsyncClient()
        answers = [await c.get(f"/async/users/{i}/", headers={"X-Tenant-ID": tenant}) for i in range(3)]
        streamed = await c.get("/async/stream/", headers={"X-Tenant-ID": tenant})
        answers.append(b"".join([chunk async for chunk in streamed.streaming_content]))
        return answers

    answers = asyncio.run(main())
    assert answers[0].json() == {"id": 0, "tenant": tenant}
    assert answers[-1] == b"xy"
    assert count("/async/users/<int:user_id>/", tenant) == 3
    assert count("/async/stream/", tenant) == 1


def test_metrics_view_negotiates_openmetrics():
    answer = client().get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert answer["Content-Type"].startswith("application/openmetrics-text")
    assert answer.content.rstrip().endswith(b"# EOF")


def test_settings_tenant_callable_exclude_and_unmatched_label():
    from django.test import RequestFactory, override_settings

    tenant = unique()

    def get_response(request: HttpRequest) -> HttpResponse:
        return HttpResponse(str(bizmetrics.current_tenant()), status=404)

    settings_ = {
        "BIZMETRICS_TENANT": lambda request: request.GET.get("org"),
        "BIZMETRICS_EXCLUDE": ["/skip"],
        "BIZMETRICS_UNMATCHED": "none",
    }
    with override_settings(**settings_):
        middleware = bizmetrics.django.MetricsMiddleware(get_response)
    factory = RequestFactory()
    answer = middleware(factory.get("/nowhere", {"org": tenant}))
    answer.close()
    assert answer.content == tenant.encode(), "the handler sees the callable's tenant"
    middleware(factory.get("/skip", {"org": tenant})).close()
    assert count("none", tenant, "4xx") == 1
    assert count("__unmatched__", tenant, "4xx") == 0
