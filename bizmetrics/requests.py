"""requests: outgoing requests to declared targets as connector operations, through transport adapters.

``bizmetrics.requests.instrument(session, targets={"api.hubapi.com": "hubspot"})``
mounts, for every prefix the session has, an adapter that delegates to the
one mounted before (its retries and pools stay) and records the requests
to the targets: responses, and failures without one (connection errors,
timeouts) by exception class.

Importing this module does not import requests.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from time import perf_counter_ns
from typing import Any

from ._outgoing import REMAINING_HEADERS, Outgoing, Targets

__all__ = ["instrument"]


class _Outgoing(Outgoing):
    """Reads the lower-cased store of requests' ``CaseInsensitiveDict`` instead of one ``get`` per quota header.

    Its ``get`` is ``Mapping.get``, which raises and catches a ``KeyError``
    for each absent header: with no quota header in a response (the usual
    case), the seven default names cost several µs.
    """

    __slots__ = ()

    def remaining(self, headers: Any) -> str | None:
        store = getattr(headers, "_store", None)
        if not isinstance(store, dict):  # an OrderedDict of lower-cased name -> (name, value)
            return super().remaining(headers)
        for name in self._rank:
            found = store.get(name)
            if found is not None:
                return found[1]  # type: ignore[no-any-return]
        return None


def _adapter_class() -> Any:
    base = importlib.import_module("requests.adapters").BaseAdapter

    class MetricsAdapter(base):  # type: ignore[misc,valid-type]
        """Delegates to ``inner``; records what goes to a target."""

        def __init__(self, inner: Any, outgoing: Outgoing) -> None:
            super().__init__()
            self.inner = inner
            self.outgoing = outgoing

        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            outgoing = self.outgoing
            url = request.url
            connector = outgoing.connector(url)
            if connector is None:
                return self.inner.send(request, *args, **kwargs)
            operation, start = outgoing.operation(request.method, url), perf_counter_ns()
            try:
                response = self.inner.send(request, *args, **kwargs)
            except Exception as error:
                outgoing.failed(connector, operation, start, error)
                raise
            outgoing.record(connector, operation, start, response.status_code, response.headers)
            return response

        def close(self) -> None:
            self.inner.close()

        def __getattr__(self, name: str) -> Any:
            # max_retries, proxy_manager...: the wrapped adapter's.
            if name == "inner":
                raise AttributeError(name)
            return getattr(self.inner, name)

    return MetricsAdapter


def instrument(
    session: Any,
    *,
    targets: Targets,
    routes: Iterable[str] = (),
    remaining_headers: Iterable[str] = REMAINING_HEADERS,
) -> Any:
    """Record the requests of a ``requests.Session`` to ``targets``; return the session.

    Same options as ``bizmetrics.httpx.instrument``.  Adapters mounted later
    are not wrapped: mount yours first.

    .. versionadded:: 0.3.0
    """
    outgoing = _Outgoing(targets, routes, remaining_headers)
    adapter = _adapter_class()
    for prefix, inner in list(session.adapters.items()):
        if getattr(inner, "outgoing", None) is None:
            session.mount(prefix, adapter(inner, outgoing))
    return session
