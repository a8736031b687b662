"""ASGI middleware (Starlette, FastAPI) that records every HTTP request, and a ``/metrics`` app.

Pure ASGI: no web framework is imported.  Route templates are read from what
Starlette's router leaves in the ``scope`` after the application ran.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from time import perf_counter_ns
from typing import Any

from prometheus_client.registry import CollectorRegistry

from . import _http, _log, helpers
from ._http import DEFAULT_EXCLUDE, UNMATCHED

__all__ = ["DEFAULT_EXCLUDE", "UNMATCHED", "MetricsMiddleware", "metrics_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_AMBIGUOUS = object()


# --- Route templates ---------------------------------------------------------------
#
# Starlette's router puts the route that handled the request in scope["route"]
# (FastAPI does it for its own routes), but only the innermost one: the
# prefixes of mounts and of FastAPI's included routers are lost.  So the route
# tree of the application is walked once, statically, into a map from each
# route object to its full template; a route that appears under two prefixes,
# or a request that left no route in the scope, is resolved by matching the
# tree the way the router does.


def _mount_prefix(route: Any) -> str | None:
    """Return a mount's template without its ``/{path}`` tail, or None if ``route`` is no mount."""
    fmt = getattr(route, "path_format", None)
    if isinstance(fmt, str) and fmt.endswith("/{path}") and hasattr(route, "routes"):
        return fmt[:-7]
    return None


def _flatten(routes: Iterable[Any]) -> list[Any]:
    """Replace FastAPI's included routers (no path, no ``matches`` children) by their routes."""
    out: list[Any] = []
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if callable(contexts):
            out.extend(getattr(c, "starlette_route", None) or c for c in contexts())
        else:
            out.append(route)
    return out


def _originals(route: Any) -> list[Any]:
    """The objects a router may leave in ``scope["route"]`` for this route."""
    original = getattr(route, "original_route", None)
    return [route] if original is None else [route, original]


def _build(routes: Iterable[Any], prefix: str, table: dict[int, tuple[Any, object]], depth: int = 0) -> None:
    if depth > 32:
        return
    for route in _flatten(routes):
        mount = _mount_prefix(route)
        sub = getattr(route, "routes", None)
        if mount is not None:
            template: object = prefix + mount + "/{path}"
            if sub:
                _build(sub, prefix + mount, table, depth + 1)
        elif sub and not hasattr(route, "path_format"):  # Host: no path of its own
            _build(sub, prefix, table, depth + 1)
            continue
        else:
            fmt = getattr(route, "path_format", None)
            template = prefix + fmt if isinstance(fmt, str) else _AMBIGUOUS
        for key in _originals(route):
            old = table.get(id(key))
            table[id(key)] = (key, template if old is None or old[1] == template else _AMBIGUOUS)


def _match(routes: Iterable[Any], scope: Scope, depth: int = 0) -> str | None:
    """Return the template of the route the router would choose, as it chooses it."""
    if depth > 32:
        return None
    partial = None
    for route in _flatten(routes):
        matches = getattr(route, "matches", None)
        if matches is None:
            continue
        match, child = matches(scope)
        level = getattr(match, "value", 0)
        if not level:
            continue
        sub = getattr(route, "routes", None)
        mount = _mount_prefix(route)
        if sub:
            inner = _match(sub, {**scope, **child}, depth + 1)
            if inner is None:
                continue
            name: str | None = (mount or "") + inner
        elif mount is not None:
            name = mount + "/{path}"
        else:
            fmt = getattr(route, "path_format", None)
            name = fmt if isinstance(fmt, str) else None
            if name is None:
                continue
        if level == 2:  # Match.FULL
            return name
        if partial is None:
            partial = name
    return partial


class _Templates:
    """Full route templates of one router, built at its first request."""

    __slots__ = ("app", "table")

    def __init__(self, app: Any) -> None:
        self.app = app
        self.table: dict[int, tuple[Any, object]] = {}
        _build(getattr(app, "routes", None) or (), "", self.table)

    def lookup(self, route: Any, scope: Scope) -> str | None:
        entry = self.table.get(id(route))
        if entry is None or entry[0] is not route:
            # Routes added after the first request: map them once more.
            self.table.clear()
            _build(getattr(self.app, "routes", None) or (), "", self.table)
            entry = self.table.get(id(route))
            if entry is None or entry[0] is not route:
                self.table[id(route)] = entry = (route, _AMBIGUOUS)
        template = entry[1]
        if template is _AMBIGUOUS:
            return self.match(scope)
        if getattr(route, "routes", None) and isinstance(template, str) and template.endswith("/{path}"):
            return None  # a mounted router whose routes all missed: a 404 inside the mount
        return template  # type: ignore[return-value]

    def match(self, scope: Scope) -> str | None:
        routes = getattr(self.app, "routes", None)
        if not routes:
            return None
        fresh = dict(scope)
        # Matching starts from the top: undo what mounts wrote in the scope.
        fresh.pop("path_params", None)
        if "app_root_path" in scope:
            fresh["root_path"] = scope["app_root_path"]
        return _match(routes, fresh)


