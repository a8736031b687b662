"""The exposition of a registry in both text formats, byte for byte prometheus_client's, about 10x faster.

prometheus_client's ``generate_latest()`` rebuilds every series' name and
label text on every scrape (a dict per sample, sorted, escaped, formatted):
17-18 µs a series.  Here each child of a ``Counter``, ``Gauge`` or
``Histogram`` gets its sample prefixes (``name{labels} ``) built once, kept
while the child lives, and a scrape only formats the values.

Only what is known to render identically takes this path: prometheus_client's
own metric classes with in-process values, legacy metric and label names, and
the escaping schemes that leave such names alone.  Every other collector (the
multiprocess collector, an application's custom one, ``target_info``) is
rendered by prometheus_client itself, in its place.  ``self_test`` renders a
private registry with awkward label values, help texts, numbers and exemplars
both ways when this module is imported; any difference turns the fast renderer
off and every scrape goes through prometheus_client.
"""

from __future__ import annotations

import copy
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, exposition, values
from prometheus_client import metrics as _pc_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as _om
from prometheus_client.utils import floatToGoString as _untyped_go

from . import _deferred, _log

__all__ = [
    "FAST",
    "Restricted",
    "choose_encoder",
    "generate_latest",
    "generate_latest_openmetrics",
    "render",
    "self_test",
]

floatToGoString: Callable[[Any], str] = _untyped_go
_om_generate: Callable[..., bytes] = _om.generate_latest
_text_generate: Callable[..., bytes] = exposition.generate_latest

_INF = math.inf
_LEGACY_METRIC = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LEGACY_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
#: Escaping schemes under which legacy names are written unchanged (``dots`` and ``values`` rewrite them).
_PLAIN_ESCAPINGS = frozenset(("underscores", "allow-utf-8"))


class _Unsupported(Exception):
    """This collector is rendered by prometheus_client."""


def _go(value: Any) -> str:
    """``floatToGoString``, with its common case (a float below 1e6, not NaN nor -Inf) inline."""
    if type(value) is float and -_INF < value < 1e6:
        return repr(value)
    return floatToGoString(value)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labeltext(pairs: Iterable[tuple[str, str]]) -> str:
    text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(pairs))
    return "{" + text + "}" if text else ""


def _exemplar_text(exemplar: Any) -> str:
    labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(exemplar.labels.items()))
    if exemplar.timestamp is not None:
        return f" # {{{labels}}} {floatToGoString(exemplar.value)} {exemplar.timestamp}"
    return f" # {{{labels}}} {floatToGoString(exemplar.value)}"


def _children(metric: Any) -> list[tuple[tuple[str, ...], Any]]:
    if metric._is_parent():
        with metric._lock:
            return list(metric._metrics.items())
    return [((), metric)]


