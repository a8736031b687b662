"""WSGI middleware (Flask, any WSGI application) that records every HTTP request, and a ``/metrics`` app.

No web framework is imported: Flask's route rules are read through the
application's ``url_map``, duck-typed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from time import perf_counter_ns
from types import TracebackType
from typing import Any, cast

from prometheus_client.registry import CollectorRegistry

from . import _http, _log, helpers
from ._http import DEFAULT_EXCLUDE, UNMATCHED

__all__ = ["DEFAULT_EXCLUDE", "UNMATCHED", "MetricsMiddleware", "metrics_app"]

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def flask_route(url_map: Any) -> Callable[[Environ], str | None]:
    """Return a ``route=`` callable that finds the rule of a Flask (werkzeug) ``url_map``.

    A 405 gives the rule that matched the path; a 404 or a slash redirect gives ``None``.

    .. versionadded:: 0.2.0
    """

    def route(environ: Environ) -> str | None:
        adapter = url_map.bind_to_environ(environ)
        try:
            rule, _ = adapter.match(return_rule=True)
        except Exception as exc:
            methods = getattr(exc, "valid_methods", None)  # MethodNotAllowed
            if not methods:
                return None
            rule, _ = adapter.match(method=next(iter(methods)), return_rule=True)
        text = getattr(rule, "rule", None)
        return text if isinstance(text, str) else None

    return route


def _find_url_map(app: Any) -> Any:
    # Either the Flask app itself, or its bound wsgi_app (app.wsgi_app = MetricsMiddleware(app.wsgi_app)).
    for candidate in (app, getattr(app, "__self__", None)):
        url_map = getattr(candidate, "url_map", None)
        if url_map is not None and hasattr(url_map, "bind_to_environ"):
            return url_map
    return None


class _Request:
    """The state of one request, until its body is sent or closed."""

    __slots__ = ("environ", "method", "middleware", "recorded", "start", "started", "status", "tenant", "trace")

    def __init__(self, middleware: MetricsMiddleware, environ: Environ, tenant: object) -> None:
        self.middleware = middleware
        self.environ = environ
        self.tenant = tenant
        #: The request's sampled W3C trace, for exemplars.
        self.trace = _http.trace_of(environ.get("HTTP_TRACEPARENT"))
        self.method = environ.get("REQUEST_METHOD")
        self.status = 0
        self.started = False
        self.recorded = False
        self.start = perf_counter_ns()

    def start_response(self, start_response: StartResponse) -> StartResponse:
        def wrapper(status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None) -> Any:
            write = start_response(status, headers, exc_info) if exc_info else start_response(status, headers)
            try:
                self.status = int(status[:3])
            except (TypeError, ValueError):
                self.status = -1
            return write

        return wrapper

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Call ``function`` in the request's tenant context; a failure ends the request."""
        try:
            with _http.RequestScope(self.tenant, self.trace):
                return function(*args)
        except StopIteration:
            self.finish(False)
            raise
        except BaseException:
            self.finish(True)
            raise

    def finish(self, failed: bool) -> None:
        if self.recorded:
            return
        self.recorded = True
        end = perf_counter_ns()
        # Nothing sent yet, or no status at all: the server answers 500.
        status = 500 if (failed and not self.started) or not self.status else self.status
        self.middleware._record(self, status, end)


class _Body:
    """The response iterable, passed through; records when it is exhausted or closed."""

    __slots__ = ("iterator", "request", "result")

    def __init__(self, result: Iterable[bytes], request: _Request) -> None:
        self.result = result
        self.request = request
        self.iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        request = self.request
        if self.iterator is None:
            self.iterator = iter(self.result)
        chunk: bytes = request.call(next, self.iterator)
        request.started = True
        return chunk

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.request.finish(False)


class _ListBody(list):  # type: ignore[type-arg]
    """A list response, passed on as a list (servers take its ``len`` for Content-Length); records on close."""

    __slots__ = ("request",)
    request: _Request

    def close(self) -> None:
        self.request.finish(False)


