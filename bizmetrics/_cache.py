"""Caches of label children, and their invalidation.

bizmetrics keeps the children it gets from ``labels()`` in plain dicts keyed
by label values, so the hot path is one dict lookup instead of a
``labels(**kwargs)`` call.  Removing series from a catalogue metric
(``clear()``, ``remove()``) would leave those dicts pointing at children the
registry no longer exposes, so the catalogue's metric classes empty every
cache when that happens.  This module is never reloaded, so a reloaded
``bizmetrics.metrics`` shares it with the old one.

A removal can race with a thread that is creating a bundle: the bundle's
children were made before the removal, and the thread stores it after the
caches were emptied.  Every removal therefore starts a new *generation*, and
a bundle is cached only if no removal began while it was being made.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any


class Cache(dict[Any, Any]):
    """A dict that ``invalidate_all`` can find and empty."""

    __slots__ = ("__weakref__",)

    def __init__(self) -> None:
        super().__init__()
        _caches[id(self)] = self


_caches: weakref.WeakValueDictionary[int, Cache] = weakref.WeakValueDictionary()
_lock = threading.Lock()
_generation = 0


def generation() -> int:
    """Return the current generation; read it before creating a bundle's children."""
    return _generation


def store(cache: Cache, key: Any, value: Any, seen: int) -> None:
    """Cache ``value`` under ``key`` unless a removal began since generation ``seen`` was read."""
    with _lock:
        if _generation == seen:
            cache[key] = value


def invalidate_all() -> None:
    """Empty every label cache, so the next call asks the registry again."""
    global _generation
    with _lock:
        _generation += 1
        for cache in list(_caches.values()):
            cache.clear()
