"""Settings read from the environment when ``bizmetrics`` is imported.

Each setting has a documented default (docs/guides/production.md); an
invalid value gives one warning on the ``bizmetrics`` logger and the default,
never an exception.
"""

from __future__ import annotations

import itertools
import math
import os
import re

from . import _log

NAMESPACE_ENV = "BIZMETRICS_NAMESPACE"
MAX_TENANTS_ENV = "BIZMETRICS_MAX_TENANTS"
BUCKETS_ENV = "BIZMETRICS_BUCKETS_"
TENANT_LATENCY_ENV = "BIZMETRICS_TENANT_LATENCY"
HTTP_STATUS_ENV = "BIZMETRICS_HTTP_STATUS"

#: The two ways the ``status`` label of the API series is written: ``429`` or ``4xx``.
HTTP_STATUS_MODES = ("code", "class")

#: Tenants admitted with their own label when ``BIZMETRICS_MAX_TENANTS`` is not set.
DEFAULT_MAX_TENANTS = 2000

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")


def valid_namespace(value: str) -> bool:
    """Return whether ``value`` can prefix metric names."""
    return bool(_NAME.match(value))


def namespace() -> str:
    """Return the prefix of every catalogue metric (``BIZMETRICS_NAMESPACE``), or ``""``."""
    value = os.environ.get(NAMESPACE_ENV, "").strip()
    if value and not valid_namespace(value):
        _log.warn(
            "env:" + NAMESPACE_ENV, "bizmetrics: %s=%r is not a valid metric name prefix; ignored", NAMESPACE_ENV, value
        )
        return ""
    return value


def max_tenants() -> int | None:
    """Return the tenant cap from ``BIZMETRICS_MAX_TENANTS`` (``none`` disables it), else the default."""
    raw = os.environ.get(MAX_TENANTS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_TENANTS
    if raw.lower() in ("none", "off", "unlimited"):
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        _log.warn(
            "env:" + MAX_TENANTS_ENV,
            "bizmetrics: %s=%r is not a count of tenants; using %d",
            MAX_TENANTS_ENV,
            raw,
            DEFAULT_MAX_TENANTS,
        )
        return DEFAULT_MAX_TENANTS
    return value


def buckets(family: str, default: tuple[float, ...]) -> tuple[float, ...]:
    """Return the histogram buckets of ``family`` from ``BIZMETRICS_BUCKETS_<FAMILY>``, else ``default``.

    The value is comma-separated milliseconds, strictly increasing, finite
    and not negative (``+Inf`` is always added by prometheus_client).
    """
    name = BUCKETS_ENV + family
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        bounds = tuple(float(part) for part in raw.split(","))
        valid = all(math.isfinite(b) and b >= 0 for b in bounds) and all(a < b for a, b in itertools.pairwise(bounds))
    except ValueError:
        valid = False
    if not valid:
        _log.warn(
            "env:" + name,
            "bizmetrics: %s=%r is not a comma-separated, increasing list of milliseconds; using %s",
            name,
            raw,
            ",".join(f"{b:g}" for b in default),
        )
        return default
    return bounds


def tenant_latency() -> tuple[str, ...]:
    """Return the tenants of ``BIZMETRICS_TENANT_LATENCY`` (comma-separated) whose durations are recorded per tenant."""
    raw = os.environ.get(TENANT_LATENCY_ENV, "")
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def http_status() -> str:
    """Return how the API series write ``status`` (``BIZMETRICS_HTTP_STATUS``): ``code`` (the default) or ``class``."""
    raw = os.environ.get(HTTP_STATUS_ENV, "").strip().lower()
    if not raw:
        return "code"
    if raw not in HTTP_STATUS_MODES:
        _log.warn(
            "env:" + HTTP_STATUS_ENV,
            "bizmetrics: %s=%r is neither 'code' nor 'class'; using 'code'",
            HTTP_STATUS_ENV,
            raw,
        )
        return "code"
    return raw
