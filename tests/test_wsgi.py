"""The WSGI middleware and metrics_app() against real Flask applications and the standard library's server."""

from __future__ import annotations

import http.client
import io
import logging
import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from flask import Blueprint, Flask, Response, stream_with_context
from support.registry import unique, value
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import EnvironBuilder

import bizmetrics
import bizmetrics._http
import bizmetrics.wsgi
from bizmetrics.wsgi import MetricsMiddleware, metrics_app

# Written for status classes (4xx): the exact codes of the default are in test_helpers_http_status.py.
pytestmark = pytest.mark.usefixtures("http_status_classes")


def count(endpoint: str, tenant: str, status: str = "2xx", method: str = "GET") -> float:
    return value("api_requests_total", method=method, endpoint=endpoint, status=status, tenant_id=tenant)


class Boom(Exception):
    pass


def flask_app(propagate: bool = False) -> Flask:
    app = Flask("bizmetrics_test")
    app.config["PROPAGATE_EXCEPTIONS"] = propagate

    @app.get("/users/<int:user_id>")
    def user(user_id: int) -> dict[str, Any]:
        return {"id": user_id, "tenant": bizmetrics.current_tenant()}

    @app.get("/boom")
    def boom() -> str:
        raise Boom("view failed")

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[str]:
            yield "a"
            yield str(bizmetrics.current_tenant())

        return Response(stream_with_context(chunks()))

    @app.get("/health")
    def health() -> str:
        return "ok"

    v1 = Blueprint("v1", __name__, url_prefix="/v1")

    @v1.route("/items/<item_id>", methods=["GET", "PUT"])
    def item(item_id: str) -> str:
        return item_id

    app.register_blueprint(v1)
    return app


def serve(app: Any, path: str, method: str = "GET", **headers: str) -> tuple[int, bytes]:
    """Call a WSGI app as a server does: start_response, iterate the body, close it."""
    environ = EnvironBuilder(path=path, method=method, headers=headers).get_environ()
    statuses: list[str] = []

    def start_response(status: str, response_headers: Any, exc_info: Any = None) -> Any:
        statuses.append(status)
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return int(statuses[-1][:3]), body


@pytest.mark.parametrize("wiring", ["wsgi_app", "whole app"])
def test_flask_rules_blueprints_and_tenant_header(wiring: str):
    """Flask's rule is the endpoint (blueprint prefixes included); the view sees the tenant."""
    tenant = unique()
    app = flask_app()
    if wiring == "wsgi_app":
        app.wsgi_app = MetricsMiddleware(app.wsgi_app, tenant="X-Tenant-ID")  # type: ignore[method-assign]
        wsgi: Any = app
    else:
        wsgi = MetricsMiddleware(app, tenant="X-Tenant-ID")
    answers = [serve(wsgi, p, **{"X-Tenant-ID": tenant}) for p in ("/users/1", "/users/2", "/v1/items/abc")]
    assert [a[0] for a in answers] == [200, 200, 200]
    assert tenant.encode() in answers[0][1], "the view sees the tenant in tenant_context"
    assert count("/users/<int:user_id>", tenant) == 2
    assert count("/v1/items/<item_id>", tenant) == 1
    assert (
        value("api_requests_total", method="GET", endpoint="/users/<int:user_id>", status="5xx", tenant_id=tenant) == 0
    )
    assert count("/users/1", tenant) == 0


def test_flask_404_405_and_500():
    tenant = unique()
    app = MetricsMiddleware(flask_app(), tenant="X-T")
    assert serve(app, "/wp-admin/x.php", **{"X-T": tenant})[0] == 404
    assert serve(app, "/users/7", method="POST", **{"X-T": tenant})[0] == 405
    assert serve(app, "/boom", **{"X-T": tenant})[0] == 500
    assert count("__unmatched__", tenant, "4xx") == 1
    assert count("/users/<int:user_id>", tenant, "4xx", "POST") == 1
    assert count("/boom", tenant, "5xx") == 1
    assert value("api_errors_total", method="GET", endpoint="/boom", status="5xx", tenant_id=tenant) == 1


def test_exception_out_of_the_app_is_a_500_and_propagates_unchanged():
    tenant = unique()
    failure = Boom("mine")

    def raw(environ: Any, start_response: Any) -> Any:
        raise failure

    app = MetricsMiddleware(raw, tenant="X-T", route=lambda environ: "/raw")
    with pytest.raises(Boom) as info:
        serve(app, "/raw", **{"X-T": tenant})
    assert info.value is failure
    assert count("/raw", tenant, "5xx") == 1

    flask_propagating = MetricsMiddleware(flask_app(propagate=True), tenant="X-T")
    with pytest.raises(Boom):
        serve(flask_propagating, "/boom", **{"X-T": tenant})
    assert count("/boom", tenant, "5xx") == 1


