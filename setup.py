"""Build script: setup.cfg holds the metadata; the version comes from git.

A checkout between releases builds as ``<next minor>.devN+g<hash>``, N the
commits since the last release tag (``vX.Y.Z``); an sdist carries its version
in PKG-INFO. Without a tag (a shallow clone, say) the last release is read
from CHANGELOG.md, so the version still names the next release and the commit.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from setuptools import setup

HERE = Path(__file__).resolve().parent


def _last_release() -> tuple[int, int, int]:
    """The newest dated ``## [X.Y.Z] - date`` section of CHANGELOG.md."""
    changelog = (HERE / "CHANGELOG.md").read_text(encoding="utf-8")
    found = re.search(r"^## \[(\d+)\.(\d+)\.(\d+)\] - \d{4}-\d{2}-\d{2}", changelog, re.M)
    return (int(found[1]), int(found[2]), int(found[3])) if found else (0, 0, 0)


def _version_scheme(version: Any) -> str:
    if version.exact:
        return str(version.format_with("{tag}"))
    # Without a tag setuptools-scm passes the fallback version (0) as the tag.
    tagged = (*version.tag.release, 0, 0, 0)[:3]
    major, minor, _ = max(tagged, _last_release())
    # Between releases the next one is a minor release: patch releases are tagged by hand.
    return f"{major}.{minor + 1}.0.dev{version.distance}"


def _local_scheme(version: Any) -> str:
    # The commit always (g<hash>), and the day when the tree has uncommitted changes.
    if version.exact and not version.dirty:
        return ""
    # Without a tag setuptools-scm gives the whole hash: cut it as git describe does.
    node = str(version.node or "").removeprefix("g")[:9]
    node = f"g{node}" if node else ""
    dirty = f"d{version.time:%Y%m%d}" if version.dirty else ""
    return "+" + ".".join(part for part in (node, dirty) if part) if node or dirty else ""


setup(
    use_scm_version={
        "version_scheme": _version_scheme,
        "local_scheme": _local_scheme,
        "version_file": "bizmetrics/_version.py",
        "version_file_template": '"""Written by setuptools-scm at build time."""\n\nversion = "{version}"\n',
        # In git without a tag, setuptools-scm passes this as the tag (merging its
        # local part into ours); a tree with neither git nor PKG-INFO builds as 0+unknown.
        "fallback_version": "0.0" if (HERE / ".git").exists() else "0+unknown",
    }
)
