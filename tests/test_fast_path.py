"""The fast recording path is exact: the same exposition as prometheus_client's public API."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram

from bizmetrics import metrics


def _samples(registry: CollectorRegistry) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    return sorted(
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for metric in registry.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    )


def test_fast_path_is_on_in_single_process_mode():
    """With a supported prometheus_client and no multiprocess mode, the self-test passes."""
    assert metrics.FAST_PATH


@given(
    amounts=st.lists(st.floats(min_value=0, max_value=1e7, allow_nan=False), max_size=40),
    buckets=st.sampled_from([metrics.CONNECTOR_BUCKETS, metrics.API_BUCKETS, metrics.AGENT_BUCKETS]),
)
def test_fast_path_matches_the_public_api(amounts, buckets):
    """Any amounts, on bizmetrics' buckets (bounds included): fast and public paths expose the same samples."""
    amounts = amounts + list(buckets[:3])
    exposed = []
    for fast in (True, False):
        registry = CollectorRegistry()
        counter = Counter("c", "", ["a"], registry=registry).labels("x")
        hist = Histogram("h", "", ["a"], buckets=buckets, registry=registry).labels("x")
        add = metrics._fast_adder(counter) if fast else counter.inc
        observe = metrics._fast_observer(hist) if fast else hist.observe
        for amount in amounts:
            add(amount)
            observe(amount)
        exposed.append(_samples(registry))
    assert exposed[0] == exposed[1]
