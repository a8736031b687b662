"""Reading the default registry in tests."""

from __future__ import annotations

import uuid

from prometheus_client import REGISTRY

#: What one tick of the fake clock is worth, in ns: 1 ms, so sums are whole milliseconds.
TICK_NS = 1_000_000


def sample(name: str, **labels: str) -> float | None:
    """Return a sample of the default registry, like ``REGISTRY.get_sample_value``.

    Only the collector that owns ``name`` is collected: the whole registry
    grows with every test's fresh label values and would make reads slow.
    """
    collector = REGISTRY._names_to_collectors.get(name)
    if collector is None:
        return REGISTRY.get_sample_value(name, labels)
    for family in collector.collect():
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def value(name: str, **labels: str) -> float:
    """Return a sample of the default registry, 0 when the series does not exist."""
    return sample(name, **labels) or 0.0


def exists(name: str, **labels: str) -> bool:
    """Return whether the default registry exposes this series."""
    return sample(name, **labels) is not None


def unique(prefix: str = "t") -> str:
    """A label value no other test uses, so deltas start at 0."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"
