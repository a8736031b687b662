"""Django middleware that records every HTTP request, and a ``/metrics`` view.

Importing this module imports nothing from Django; the middleware reads its
settings when Django creates it::

    MIDDLEWARE = ["bizmetrics.django.MetricsMiddleware", ...]  # first: the others run in the tenant's scope
    BIZMETRICS_TENANT = "X-Tenant-ID"  # or a callable taking the request
    BIZMETRICS_EXCLUDE = [...]  # default: bizmetrics.asgi.DEFAULT_EXCLUDE
    BIZMETRICS_UNMATCHED = "__unmatched__"
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from time import perf_counter_ns
from types import FrameType
from typing import Any

from . import _http, _log, helpers
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


class _Request:
    """One request, from the handler's start to Django closing its response; kept on the request."""

    __slots__ = ("entered", "start", "tenant", "trace")

    def __init__(self, start: int) -> None:
        self.start = start
        #: Whether the middleware itself was reached (then it read the tenant and trace).
        self.entered = False
        self.tenant: object = None
        self.trace: dict[str, str] | None = None


#: The attribute of a Django request that holds its ``_Request``.
_STATE = "_bizmetrics_request"


class MetricsMiddleware:
    """Record every HTTP request of a Django project in the ``api_*`` metrics.

    Same semantics as ``bizmetrics.asgi.MetricsMiddleware``: ``endpoint`` is
    the route pattern (``route_template``), ``BIZMETRICS_UNMATCHED`` for a
    request no pattern matched; the duration runs until Django closes the
    response, after its body (streaming ones included) was sent; an exception
    that escapes the handler is recorded as status 500 and re-raised.
    Works in WSGI and ASGI (async) projects.

    Wherever it stands in ``MIDDLEWARE``, it records the response Django
    sends, once per request: it also wraps the handler that built the
    middleware chain, so responses that outer middlewares return or replace
    are counted with their status.  Its position decides where the request's
    tenant and trace are set: the middlewares before it run outside them.

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
        self.status = helpers.http_status(getattr(settings, "BIZMETRICS_HTTP_STATUS", None))
        try:
            handler = _loading_handler()
            if handler is not None:
                _wrap_handler(handler, self)
        except Exception:  # then it records what it sees from where it stands
            _log.internal_error("django middleware setup")

    def _tenant_of(self, request: Any) -> object:
        if self.header is not None:
            return _http.header_tenant(request.headers.get(self.header))
        if self.tenant is not None:
            return _http.call_tenant(self.tenant, request)
        return None

    def _enter(self, request: Any, state: _Request) -> _http.RequestScope:
        """Read the request's tenant and trace here, where the middleware stands, and scope them."""
        state.entered = True
        state.tenant = self._tenant_of(request)
        state.trace = _http.trace_of(request.headers.get("traceparent"))
        return _http.RequestScope(state.tenant, state.trace)

    def _template(self, request: Any, status: int) -> str:
        template = route_template(request)
        if template is None and status != 404:
            # The view was never reached: an outer middleware answered before URL resolution.
            template = _resolve(request)
        return template or self.unmatched

    def _finish(self, request: Any, status: int, state: _Request) -> None:
        try:
            template = self._template(request, status)
            if not _http.excluded(template, self.exclude):
                with _http.RequestScope(state.tenant, state.trace):
                    _http.record(
                        request.method, template, status, state.start, perf_counter_ns(), state.tenant, self.status
                    )
        except Exception:
            _log.internal_error("django middleware")

    def _on_close(self, request: Any, response: Any, state: _Request) -> None:
        status = getattr(response, "status_code", 0)
        if getattr(response, "streaming", False):
            _stream_in_scope(response, state.tenant, state.trace)
        closers = getattr(response, "_resource_closers", None)
        if isinstance(closers, list):
            # Django closes the response after the server sent its body.
            closers.append(lambda: self._finish(request, status, state))
        else:
            self._finish(request, status, state)

    def _begin(self, request: Any) -> _Request:
        state = _Request(perf_counter_ns())
        setattr(request, _STATE, state)
        return state

    def _answered(self, request: Any, response: Any, state: _Request) -> None:
        """The response Django sends: record it when Django closes it."""
        try:
            if not state.entered:  # an outer middleware answered: read the tenant and trace now
                state.tenant = self._tenant_of(request)
                state.trace = _http.trace_of(request.headers.get("traceparent"))
            self._on_close(request, response, state)
        except Exception:
            _log.internal_error("django middleware")

    def _handle(self, get_response: Callable[[Any], Any], request: Any) -> Any:
        """Run Django's whole middleware chain for ``request``: what the wrapped handler does."""
        if request.path_info in self.exclude:
            return get_response(request)
        state = self._begin(request)
        try:
            response = get_response(request)
        except BaseException:
            self._finish(request, 500, state)
            raise
        self._answered(request, response, state)
        return response

    async def _ahandle(self, get_response: Callable[[Any], Awaitable[Any]], request: Any) -> Any:
        """Run Django's whole middleware chain for ``request`` in an async project."""
        if request.path_info in self.exclude:
            return await get_response(request)
        state = self._begin(request)
        try:
            response = await get_response(request)
        except BaseException:
            self._finish(request, 500, state)
            raise
        self._answered(request, response, state)
        return response

    def __call__(self, request: Any) -> Any:
        """Handle one request."""
        if self.is_async:
            return self.__acall__(request)
        if request.path_info in self.exclude:
            return self.get_response(request)
        state = getattr(request, _STATE, None)
        if state is None:  # not behind a handler it wraps (built by hand): it is the outermost point itself
            return self._handle(self.__call__, request)
        if state.entered:
            return self.get_response(request)
        with self._enter(request, state):
            return self.get_response(request)

    async def __acall__(self, request: Any) -> Any:
        """Handle one request in an async project."""
        get_response: Callable[[Any], Awaitable[Any]] = self.get_response
        if request.path_info in self.exclude:
            return await get_response(request)
        state = getattr(request, _STATE, None)
        if state is None:
            return await self._ahandle(self.__acall__, request)
        if state.entered:
            return await get_response(request)
        with self._enter(request, state):
            return await get_response(request)


