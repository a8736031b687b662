"""Reading the default registry in tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.samples import Sample

import bizmetrics.metrics
from bizmetrics import _deferred

#: What one tick of the fake clock is worth, in ns: 1 ms, so sums are whole milliseconds.
TICK_NS = 1_000_000


def sample(name: str, **labels: str) -> float | None:
    """Return a sample of the default registry, like ``REGISTRY.get_sample_value``.

    Only the collector that owns ``name`` is read, and of a labelled metric
    only the child of ``labels``: a whole registry, or a whole metric, holds
    every series a test recorded under its fresh label values, and reading
    them all would make every read slower than the last.
    """
    _deferred.drain()  # as a collection of the registry would
    collector = REGISTRY._names_to_collectors.get(name)
    if collector is None:
        return REGISTRY.get_sample_value(name, labels)
    for s in _samples(collector, labels):
        if s.name == name and s.labels == labels:
            return s.value
    return None


def _samples(collector: Any, labels: dict[str, str]) -> Iterator[Sample]:
    """The samples of ``collector`` that may carry ``labels``: one child's when it can tell which."""
    names = getattr(collector, "_labelnames", None)
    children = getattr(collector, "_metrics", None)
    if names and isinstance(children, dict) and all(isinstance(labels.get(n), str) for n in names):
        # A labelled prometheus_client metric: its children by label values.
        key = tuple(labels[n] for n in names)
        child = children.get(key)
        if child is None:
            return
        series = dict(zip(names, key, strict=True))
        for family in child.collect():
            for s in family.samples:
                yield s._replace(labels={**series, **s.labels})
        return
    for family in collector.collect():
        yield from family.samples


def value(name: str, **labels: str) -> float:
    """Return a sample of the default registry, 0 when the series does not exist."""
    return sample(name, **labels) or 0.0


def exists(name: str, **labels: str) -> bool:
    """Return whether the default registry exposes this series."""
    return sample(name, **labels) is not None


def clear_catalogue() -> None:
    """Remove every series of the catalogue metrics (their ``clear()`` also empties bizmetrics' caches)."""
    for metric in bizmetrics.metrics.CATALOGUE:
        metric.clear()


def unique(prefix: str = "t") -> str:
    """A label value no other test uses, so deltas start at 0."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"
