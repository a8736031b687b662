"""Exemplars (the current trace on a histogram bucket or a counter) and fixed test durations.

The bundles' hot path pays one module-global read and one context-variable
read for this: ``ACTIVE`` is true only while an exemplar provider is set or
``bizmetrics.testing.fixed_durations`` is in force, and the context variable
holds the trace of ``trace_context`` (or of the HTTP middleware's
``traceparent``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from . import _log
from ._fastpath import FAST_PATH
from .multiprocess import enabled as multiprocess_enabled

#: The exemplar labels of the current trace, or ``None``.
TRACE: ContextVar[dict[str, str] | None] = ContextVar("bizmetrics_trace", default=None)
current = TRACE.get

#: True while every record must take prometheus_client's public API: an exemplar
#: provider or fixed durations are set, or the fast path is off (see ``_fastpath``).
ACTIVE = not FAST_PATH
#: True while a record with a current trace takes the fast path, the trace written into the cells.
TRACED_FAST = FAST_PATH
#: Multiprocess mode: exemplars go to the worker's shared store (``_mpexemplars``).
MULTIPROCESS = multiprocess_enabled()
#: The duration every measurement takes under ``fixed_durations``, or ``None``.
FIXED_MS: float | None = None
_provider: Callable[[], dict[str, str] | None] | None = None

#: OpenMetrics allows at most 128 characters for an exemplar's label names and values together.
MAX_EXEMPLAR_RUNES = 128

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?\Z")


def _refresh() -> None:
    global ACTIVE, TRACED_FAST
    ACTIVE = _provider is not None or FIXED_MS is not None or not FAST_PATH
    TRACED_FAST = FAST_PATH and FIXED_MS is None and _provider is None


#: Key sets (label names, in order) already checked: the names are checked once per key set.
_CHECKED_NAMES: dict[tuple[str, ...], bool] = {}


def _names_ok(names: tuple[str, ...]) -> bool:
    ok = _CHECKED_NAMES.get(names)
    if ok is None:
        ok = all(_LABEL_NAME.fullmatch(k) and not k.startswith("__") for k in names)
        try:
            "".join(names).encode("utf-8")
        except UnicodeEncodeError:
            ok = False
        if len(_CHECKED_NAMES) < 1024:  # a provider inventing names must not grow it forever
            _CHECKED_NAMES[names] = ok
    return ok


def valid_exemplar(labels: object) -> dict[str, str] | None:
    """Return ``labels`` as exemplar labels if they fit OpenMetrics' limit, else ``None`` (logged)."""
    if not isinstance(labels, dict) or not labels:
        if labels is not None:
            _log.warn(
                "exemplar:type", "bizmetrics: an exemplar must be a non-empty dict, not %s; dropped", type(labels)
            )
        return None
    try:
        clean = {str(k): str(v) for k, v in labels.items()}
    except Exception:
        _log.warn("exemplar:str", "bizmetrics: exemplar labels could not be turned into text; dropped")
        return None
    runes = sum(len(k) + len(v) for k, v in clean.items())
    try:
        # Every character must survive UTF-8, or each scrape of the exemplar would fail.
        "".join(clean.values()).encode("utf-8")
        encodable = True
    except UnicodeEncodeError:
        encodable = False
    if runes > MAX_EXEMPLAR_RUNES or not encodable or not _names_ok(tuple(clean)):
        _log.warn(
            "exemplar:long",
            "bizmetrics: exemplar %r is invalid or longer than %d characters; dropped",
            sorted(clean)[:4],
            MAX_EXEMPLAR_RUNES,
        )
        return None
    return clean


def exemplar() -> dict[str, str] | None:
    """Return the exemplar for a record now: the current trace, else the provider's, else ``None``."""
    labels = TRACE.get()
    if labels is None and _provider is not None:
        try:
            labels = valid_exemplar(_provider())
        except Exception:
            _log.internal_error("the exemplar provider")
            return None
    return labels


def duration(ms: float | None) -> float | None:
    """Return the duration to record: ``ms``, or the fixed test duration."""
    if ms is not None and FIXED_MS is not None:
        return FIXED_MS
    return ms


@contextmanager
def trace_context(trace_id: object, span_id: object = None) -> Iterator[None]:
    """Name the current trace: durations and operation counts recorded inside carry it as an exemplar.

    The exemplar is ``{"trace_id": ..., "span_id": ...}`` (``span_id`` only
    when given). An exemplar longer than OpenMetrics allows is dropped with a
    warning, never raised.

    .. versionadded:: 0.2.0
    """
    labels: dict[str, Any] = {"trace_id": trace_id}
    if span_id is not None:
        labels["span_id"] = span_id
    token = TRACE.set(valid_exemplar(labels) if trace_id is not None else None)
    try:
        yield
    finally:
        TRACE.reset(token)


def set_exemplar_provider(provider: Callable[[], dict[str, str] | None] | None) -> None:
    """Let ``provider()`` supply the exemplar of each record when no ``trace_context`` is current.

    For applications with their own tracing (OpenTelemetry, say): return
    ``{"trace_id": ..., "span_id": ...}`` or ``None``. While a provider is
    set, the HTTP middleware no longer takes the trace from ``traceparent``
    (the provider knows the server's own span). ``None`` as the provider
    restores the default.

    .. versionadded:: 0.2.0
    """
    global _provider
    _provider = provider
    _refresh()


def set_fixed_duration(ms: float | None) -> None:
    """Make every recorded duration ``ms`` (``None``: measure again); see ``bizmetrics.testing``."""
    global FIXED_MS
    FIXED_MS = ms
    _refresh()


def provider_set() -> bool:
    """Return whether an exemplar provider is set (the middleware then ignores ``traceparent``)."""
    return _provider is not None


def parse_traceparent(header: str | bytes | None) -> dict[str, str] | None:
    """Return the exemplar of a W3C ``traceparent`` header whose sampled flag is set, else ``None``.

    .. versionadded:: 0.2.0
    """
    if header is None:
        return None
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    match = _TRACEPARENT.match(header.strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    if not int(flags, 16) & 0x01:
        return None
    return {"trace_id": trace_id, "span_id": span_id}
