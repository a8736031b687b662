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
from support.registry import unique, value

import bizmetrics
import bizmetrics.django

# Written for status classes (4xx): the exact codes of the default are in test_helpers_http_status.py.
pytestmark = pytest.mark.usefixtures("http_status_classes")

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
    _register_helpers()


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


# --- Wherever it stands in MIDDLEWARE ---------------------------------------------------------------

METRICS = "bizmetrics.django.MetricsMiddleware"
SECURITY = "django.middleware.security.SecurityMiddleware"
COMMON = "django.middleware.common.CommonMiddleware"


class Conflict(Exception):
    """A domain error that an outer middleware of the project turns into a 409."""


def conflict(request: HttpRequest) -> HttpResponse:
    raise Conflict("the deal changed meanwhile")


class Gate:
    """Answers 429 itself, before the rest of the chain, when ``X-Blocked`` is set (a rate limiter)."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "X-Blocked" in request.headers:
            return HttpResponse("slow down", status=429)
        return self.get_response(request)


class Rescue:
    """Turns the ``Conflict`` escaping the inner chain into a 409 response."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            return self.get_response(request)
        except Conflict:
            return HttpResponse("conflict", status=409)


class Slow:
    """Takes 7 ms of the (fake) clock before passing the request on."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        NOW[0] += 7_000_000
        return self.get_response(request)


class Org:
    """Sets ``request.org`` from ``X-Org``, as an authentication middleware sets ``request.user``."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.org = request.headers.get("X-Org")  # type: ignore[attr-defined]
        return self.get_response(request)


def _register_helpers() -> None:
    """Make the helper middlewares importable by Django, from the URLconf module."""
    urls = sys.modules[URLS]
    for helper in (Gate, Rescue, Slow, Org):
        setattr(urls, helper.__name__, helper)
    urls.urlpatterns.append(path("conflict/", conflict))  # type: ignore[attr-defined]


def placed(others: list[str], position: int) -> list[str]:
    """``others`` with the metrics middleware inserted at ``position``."""
    return [*others[:position], METRICS, *others[position:]]


def recorded(tenant: str) -> dict[tuple[str, str], float]:
    """Every ``api_requests_total`` series of ``tenant``, by (endpoint, status), zeros left out."""
    found: dict[tuple[str, str], float] = {}
    for family in bizmetrics.metrics.API_REQUESTS.collect():
        for s in family.samples:
            if s.name.endswith("_total") and s.labels["tenant_id"] == tenant and s.value:
                found[(s.labels["endpoint"], s.labels["status"])] = s.value
    return found


POSITIONS = pytest.mark.parametrize("position", [0, 1, 2], ids=["first", "middle", "last"])


@POSITIONS
def test_an_append_slash_redirect_of_common_middleware_is_recorded_once_wherever_it_stands(position):
    """``/users/1`` without its slash: CommonMiddleware answers 301; one 3xx request is recorded, no 404."""
    from django.test import override_settings

    tenant = unique()
    with override_settings(MIDDLEWARE=placed([SECURITY, COMMON], position), APPEND_SLASH=True):
        answer = client().get("/users/1", headers={"X-Tenant-ID": tenant})
    assert (answer.status_code, answer["Location"]) == (301, "/users/1/")
    assert recorded(tenant) == {("__unmatched__", "3xx"): 1.0}


@POSITIONS
def test_a_response_an_outer_middleware_returns_itself_is_recorded_wherever_it_stands(position):
    """A rate limiter answers 429 before the view: recorded once, under the route the path matches."""
    from django.test import override_settings

    tenant = unique()
    with override_settings(MIDDLEWARE=placed([SECURITY, f"{URLS}.Gate"], position)):
        c = client()
        assert c.get("/users/3/", headers={"X-Tenant-ID": tenant, "X-Blocked": "1"}).status_code == 429
        assert c.get("/users/4/", headers={"X-Tenant-ID": tenant}).status_code == 200
        assert c.get("/wp-login.php", headers={"X-Tenant-ID": tenant, "X-Blocked": "1"}).status_code == 429
    assert recorded(tenant) == {
        ("/users/<int:user_id>/", "4xx"): 1.0,
        ("/users/<int:user_id>/", "2xx"): 1.0,
        ("__unmatched__", "4xx"): 1.0,
    }
    assert (
        value("api_errors_total", method="GET", endpoint="/users/<int:user_id>/", status="4xx", tenant_id=tenant) == 1
    )


@POSITIONS
def test_an_exception_an_outer_middleware_turns_into_a_response_is_recorded_with_that_response(position):
    """The view raises, an outer middleware answers 409: one 4xx request is recorded, not a 5xx."""
    from django.test import override_settings

    tenant = unique()
    with override_settings(MIDDLEWARE=placed([SECURITY, f"{URLS}.Rescue"], position), DEBUG_PROPAGATE_EXCEPTIONS=True):
        answer = client().get("/conflict/", headers={"X-Tenant-ID": tenant})
    assert answer.status_code == 409
    assert recorded(tenant) == {("/conflict/", "4xx"): 1.0}