class MetricsMiddleware:
    """Record every HTTP request of an ASGI application in the ``api_*`` metrics.

    ``endpoint`` is the route template (mounts and router prefixes included),
    or ``unmatched`` for a request that matched no route.  The duration runs
    until the last body message the application sends.  An exception raised
    before the response started is recorded as status 500 and re-raised
    unchanged.  Lifespan and websocket scopes pass through untouched.

    :param app: the ASGI application.
    :param tenant: a header name (``"X-Tenant-ID"``) or a callable taking the
        scope and returning the tenant or ``None``.  The tenant is set as
        ``tenant_context`` while the application handles the request.
    :param exclude: paths or route templates not recorded (default:
        ``DEFAULT_EXCLUDE``, ``/metrics`` and the usual health paths).
    :param unmatched: the ``endpoint`` of requests that matched no route.
    :param route: for frameworks other than Starlette: a callable taking the
        scope, called after the application, that returns the route template
        or ``None``.
    :param http_status: ``"code"`` records the exact status (``429``) in the
        ``status`` label, ``"class"`` its class (``4xx``); default:
        ``BIZMETRICS_HTTP_STATUS``, else ``"code"``.

    .. versionadded:: 0.2.0
    .. versionchanged:: 0.3.0 ``status`` is the exact code by default; ``http_status=``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        tenant: str | Callable[[Scope], object] | None = None,
        exclude: Iterable[str] | None = None,
        unmatched: str = UNMATCHED,
        route: Callable[[Scope], str | None] | None = None,
        http_status: str | None = None,
    ) -> None:
        self.app = app
        self._status = helpers.http_status(http_status)
        self.route = route
        self.exclude = _http.exclusions(exclude)
        self.unmatched = unmatched
        self._header, self._tenant = _http.tenant_source(tenant, lambda name: name.lower().encode("latin-1"))
        self._templates: _Templates | None = None

    def _tenant_of(self, scope: Scope) -> object:
        if self._header is not None:
            for name, value in scope.get("headers") or ():
                if name == self._header:
                    return _http.header_tenant(value)
            return None
        if self._tenant is not None:
            return _http.call_tenant(self._tenant, scope)
        return None

    def _template(self, scope: Scope, before: object) -> str:
        if self.route is not None:
            try:
                return self.route(scope) or self.unmatched
            except Exception:
                _log.internal_error("asgi route")
                return self.unmatched
        route = scope.get("route")
        # The first router that ran: mounted sub-applications replace scope["app"], not this.
        root = scope.get("router") or scope.get("app")
        templates = self._templates
        if templates is None or templates.app is not root:
            templates = self._templates = _Templates(root)
        if route is not None and route is not before:
            found = templates.lookup(route, scope)
        elif "endpoint" in scope:
            found = templates.match(scope)  # an older Starlette, or a FastAPI mount
        else:
            found = None
        return self.unmatched if found is None else found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http" or scope.get("path") in self.exclude:
            await self.app(scope, receive, send)
            return
        start = perf_counter_ns()
        status = 0
        end = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status, end
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            elif kind == "http.response.body" and not message.get("more_body"):
                end = perf_counter_ns()
            await send(message)

        try:
            tenant = self._tenant_of(scope)
            before = scope.get("route")
            trace = None
            for name, value in scope.get("headers") or ():
                if name == b"traceparent":
                    trace = _http.trace_of(value)
                    break
        except Exception:
            _log.internal_error("asgi middleware")
            tenant = before = trace = None
        # The request's tenant and trace, for what the handlers record and for the request itself.
        with _http.RequestScope(tenant, trace):
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                # No response started: an exception, or an app that returned without
                # answering; either way the server answers 500.
                status = status or 500
                try:
                    template = self._template(scope, before)
                    if not _http.excluded(template, self.exclude):
                        _http.record(
                            scope.get("method"), template, status, start, end or perf_counter_ns(), tenant, self._status
                        )
                except Exception:
                    _log.internal_error("asgi middleware")


class _MetricsApp:
    """The ASGI app behind ``metrics_app()``; a class, so Starlette's ``Route`` calls it as ASGI."""

    def __init__(self, registry: CollectorRegistry | None, compress: bool) -> None:
        self.registry = registry
        self.compress = compress

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            while message["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
                message = await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        headers = {name.lower(): value.decode("latin-1") for name, value in scope.get("headers") or ()}
        query = (scope.get("query_string") or b"").decode("latin-1")
        args = (self.registry, headers.get(b"accept", ""), headers.get(b"accept-encoding", ""), query, self.compress)
        try:
            # A big registry takes a while to render: keep the event loop free.
            loop = asyncio.get_running_loop()
        except RuntimeError:  # another event loop (trio)
            body, out = _http.exposition_body(*args)
        else:
            body, out = await loop.run_in_executor(None, _http.exposition_body, *args)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in out],
            }
        )
        await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})


def metrics_app(registry: CollectorRegistry | None = None, *, compress: bool = True) -> ASGIApp:
    """Return an ASGI app that serves the metrics, for ``/metrics``.

    It serves ``bizmetrics.multiprocess.registry()`` (every worker's samples
    in multiprocess mode, the default registry otherwise), in the OpenMetrics
    format when the ``Accept`` header asks for it (as Prometheus does),
    gzipped when ``Accept-Encoding`` allows it, and answers every path it
    receives, so it works as a ``Route("/metrics", metrics_app())``.

    :param registry: serve this registry instead.
    :param compress: gzip the body when the client accepts it.

    .. versionadded:: 0.2.0
    """
    return _MetricsApp(registry, compress)