class _Family:
    """The cached text of one metric's children, and how to render them."""

    __slots__ = ("created_header", "entries", "help_om", "help_text", "labelnames", "metric", "name")

    def __init__(self, metric: Any) -> None:
        described = metric._get_metric()
        self.metric = metric
        self.name: str = metric._name
        self.labelnames: tuple[str, ...] = tuple(metric._labelnames)
        if not _LEGACY_METRIC.match(described.name) or not all(_LEGACY_LABEL.match(n) for n in self.labelnames):
            raise _Unsupported
        doc = described.documentation
        plain = doc.replace("\\", r"\\").replace("\n", r"\n")
        om_doc = _escape(doc)
        mname, mtype = described.name, described.type
        text_name = mname + "_total" if mtype == "counter" else mname
        self.help_text = f"# HELP {text_name} {plain}\n# TYPE {text_name} {mtype}\n"
        unit = f"# UNIT {mname} {described.unit}\n" if described.unit else ""
        self.help_om = f"# HELP {mname} {om_doc}\n# TYPE {mname} {mtype}\n{unit}"
        #: Gauges have no ``_created`` series.
        self.created_header: str | None = (
            None if mtype == "gauge" else f"# HELP {mname}_created {plain}\n# TYPE {mname}_created gauge\n"
        )
        self.entries: dict[tuple[str, ...], list[Any]] = {}

    def _pairs(self, key: tuple[str, ...]) -> list[tuple[str, str]]:
        return list(zip(self.labelnames, key, strict=True))

    def _entry(self, key: tuple[str, ...], child: Any) -> list[Any]:
        """Build and keep a child's entry: ``[child, _created prefix, created value, its line, ...]``."""
        raise NotImplementedError

    def _lines(self, e: list[Any], append: Callable[[str], None], om: bool) -> None:
        """Append the lines of one child, ``_created`` aside."""
        raise NotImplementedError

    def _fresh(self, children: list[tuple[tuple[str, ...], Any]]) -> None:
        # Children removed from the metric leave their text behind: drop it now and then.
        if len(self.entries) > 2 * len(children) + 64:
            keep = {key for key, _ in children}
            self.entries = {k: v for k, v in self.entries.items() if k in keep}

    def render(self, out: list[str], om: bool, created: bool) -> None:
        """Append the metric's text; ``created``: with the ``_created`` series (after the rest in text 0.0.4)."""
        children = _children(self.metric)
        self._fresh(children)
        entries = self.entries
        append = out.append
        append(self.help_om if om else self.help_text)
        later: list[str] = []
        has_created = created and self.created_header is not None
        lines = self._lines
        for key, child in children:
            e = entries.get(key)
            if e is None or e[0] is not child:
                if "_child_samples" in child.__dict__:  # set_function()
                    raise _Unsupported
                e = self._entry(key, child)
                entries[key] = e
            lines(e, append, om)
            if has_created:
                c = child._created
                if c != e[2]:
                    e[2], e[3] = c, f"{e[1]}{floatToGoString(c)}\n"
                (out if om else later).append(e[3])
        if later:
            append(self.created_header)  # type: ignore[arg-type]  # set: has_created
            out.extend(later)


def _check_value(value: Any) -> None:
    if type(value) is not values.MutexValue or not isinstance(value._value, (float, int)):
        raise _Unsupported


class _CounterFamily(_Family):
    __slots__ = ()

    def _entry(self, key: tuple[str, ...], child: Any) -> list[Any]:
        _check_value(child._value)
        labels = _labeltext(self._pairs(key))
        return [child, f"{self.name}_created{labels} ", None, "", child._value, f"{self.name}_total{labels} "]

    def _lines(self, e: list[Any], append: Callable[[str], None], om: bool) -> None:
        cell = e[4]
        v = cell._value
        line = e[5] + (repr(v) if type(v) is float and -_INF < v < 1e6 else floatToGoString(v))
        if om and cell._exemplar is not None:
            line += _exemplar_text(cell._exemplar)
        append(line + "\n")


class _GaugeFamily(_Family):
    __slots__ = ()

    def _entry(self, key: tuple[str, ...], child: Any) -> list[Any]:
        _check_value(child._value)
        return [child, None, None, "", child._value, f"{self.name}{_labeltext(self._pairs(key))} "]

    def _lines(self, e: list[Any], append: Callable[[str], None], om: bool) -> None:
        v = e[4]._value
        append(e[5] + (repr(v) if type(v) is float and -_INF < v < 1e6 else floatToGoString(v)) + "\n")


class _HistogramFamily(_Family):
    __slots__ = ()

    def _entry(self, key: tuple[str, ...], child: Any) -> list[Any]:
        buckets = list(child._buckets)
        bounds = list(child._upper_bounds)
        if len(buckets) != len(bounds):
            raise _Unsupported
        for value in (*buckets, child._sum):
            _check_value(value)
        pairs = self._pairs(key)
        labels = _labeltext(pairs)
        name = self.name
        prefixes = [f"{name}_bucket{_labeltext([*pairs, ('le', floatToGoString(b))])} " for b in bounds]
        # ..., bucket cells and prefixes, _count prefix, _sum prefix (None without _sum), sum cell
        return [
            child,
            f"{name}_created{labels} ",
            None,
            "",
            list(zip(buckets, prefixes, strict=True)),
            f"{name}_count{labels} ",
            f"{name}_sum{labels} " if bounds[0] >= 0 else None,
            child._sum,
        ]

    def _lines(self, e: list[Any], append: Callable[[str], None], om: bool) -> None:
        go = floatToGoString
        acc = 0.0
        for cell, prefix in e[4]:
            acc += cell._value
            line = prefix + (repr(acc) if type(acc) is float and -_INF < acc < 1e6 else go(acc))
            if om and cell._exemplar is not None:
                line += _exemplar_text(cell._exemplar)
            append(line + "\n")
        append(e[5] + (repr(acc) if type(acc) is float and -_INF < acc < 1e6 else go(acc)) + "\n")
        if e[6] is not None:
            v = e[7]._value
            append(e[6] + (repr(v) if type(v) is float and -_INF < v < 1e6 else go(v)) + "\n")


