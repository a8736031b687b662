"""httpx: outgoing requests to declared targets as connector operations, through httpx's event hooks.

``bizmetrics.httpx.instrument(client, targets={"api.hubapi.com": "hubspot"})``
on an ``httpx.Client`` or ``httpx.AsyncClient`` adds a request and a response
hook (the client's own hooks stay).  Requests that fail without a response
(connection errors, timeouts) never reach a response hook: give the client
``transport=bizmetrics.httpx.transport(...)`` to count those too.

Importing this module does not import httpx.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from time import perf_counter_ns
from typing import Any

from ._outgoing import REMAINING_HEADERS, Outgoing, Targets

__all__ = ["instrument", "transport"]

_KEY = "bizmetrics"


class _Outgoing(Outgoing):
    """Reads httpx's own header list once per response instead of one ``Headers.get`` per quota header.

    ``Headers.get`` scans every header and raises and catches a ``KeyError``
    when the header is absent: with no quota header in a response (the usual
    case), the seven default names cost tens of µs.
    """

    __slots__ = ("_wanted",)

    def __init__(self, targets: Targets, routes: Iterable[str], remaining_headers: Iterable[str]) -> None:
        super().__init__(targets, routes, remaining_headers)
        self._wanted = {name.encode("latin-1"): rank for name, rank in self._rank.items()} if _LAYOUT_OK else None

    def remaining(self, headers: Any) -> str | None:
        wanted = self._wanted
        if wanted is None:
            return super().remaining(headers)
        best, rank = None, len(wanted)
        # (raw name, lower-cased name, value), all bytes: checked once by _layout_ok().
        for item in headers._list:
            found = wanted.get(item[1])
            if found is not None and found < rank:
                best, rank = item[2], found
        return None if best is None else best.decode("latin-1")

    def path_of(self, url: Any) -> str:
        return url.raw_path.partition(b"?")[0].decode("ascii")  # type: ignore[no-any-return]


def _layout_ok() -> bool:
    """Whether httpx keeps its headers as ``_list`` of (raw name, lower-cased name, value) bytes."""
    try:
        found = importlib.import_module("httpx").Headers({"X-A": "1"})._list
        return found == [(b"X-A", b"x-a", b"1")]  # type: ignore[no-any-return]
    except Exception:
        return False


_LAYOUT_OK = False


def _make(targets: Targets, routes: Iterable[str], remaining_headers: Iterable[str]) -> Outgoing:
    global _LAYOUT_OK
    _LAYOUT_OK = _LAYOUT_OK or _layout_ok()
    return _Outgoing(targets, routes, remaining_headers)


def _hooks(outgoing: Outgoing) -> tuple[Any, Any]:
    def on_request(request: Any) -> None:
        url = request.url
        # (host, port): what a target lookup reads, and far cheaper than str(url).
        connector = outgoing.connector(url, (url.raw_host, url.port))
        if connector is not None:
            method = request.method
            request.extensions[_KEY] = (connector, outgoing.operation(method, url), perf_counter_ns())

    def on_response(response: Any) -> None:
        mark = response.request.extensions.get(_KEY)
        if mark is not None:
            connector, operation, start = mark
            outgoing.record(connector, operation, start, response.status_code, response.headers)

    return on_request, on_response


def instrument(
    client: Any,
    *,
    targets: Targets,
    routes: Iterable[str] = (),
    remaining_headers: Iterable[str] = REMAINING_HEADERS,
) -> Any:
    """Record the requests of an httpx ``Client`` or ``AsyncClient`` to ``targets``; return the client.

    :param targets: host (``"api.hubapi.com"``, ``"host:port"``, ``"*.myshopify.com"``)
        to connector type, or a callable from the URL to a connector type or ``None``.
    :param routes: route templates (``"/crm/v3/objects/{type}"``, optionally
        ``"POST /crm/v3/objects/{type}"``): the ``operation`` of a request whose
        path matches one; any other request's operation is its method.
    :param remaining_headers: response headers holding the requests left, first present wins.

    .. versionadded:: 0.3.0
    """
    outgoing = _make(targets, routes, remaining_headers)
    on_request, on_response = _hooks(outgoing)
    httpx = importlib.import_module("httpx")
    if isinstance(client, httpx.AsyncClient):

        async def on_request_async(request: Any) -> None:
            on_request(request)

        async def on_response_async(response: Any) -> None:
            on_response(response)

        added: tuple[Any, Any] = (on_request_async, on_response_async)
    else:
        added = (on_request, on_response)
    hooks = client.event_hooks
    client.event_hooks = {
        "request": [*hooks.get("request", ()), added[0]],
        "response": [*hooks.get("response", ()), added[1]],
    }
    return client


def transport(
    wrapped: Any = None,
    *,
    targets: Targets,
    routes: Iterable[str] = (),
    remaining_headers: Iterable[str] = REMAINING_HEADERS,
    asynchronous: bool = False,
) -> Any:
    """Return an httpx transport that records the requests to ``targets``, errors without a response included.

    ``wrapped`` is the transport that sends (default: a new ``HTTPTransport``,
    or ``AsyncHTTPTransport`` with ``asynchronous=True``).  Use it as
    ``httpx.Client(transport=...)``; same options as ``instrument``.

    .. versionadded:: 0.3.0
    """
    httpx = importlib.import_module("httpx")
    outgoing = _make(targets, routes, remaining_headers)
    if asynchronous:
        inner = wrapped if wrapped is not None else httpx.AsyncHTTPTransport()

        class _AsyncTransport(httpx.AsyncBaseTransport):  # type: ignore[misc,name-defined]
            async def handle_async_request(self, request: Any) -> Any:
                url = request.url
                connector = outgoing.connector(url, (url.raw_host, url.port))
                if connector is None:
                    return await inner.handle_async_request(request)
                operation, start = outgoing.operation(request.method, request.url), perf_counter_ns()
                try:
                    response = await inner.handle_async_request(request)
                except Exception as error:
                    outgoing.failed(connector, operation, start, error)
                    raise
                outgoing.record(connector, operation, start, response.status_code, response.headers)
                return response

            async def aclose(self) -> None:
                await inner.aclose()

        return _AsyncTransport()
    inner = wrapped if wrapped is not None else httpx.HTTPTransport()

    class _Transport(httpx.BaseTransport):  # type: ignore[misc,name-defined]
        def handle_request(self, request: Any) -> Any:
            url = request.url
            connector = outgoing.connector(url, (url.raw_host, url.port))
            if connector is None:
                return inner.handle_request(request)
            operation, start = outgoing.operation(request.method, request.url), perf_counter_ns()
            try:
                response = inner.handle_request(request)
            except Exception as error:
                outgoing.failed(connector, operation, start, error)
                raise
            outgoing.record(connector, operation, start, response.status_code, response.headers)
            return response

        def close(self) -> None:
            inner.close()

    return _Transport()
