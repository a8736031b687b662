"""Helpers for your own tests: assert what a code path records, with exact durations.

``capture()`` snapshots every sample of the registry bizmetrics records into
(the multiprocess collector when that mode is on), and reports the changes;
``fixed_durations(ms)`` makes every duration bizmetrics records exactly
``ms`` milliseconds, so histogram buckets can be asserted.  The pytest plugin
(``bizmetrics_capture`` fixture) is registered with a ``pytest11`` entry point.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry

from . import _trace
from . import multiprocess as _mp

__all__ = ["Capture", "capture", "fixed_durations"]

Key = tuple[str, tuple[tuple[str, str], ...]]


#: prometheus_client's own process, platform and GC collectors: they move on their own.
_NOISE = ("process_", "python_gc_", "python_info")


def _snapshot(registry: CollectorRegistry) -> dict[Key, float]:
    samples: dict[Key, float] = {}
    for family in registry.collect():
        if family.name.startswith(_NOISE):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


class Capture:
    """What changed in the registry since the capture started.

    .. versionadded:: 0.2.0
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._registry = registry
        self._before = _snapshot(self._current())

    def _current(self) -> CollectorRegistry:
        return self._registry if self._registry is not None else _mp.registry()

    def changes(self) -> dict[Key, float]:
        """Return every sample that changed, ``(name, sorted label pairs)`` to its change."""
        after = _snapshot(self._current())
        changed = {}
        for key in after.keys() | self._before.keys():
            delta = after.get(key, 0.0) - self._before.get(key, 0.0)
            if delta:
                changed[key] = delta
        return dict(sorted(changed.items()))

    def delta(self, sample_name: str, **labels: object) -> float:
        """Return the change of the sum over every series of ``sample_name`` whose labels include ``labels``.

        ``sample_name`` is an exposed sample name: ``connector_operations_total``,
        ``connector_operation_duration_count``, ``..._sum``, ``..._bucket`` (with ``le="100.0"``).
        """
        wanted = {k: str(v) for k, v in labels.items()}
        total = 0.0
        for (name, pairs), change in self.changes().items():
            if name == sample_name and wanted.items() <= dict(pairs).items():
                total += change
        return total

    def assert_delta(self, sample_name: str, expected: float, **labels: object) -> None:
        """Raise ``AssertionError`` (listing what did change) unless ``delta(sample_name, **labels) == expected``."""
        got = self.delta(sample_name, **labels)
        if got != expected:
            lines = [
                f"  {name}{{{', '.join(f'{k}={v!r}' for k, v in pairs)}}} {change:+g}"
                for (name, pairs), change in self.changes().items()
            ]
            what = ", ".join(f"{k}={v!r}" for k, v in labels.items())
            raise AssertionError(
                f"{sample_name}{{{what}}} changed by {got:g}, expected {expected:g}. What changed:\n"
                + ("\n".join(lines) if lines else "  nothing")
            )


@contextmanager
def capture(registry: CollectorRegistry | None = None) -> Iterator[Capture]:
    """Snapshot the registry now; the yielded ``Capture`` reports the changes since.

    Reads through the multiprocess collector when that mode is on.

    .. versionadded:: 0.2.0
    """
    yield Capture(registry)


@contextmanager
def fixed_durations(ms: float) -> Iterator[None]:
    """Make every duration bizmetrics records exactly ``ms`` milliseconds inside the block.

    Applies to every thread, and to the durations given to ``record_*`` helpers too.

    .. versionadded:: 0.2.0
    """
    previous = _trace.FIXED_MS
    _trace.set_fixed_duration(float(ms))
    try:
        yield
    finally:
        _trace.set_fixed_duration(previous)
