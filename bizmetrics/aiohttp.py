"""aiohttp: outgoing requests to declared targets as connector operations, through a ``TraceConfig``.

``ClientSession(trace_configs=[bizmetrics.aiohttp.trace_config(targets={"api.hubapi.com": "hubspot"})])``
records each request to a target once (redirects followed are part of it):
its response, or the exception that ended it.

Importing this module does not import aiohttp.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from time import perf_counter_ns
from typing import Any

from ._outgoing import REMAINING_HEADERS, Outgoing, Targets

__all__ = ["trace_config"]


class _Outgoing(Outgoing):
    __slots__ = ()

    def path_of(self, url: Any) -> str:
        return url.raw_path  # type: ignore[no-any-return]  # yarl's: percent-encoded, without the query


def trace_config(
    *,
    targets: Targets,
    routes: Iterable[str] = (),
    remaining_headers: Iterable[str] = REMAINING_HEADERS,
) -> Any:
    """Return an ``aiohttp.TraceConfig`` that records the requests to ``targets``.

    Same options as ``bizmetrics.httpx.instrument``.

    .. versionadded:: 0.3.0
    """
    aiohttp = importlib.import_module("aiohttp")
    outgoing = _Outgoing(targets, routes, remaining_headers)

    async def on_request_start(session: Any, ctx: Any, params: Any) -> None:
        url = params.url
        # yarl's authority ("host:port" as written): what a target lookup reads, far cheaper than str(url).
        connector = outgoing.connector(url, url.raw_authority)
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
