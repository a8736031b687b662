"""What users install: version metadata and typing marker."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest

import bizmetrics


def test_version_matches_installed_metadata():
    """bizmetrics.__version__ is the version pip installed."""
    assert bizmetrics.__version__ == importlib.metadata.version("bizmetrics")


def test_py_typed_ships():
    """The installed package carries py.typed, so type checkers use its annotations."""
    assert (Path(bizmetrics.__file__).parent / "py.typed").is_file()


def test_all_is_sorted_and_importable():
    """__all__ is sorted and each name in it exists."""
    assert bizmetrics.__all__ == sorted(bizmetrics.__all__)
    for name in bizmetrics.__all__:
        assert hasattr(bizmetrics, name)


@pytest.mark.skipif(not os.environ.get("BIZMETRICS_EXPECT_INSTALLED"), reason="only CI promises an installed package")
def test_tests_run_against_the_installed_package():
    """In CI the tests import bizmetrics from site-packages, not from the checkout."""
    package = Path(bizmetrics.__file__).resolve().parent
    assert package != Path(__file__).resolve().parents[1] / "bizmetrics"
    assert package.parent.name == "site-packages"


@pytest.mark.slow
def test_version_on_the_command_line():
    """python -m bizmetrics --version prints the package's version."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "bizmetrics", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert out.stdout.strip() == f"bizmetrics {bizmetrics.__version__}"


def test_the_pytest_plugin_is_registered():
    """The installed distribution registers the bizmetrics_pytest plugin under pytest11."""
    points = importlib.metadata.entry_points(group="pytest11")
    assert any(p.name == "bizmetrics" and p.value == "bizmetrics_pytest" for p in points)


@pytest.mark.slow
def test_loading_the_pytest_plugin_imports_neither_bizmetrics_nor_prometheus_client():
    """The plugin pytest loads at start-up leaves prometheus_client unimported, so a conftest can still
    set PROMETHEUS_MULTIPROC_DIR."""
    import subprocess
    import sys

    script = (
        "import sys, bizmetrics_pytest\n"
        "print(sorted(m for m in ('bizmetrics', 'prometheus_client') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