def test_streaming_body_is_timed_to_its_end_and_sees_the_tenant(monkeypatch: pytest.MonkeyPatch):
    now = [0]
    monkeypatch.setattr(bizmetrics.wsgi, "perf_counter_ns", lambda: now[0])
    endpoint = "/" + unique("stream")

    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"a"
        now[0] += 4_000_000
        yield str(bizmetrics.current_tenant()).encode()
        now[0] += 6_000_000

    tenant = unique()
    wrapped = MetricsMiddleware(app, tenant="X-T", route=lambda environ: endpoint)
    before = value("api_request_duration_sum", method="GET", endpoint=endpoint)
    assert serve(wrapped, "/s", **{"X-T": tenant}) == (200, b"a" + tenant.encode())
    assert value("api_request_duration_sum", method="GET", endpoint=endpoint) - before == 10.0
    assert count(endpoint, tenant) == 1

    flask_stream = MetricsMiddleware(flask_app(), tenant="X-T")
    assert serve(flask_stream, "/stream", **{"X-T": tenant}) == (200, b"a" + tenant.encode())


def test_exception_mid_body_records_the_status_sent():
    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"partial"
        raise Boom("mid-stream")

    tenant = unique()
    with pytest.raises(Boom):
        serve(MetricsMiddleware(app, tenant="X-T", route=lambda e: "/mid"), "/mid", **{"X-T": tenant})
    assert count("/mid", tenant) == 1
    assert count("/mid", tenant, "5xx") == 0


def test_plain_wsgi_app_without_route_is_unmatched_and_warned(caplog: pytest.LogCaptureFixture):
    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("204 No Content", [])
        return []

    tenant = unique()
    with caplog.at_level(logging.WARNING, logger="bizmetrics"):
        wrapped = MetricsMiddleware(app, tenant=lambda environ: environ.get("HTTP_X_ORG"))
    assert "route=" in caplog.text
    serve(wrapped, "/anything", **{"X-Org": tenant})
    assert count("__unmatched__", tenant) == 1


def test_exclusions_by_path_and_by_rule():
    tenant = unique()
    serve(MetricsMiddleware(flask_app(), tenant="X-T"), "/health", **{"X-T": tenant})
    assert count("/health", tenant) == 0
    app = MetricsMiddleware(flask_app(), tenant="X-T", exclude=["/users/<int:user_id>"])
    serve(app, "/users/3", **{"X-T": tenant})
    serve(app, "/health", **{"X-T": tenant})
    assert count("/users/<int:user_id>", tenant) == 0
    assert count("/health", tenant) == 1


def test_a_failure_in_recording_never_changes_the_response(monkeypatch: pytest.MonkeyPatch):
    class Broken:
        def get(self, *args: Any) -> Any:
            raise RuntimeError("registry down")

    monkeypatch.setattr(bizmetrics._http, "API_FAMILY", Broken())

    def broken_route(environ: Any) -> str:
        raise RuntimeError("route lookup down")

    app = flask_app()
    assert serve(MetricsMiddleware(app), "/users/1")[0] == 200
    assert serve(MetricsMiddleware(app, route=broken_route), "/users/1")[0] == 200


def test_metrics_app_at_metrics_through_the_dispatcher_without_redirect():
    tenant = unique()
    app = flask_app()
    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        MetricsMiddleware(app.wsgi_app, tenant="X-T"), {"/metrics": metrics_app()}
    )
    serve(app, "/users/9", **{"X-T": tenant})
    status, body = serve(app, "/metrics")
    assert status == 200
    assert f'tenant_id="{tenant}"'.encode() in body
    status, body = serve(app, "/metrics", Accept="application/openmetrics-text; version=1.0.0")
    assert body.rstrip().endswith(b"# EOF")


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_real_wsgiref_server_counts_exactly():
    """Through the standard library's HTTP server, on loopback: every request counted once."""
    tenant = unique()
    app = MetricsMiddleware(flask_app(), tenant="X-Tenant-ID")
    server: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    # A short poll interval: shutdown() waits for the serving loop's next poll.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        for i in range(20):
            conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
            try:
                conn.request("GET", f"/users/{i}", headers={"X-Tenant-ID": tenant})
                assert conn.getresponse().read()
            finally:
                conn.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert count("/users/<int:user_id>", tenant) == 20


def test_a_list_body_stays_a_list_and_a_file_wrapper_is_passed_through():
    """A list body reaches the server as a list (len for Content-Length); a wsgi.file_wrapper one unchanged."""
    from wsgiref.util import FileWrapper

    endpoint = "/" + unique("p")

    def listing(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"one chunk"]

    def filing(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"file"))

    for app in (listing, filing):
        wrapped = MetricsMiddleware(app, route=lambda environ: endpoint)
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": endpoint, "wsgi.file_wrapper": FileWrapper}
        body = wrapped(environ, lambda status, headers, exc_info=None: None)
        if app is listing:
            assert isinstance(body, list) and len(body) == 1 and body == [b"one chunk"]
        else:
            assert isinstance(body, FileWrapper)
        getattr(body, "close", lambda: None)()
    assert count(endpoint, "default_tenant") == 2