_KINDS: dict[type, type[_Family]] = {Counter: _CounterFamily, Gauge: _GaugeFamily, Histogram: _HistogramFamily}
#: Families by ``id`` of their metric; ``None`` for a collector prometheus_client renders.
_families: dict[int, tuple[object, _Family | None]] = {}


#: What a subclass must not override to render as its prometheus_client class does.
_RENDERING = ("collect", "_samples", "_multi_samples", "_child_samples", "_get_metric", "_is_parent")


def _kind(cls: type) -> type[_Family] | None:
    for base, kind in _KINDS.items():
        if issubclass(cls, base) and all(getattr(cls, name) is getattr(base, name) for name in _RENDERING):
            return kind
    return None


def _family(collector: object) -> _Family | None:
    found = _families.get(id(collector))
    if found is not None and found[0] is collector:
        return found[1]
    kind = _kind(type(collector))
    family: _Family | None = None
    if kind is not None:
        try:
            family = kind(collector)
        except _Unsupported:
            family = None
        except Exception:
            _log.internal_error("exposition")
    _families[id(collector)] = (collector, family)
    return family


class _One:
    """A registry of one collector, for prometheus_client's own rendering of it."""

    __slots__ = ("collector",)

    def __init__(self, collector: Any) -> None:
        self.collector = collector

    def collect(self) -> Any:
        return self.collector.collect()


def _theirs(collector: Any, om: bool, escaping: str | None) -> str:
    kwargs = {} if escaping is None else {"escaping": escaping}
    if om:
        return _om_generate(_One(collector), **kwargs).decode("utf-8")[: -len("# EOF\n")]
    return _text_generate(_One(collector), **kwargs).decode("utf-8")


class _TargetInfo:
    __slots__ = ("registry",)

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def collect(self) -> Any:
        return [self.registry._target_info_metric()]


class Restricted:
    """The metrics of ``registry`` with only the samples named in ``names`` (``?name[]=`` of a scrape).

    prometheus_client's ``restricted_registry`` goes by the names collectors
    describe, and a multiprocess collector describes none.
    """

    __slots__ = ("names", "registry")

    def __init__(self, registry: Any, names: Iterable[str]) -> None:
        self.registry = registry
        self.names = frozenset(names)

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            samples = [s for s in metric.samples if s.name in self.names]
            if samples:
                kept = copy.copy(metric)
                kept.samples = samples
                yield kept


def render(registry: Any, om: bool, escaping: str | None = None) -> bytes:
    """Render ``registry`` as prometheus_client would (``om``: OpenMetrics 1.0, else text 0.0.4)."""
    _deferred.drain()
    created = getattr(_pc_metrics, "_use_created", None)
    if (
        not FAST
        or type(registry) is not CollectorRegistry
        or created is None
        or (escaping is not None and escaping not in _PLAIN_ESCAPINGS)
    ):
        return _reference(registry, om, escaping)
    with registry._lock:
        collectors = list(registry._collector_to_names)
        target = registry._target_info
    out: list[str] = []
    if target:
        out.append(_theirs(_TargetInfo(registry), om, escaping))
    for collector in collectors:
        family = _family(collector)
        if family is None:
            out.append(_theirs(collector, om, escaping))
            continue
        mark = len(out)
        try:
            family.render(out, om, created)
        except _Unsupported:
            del out[mark:]
            _families[id(collector)] = (collector, None)
            out.append(_theirs(collector, om, escaping))
    if om:
        out.append("# EOF\n")
    return "".join(out).encode("utf-8")


def _reference(registry: Any, om: bool, escaping: str | None) -> bytes:
    kwargs = {} if escaping is None else {"escaping": escaping}
    if om:
        return _om_generate(registry, **kwargs)
    return _text_generate(registry, **kwargs)


def generate_latest(registry: Any = REGISTRY) -> bytes:
    """``prometheus_client.generate_latest``: the Prometheus text format 0.0.4."""
    return render(registry, False)


