"""Reading counts out of return values: records synced, tokens used, cache hits.

The rules are documented in README ("Counting records", "Counting tokens").
An extractor never raises for an unknown format: it counts 0 and says so on
the ``bizmetrics`` logger at debug level.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sized
from typing import Any

from . import _log, _values

RECORD_LISTS = ("records", "items", "data", "results")
COUNT_KEYS = ("count", "total")


def _field(value: Any, name: str) -> Any:
    if isinstance(value, Mapping):
        return value.get(name)
    try:
        return getattr(value, name, None)
    except Exception:
        return None


def _collection_size(value: Any) -> int | None:
    if isinstance(value, Sized) and not isinstance(value, (str, bytes, bytearray, memoryview, Mapping)):
        return len(value)
    return None


def _number(value: Any) -> float | None:
    """A number (see ``_values.number``) that is not a collection, or ``None``."""
    if type(value) is int:
        return value
    if isinstance(value, (Sized, Mapping)) and not isinstance(value, str):
        return None
    return _values.number(value)


def count_records(result: Any, resource_type: str) -> float:
    """Return how many records ``result`` holds (see README, "Counting records")."""
    size = _collection_size(result)
    if size is not None:
        return size
    number = _number(result)
    if number is not None:
        return _values.amount(number, "record count")
    if result is not None and not isinstance(result, (str, bytes, bool)):
        for name in (*RECORD_LISTS, resource_type):
            size = _collection_size(_field(result, name))
            if size is not None:
                return size
        for name in COUNT_KEYS:
            number = _number(_field(result, name))
            if number is not None:
                return _values.amount(number, "record count")
    _log.debug("bizmetrics: cannot count records in a %s; counted 0", type(result).__name__)
    return 0


def records_counter(count: Callable[[Any], Any] | str | None, resource_type: str) -> Callable[[Any], float]:
    """Return the record counter for ``instrument_sync_operation(count=...)``."""
    if count is None:
        return lambda result: count_records(result, resource_type)
    if callable(count):
        return lambda result: _as_count(count(result), "count()")
    name = count

    def by_name(result: Any) -> float:
        return _as_count(_field(result, name), name)

    return by_name


def _as_count(value: Any, what: str) -> float:
    size = _collection_size(value)
    if size is not None:
        return size
    number = _number(value)
    if number is not None:
        return _values.amount(number, what)
    _log.debug("bizmetrics: %s gave a %s, not a count; counted 0", what, type(value).__name__)
    return 0


def count_tokens(result: Any) -> float:
    """Return the tokens a model response used (see README, "Counting tokens")."""
    number = _number(result)
    if number is not None:
        return _values.amount(number, "tokens")
    usage = _field(result, "usage") if result is not None else None
    if usage is not None:
        total = _number(_field(usage, "total_tokens"))
        if total is not None:
            return _values.amount(total, "tokens")
        for first, second in (("prompt_tokens", "completion_tokens"), ("input_tokens", "output_tokens")):
            a, b = _number(_field(usage, first)), _number(_field(usage, second))
            if a is not None or b is not None:
                return _values.amount((a or 0) + (b or 0), "tokens")
    _log.debug("bizmetrics: cannot find token usage in a %s; counted 0", type(result).__name__)
    return 0


def tokens_counter(tokens: Callable[[Any], Any] | str | None) -> Callable[[Any], float]:
    """Return the token counter for ``instrument_agent(tokens=...)``."""
    if tokens is None:
        return count_tokens
    if callable(tokens):
        return lambda result: _as_count(tokens(result), "tokens()")
    name = tokens
    return lambda result: _as_count(_field(result, name), name)
