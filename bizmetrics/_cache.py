"""Caches of label children, and their invalidation.

bizmetrics keeps the children it gets from ``labels()`` in plain dicts keyed
by label values, so the hot path is one dict lookup instead of a
``labels(**kwargs)`` call.  Removing series from a catalogue metric
(``clear()``, ``remove()``) would leave those dicts pointing at children the
registry no longer exposes, so the catalogue's metric classes empty every
cache when that happens.  This module is never reloaded, so a reloaded
``bizmetrics.metrics`` shares it with the old one.
"""

from __future__ import annotations

import weakref
from typing import Any


class Cache(dict[Any, Any]):
    """A dict that ``invalidate_all`` can find and empty."""

    __slots__ = ("__weakref__",)

    def __init__(self) -> None:
        super().__init__()
        _caches[id(self)] = self


_caches: weakref.WeakValueDictionary[int, Cache] = weakref.WeakValueDictionary()


def invalidate_all() -> None:
    """Empty every label cache, so the next call asks the registry again."""
    for cache in list(_caches.values()):
        cache.clear()
