"""What the outgoing-HTTP instrumentations share: targets, operations, rate limits and recording.

Nothing here imports an HTTP client.  A request to a declared target is one
connector operation of that target's connector type; any other request is
not recorded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from time import perf_counter_ns
from typing import Any
from urllib.parse import urlsplit

from . import _log
from ._families import CONNECTOR_OPERATION_FAMILY, RATE_LIMIT_FAMILY
from ._values import DEFAULT_TENANT
from .context import TENANT, tenant_or_current

__all__ = ["REMAINING_HEADERS", "Outgoing", "Targets", "origin_of", "remaining_of"]

#: Response headers read, in order, for the requests left in the provider's window.
REMAINING_HEADERS = (
    "x-ratelimit-remaining",
    "x-rate-limit-remaining",
    "ratelimit-remaining",
    "x-ratelimit-requests-remaining",
    "x-hubspot-ratelimit-remaining",
    "x-shopify-shop-api-call-limit",
    "ratelimit",
)

Targets = Mapping[str, str] | Callable[[str], "str | None"]

_IETF_REMAINING = re.compile(r"(?:remaining|r)\s*=\s*(\d+(?:\.\d+)?)")


def remaining_of(value: str) -> float | None:
    """Return the requests left that a rate-limit header value says, or ``None``.

    ``42``; Shopify's used/limit ``32/40`` (8 left); the IETF ``RateLimit``
    header's ``remaining=42`` or ``r=42``.
    """
    try:
        return float(value)  # surrounding whitespace included
    except ValueError:
        pass
    value = value.strip()
    used, slash, limit = value.partition("/")
    if slash:
        try:
            return max(float(limit) - float(used), 0.0)
        except ValueError:
            return None
    match = _IETF_REMAINING.search(value)
    return float(match.group(1)) if match else None


def _compile(template: str) -> tuple[str | None, re.Pattern[str]]:
    method, space, path = template.partition(" ")
    if not space:
        method, path = "", template
    pattern = "".join(
        "[^/]+" if part.startswith("{") and part.endswith("}") else re.escape(part)
        for part in re.split(r"(\{[^}/]*\})", path)
    )
    return (method.upper() or None), re.compile(pattern + r"/?\Z")


_MISSING = object()
_tenant = TENANT.get


def origin_of(url: str) -> str:
    """A key of ``url``'s host and port, cheap to take: the text before its first ``/`` from the 9th character on.

    That prefix holds the whole authority (``https://`` is 8 characters), so two
    URLs with the same key have the same host and port, which is all a target
    lookup reads; a URL without such a ``/`` is its own key.
    """
    end = url.find("/", 8)
    return url if end < 0 else url[:end]


class Outgoing:
    """The declared targets, routes and rate-limit headers of one instrumented client.

    The client modules subclass it where their types allow cheaper reads
    (``remaining``: the quota header of a response).
    """

    __slots__ = ("_callable", "_hosts", "_rank", "_routes", "by_origin", "remaining_headers")

    def __init__(
        self,
        targets: Targets,
        routes: Iterable[str] = (),
        remaining_headers: Iterable[str] = REMAINING_HEADERS,
    ) -> None:
        self._callable: Callable[[str], str | None] | None = None
        self._hosts: dict[str, str] = {}
        if callable(targets):
            self._callable = targets
        elif isinstance(targets, Mapping):
            self._hosts = {str(host).lower(): str(kind) for host, kind in targets.items()}
        else:
            raise TypeError("targets must be a dict of host to connector type, or a callable from URL to one")
        #: The connector type (or ``None``) of each origin key seen: targets are few, a request is one lookup.
        #: Callers may read it before calling ``connector``; it stays empty for a callable's answers.
        self.by_origin: dict[Any, str | None] = {}
        self._routes = [(template, *_compile(template)) for template in routes]
        self.remaining_headers = tuple(remaining_headers)
        #: Each quota header, lower-cased, and its rank: the first of ``remaining_headers`` present wins.
        self._rank: dict[str, int] = {}
        for rank, name in enumerate(self.remaining_headers):
            self._rank.setdefault(name.lower(), rank)

    def connector(self, url: Any, origin: Any = None) -> str | None:
        """Return the connector type of a request to ``url``, or ``None`` when it is no target.

        ``origin``: a key of the URL's host and port that the caller can take
        cheaply (for a ``str`` URL it is taken here); URLs with equal keys
        must have the same host and port.
        """
        try:
            if self._callable is not None:
                found = self._callable(str(url))
                return found if isinstance(found, str) and found else None
            if origin is None:
                origin = origin_of(url) if type(url) is str else str(url)
            known = self.by_origin.get(origin, _MISSING)
            if known is not _MISSING:
                return known  # type: ignore[return-value]
            return self._resolve(origin, str(url))
        except Exception:
            _log.internal_error("outgoing targets")
            return None

    def _resolve(self, origin: Any, text: str) -> str | None:
        parts = urlsplit(text)
        host = (parts.hostname or "").lower()
        hosts = self._hosts
        found = hosts.get(f"{host}:{parts.port}") if parts.port else None
        if found is None:
            found = hosts.get(host)
        if found is None:
            for pattern, kind in hosts.items():
                if pattern.startswith("*.") and host.endswith(pattern[1:]):
                    found = kind
                    break
        if len(self.by_origin) < 4096:
            self.by_origin[origin] = found
        return found

    def operation(self, method: str, url: Any) -> str:
        """Return the declared route template the request matches, else its method; never the URL."""
        method = method.upper() if type(method) is str else str(method).upper()
        if self._routes:
            path = self.path_of(url)
            for template, only, pattern in self._routes:
                if (only is None or only == method) and pattern.match(path):
                    return template
        return method

    def path_of(self, url: Any) -> str:
        """Return the path of ``url`` as sent (percent-encoded), what route templates match."""
        return urlsplit(str(url)).path

    def remaining(self, headers: Any) -> str | None:
        """Return the value of the first of ``remaining_headers`` present in a response's ``headers``."""
        for name in self.remaining_headers:
            value = headers.get(name)
            if value is not None:
                return value  # type: ignore[no-any-return]
        return None

    def record(self, connector: str, operation: str, start: int, status: int, headers: Any) -> None:
        """Record one response of ``status``; never raise."""
        ms = (perf_counter_ns() - start) / 1e6
        try:
            tenant = _tenant()
            if tenant is None:
                tenant = DEFAULT_TENANT
            bundle = _BUNDLES.get((connector, operation, tenant)) if type(tenant) is str else None
            if bundle is None:
                bundle = CONNECTOR_OPERATION_FAMILY.get(connector, operation, tenant)
            if status < 400:
                bundle.success(ms, 0)
            else:
                bundle.failure(ms, f"http_{status}", 0)
            limits = None
            if status == 429 or (status == 503 and headers.get("retry-after") is not None):
                limits = RATE_LIMIT_FAMILY.get(connector, tenant)
                limits.limited.inc()
            value = self.remaining(headers)
            if value is not None:
                left = remaining_of(value)
                if left is not None:
                    if limits is None:
                        limits = _LIMITS.get((connector, tenant)) if type(tenant) is str else None
                        if limits is None:
                            limits = RATE_LIMIT_FAMILY.get(connector, tenant)
                    gauge = limits.remaining
                    if gauge is None:
                        limits.left(left)  # makes the gauge child
                    else:
                        # Gauge.set without its observability check, which a label child always passes.
                        gauge._value.set(left)
        except Exception:
            _log.internal_error("outgoing response")

    def failed(self, connector: str, operation: str, start: int, error: BaseException | str) -> None:
        """Record one request that raised (no response), by the class of ``error`` or the name given; never raise."""
        ms = (perf_counter_ns() - start) / 1e6
        try:
            CONNECTOR_OPERATION_FAMILY.get(connector, operation, tenant_or_current(None)).failure(
                ms, error if type(error) is str else type(error).__name__, 0
            )
        except Exception:
            _log.internal_error("outgoing error")


#: The family's own cache, read first: a hit costs no call.
_BUNDLES = CONNECTOR_OPERATION_FAMILY.cache
_LIMITS = RATE_LIMIT_FAMILY.cache
