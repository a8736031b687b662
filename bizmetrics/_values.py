"""Turning whatever the application passes into valid label values and numbers.

Every rule here is documented in docs/guides/bad-input.md.  None of these
functions raises: they coerce, clamp or drop, and log on the ``bizmetrics``
logger.
"""

from __future__ import annotations

import math
import operator
import re
from enum import Enum
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

    ``None`` and empty values become ``default``; an ``Enum`` member is its
    ``.value``; a ``str`` subclass is its characters (whatever its
    ``__str__`` says, so it lands with the equal plain string); other types
    go through ``str()``; control characters (newlines included) become
    ``_``; lone surrogates become U+FFFD; values longer than
    ``MAX_LABEL_LENGTH`` are cut.
    """
    if type(value) is not str:
        if isinstance(value, Enum):
            value = value.value
        if isinstance(value, str):
            value = str.__str__(value)
        elif value is None:
            _log.warn("none:" + name, "bizmetrics: label %s is None; using %r", name, default)
            return default
        else:
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
        if type(value) is not str:  # a str() that returned a str subclass
            value = str.__str__(value)
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


def number(value: Any) -> float | None:
    """Return ``value`` as a float if it is a number, else ``None``; never logs.

    Numbers are ``int`` and ``float`` and anything that behaves as one:
    ``__index__`` (numpy integers), ``__float__`` (numpy floats, ``Decimal``,
    ``Fraction``) and numeric strings.  ``bool`` is not a number.  A number
    too large for a float is ``None``.
    """
    cls = type(value)
    try:
        if cls is float:
            return value  # type: ignore[no-any-return]
        if cls is int:
            return float(value)
        if value is None or isinstance(value, bool):
            return None
        if isinstance(value, str):
            return float(value)
        if hasattr(cls, "__index__"):
            return float(operator.index(value))
        if hasattr(cls, "__float__"):
            return float(value)
    except (TypeError, ValueError, OverflowError, ArithmeticError):
        pass
    return None


def _real(value: Any, what: str) -> float | None:
    result = number(value)
    if result is None:
        _log.warn(
            "type:" + what,
            "bizmetrics: %s of type %s is not a number a float can hold; dropped",
            what,
            type(value).__name__,
        )
    return result


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
