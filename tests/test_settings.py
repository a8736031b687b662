"""Settings from the environment: each valid value is taken, each invalid one gives the default and one warning."""

from __future__ import annotations

import itertools
import logging
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bizmetrics import _log, _settings

DEFAULT = (5.0, 10.0, 25.0)


@pytest.fixture(autouse=True)
def _no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start each test with none of the settings set, and the log's rate limit forgotten."""
    for name in (
        "BIZMETRICS_NAMESPACE",
        "BIZMETRICS_MAX_TENANTS",
        "BIZMETRICS_TENANT_LATENCY",
        "BIZMETRICS_HTTP_STATUS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("BIZMETRICS_BUCKETS_TEST", raising=False)
    _log.reset()


def _warnings(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "bizmetrics" and name in r.getMessage()]


@given(value=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12))
def test_a_namespace_is_taken_when_it_can_prefix_a_metric_name(value, monkeypatch, caplog):
    """A valid prefix is taken, stripped; anything else is ignored with a warning naming it."""
    monkeypatch.setenv("BIZMETRICS_NAMESPACE", value)
    _log.reset()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bizmetrics"):
        got = _settings.namespace()
    stripped = value.strip()
    valid = stripped == "" or (
        (stripped[0].isascii() and (stripped[0].isalpha() or stripped[0] in "_:"))
        and all(c.isascii() and (c.isalnum() or c in "_:") for c in stripped)
    )
    assert got == (stripped if valid else "")
    assert len(_warnings(caplog, "BIZMETRICS_NAMESPACE")) == (0 if valid else 1)


@pytest.mark.parametrize(
    ("raw", "expected", "warned"),
    [
        ("", 2000, False),
        ("  ", 2000, False),
        ("none", None, False),
        ("OFF", None, False),
        (" Unlimited ", None, False),
        ("0", 0, False),
        (" 50 ", 50, False),
        ("-1", 2000, True),
        ("lots", 2000, True),
        ("1.5", 2000, True),
    ],
)
def test_the_tenant_cap_is_a_count_or_none(raw, expected, warned, monkeypatch, caplog):
    """``BIZMETRICS_MAX_TENANTS``: a count, ``none``/``off``/``unlimited`` for no cap, else the default."""
    monkeypatch.setenv("BIZMETRICS_MAX_TENANTS", raw)
    with caplog.at_level(logging.WARNING, logger="bizmetrics"):
        assert _settings.max_tenants() == expected
    assert bool(_warnings(caplog, "BIZMETRICS_MAX_TENANTS")) is warned


@given(
    bounds=st.lists(
        st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-5, 10_000)),
        min_size=1,
        max_size=6,
    )
)
def test_buckets_are_increasing_finite_non_negative_milliseconds(bounds, monkeypatch, caplog):
    """Comma-separated milliseconds are taken when strictly increasing, finite and not negative; else the default."""
    monkeypatch.setenv("BIZMETRICS_BUCKETS_TEST", ",".join(str(b) for b in bounds))
    _log.reset()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bizmetrics"):
        got = _settings.buckets("TEST", DEFAULT)
    floats = [float(b) for b in bounds]
    valid = all(math.isfinite(b) and b >= 0 for b in floats) and all(a < b for a, b in itertools.pairwise(floats))
    assert got == (tuple(floats) if valid else DEFAULT)
    assert len(_warnings(caplog, "BIZMETRICS_BUCKETS_TEST")) == (0 if valid else 1)


@pytest.mark.parametrize("raw", ["10,abc", "10,,20", "ms"])
def test_buckets_that_are_not_numbers_give_the_default(raw, monkeypatch, caplog):
    """A part that is not a number: the default, and a warning that names the default."""
    monkeypatch.setenv("BIZMETRICS_BUCKETS_TEST", raw)
    with caplog.at_level(logging.WARNING, logger="bizmetrics"):
        assert _settings.buckets("TEST", DEFAULT) == DEFAULT
    assert [m.endswith("using 5,10,25") for m in _warnings(caplog, "BIZMETRICS_BUCKETS_TEST")] == [True]


def test_unset_buckets_give_the_default_silently(caplog):
    with caplog.at_level(logging.WARNING, logger="bizmetrics"):
        assert _settings.buckets("TEST", DEFAULT) == DEFAULT
    assert caplog.records == []


@given(tenants=st.lists(st.text(alphabet="abc -_,", max_size=6), max_size=5))
def test_tenant_latency_names_the_non_empty_comma_separated_tenants(tenants, monkeypatch):
    raw = ",".join(tenants)
    monkeypatch.setenv("BIZMETRICS_TENANT_LATENCY", raw)
    assert _settings.tenant_latency() == tuple(p.strip() for p in raw.split(",") if p.strip())


@pytest.mark.parametrize(
    ("raw", "expected", "warned"),
    [("", "code", False), ("code", "code", False), (" CLASS ", "class", False), ("classes", "code", True)],
)
def test_http_status_mode_is_code_or_class(raw, expected, warned, monkeypatch, caplog):
    """``BIZMETRICS_HTTP_STATUS``: ``code`` (the default) or ``class``, case-insensitive; else ``code``, warned."""
    monkeypatch.setenv("BIZMETRICS_HTTP_STATUS", raw)
    with caplog.at_level(logging.WARNING, logger="bizmetrics"):
        assert _settings.http_status() == expected
    assert bool(_warnings(caplog, "BIZMETRICS_HTTP_STATUS")) is warned


def test_a_repeated_bad_setting_is_warned_once_per_interval(monkeypatch, caplog):
    """The warning is rate-limited like any bad input: read twice, warned once."""
    monkeypatch.setenv("BIZMETRICS_HTTP_STATUS", "bogus")
    with caplog.at_level(logging.WARNING, logger="bizmetrics"):
        _settings.http_status()
        _settings.http_status()
    assert len(_warnings(caplog, "BIZMETRICS_HTTP_STATUS")) == 1
