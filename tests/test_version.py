"""The version names the code: derived from git by setup.py (setuptools-scm)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bizmetrics

ROOT = Path(__file__).resolve().parents[1]
BUILD_FILES = ("setup.py", "setup.cfg", "pyproject.toml", "CHANGELOG.md", "README.md", "LICENSE", "MANIFEST.in")


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "commit.gpgsign=false", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


def _version(tree: Path) -> str:
    out = subprocess.run(
        [sys.executable, "setup.py", "--version"], cwd=tree, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def _tree(tmp_path: Path, changelog: str | None = None) -> Path:
    """A copy of the build files of this project, with an empty package."""
    tree = tmp_path / "tree"
    (tree / "bizmetrics").mkdir(parents=True)
    (tree / "bizmetrics" / "__init__.py").write_text("")
    for name in BUILD_FILES:
        shutil.copy(ROOT / name, tree / name)
    if changelog is not None:
        (tree / "CHANGELOG.md").write_text(changelog)
    return tree


def _repo(tmp_path: Path, changelog: str | None = None) -> Path:
    repo = _tree(tmp_path, changelog)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "first")
    return repo


def _commit(repo: Path, n: int) -> None:
    for i in range(n):
        (repo / "bizmetrics" / "__init__.py").write_text(f"# {i}\n")
        _git(repo, "commit", "-qam", f"change {i}")


CHANGELOG_020 = "# Changelog\n\n## [Unreleased]\n\n## [0.2.0] - 2026-12-06\n\n## [0.1.0] - 2026-11-01\n"


@pytest.mark.slow
def test_a_commit_after_a_release_tag_is_the_next_minor_dev_version_named_by_its_hash(tmp_path):
    repo = _repo(tmp_path, CHANGELOG_020)
    _git(repo, "tag", "-a", "v0.2.0", "-m", "0.2.0")
    _commit(repo, 3)
    assert _version(repo) == f"0.3.0.dev3+g{_git(repo, 'rev-parse', '--short=9', 'HEAD')}"


@pytest.mark.slow
def test_the_release_commit_is_the_release_and_uncommitted_changes_add_the_day(tmp_path):
    repo = _repo(tmp_path, CHANGELOG_020)
    _git(repo, "tag", "-a", "v0.2.0", "-m", "0.2.0")
    assert _version(repo) == "0.2.0"
    # Edits on top of a release are not that release.
    (repo / "bizmetrics" / "__init__.py").write_text("# edited\n")
    head = _git(repo, "rev-parse", "--short=9", "HEAD")
    assert re.fullmatch(rf"0\.3\.0\.dev0\+g{head}\.d\d{{8}}", _version(repo))
    _commit(repo, 1)
    (repo / "bizmetrics" / "__init__.py").write_text("# edited again\n")
    head = _git(repo, "rev-parse", "--short=9", "HEAD")
    assert re.fullmatch(rf"0\.3\.0\.dev1\+g{head}\.d\d{{8}}", _version(repo))


@pytest.mark.slow
def test_without_a_tag_the_last_release_comes_from_the_changelog(tmp_path):
    """A clone without tags still names the next release and the commit, never 0.1.devN."""
    repo = _repo(tmp_path, CHANGELOG_020.replace("0.2.0", "1.4.2"))
    _commit(repo, 1)
    head = _git(repo, "rev-parse", "--short=9", "HEAD")
    assert _version(repo) == f"1.5.0.dev2+g{head}"


@pytest.mark.slow
def test_a_tree_without_git_builds_from_pkg_info_or_says_unknown(tmp_path):
    tree = _tree(tmp_path)
    assert _version(tree) == "0+unknown"
    # An sdist carries its version in PKG-INFO.
    (tree / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: bizmetrics\nVersion: 0.3.0.dev7+gabcdef123\n")
    assert _version(tree) == "0.3.0.dev7+gabcdef123"


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("BIZMETRICS_EXPECT_GIT"), reason="only CI's git checkout promises git metadata beside the tests"
)
def test_the_installed_package_names_the_commit_it_was_built_from():
    """CI installs the checkout (with its .git): the version is its tag or names its commit."""
    head = _git(ROOT, "rev-parse", "--short=9", "HEAD")
    exact = subprocess.run(
        ["git", "describe", "--tags", "--exact-match", "--match", "v*"], cwd=ROOT, capture_output=True, text=True
    )
    if exact.returncode == 0:
        assert bizmetrics.__version__ == exact.stdout.strip().removeprefix("v")
    else:
        assert re.fullmatch(rf"\d+\.\d+\.0\.dev\d+\+g{head}(\.d\d{{8}})?", bizmetrics.__version__)
    out = subprocess.run([sys.executable, "-m", "bizmetrics", "--version"], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == f"bizmetrics {bizmetrics.__version__}"


def test_without_its_generated_module_the_version_comes_from_the_metadata_or_is_unknown(monkeypatch):
    """No ``bizmetrics/_version.py`` (a checkout on sys.path): the installed distribution's version, else 0+unknown."""
    import importlib.metadata

    monkeypatch.setitem(sys.modules, "bizmetrics._version", None)  # its import raises ImportError
    assert bizmetrics._installed_version() == importlib.metadata.version("bizmetrics")

    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert bizmetrics._installed_version() == "0+unknown"
