"""Records made by garbage-collector finalisers, deferred until a lock can be taken safely.

The collector runs finalisers in whatever thread allocates when it
triggers, and that thread may be inside prometheus_client's ``labels()``
(which holds the metric's lock while it creates a child) or, in
multiprocess mode, inside any value update (one module-wide lock).  Neither
lock is re-entrant, so a finaliser that records there would wait for its
own thread forever.

So a record made during a collection (a never-awaited decorated coroutine,
an abandoned decorated generator or stream) is only appended to a deque:
``append`` and ``popleft`` are atomic and take no lock.  The queue is
drained, in the order the records were made, by the next ordinary record of
any thread, by every collection of the default registry and of
``bizmetrics.multiprocess.registry()`` (a scrape, ``generate_latest``, a
push), and at interpreter exit.  A record is taken off the queue exactly
once, so once drained, counts are exact.

Whether the current thread is collecting is known from ``gc.callbacks``,
which the collector calls before and after each collection, finalisers
included.
"""

from __future__ import annotations

import atexit
import gc
from collections import deque
from collections.abc import Callable, Iterable
from threading import get_ident
from typing import Any

from prometheus_client import REGISTRY

from . import _log

__all__ = ["DRAIN_COLLECTOR", "QUEUE", "collecting", "defer", "drain", "pending"]

#: Deferred records, oldest first; the engine reads it to see whether a drain is due.
QUEUE: deque[Callable[[], object]] = deque()
#: The thread running the current garbage collection, or ``None`` (read as ``_deferred.collector``).
collector: int | None = None


def _watch(phase: str, info: dict[str, int]) -> None:
    global collector
    collector = get_ident() if phase == "start" else None


gc.callbacks.append(_watch)


def collecting() -> bool:
    """Whether this thread is inside a garbage collection (running finalisers, say)."""
    return collector is not None and collector == get_ident()


def defer(record: Callable[[], object]) -> None:
    """Queue ``record`` (a call that records) to run at the next drain. Takes no lock."""
    QUEUE.append(record)


def pending() -> int:
    """How many deferred records wait for a drain."""
    return len(QUEUE)


def drain() -> None:
    """Run every deferred record; never raises, and does nothing inside a collection."""
    if not QUEUE or collecting():
        return
    popleft = QUEUE.popleft
    while True:
        try:
            record = popleft()
        except IndexError:
            return
        try:
            record()
        except Exception:
            _log.internal_error("recording a deferred outcome")


class _Drain:
    """A collector that exposes nothing and drains the queue: registered first, it runs before the catalogue's."""

    def describe(self) -> Iterable[Any]:
        return ()

    def collect(self) -> Iterable[Any]:
        drain()
        return ()


DRAIN_COLLECTOR = _Drain()
REGISTRY.register(DRAIN_COLLECTOR)
atexit.register(drain)
