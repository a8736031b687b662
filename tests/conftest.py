"""Shared fixtures: the hypothesis profile, registry reads and an injectable clock."""

from __future__ import annotations

import gc
import itertools
import os
import signal
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from support.registry import TICK_NS, clear_catalogue

import bizmetrics._instrument

# Tests give every test fresh tenants: thousands over a session. The cap's own
# tests set it explicitly (and see README, "Tenant cap", for the default).
bizmetrics.limit_tenants(None)

# CI runs the suite with PYTEST_ADDOPTS="-n 4" (pytest-xdist); the pytest runs some tests start
# in a subprocess (a user's test run with the plugin) must not inherit it.
os.environ.pop("PYTEST_ADDOPTS", None)

# A script started in the background without job control (`.ci/run &`) ignores SIGINT, and so would every
# process the tests start (an ignored signal stays ignored across exec): the tests that press Ctrl-C on the
# demo need the default back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

settings.register_profile(
    "default",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile("ci", parent=settings.get_profile("default"), max_examples=150)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Leave what collection imported out of garbage collections.

    pytest, hypothesis, the LLM SDKs and the web frameworks make a large heap
    that lives until the end; without this every full collection (the tests'
    own ``gc.collect()`` calls included) walks all of it again.  What the tests
    create afterwards is collected as usual.
    """
    gc.freeze()


@pytest.fixture(autouse=True)
def _fresh_catalogue() -> None:
    """Start every test with the catalogue metrics empty.

    Tests record under fresh label values (``helpers.unique``): kept over a
    session, thousands of series would make every exposition and every
    ``bizmetrics.testing.capture()`` slower, test after test.  No test reads a
    series another test recorded.
    """
    clear_catalogue()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[itertools.count[int]]:
    """Make every clock read in the decorators advance exactly one tick."""
    ticks = itertools.count(1)
    monkeypatch.setattr(bizmetrics._instrument, "clock", lambda: next(ticks))
    # Whole ticks, each TICK_NS long: sums stay exact.
    monkeypatch.setattr(bizmetrics._instrument, "CLOCK_MS", TICK_NS / 1e6)
    yield ticks


@pytest.fixture
def http_status_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Record API status classes (``4xx``), as ``BIZMETRICS_HTTP_STATUS=class`` does, here and in child processes.

    The middleware tests written for classes keep checking that mode; the exact
    codes of the default are checked in ``test_helpers_http_status.py``.
    """
    import bizmetrics.helpers

    monkeypatch.setenv("BIZMETRICS_HTTP_STATUS", "class")
    monkeypatch.setattr(bizmetrics.helpers, "HTTP_STATUS", "class")
    monkeypatch.setattr(bizmetrics.helpers, "_status", bizmetrics.helpers.status_class)
