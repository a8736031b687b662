"""The bizmetrics pytest plugin: the ``bizmetrics_capture`` fixture.

Registered with a ``pytest11`` entry point, so it is there in every test run
of an environment where bizmetrics is installed.  It imports bizmetrics (and
so prometheus_client) only when a test uses the fixture, so it never fixes
prometheus_client's mode before your tests set ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from bizmetrics.testing import Capture


@pytest.fixture
def bizmetrics_capture() -> Iterator[Capture]:
    """A ``bizmetrics.testing.capture()`` running for the whole test."""
    from bizmetrics.testing import capture

    with capture() as captured:
        yield captured