@POSITIONS
def test_the_async_handler_records_responses_outer_middlewares_return_wherever_it_stands(position):
    """In an async project too: the 429 of an outer middleware and the 301 of CommonMiddleware, once each."""
    from django.test import override_settings

    tenant = unique()

    async def main() -> list[int]:
        c = AsyncClient()
        blocked = await c.get("/async/users/1/", headers={"X-Tenant-ID": tenant, "X-Blocked": "1"})
        redirected = await c.get("/async/users/2", headers={"X-Tenant-ID": tenant})
        return [blocked.status_code, redirected.status_code]

    with override_settings(MIDDLEWARE=placed([f"{URLS}.Gate", COMMON], position), APPEND_SLASH=True):
        assert asyncio.run(main()) == [429, 301]
    assert recorded(tenant) == {("/async/users/<int:user_id>/", "4xx"): 1.0, ("__unmatched__", "3xx"): 1.0}


@POSITIONS
def test_the_duration_covers_every_middleware_wherever_it_stands(position, monkeypatch: pytest.MonkeyPatch):
    """A middleware that takes 7 ms, before or after this one: the request's duration is 7 ms either way."""
    from django.test import override_settings

    monkeypatch.setattr(bizmetrics.django, "perf_counter_ns", lambda: NOW[0])
    tenant = unique()
    before = value("api_request_duration_sum", method="GET", endpoint="/users/<int:user_id>/")
    with override_settings(MIDDLEWARE=placed([f"{URLS}.Slow", SECURITY], position)):
        assert client().get("/users/1/", headers={"X-Tenant-ID": tenant}).status_code == 200
    assert recorded(tenant) == {("/users/<int:user_id>/", "2xx"): 1.0}
    assert value("api_request_duration_sum", method="GET", endpoint="/users/<int:user_id>/") - before == 7.0


@pytest.mark.parametrize(("position", "tenant_seen"), [(0, False), (1, True)], ids=["before-Org", "after-Org"])
def test_a_tenant_callable_sees_what_the_middlewares_before_it_set(position, tenant_seen):
    """Placed after the middleware that sets ``request.org``, the tenant callable and the view see it."""
    from django.test import override_settings

    org = unique()
    with override_settings(
        MIDDLEWARE=placed([f"{URLS}.Org"], position),
        BIZMETRICS_TENANT=lambda request: getattr(request, "org", None),
    ):
        answer = client().get("/users/9/", headers={"X-Org": org})
    assert answer.json()["tenant"] == (org if tenant_seen else None)
    assert recorded(org) == ({("/users/<int:user_id>/", "2xx"): 1.0} if tenant_seen else {})


def test_a_real_wsgi_server_records_what_outer_middlewares_answer():
    """Django's own WSGI handler behind a real server on loopback, the middleware last: 301 and 429 recorded once."""
    import http.client
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from django.core.handlers.wsgi import WSGIHandler
    from django.test import override_settings

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    tenant = unique()
    with override_settings(MIDDLEWARE=[COMMON, f"{URLS}.Gate", METRICS], APPEND_SLASH=True, ALLOWED_HOSTS=["*"]):
        server = make_server("127.0.0.1", 0, WSGIHandler(), handler_class=Quiet)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            statuses = []
            for path_, blocked in (("/users/1", False), ("/users/2/", True), ("/users/3/", False)):
                conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
                headers = {"X-Tenant-ID": tenant, **({"X-Blocked": "1"} if blocked else {})}
                conn.request("GET", path_, headers=headers)
                answer = conn.getresponse()
                answer.read()
                statuses.append(answer.status)
                conn.close()
        finally:
            server.shutdown()
            server.server_close()
    assert statuses == [301, 429, 200]
    assert recorded(tenant) == {
        ("__unmatched__", "3xx"): 1.0,
        ("/users/<int:user_id>/", "4xx"): 1.0,
        ("/users/<int:user_id>/", "2xx"): 1.0,
    }


@pytest.mark.parametrize(("setting", "expect"), [("code", "404"), ("class", "4xx")])
def test_settings_http_status_chooses_codes_or_classes(setting: str, expect: str):
    """settings.BIZMETRICS_HTTP_STATUS: "code" records 404 as itself, "class" as 4xx."""
    from django.test import override_settings

    tenant = unique()
    with override_settings(BIZMETRICS_HTTP_STATUS=setting):
        assert client().get("/wp-login.php", headers={"X-Tenant-ID": tenant}).status_code == 404
    assert count("__unmatched__", tenant, expect) == 1
    assert count("__unmatched__", tenant, "4xx" if expect == "404" else "404") == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_middleware_built_by_hand_around_a_view_records_each_request(kind: str):
    """Without Django's handler around it (a custom stack): each request once, a raise as 500 re-raised, excluded
    paths not at all."""
    from django.test import RequestFactory

    def view(request: HttpRequest) -> HttpResponse:
        if request.path == "/boom/":
            raise Boom
        return HttpResponse("ok", status=201)

    async def async_view(request: HttpRequest) -> HttpResponse:
        return view(request)

    middleware = bizmetrics.django.MetricsMiddleware(view if kind == "sync" else async_view)
    tenant = unique()

    def call(path: str) -> HttpResponse:
        request = RequestFactory().get(path, headers={"X-Tenant-ID": tenant})
        response = middleware(request)
        response = asyncio.run(response) if kind == "async" else response
        response.close()  # as the server does once it sent the body: the request is recorded then
        return response

    assert call("/users/7/").status_code == 201
    with pytest.raises(Boom):
        call("/boom/")
    assert call("/health").status_code == 201  # excluded by default: served, not recorded
    assert count("/users/<int:user_id>/", tenant) == 1
    assert count("/boom/", tenant, "5xx") == 1
    assert count("/health", tenant) == 0
