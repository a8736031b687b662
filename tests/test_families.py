"""The bundles' fast path records exactly what prometheus_client's public API would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram

from bizmetrics import _families, metrics

events = st.lists(
    st.tuples(
        st.sampled_from(["success", "failure"]),
        st.one_of(st.none(), st.floats(min_value=0, max_value=1e6, allow_nan=False), st.sampled_from([5.0, 10.0])),
        st.sampled_from(["TimeoutError", "ValueError", "http_503"]),
    ),
    max_size=30,
)


def _samples(registry: CollectorRegistry) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    return sorted(
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    )


def _metrics(registry: CollectorRegistry, counter: type, histogram: type) -> tuple[Counter, Counter, Histogram]:
    return (
        counter("calls", "", ["k", "status", "tenant_id"], registry=registry),
        counter("errors", "", ["k", "error_type", "tenant_id"], registry=registry),
        histogram("duration", "", ["k"], buckets=metrics.CONNECTOR_BUCKETS, registry=registry),
    )


@given(events)
def test_an_outcomes_bundle_records_what_the_public_api_would(recorded):
    """Successes and failures, with and without a duration, on the bucket bounds too: the same exposition."""
    assert metrics.FAST_PATH
    fast, public = CollectorRegistry(), CollectorRegistry()
    calls, errors, duration = _metrics(fast, metrics._Counter, metrics._Histogram)

    class Probe(_families._Outcomes):
        __slots__ = ()
        CALLS, ERRORS, DURATION = calls, errors, duration

    bundle = Probe("k1", "acme")
    calls2, errors2, duration2 = _metrics(public, Counter, Histogram)
    ok, err = calls2.labels("k1", "success", "acme"), calls2.labels("k1", "error", "acme")
    for outcome, ms, error_type in recorded:
        if outcome == "success":
            bundle.success(ms, 0)
            ok.inc()
        else:
            bundle.failure(ms, error_type, 0)
            err.inc()
            errors2.labels("k1", error_type, "acme").inc()
        if ms is not None:
            duration2.labels("k1").observe(ms)
    duration2.labels("k1")
    assert _samples(fast) == _samples(public)


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=30))
def test_a_timed_bundle_records_what_the_public_api_would(durations):
    fast, public = CollectorRegistry(), CollectorRegistry()
    bundle = _families._Timed(metrics._Histogram("h", "", ["k"], buckets=metrics.DB_BUCKETS, registry=fast).labels("q"))
    child = Histogram("h", "", ["k"], buckets=metrics.DB_BUCKETS, registry=public).labels("q")
    for ms in durations + list(metrics.DB_BUCKETS[:3]):
        bundle.success(ms, 0)
        child.observe(ms)
    assert _samples(fast) == _samples(public)
