"""What users install: version metadata and typing marker."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

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
