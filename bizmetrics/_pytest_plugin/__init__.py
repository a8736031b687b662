"""The bizmetrics pytest plugin: the ``bizmetrics_capture`` fixture.

Installed as the top-level package ``bizmetrics_pytest`` (see setup.cfg's
``package_dir``) and registered with a ``pytest11`` entry point, so it is
there in every test run of an environment where bizmetrics is installed.
Being outside the ``bizmetrics`` package, loading it imports neither
bizmetrics nor prometheus_client: the fixture imports them when a test uses
it, so the plugin never fixes prometheus_client's mode before a conftest
sets ``PROMETHEUS_MULTIPROC_DIR``.
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
