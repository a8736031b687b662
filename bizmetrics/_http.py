"""What the ASGI, WSGI and Django middlewares share: recording one request, exclusions, exposition.

Nothing here imports a web framework.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import parse_qs

from prometheus_client.registry import CollectorRegistry

from . import _deferred, _exposition, _log, _trace, multiprocess
from ._families import API_FAMILY
from ._trace import TRACE
from .context import TENANT, tenant_or_current
from .helpers import http_method, http_status

#: Paths not recorded unless ``exclude=`` says otherwise: the scrape and the usual probes.
DEFAULT_EXCLUDE: frozenset[str] = frozenset(("/metrics", "/health", "/healthz", "/ready", "/readyz", "/live", "/livez"))

#: The ``endpoint`` of a request that matched no route.
UNMATCHED = "__unmatched__"


def trace_of(traceparent: str | bytes | None) -> dict[str, str] | None:
    """Return the exemplar of a request's W3C ``traceparent`` header, if sampled; never raise."""
    if traceparent is None or _trace.provider_set():
        return None
    try:
        return _trace.parse_traceparent(traceparent)
    except Exception:
        _log.internal_error("traceparent")
        return None


def record(
    method_: object,
    endpoint: str,
    status: object,
    start_ns: int,
    end_ns: int,
    tenant: object,
    write_status: Callable[[object], str] | None = None,
) -> None:
    """Record one request with the rules of ``record_api_request``; never raise.

    ``write_status`` turns the code into the label (a middleware's ``http_status=``), else the default.
    """
    try:
        API_FAMILY.get(http_method(method_), endpoint, tenant_or_current(tenant)).record(
            (end_ns - start_ns) / 1e6, (write_status or http_status())(status)
        )
    except Exception:
        _log.internal_error("http middleware")


class RequestScope:
    """Sets a request's tenant and trace (either may be ``None``: left as it is) while its code runs."""

    __slots__ = ("tenant", "tokens", "trace")

    def __init__(self, tenant: object, trace: dict[str, str] | None) -> None:
        self.tenant, self.trace = tenant, trace

    def __enter__(self) -> None:
        tenant, trace = self.tenant, self.trace
        self.tokens = (
            None if tenant is None else TENANT.set(tenant),
            None if trace is None else TRACE.set(trace),
        )

    def __exit__(self, *exc: object) -> None:
        tenant_token, trace_token = self.tokens
        if trace_token is not None:
            TRACE.reset(trace_token)
        if tenant_token is not None:
            TENANT.reset(tenant_token)


def exclusions(exclude: Iterable[str] | None) -> frozenset[str]:
    """Return the set of excluded paths and templates (a mount's ``/{path}`` suffix ignored)."""
    return DEFAULT_EXCLUDE if exclude is None else frozenset(exclude)


def excluded(template: str, exclude: frozenset[str]) -> bool:
    """Return whether a route template (or a mount's template) is excluded."""
    return template in exclude or (template.endswith("/{path}") and template[:-7] in exclude)


H = TypeVar("H")


def tenant_source(
    tenant: str | Callable[[Any], object] | None, key: Callable[[str], H]
) -> tuple[H | None, Callable[[Any], object] | None]:
    """Split a middleware's ``tenant=`` into a header (as ``key`` spells it for the server) or a callable."""
    if isinstance(tenant, str):
        return key(tenant), None
    return None, tenant


def header_tenant(value: str | bytes | None) -> str | None:
    """Return a header value as a tenant, ``None`` when missing or blank."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    value = value.strip()
    return value or None


def call_tenant(get: Callable[[Any], object], arg: object) -> object:
    """Call a user's tenant callable; a failure is logged and means no tenant."""
    try:
        return get(arg)
    except Exception:
        _log.internal_error("tenant callable")
        return None


_registry: CollectorRegistry | None = None


def registry() -> CollectorRegistry:
    """Return the registry ``metrics_app`` serves by default (see ``multiprocess.registry``)."""
    global _registry
    if _registry is None:
        _registry = multiprocess.registry()
    return _registry


def exposition_body(
    reg: CollectorRegistry | None, accept: str, accept_encoding: str, query: str, compress: bool
) -> tuple[bytes, list[tuple[str, str]]]:
    """Return the body and headers of one scrape, negotiated by ``Accept`` and ``Accept-Encoding``."""
    _deferred.drain()
    if reg is None:
        reg = registry()
        if multiprocess.enabled():
            # uvicorn has no hook for a dead worker: its live gauges go at the next scrape.
            multiprocess.remove_dead_workers()
    encoder, content_type = _exposition.choose_encoder(accept)
    names = parse_qs(query).get("name[]")
    target: Any = reg
    if names:
        # prometheus_client's restricted registry finds no names in a multiprocess registry.
        target = _exposition.Restricted(reg, names) if multiprocess.enabled() else reg.restricted_registry(names)
    body = encoder(target)
    headers = [("Content-Type", content_type)]
    if compress and "gzip" in accept_encoding:
        body = gzip.compress(body)
        headers.append(("Content-Encoding", "gzip"))
    headers.append(("Content-Length", str(len(body))))
    return body, headers
