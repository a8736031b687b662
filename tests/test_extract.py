"""Counting records: the short cut for exact built-in types agrees with the documented rules."""

from __future__ import annotations

import collections
import logging
import types
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bizmetrics import _extract, _log

RESOURCE = "contacts"
KEYS = (*_extract.RECORD_LISTS, *_extract.COUNT_KEYS, RESOURCE, "other")


class ListSub(list):
    pass


class LyingList(list):
    def __len__(self) -> int:
        return 7


class MappingList(list):
    """A list registered as a mapping: the rules read it as a mapping, so not its length."""

    def get(self, key: Any, default: Any = None) -> Any:
        return default


Mapping.register(MappingList)


class TupleSub(tuple):
    pass


class DictSub(dict):
    pass


class GetDict(dict):
    """A dict whose ``get`` finds three records under any key."""

    def get(self, key: Any, default: Any = None) -> Any:
        return [0, 0, 0]


class StrSub(str):
    pass


class IntSub(int):
    pass


class Raising:
    """An object whose every attribute read raises."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(name)


class Sized7:
    def __len__(self) -> int:
        return 7


def _generator(n: int) -> Iterator[int]:
    yield from range(n)


numeric_text = st.sampled_from(["0", "12", "-3", "1e3", "nan", "inf", " 4 ", "1_000", "x", ""])

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**308, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True),
    st.fractions(),
    st.complex_numbers(allow_nan=True),
    numeric_text,
    numeric_text.map(StrSub),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.binary(max_size=5).map(bytearray),
    st.binary(max_size=5).map(memoryview),
    st.integers(min_value=-5, max_value=5).map(IntSub),
    st.integers(min_value=0, max_value=5).map(range),
    st.integers(min_value=0, max_value=5).map(_generator),
    st.builds(Raising),
    st.builds(Sized7),
    st.builds(object),
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    fields = st.dictionaries(st.sampled_from(KEYS), children, max_size=4)
    return st.one_of(
        st.lists(children, max_size=6),
        st.lists(children, max_size=6).map(tuple),
        st.lists(children, max_size=6).map(ListSub),
        st.lists(children, max_size=6).map(LyingList),
        st.lists(children, max_size=6).map(MappingList),
        st.lists(children, max_size=6).map(TupleSub),
        st.lists(children, max_size=6).map(collections.deque),
        st.sets(st.integers(), max_size=6),
        st.frozensets(st.text(max_size=2), max_size=6),
        fields,
        fields.map(DictSub),
        fields.map(GetDict),
        fields.map(collections.OrderedDict),
        fields.map(lambda d: collections.defaultdict(list, d)),
        fields.map(types.MappingProxyType),
        fields.map(lambda d: d.keys()),
        fields.map(lambda d: types.SimpleNamespace(**d)),
    )


#: Anything a sync operation might return: scalars, flat containers, and nested ones (pages of
#: pages, objects holding mappings...), the first two drawn as often as the third.
results = st.one_of(leaves, _containers(leaves), st.recursive(leaves, _containers, max_leaves=12))

#: One of each kind, for a deterministic check on top of hypothesis' draws.
KINDS = [
    None, True, False, 0, 7, -4, 10**400, 0.0, 2.5, -1.5, float("nan"), float("inf"), Decimal(3), Decimal("NaN"),
    Fraction(1, 2), 1j, "12", "-3", "nan", "x", "", StrSub("5"), b"3", bytearray(b"3"), memoryview(b"3"), IntSub(3),
    range(4), _generator(3), Raising(), Sized7(), object(), [], [1, 2], (), (1,), set(), {1}, frozenset({1, 2}),
    ListSub([1]), LyingList([1]), MappingList([1, 2]), TupleSub((1, 2)), collections.deque([1]), {}, {"other": [1]},
    {"records": [1, 2], "count": 9}, {"items": None, "data": (1,)}, {"results": "text", "total": "12"},
    {RESOURCE: {1, 2}}, {"count": True, "total": 4}, {"count": 0, "total": 4}, {"count": -2}, {"total": 10**400},
    {"records": {"a": 1}},
    {"data": LyingList()}, {"items": range(3)}, {"records": b"xy", "count": 1.5}, DictSub(records=[1]),
    GetDict(), collections.OrderedDict(total=3), collections.defaultdict(list), types.MappingProxyType({"data": [1]}),
    {"a": 1}.keys(), types.SimpleNamespace(items=[1, 2], total=7), types.SimpleNamespace(count="4"),
]  # fmt: skip


def _outcome(count: Callable[[], Any]) -> tuple[Any, list[tuple[int, str]]]:
    """``count()``'s value (with its type) or exception, and the log lines it wrote, from a fresh rate limit."""
    lines: list[tuple[int, str]] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append((record.levelno, record.getMessage()))

    handler = Capture(logging.DEBUG)
    logger = logging.getLogger("bizmetrics")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    _log.reset()
    try:
        try:
            value = count()
        except Exception as exc:  # the rules may raise (a broken get()); the short cut must raise alike
            value = (type(exc), str(exc))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        _log.reset()
    return (type(value), value), lines


@given(result=results)
def test_short_cut_agrees_with_the_rules(result: Any) -> None:
    """count_records (short cut for exact built-ins) == the general rules: same value, type and log lines."""
    general = _outcome(lambda: _extract._count_by_rules(result, RESOURCE))
    assert _outcome(lambda: _extract.count_records(result, RESOURCE)) == general
    assert _outcome(lambda: _extract.records_counter(None, RESOURCE)(result)) == general


@pytest.mark.parametrize("result", KINDS, ids=lambda r: type(r).__name__)
def test_short_cut_agrees_with_the_rules_on_each_kind(result: Any) -> None:
    """The same, on one input of each kind."""
    general = _outcome(lambda: _extract._count_by_rules(result, RESOURCE))
    assert _outcome(lambda: _extract.count_records(result, RESOURCE)) == general
    assert _extract._size(result) == _extract._collection_size(result)


@given(value=results)
def test_size_agrees_with_collection_size(value: Any) -> None:
    """The short cut of the collection rule (also behind count=) agrees with the ABC checks."""
    assert _extract._size(value) == _extract._collection_size(value)
    assert type(_extract._size(value)) is type(_extract._collection_size(value))


def test_short_cut_examples() -> None:
    """The documented examples, through the short cut and the rules alike."""
    cases = [
        (list(range(50)), 50),
        ((1, 2), 2),
        ({1, 2, 3}, 3),
        ({"count": 5000, "results": list(range(50))}, 50),
        ({"contacts": [1, 2]}, 2),
        ({"data": None, "total": 12}, 12),
        ({"unrelated": 5}, 0),
        (7, 7),
        (2.5, 2.5),
        (-4, 0),
        (None, 0),
        (LyingList([1]), 7),
        (GetDict(), 3),
        (Decimal(3), 3),
        (Fraction(1, 2), 0.5),
    ]
    for result, expected in cases:
        assert _extract.count_records(result, RESOURCE) == expected, result
        assert _extract._count_by_rules(result, RESOURCE) == expected, result
