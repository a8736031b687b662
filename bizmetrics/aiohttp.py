"""aiohttp: outgoing requests to declared targets as connector operations.

Two hooks, the same series:

- ``ClientSession(middlewares=[bizmetrics.aiohttp.middleware(targets={"api.hubapi.com": "hubspot"})])``
  (aiohttp 3.12 and later, the cheaper one): a client middleware, one
  coroutine per request sent; it records each response, or the exception the
  session raises for that request.
- ``ClientSession(trace_configs=[bizmetrics.aiohttp.trace_config(targets=...)])``
  (any aiohttp): a ``TraceConfig``, which records each call of the session
  once (redirects followed are part of it): its response, or the exception
  that ended it.

Importing this module does not import aiohttp.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from time import perf_counter_ns
from typing import Any

from . import _log
from ._outgoing import REMAINING_HEADERS, Outgoing, Targets

__all__ = ["middleware", "trace_config"]

#: aiohttp's own set: the methods a session sends again, once, on a fresh connection when a pooled one was dropped.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

#: The session call under way in this context once it has been redirected or retried: its timer (aiohttp's one
#: object per call) and whether a dropped connection will still be sent again. aiohttp decides that once per
#: call, from the method the call began with (a POST redirected by a 303 to a GET is never sent again), so the
#: first hop's answer is kept here; a call that ends clears it.
_CALL: ContextVar[tuple[object, bool] | None] = ContextVar("bizmetrics_aiohttp_call", default=None)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_UNKNOWN = object()


class _Outgoing(Outgoing):
    __slots__ = ()

    def path_of(self, url: Any) -> str:
        return url.raw_path  # type: ignore[no-any-return]  # yarl's: percent-encoded, without the query

    def target(self, url: Any) -> str | None:
        """Return the connector type of a request to the yarl ``url``, or ``None``."""
        # yarl's authority ("host:port" as written): what a target lookup reads, far cheaper than str(url).
        return self.connector(url, url.raw_authority)


def middleware(
    *,
    targets: Targets,
    routes: Iterable[str] = (),
    remaining_headers: Iterable[str] = REMAINING_HEADERS,
) -> Any:
    """Return an aiohttp client middleware that records the requests to ``targets``.

    For ``ClientSession(middlewares=[...])`` or one call's ``middlewares=``
    (aiohttp 3.12 and later); same options as ``bizmetrics.httpx.instrument``.
    Each request the session sends is one operation: a redirect followed is
    a request of its own. A dropped connection that the session sends again
    (once a call, for a call begun with an idempotent method whose body can
    be resent) is not counted; an exception is counted under the class the
    session raises (``TimeoutError`` for its total timeout).

    .. versionadded:: 0.3.0
    """
    routes = tuple(routes)
    outgoing = _Outgoing(targets, routes, remaining_headers)
    error_type = _error_types(importlib.import_module("aiohttp"))
    target, record, failed = outgoing.target, outgoing.record, outgoing.failed
    # The connector types found so far by authority, read here before any call: a request to a known host
    # costs one dict lookup (a callable's answers are not kept, so it is asked every time).
    known: dict[Any, Any] = outgoing.by_origin
    # Without route templates the operation is the method, which aiohttp has upper-cased already.
    operation: Callable[[str, Any], str] | None = outgoing.operation if routes else None

    async def bizmetrics_middleware(request: Any, handler: Any) -> Any:
        url = request.url
        connector = known.get(url.raw_authority, _UNKNOWN)
        if connector is _UNKNOWN:
            connector = target(url)
        if connector is None:
            return await handler(request)
        method = request.method
        op = method if operation is None else operation(method, url)
        start = perf_counter_ns()
        try:
            response = await handler(request)
        except BaseException as error:
            name = error_type(request, error)
            if name is not None:
                failed(connector, op, start, name)
            raise
        status = response.status
        record(connector, op, start, status, response.headers)
        if status in _REDIRECTS:
            _follow(request)
        elif _CALL.get() is not None:
            _CALL.set(None)
        return response

    return bizmetrics_middleware


def _follow(request: Any) -> None:
    """Remember, at a session call's first redirect, whether its dropped connections are sent again."""
    try:
        timer = getattr(request, "_timer", None)
        call = _CALL.get()
        if timer is not None and (call is None or call[0] is not timer):
            _CALL.set((timer, request.method in _IDEMPOTENT))
    except Exception:
        _log.internal_error("outgoing redirect")


def _error_types(aiohttp: Any) -> Callable[[Any, BaseException], str | None]:
    """Return what names an exception a middleware sees as: the class the session raises, or ``None`` if it retries."""
    dropped = (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)
    refused = aiohttp.ClientConnectorError  # a ClientOSError the session never retries
    client_error = aiohttp.ClientError

    def error_type(request: Any, error: BaseException) -> str | None:
        try:
            if isinstance(error, dropped) and not isinstance(error, refused):
                timer = getattr(request, "_timer", None)
                call = _CALL.get()
                ours = call is not None and call[0] is timer
                body = getattr(request, "_body", None)
                if (
                    timer is not None
                    and getattr(getattr(request, "_session", None), "_retry_connection", False)
                    and (call[1] if ours and call is not None else request.method in _IDEMPOTENT)
                    # A streamed body already read cannot be sent again: the session raises.
                    and not getattr(body, "consumed", False)
                ):
                    _CALL.set((timer, False))  # sent again once: its next failure is the one the session raises
                    return None
                if ours:
                    _CALL.set(None)
            elif isinstance(error, asyncio.CancelledError):
                # The session's total timeout cancels the request and raises TimeoutError in its place.
                if getattr(getattr(request, "_timer", None), "_cancelled", False):
                    return "TimeoutError"
            elif (
                isinstance(error, OSError)
                and not isinstance(error, client_error)
                and not (error.errno is None and isinstance(error, asyncio.TimeoutError))
            ):
                return "ClientOSError"  # what the session wraps it in
        except Exception:
            _log.internal_error("outgoing error")
        return type(error).__name__

    return error_type


def trace_config(
    *,
    targets: Targets,
    routes: Iterable[str] = (),
    remaining_headers: Iterable[str] = REMAINING_HEADERS,
) -> Any:
    """Return an ``aiohttp.TraceConfig`` that records the requests to ``targets``.

    Same options as ``bizmetrics.httpx.instrument``. On aiohttp 3.12 and
    later, ``middleware`` records the same series at a fraction of the cost.

    .. versionadded:: 0.3.0
    """
    aiohttp = importlib.import_module("aiohttp")
    outgoing = _Outgoing(targets, routes, remaining_headers)

    async def on_request_start(session: Any, ctx: Any, params: Any) -> None:
        url = params.url
        connector = outgoing.target(url)
        ctx.bizmetrics = (
            None if connector is None else (connector, outgoing.operation(params.method, url), perf_counter_ns())
        )

    async def on_request_end(session: Any, ctx: Any, params: Any) -> None:
        mark = getattr(ctx, "bizmetrics", None)
        if mark is not None:
            connector, operation, start = mark
            response = params.response
            outgoing.record(connector, operation, start, response.status, response.headers)

    async def on_request_exception(session: Any, ctx: Any, params: Any) -> None:
        mark = getattr(ctx, "bizmetrics", None)
        if mark is not None:
            connector, operation, start = mark
            outgoing.failed(connector, operation, start, params.exception)

    config = aiohttp.TraceConfig()
    config.on_request_start.append(on_request_start)
    config.on_request_end.append(on_request_end)
    config.on_request_exception.append(on_request_exception)
    return config
