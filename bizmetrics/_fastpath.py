"""Recording straight into prometheus_client's value cells, under one shared lock.

``Counter.inc()`` and ``Histogram.observe()`` spend most of their time on
checks that cannot fail for bizmetrics' own children (observability, sign,
exemplars) and on one lock per value: a histogram observation alone takes
two.  bizmetrics instead gives every value cell of its catalogue one shared
re-entrant lock (``adopt``, when a child is created, before anyone else can
see it) and updates the cells of a whole record under it, once:

    index = bisect_left(bounds, ms)        # outside the lock: no calls inside
    with LOCK:
        calls._value += 1
        total._value += ms
        buckets[index]._value += 1

prometheus_client's own methods on those children take the same lock, so
both ways of recording (and scrapes) exclude each other and counts stay
exact.  The lock is only ever taken by a ``with`` block, which releases it
whatever is raised inside, signals included (``acquire(); try:`` would leave
a gap between the two in which a signal handler's exception keeps it held).
The critical sections make no calls; the lock is re-entrant in case a
finaliser or signal handler that records runs while its thread holds it.
A forked child gets it unlocked, as ``threading``'s own locks: it may
have been held by a thread that does not exist there.

Those cells are prometheus_client internals, so ``self_test`` records
through both paths into a private registry and compares the exposition.
Any difference, a missing attribute, or multiprocess mode (whose values live
in files and have their own lock) turns the fast path off: bizmetrics then
records through the public API.
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram

from .multiprocess import enabled as multiprocess_enabled

__all__ = ["FAST_PATH", "LOCK", "Cell", "Cells", "add", "adopt", "cell", "observe", "self_test"]

#: The one lock of every value cell of the catalogue (see the module docstring).
LOCK = threading.RLock()
if hasattr(os, "register_at_fork") and hasattr(LOCK, "_at_fork_reinit"):
    # The child has only the forking thread: a lock held by another thread would never be released.
    os.register_at_fork(after_in_child=LOCK._at_fork_reinit)


class Cell(Protocol):
    """prometheus_client's ``MutexValue``: a float, updated only under ``LOCK``."""

    _value: float


class Cells:
    """The cells of one histogram child: its sum, its (non-cumulative) buckets, their upper bounds."""

    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, child: Any) -> None:
        bounds = [float(b) for b in child._upper_bounds]
        buckets: list[Cell] = list(child._buckets)
        if len(bounds) != len(buckets) or bounds[-1] != float("inf"):
            raise TypeError("unexpected histogram layout")
        adopt(child)
        self.sum: Cell = child._sum
        self.buckets = buckets
        self.bounds = bounds


def _values_of(child: Any) -> list[Any]:
    if hasattr(child, "_buckets"):
        return [child._sum, *child._buckets]
    return [child._value]


def adopt(child: Any) -> None:
    """Give the value cells of a child the shared lock.

    A child the catalogue creates is adopted before anyone else can see it.
    Any other (a child of an application's metric that bizmetrics reuses)
    swaps its lock while holding the old one; a thread already waiting for
    the old lock at that moment could still race with one holding the new.
    """
    for value in _values_of(child):
        old = value._lock
        if old is not LOCK:
            with old:
                value._lock = LOCK


def cell(child: Any) -> Cell:
    """Return the value cell of a counter (or gauge) child, which must have taken the shared lock."""
    value: Cell = child._value
    if not isinstance(value._value, float):
        raise TypeError("unexpected counter layout")
    adopt(child)
    return value


def add(target: Cell, amount: float) -> None:
    """Add ``amount`` to a cell: what the bundles do inline."""
    with LOCK:
        target._value += amount


def observe(cells: Cells, amount: float) -> None:
    """Observe ``amount`` into a histogram's cells: what the bundles do inline.

    The bucket is the first whose upper bound is >= ``amount``: ``Histogram.observe``'s rule.
    """
    index = bisect_left(cells.bounds, amount)
    with LOCK:
        cells.sum._value += amount
        cells.buckets[index]._value += 1


def _exposed(registry: CollectorRegistry) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    return sorted(
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    )


class _Probe:
    """A cell's lock that counts how often it is taken."""

    def __init__(self) -> None:
        self.taken = 0

    def __enter__(self) -> None:
        self.taken += 1
        LOCK.acquire()

    def __exit__(self, *exc: object) -> None:
        LOCK.release()


def _takes_cell_lock(value: Any, record: Any, amount: float) -> bool:
    """Whether ``record(amount)`` (a public method) takes ``value``'s ``_lock``: what sharing the lock relies on."""
    probe = _Probe()
    value._lock = probe
    try:
        record(amount)
    finally:
        value._lock = LOCK
    return probe.taken > 0


def self_test(amounts: Iterable[float] = (2.0, 0.5, 1.0, 3.0, 7.0, 0.0), buckets: Sequence[float] = (1.0, 5.0)) -> bool:
    """Record ``amounts`` into a counter and a histogram through both paths; return whether they agree.

    Never raises: anything unexpected means the fast path is not usable.
    """
    if multiprocess_enabled():
        return False
    try:
        amounts = list(amounts)
        exposed = []
        for fast in (True, False):
            registry = CollectorRegistry()
            counter = Counter("selftest", "", ["a"], registry=registry).labels("x")
            hist = Histogram("selftest_ms", "", ["a"], buckets=buckets, registry=registry).labels("x")
            if fast:
                total, cells = cell(counter), Cells(hist)
                for amount in amounts:
                    add(total, amount)
                    observe(cells, amount)
                # prometheus_client's own methods take the cell's lock, now the shared one.
                if not _takes_cell_lock(counter._value, counter.inc, 1.0):
                    return False
                if not _takes_cell_lock(hist._sum, hist.observe, 1.0):
                    return False
                if not all(v._lock is LOCK for v in _values_of(counter) + _values_of(hist)):
                    return False
            else:
                for amount in amounts:
                    counter.inc(amount)
                    hist.observe(amount)
                counter.inc(1)
                hist.observe(1.0)
            exposed.append(_exposed(registry))
        return bool(exposed[0]) and exposed[0] == exposed[1]
    except Exception:
        return False


#: Whether bundles record through the value cells (see above).
FAST_PATH = self_test()
