"""redis-py: hits, misses, command latency and errors of a cache from one call.

``bizmetrics.redis.instrument(client, cache="sessions")`` on a ``redis.Redis``
or a ``redis.asyncio.Redis`` wraps that client's public ``execute_command``
(every command method goes through it):

- each command observes ``cache_command_duration{cache, command}`` (ms);
- the reads of ``READS`` count ``cache_hits_total`` / ``cache_misses_total``:
  a key that returned nothing (``None``, an empty hash, ``exists`` 0) is a
  miss, any other a hit, key by key for ``mget``, ``hmget`` and ``exists``;
- a command that raises counts ``cache_errors_total{cache, command, error_type}``
  and the exception goes on unchanged.

Pipelines and transactions send their commands without ``execute_command``:
they are not recorded.  Importing this module does not import redis.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

from . import _cache, _log
from ._families import CACHE_COMMAND_FAMILY

__all__ = ["READS", "instrument"]


def _one(result: object) -> tuple[int, int]:
    return (0, 1) if result is None else (1, 0)


def _each(result: object) -> tuple[int, int]:
    if not isinstance(result, (list, tuple)):
        return (0, 0)
    misses = sum(1 for item in result if item is None)
    return (len(result) - misses, misses)


def _mapping(result: object) -> tuple[int, int]:
    return (1, 0) if result else (0, 1)


def _counted(args: tuple[Any, ...]) -> Callable[[object], tuple[int, int]]:
    def exists(result: object) -> tuple[int, int]:
        asked = len(args) - 1
        found = result if type(result) is int else 0
        return (found, max(asked - found, 0))

    return exists


#: The read commands that count hits and misses, and how their result is read.
READS: dict[str, Callable[[object], tuple[int, int]]] = {
    "GET": _one,
    "GETEX": _one,
    "GETDEL": _one,
    "HGET": _one,
    "LINDEX": _one,
    "JSON.GET": _one,
    "MGET": _each,
    "HMGET": _each,
    "HGETALL": _mapping,
}

# Command labels: the name as sent, upper-cased, if it is a plain word, else "other".
_names: dict[object, str] = {}


def _command(name: object) -> str:
    found = _names.get(name)
    if found is None:
        text = name.decode("latin-1") if isinstance(name, bytes) else name
        if isinstance(text, str) and 0 < len(text) <= 32 and text.replace(".", "").replace("_", "").isalpha():
            found = text.upper()
        else:
            found = "OTHER"
        if len(_names) < 1024:
            _names[name] = found
    return found


def _bundle(cache: str, command: str) -> Any:
    found = CACHE_COMMAND_FAMILY.cache.get((cache, command))
    return found if found is not None else CACHE_COMMAND_FAMILY.get(cache, command)


def _exists(args: tuple[Any, ...], result: object) -> tuple[int, int]:
    return _counted(args)(result)


class _Commands:
    """One instrumented client's commands: the name as sent -> (its bundle, how its result reads).

    Resolved once per command name, so a command costs one dict lookup; emptied with the
    catalogue's caches (``_cache``), like the families' own.
    """

    __slots__ = ("by_name", "cache")

    def __init__(self, cache: str) -> None:
        self.cache = cache
        self.by_name = _cache.Cache()

    def resolve(self, name: object) -> tuple[Any, Any, bool]:
        seen = _cache.generation()
        command = _command(name)
        found = (_bundle(self.cache, command.lower()), READS.get(command), command == "EXISTS")
        if len(self.by_name) < 1024:
            _cache.store(self.by_name, name, found, seen)
        return found

    def record(self, args: tuple[Any, ...], result: object, start: int) -> None:
        ms = (perf_counter_ns() - start) / 1e6
        try:
            name = args[0]
            found = self.by_name.get(name)
            bundle, read, exists = found if found is not None else self.resolve(name)
            if read is not None:
                hits, misses = read(result)
            elif exists:
                hits, misses = _exists(args, result)
            else:
                hits = misses = 0
            bundle.done(ms, hits, misses)
        except Exception:
            _log.internal_error("redis command")


def _failed(cache: str, args: tuple[Any, ...], error: Exception, start: int) -> None:
    ms = (perf_counter_ns() - start) / 1e6
    try:
        command = _command(args[0]) if args else "OTHER"
        _bundle(cache, command.lower()).failed(ms, type(error).__name__)
    except Exception:
        _log.internal_error("redis command error")


def instrument(client: Any, *, cache: str = "redis") -> Any:
    """Record the commands of a redis-py client (sync or asyncio) as cache ``cache``; return the client.

    Instrumenting the same client twice does nothing the second time.

    .. versionadded:: 0.3.0
    """
    if getattr(client, "_bizmetrics_cache", None) is not None:
        return client
    inner = client.execute_command
    record = _Commands(cache).record
    if inspect.iscoroutinefunction(inner):

        async def execute_command_async(*args: Any, **options: Any) -> Any:
            start = perf_counter_ns()
            try:
                result = await inner(*args, **options)
            except Exception as error:
                _failed(cache, args, error, start)
                raise
            record(args, result, start)
            return result

        client.execute_command = execute_command_async
    else:

        def execute_command(*args: Any, **options: Any) -> Any:
            start = perf_counter_ns()
            try:
                result = inner(*args, **options)
            except Exception as error:
                _failed(cache, args, error, start)
                raise
            record(args, result, start)
            return result

        client.execute_command = execute_command
    client._bizmetrics_cache = cache
    return client
