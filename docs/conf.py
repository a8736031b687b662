"""Sphinx configuration of the bizmetrics documentation.

Sphinx, furo and MyST-Parser: Sphinx because the package's docstrings are
already written in its field-list and ``versionadded`` style, so autodoc
renders them as they are and ``-n -W`` checks every cross-reference; MyST so
the pages stay Markdown that GitHub renders too (README links into them);
furo because it is a maintained, accessible theme whose assets ship inside
the wheel, so the site builds and reads offline.

Build: ``sphinx-build -W --keep-going -n -b html docs docs/_build/html``.
"""

from __future__ import annotations

import bizmetrics

project = "bizmetrics"
author = "bizmetrics contributors"
copyright = "bizmetrics contributors"
release = bizmetrics.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# MyST: GitHub-style anchors for headings (links such as guides/http.md#exposing-metrics
# work on GitHub and here), colon fences and definition lists for the option tables.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]
# ```promql and ```sh blocks: Pygments has no PromQL lexer; "text" keeps the build warning-free.
highlight_language = "python3"
# Pygments' PromQL lexer does not know recording-rule names (``job:x:rate5m``); it falls back
# to plain text for those blocks, which is all a highlighting failure means.
suppress_warnings = ["misc.highlighting_failure"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
# The public API is what each module's __all__ lists; private helpers stay out.
autodoc_preserve_defaults = True
nitpicky = True
# Types from other projects: no intersphinx fetch at build time (the build is offline), so
# references to them are left as plain text instead of failing the nitpicky build.
nitpick_ignore_regex = [
    (r"py:.*", r"(prometheus_client|wrapt|starlette|django|celery|rq|redis|httpx|requests|aiohttp|sqlalchemy)(\..*)?"),
    (r"py:.*", r"(collections\.abc|typing|types|contextvars|logging|pathlib|asyncio|enum|decimal|datetime)\..*"),
    (r"py:.*", r"(ssl|threading|os|wsgiref|socket|http|email|concurrent)\..*"),
    # Type aliases of the package's signatures, and other projects' types written unqualified.
    (r"py:class", r"bizmetrics\.decorators\.Decorator|Scope|Environ|ASGIApp|WSGIApp|ContextVar|CollectorRegistry"),
]

html_theme = "furo"
html_title = f"bizmetrics {release}"
# Offline: furo ships its fonts and scripts; nothing is fetched from a CDN.
html_theme_options = {"navigation_with_keys": True}
html_static_path: list[str] = []
html_show_sourcelink = False
