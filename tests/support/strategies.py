"""Hypothesis strategies for the things applications pass to bizmetrics."""

from __future__ import annotations

from hypothesis import strategies as st

#: Anything an application might pass as a label value, good or bad.
label_values = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=300),
    st.text(alphabet='\n\r\t\x00\x1b\x7f\x85"\\{}=,', max_size=10),
    st.none(),
    st.integers(),
    st.floats(allow_nan=True),
    st.booleans(),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=3),
)

#: Clean label values: what a well-behaved application passes.
clean_labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=20)

#: Anything an application might pass as a duration or a count.
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.none(),
    st.booleans(),
    st.text(max_size=5),
    st.decimals(allow_nan=True),
)

#: Return values a sync operation might produce, with the record count bizmetrics must find.
payloads = st.one_of(
    st.lists(st.integers(), max_size=30).map(lambda xs: (xs, len(xs))),
    st.tuples(st.integers()).map(lambda t: (t, 1)),
    st.integers(min_value=0, max_value=10_000).map(lambda n: (n, n)),
    st.lists(st.integers(), max_size=30).map(lambda xs: ({"records": xs}, len(xs))),
    st.lists(st.integers(), max_size=30).map(lambda xs: ({"items": xs, "total": 999}, len(xs))),
    st.integers(min_value=0, max_value=500).map(lambda n: ({"count": n}, n)),
    st.just((None, 0)),
    st.just(("a string is not records", 0)),
    st.just((True, 0)),
)

#: What one call does: return normally, or raise one of these exceptions.
outcomes = st.one_of(
    st.just(None),
    st.sampled_from([ValueError, KeyError, TimeoutError, ConnectionError, RuntimeError]),
)

#: The four kinds of callable the decorators handle.
kinds = st.sampled_from(["sync", "coroutine", "generator", "async generator"])

#: Grouping key values of a batch job, of any type: prometheus_client puts their ``str()`` in the URL.
grouping_values = st.one_of(
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=20),
)

#: The units of a Prometheus duration, in the order its grammar requires, with their milliseconds.
DURATION_UNITS = (
    ("y", 31536000000),
    ("w", 604800000),
    ("d", 86400000),
    ("h", 3600000),
    ("m", 60000),
    ("s", 1000),
    ("ms", 1),
)

#: Prometheus durations, by its grammar: some units, in order, each at most once, each with a
#: whole number; with the milliseconds they stand for.
durations = st.lists(
    st.tuples(st.integers(min_value=0, max_value=len(DURATION_UNITS) - 1), st.integers(min_value=0, max_value=100)),
    min_size=1,
    max_size=len(DURATION_UNITS),
    unique_by=lambda part: part[0],
).map(
    lambda parts: (
        "".join(f"{n}{DURATION_UNITS[i][0]}" for i, n in sorted(parts)),
        sum(n * DURATION_UNITS[i][1] for i, n in parts),
    )
)

#: Text made of a duration's characters: mostly not durations (units out of order, repeated, bare numbers).
duration_like = st.text(alphabet="0123456789ywdhms", max_size=12)

#: Valid BIZMETRICS_NAMESPACE values.
namespaces = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,30}", fullmatch=True)
