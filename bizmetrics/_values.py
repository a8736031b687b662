"""Turning whatever the application passes into valid label values and numbers.

Every rule here is documented in README ("Bad input").  None of these
functions raises: they coerce, clamp or drop, and log on the ``bizmetrics``
logger.
"""

from __future__ import annotations

import math
import re
from typing import Any

from . import _log

#: Longest label value kept; longer values are truncated.
MAX_LABEL_LENGTH = 128

#: Value used for a label that is missing, ``None`` or empty.
UNKNOWN = "unknown"

#: Tenant used when no tenant is given, bound to ``self`` or set by ``tenant_context``.
DEFAULT_TENANT = "default_tenant"

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def label(value: object, name: str, default: str = UNKNOWN) -> str:
    """Return ``value`` as a clean label value for label ``name``.

    ``None`` and empty values become ``default``; other types go through
    ``str()``; control characters (newlines included) become ``_``; lone
    surrogates become U+FFFD; values longer than ``MAX_LABEL_LENGTH`` are cut.
    """
    if type(value) is not str:
        if value is None:
            _log.warn("none:" + name, "bizmetrics: label %s is None; using %r", name, default)
            return default
        try:
            text = str(value)
        except Exception:
            _log.warn("str:" + name, "bizmetrics: label %s could not be turned into text; using %r", name, default)
            return default
        _log.warn(
            "type:" + name,
            "bizmetrics: label %s got a %s, not a str; using str() of it",
            name,
            type(value).__name__,
        )
        value = text
    if not value:
        _log.warn("empty:" + name, "bizmetrics: label %s is empty; using %r", name, default)
        return default
    if _CONTROL.search(value):
        _log.warn("control:" + name, "bizmetrics: label %s has control characters; replaced by '_'", name)
        value = _CONTROL.sub("_", value)
    if len(value) > MAX_LABEL_LENGTH:
        _log.warn(
            "long:" + name,
            "bizmetrics: label %s is %d characters long; cut to %d",
            name,
            len(value),
            MAX_LABEL_LENGTH,
        )
        value = value[:MAX_LABEL_LENGTH]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        _log.warn("utf8:" + name, "bizmetrics: label %s is not valid UTF-8; replaced the bad characters", name)
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _real(value: Any, what: str) -> float | None:
    if type(value) is int or type(value) is float:
        return float(value)
    if isinstance(value, bool) or value is None:
        _log.warn("type:" + what, "bizmetrics: %s is %r, not a number; dropped", what, value)
        return None
    try:
        return float(value)
    except Exception:
        _log.warn("type:" + what, "bizmetrics: %s of type %s is not a number; dropped", what, type(value).__name__)
        return None


def duration(value: Any, what: str = "duration_ms") -> float | None:
    """Return a duration in ms fit to observe, or ``None`` to drop the observation.

    Negative durations are clamped to 0; NaN, infinities and non-numbers are
    dropped (the operation is still counted).
    """
    number = _real(value, what)
    if number is None:
        return None
    if not math.isfinite(number):
        _log.warn("nonfinite:" + what, "bizmetrics: %s is %r; observation dropped", what, number)
        return None
    if number < 0:
        _log.warn("negative:" + what, "bizmetrics: %s is negative (%r); clamped to 0", what, number)
        return 0.0
    return number


def amount(value: Any, what: str) -> float:
    """Return a count fit to add to a counter; bad counts are dropped as 0.

    Negative, NaN, infinite, boolean and non-numeric counts add nothing.
    """
    number = _real(value, what)
    if number is None:
        return 0.0
    if not math.isfinite(number) or number < 0:
        _log.warn("bad:" + what, "bizmetrics: %s is %r; dropped", what, number)
        return 0.0
    return number


def level(value: Any, what: str) -> float | None:
    """Return a finite gauge value or a finite delta, or ``None`` to drop it."""
    number = _real(value, what)
    if number is None:
        return None
    if not math.isfinite(number):
        _log.warn("nonfinite:" + what, "bizmetrics: %s is %r; dropped", what, number)
        return None
    return number
