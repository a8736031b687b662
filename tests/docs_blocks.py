"""The fenced code blocks of README.md and the documentation pages, with the test options written above them.

A block may be preceded, on the lines right above its fence, by MyST comments
``% test: key=value; key=value`` (invisible in the built site) that say how the
test suite runs it; see ``tests/test_docs.py`` for the options.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ ]*$", re.M | re.S)
_OPTION = re.compile(r"^[ ]*% test: (.*)$")


def pages() -> list[Path]:
    """README.md and every Markdown page of the documentation (build output excluded)."""
    found = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)
    return [ROOT / "README.md", *found]


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    text: str
    options: dict[str, str]

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(lang: str, in_pages: list[Path] | None = None) -> list[Block]:
    """Every ```` ```lang ```` block of ``in_pages`` (default: README and the docs), dedented."""
    found = []
    for page in pages() if in_pages is None else in_pages:
        text = page.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            if match.group("lang") != lang:
                continue
            line = text.count("\n", 0, match.start()) + 1
            options: dict[str, str] = {}
            above = text[: match.start()].splitlines()
            while above and (option := _OPTION.match(above[-1])):
                for pair in option.group(1).split(";"):
                    key, _, value = pair.strip().partition("=")
                    options[key.strip()] = value.strip()
                above.pop()
            body = textwrap.dedent(match.group("body"))
            found.append(Block(page, line, lang, body, options))
    return found


def promql_queries(in_pages: list[Path] | None = None) -> list[tuple[str, str]]:
    """(where, query) of every PromQL query: a block holds queries separated by blank or comment lines."""
    queries = []
    for block in blocks("promql", in_pages):
        current: list[str] = []
        for line in [*block.text.splitlines(), ""]:
            if line.strip() and not line.lstrip().startswith("#"):
                current.append(line.strip())
            elif current:
                queries.append((block.where, " ".join(current)))
                current = []
    return queries


#: PromQL's keywords and aggregation operators (``max by (...)`` is not a metric): a name followed by ``(`` is
#: a function call, never a series, so functions need no entry.
PROMQL_WORDS = {
    "by", "and", "or", "unless", "on", "ignoring", "group_left", "group_right", "offset", "without", "bool",
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio",
}  # fmt: skip


def series_in(expr: str) -> set[str]:
    """The metric and recording-rule names an expression reads."""
    bare = re.sub(r"\{[^}]*\}", "", expr)
    bare = re.sub(r"\[[^\]]*\]", "", bare)
    bare = re.sub(r'"[^"]*"', "", bare)
    names = set(re.findall(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w(])(?!\s+\()", bare))
    by_clauses = re.findall(r"\b(?:by|on|without|ignoring|group_left|group_right)\s*\(([^)]*)\)", bare)
    labels = {label.strip() for clause in by_clauses for label in clause.split(",")}
    return {n for n in names if n not in PROMQL_WORDS and n not in labels and not re.fullmatch(r"\d+[smhdwy]", n)}