def _loading_handler() -> Any:
    """The Django handler whose ``load_middleware()`` is creating the middleware, or ``None``.

    Django gives a middleware only the rest of the chain; the responses of
    the middlewares before it are seen only by the handler that called
    ``load_middleware()``, so the middleware finds it among its callers.
    """
    from django.core.handlers.base import BaseHandler  # type: ignore[import-untyped,import-not-found,unused-ignore]

    frame: FrameType | None = sys._getframe(2)
    for _ in range(8):  # __init__ of subclasses of the middleware in between
        if frame is None:
            return None
        if frame.f_code.co_name == "load_middleware":
            handler = frame.f_locals.get("self")
            if isinstance(handler, BaseHandler):
                return handler
        frame = frame.f_back
    return None


def _wrap_handler(handler: Any, middleware: MetricsMiddleware) -> None:
    """Make ``handler`` run each request through ``middleware._handle``, around the whole middleware chain.

    Only this handler's own ``get_response`` and ``get_response_async`` are
    replaced (no Django class is patched); a handler that loads its
    middleware again is wrapped again around the same originals.
    """
    original = handler.__dict__.get("_bizmetrics_original")
    if original is None:
        original = handler.__dict__["_bizmetrics_original"] = (handler.get_response, handler.get_response_async)
    get_response, get_response_async = original

    def wrapped(request: Any) -> Any:
        return middleware._handle(get_response, request)

    async def wrapped_async(request: Any) -> Any:
        return await middleware._ahandle(get_response_async, request)

    handler.get_response = wrapped
    handler.get_response_async = wrapped_async


def _resolve(request: Any) -> str | None:
    """The route pattern ``request``'s path matches (for a request answered before URL resolution), or ``None``."""
    try:
        from django.urls import resolve  # type: ignore[import-untyped,import-not-found,unused-ignore]

        route = getattr(resolve(request.path_info, getattr(request, "urlconf", None)), "route", None)
    except Exception:  # Resolver404, or a broken URLconf: the view could not have run either
        return None
    return "/" + route.removeprefix("^") if isinstance(route, str) else None


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