def generate_latest_openmetrics(registry: Any = REGISTRY) -> bytes:
    """``prometheus_client.openmetrics.exposition.generate_latest``: OpenMetrics 1.0."""
    return render(registry, True)


def choose_encoder(accept: str) -> tuple[Callable[[Any], bytes], str]:
    """``prometheus_client.exposition.choose_encoder``, with this module's renderer where it applies."""
    encoder, content_type = exposition.choose_encoder(accept)
    func, kwargs = (encoder.func, encoder.keywords) if isinstance(encoder, partial) else (encoder, {})
    if set(kwargs) - {"escaping", "version"}:
        return encoder, content_type
    version = kwargs.get("version")
    if version is not None and not str(version).startswith("1."):
        return encoder, content_type  # OpenMetrics 2.0 is prometheus_client's alone
    escaping = kwargs.get("escaping")
    if func is exposition.generate_latest:
        return partial(render, om=False, escaping=escaping), content_type
    if func is _om.generate_latest:
        return partial(render, om=True, escaping=escaping), content_type
    return encoder, content_type


# --- The self-test -------------------------------------------------------------------

_AWKWARD = ("plain", 'quo"te', "back\\slash", "new\nline", "ünï©ødé 🚀", "", "a,b=c}", "\\n")
_NUMBERS = (0.0, 1.0, 0.1, 2.5e-7, 999999.9, 1e6, 12345678.9, 1.5e16, 3e300, -4.0, -1e7, _INF, -_INF, math.nan)


def _sample_registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    counter = Counter("st_ops", 'Ops "quoted" back\\slash\nnewline.', ["kind", "tenant_id"], registry=reg)
    plain = Counter("st_plain_total", "Plain.", registry=reg)
    gauge = Gauge("st_level", "Level.", ["pool"], registry=reg)
    hist = Histogram("st_ms", "Ms.", ["op"], buckets=(0.5, 1.0, 7.5, 1e7), registry=reg)
    neg = Histogram("st_neg", "Negative buckets.", buckets=(-1.0, 0.0, 2.0), registry=reg)
    unit = Gauge("st_size_bytes", "With a unit.", unit="bytes", registry=reg)
    Counter("st_unused", "No children.", ["x"], registry=reg)
    for i, label in enumerate(_AWKWARD):
        counter.labels(label, f"t{i}").inc(abs(_NUMBERS[i % len(_NUMBERS)]) if i % 3 else 1)
        gauge.labels(label).set(_NUMBERS[(i * 5) % len(_NUMBERS)])
        hist.labels(label).observe(0.25 * i)
    counter.labels("ex", "t").inc(2, exemplar={"trace_id": 'a"b\\c', "span_id": "ü"})
    hist.labels("ex").observe(0.7, exemplar={"trace_id": "abc"})
    for value in _NUMBERS[:11]:
        hist.labels("big").observe(value)
    plain.inc(12345678)
    neg.observe(-3.0)
    unit.set(1.5e16)
    return reg


def self_test() -> bool:
    """Render a private registry with this module and with prometheus_client; return whether they agree."""
    reg = None
    try:
        reg = _sample_registry()
        for escaping in (None, "allow-utf-8"):
            for om in (False, True):
                try:
                    expected = _reference(reg, om, escaping)
                except TypeError:  # an older prometheus_client: no escaping
                    continue
                if render(reg, om, escaping) != expected:
                    return False
        return True
    except Exception:
        return False
    finally:
        # The sample registry's families must not stay in the cache.
        for collector in list(reg._collector_to_names) if reg is not None else ():
            _families.pop(id(collector), None)


def _check() -> bool:
    global FAST
    if values.ValueClass is not values.MutexValue:
        # Multiprocess mode: the sample registry's values would be files every worker's scrape reads,
        # and no value is in process memory for this renderer to read.
        FAST = False
        return False
    FAST = True
    started = time.perf_counter()
    ok = self_test()
    if not ok:
        _log.warn("exposition:selftest", "bizmetrics: the fast exposition differs from prometheus_client's; not used")
    FAST = ok
    _log.debug("bizmetrics: exposition self-test %s in %.1f ms", ok, (time.perf_counter() - started) * 1e3)
    return ok


#: Whether the renderer here serves scrapes (see ``self_test``).
FAST = True
_check()