class MetricsMiddleware:
    """Record every HTTP request of a WSGI application in the ``api_*`` metrics.

    ``endpoint`` is the route template: Flask's rule (``/users/<int:user_id>``)
    when the wrapped application is a Flask app or its ``wsgi_app``, else what
    ``route`` returns; ``unmatched`` when there is none.  The duration runs
    until the response body has been sent (or closed).  An exception raised
    before the body started is recorded as status 500 and re-raised unchanged.

    :param app: the WSGI application.
    :param tenant: a header name (``"X-Tenant-ID"``) or a callable taking the
        environ and returning the tenant or ``None``.  The tenant is set as
        ``tenant_context`` while the application handles the request.
    :param exclude: paths or route templates not recorded (default:
        ``DEFAULT_EXCLUDE``, ``/metrics`` and the usual health paths).
    :param unmatched: the ``endpoint`` of requests that matched no route.
    :param route: a callable taking the environ, called after the
        application, that returns the route template or ``None``.
    :param http_status: ``"code"`` records the exact status (``429``) in the
        ``status`` label, ``"class"`` its class (``4xx``); default:
        ``BIZMETRICS_HTTP_STATUS``, else ``"code"``.

    .. versionadded:: 0.2.0
    .. versionchanged:: 0.3.0 ``status`` is the exact code by default; ``http_status=``.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        tenant: str | Callable[[Environ], object] | None = None,
        exclude: Iterable[str] | None = None,
        unmatched: str = UNMATCHED,
        route: Callable[[Environ], str | None] | None = None,
        http_status: str | None = None,
    ) -> None:
        self.app = app
        self._status = helpers.http_status(http_status)
        self.exclude = _http.exclusions(exclude)
        self.unmatched = unmatched
        self._header, self._tenant = _http.tenant_source(tenant, lambda name: "HTTP_" + name.upper().replace("-", "_"))
        if route is None:
            url_map = _find_url_map(app)
            if url_map is not None:
                route = flask_route(url_map)
            else:
                _log.warning(
                    "bizmetrics: no route templates for %r; every request is endpoint=%r unless route= is given",
                    app,
                    unmatched,
                )
        self.route = route

    def _tenant_of(self, environ: Environ) -> object:
        if self._header is not None:
            return _http.header_tenant(environ.get(self._header))
        if self._tenant is not None:
            return _http.call_tenant(self._tenant, environ)
        return None

    def _record(self, request: _Request, status: int, end: int) -> None:
        try:
            template = None
            if self.route is not None:
                try:
                    template = self.route(request.environ)
                except Exception:
                    _log.internal_error("wsgi route")
            if not template:
                template = self.unmatched
            if not _http.excluded(template, self.exclude):
                with _http.RequestScope(None, request.trace):
                    _http.record(request.method, template, status, request.start, end, request.tenant, self._status)
        except Exception:
            _log.internal_error("wsgi middleware")

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        """Handle one request."""
        if environ.get("PATH_INFO") in self.exclude:
            return self.app(environ, start_response)
        try:
            request = _Request(self, environ, self._tenant_of(environ))
            wrapped = request.start_response(start_response)
        except Exception:
            _log.internal_error("wsgi middleware")
            return self.app(environ, start_response)
        result = request.call(self.app, environ, wrapped)
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
            # The server sends it with sendfile only if it gets it back as it is:
            # recorded now, timed to the application's return.
            request.started = True
            request.finish(False)
            return cast("Iterable[bytes]", result)
        if type(result) in (list, tuple):
            body = _ListBody(result)
            body.request = request
            request.started = True
            return body
        return _Body(result, request)


def metrics_app(registry: CollectorRegistry | None = None, *, compress: bool = True) -> WSGIApp:
    """Return a WSGI app that serves the metrics, for ``/metrics``.

    It serves ``bizmetrics.multiprocess.registry()`` (every worker's samples
    in multiprocess mode, the default registry otherwise), in the OpenMetrics
    format when the ``Accept`` header asks for it, gzipped when
    ``Accept-Encoding`` allows it, whatever the path it receives, except
    ``/favicon.ico``: an empty 200, as prometheus_client's app answers, so a
    browser opening the page does not cost a second scrape.

    :param registry: serve this registry instead.
    :param compress: gzip the body when the client accepts it.

    .. versionadded:: 0.2.0
    """

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/favicon.ico":
            start_response("200 OK", [])
            return [b""]
        body, headers = _http.exposition_body(
            registry,
            environ.get("HTTP_ACCEPT", ""),
            environ.get("HTTP_ACCEPT_ENCODING", ""),
            environ.get("QUERY_STRING", ""),
            compress,
        )
        start_response("200 OK", headers)
        return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]

    return app
