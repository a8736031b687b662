"""Django middleware that records every HTTP request, and a ``/metrics`` view.

Importing this module imports nothing from Django; the middleware reads its
settings when Django creates it::

    MIDDLEWARE = ["bizmetrics.django.MetricsMiddleware", ...]  # first, to time the others too
    BIZMETRICS_TENANT = "X-Tenant-ID"  # or a callable taking the request
    BIZMETRICS_EXCLUDE = [...]  # default: bizmetrics.asgi.DEFAULT_EXCLUDE
    BIZMETRICS_UNMATCHED = "__unmatched__"
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from time import perf_counter_ns
from typing import Any

from . import _http, _log
from ._http import DEFAULT_EXCLUDE, UNMATCHED

__all__ = ["DEFAULT_EXCLUDE", "UNMATCHED", "MetricsMiddleware", "metrics_view"]


def route_template(request: Any) -> str | None:
    """Return the full route pattern Django resolved for ``request`` (``/users/<int:user_id>/``), or ``None``.

    Patterns of ``include()`` are joined by Django; a leading ``/`` is added
    and a regex pattern's leading ``^`` dropped, so templates read as paths.

    .. versionadded:: 0.2.0
    """
    match = getattr(request, "resolver_match", None)
    route = getattr(match, "route", None)
    if not isinstance(route, str):
        return None
    return "/" + route.removeprefix("^")


class MetricsMiddleware:
    """Record every HTTP request of a Django project in the ``api_*`` metrics.

    Same semantics as ``bizmetrics.asgi.MetricsMiddleware``: ``endpoint`` is
    the route pattern (``route_template``), ``BIZMETRICS_UNMATCHED`` for a
    request no pattern matched; the duration runs until Django closes the
    response, after its body (streaming ones included) was sent; an exception
    that escapes the handler is recorded as status 500 and re-raised.
    Works in WSGI and ASGI (async) projects.

    .. versionadded:: 0.2.0
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        from asgiref.sync import iscoroutinefunction, markcoroutinefunction
        from django.conf import settings  # type: ignore[import-untyped,import-not-found,unused-ignore]

        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        self.header, self.tenant = _http.tenant_source(getattr(settings, "BIZMETRICS_TENANT", None), str)
        self.exclude = _http.exclusions(getattr(settings, "BIZMETRICS_EXCLUDE", None))
        self.unmatched: str = getattr(settings, "BIZMETRICS_UNMATCHED", UNMATCHED)

    def _tenant_of(self, request: Any) -> object:
        if self.header is not None:
            return _http.header_tenant(request.headers.get(self.header))
        if self.tenant is not None:
            return _http.call_tenant(self.tenant, request)
        return None

    def _finish(self, request: Any, status: int, start: int, tenant: object, trace: dict[str, str] | None) -> None:
        try:
            template = route_template(request) or self.unmatched
            if not _http.excluded(template, self.exclude):
                with _http.RequestScope(tenant, trace):
                    _http.record(request.method, template, status, start, perf_counter_ns(), tenant)
        except Exception:
            _log.internal_error("django middleware")

    def _on_close(self, request: Any, response: Any, start: int, tenant: object, trace: dict[str, str] | None) -> None:
        status = getattr(response, "status_code", 0)
        if getattr(response, "streaming", False):
            _stream_in_scope(response, tenant, trace)
        closers = getattr(response, "_resource_closers", None)
        if isinstance(closers, list):
            # Django closes the response after the server sent its body.
            closers.append(lambda: self._finish(request, status, start, tenant, trace))
        else:
            self._finish(request, status, start, tenant, trace)

    @contextmanager
    def _handling(self, request: Any) -> Iterator[Callable[[Any], None]]:
        start = perf_counter_ns()
        tenant = self._tenant_of(request)
        trace = _http.trace_of(request.headers.get("traceparent"))
        with _http.RequestScope(tenant, trace):
            try:
                yield lambda response: self._on_close(request, response, start, tenant, trace)
            except BaseException:
                self._finish(request, 500, start, tenant, trace)
                raise

    def __call__(self, request: Any) -> Any:
        """Handle one request."""
        if self.is_async:
            return self.__acall__(request)
        if request.path_info in self.exclude:
            return self.get_response(request)
        with self._handling(request) as done:
            response = self.get_response(request)
            done(response)
        return response

    async def __acall__(self, request: Any) -> Any:
        """Handle one request in an async project."""
        get_response: Callable[[Any], Awaitable[Any]] = self.get_response
        if request.path_info in self.exclude:
            return await get_response(request)
        with self._handling(request) as done:
            response = await get_response(request)
            done(response)
        return response


def _stream_in_scope(response: Any, tenant: object, trace: dict[str, str] | None) -> None:
    """Make a streaming response produce its body in the request's tenant and trace, as WSGI does."""
    if tenant is None and trace is None:
        return
    content = response.streaming_content
    if hasattr(content, "__aiter__"):

        async def scoped_async() -> Any:
            iterator = content.__aiter__()
            while True:
                with _http.RequestScope(tenant, trace):
                    try:
                        chunk = await iterator.__anext__()
                    except StopAsyncIteration:
                        return
                yield chunk

        response.streaming_content = scoped_async()
    else:

        def scoped() -> Any:
            iterator = iter(content)
            while True:
                with _http.RequestScope(tenant, trace):
                    try:
                        chunk = next(iterator)
                    except StopIteration:
                        return
                yield chunk

        response.streaming_content = scoped()


def metrics_view(request: Any) -> Any:
    """A Django view that serves the metrics: ``path("metrics", bizmetrics.django.metrics_view)``.

    Same content as ``bizmetrics.wsgi.metrics_app()``: the multiprocess or
    default registry, OpenMetrics when ``Accept`` asks for it, gzip when allowed.

    .. versionadded:: 0.2.0
    """
    from django.http import HttpResponse  # type: ignore[import-untyped,import-not-found,unused-ignore]

    body, headers = _http.exposition_body(
        None,
        request.headers.get("Accept", ""),
        request.headers.get("Accept-Encoding", ""),
        request.META.get("QUERY_STRING", ""),
        True,
    )
    response = HttpResponse(body)
    for name, value in headers:
        response[name] = value
    return response
