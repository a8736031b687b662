"""The anomaly bands and alerts on VictoriaMetrics: the same as on Prometheus, over fifteen days of history.

``test_assets_victoriametrics.py`` compares every other rule between the two
stores on live scrapes, minutes old; the anomaly bands read the same hour a day
and a week ago (and the spread a week of excess), which minutes cannot hold.
Here both stores get the same fifteen days of per-minute samples, backfilled:
Prometheus through ``promtool tsdb create-blocks-from openmetrics``,
Debian's ``victoria-metrics`` through ``/api/v1/import/prometheus`` (required:
a missing binary fails the test).  The timeline ends a few minutes before now.

The series: ``api_requests_total`` of job ``checkout`` for four tenants,
noise-free, with a daily and a weekly cycle whose rate is constant within each
minute; ``spike`` is five times as busy for 40 minutes of the last day,
``drop`` at 10% for an hour.  A smooth rate matters: Prometheus extrapolates
``increase()`` to the window's edges, VictoriaMetrics starts from the sample
before the window and does not, and the two agree only where the rate barely
changes between neighbouring minutes.  The counters start at a million:
VictoriaMetrics counts a series' first sample as an increase from 0 when it is
small.

VictoriaMetrics has no rule engine (vmalert evaluates rules against it), so
each expression is the rule with every recorded series it reads inlined as a
subquery at the group's interval (``support.rules.inline``, the anomaly
benchmark's evaluation on Prometheus): the bands themselves and each alert.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.rules import Rule, inline, parse_rules
from support.servers import binary, free_port, get, instant_values, process, wait

from bizmetrics import assets
from bizmetrics.assets import anomaly

DAYS = 15
MINUTE = 60
JOB = "checkout"
#: Requests a minute on average, per tenant.
TENANTS = {"steady": 20.0, "busy": 400.0, "spike": 20.0, "drop": 20.0}
#: The anomalies, in minutes before the end: (first minute, last minute + 1, factor).
SPIKE = (180, 140, 5.0)
DROP = (90, 30, 0.1)
#: Where the stores are compared, in seconds before the last sample: quiet, inside the spike, inside the
#: drop, after it. Half a minute off the samples, so no sample lies on a window's edge.
INSTANTS = {"quiet": 4 * 3600 + 30, "spike": 150 * 60 + 30, "drop": 60 * 60 + 30, "after": 10 * 60 + 30}
BANDS = (anomaly.BAND_UPPER, anomaly.BAND_LOWER, anomaly.ENVELOPE_UPPER, anomaly.ENVELOPE_LOWER, anomaly.SPREAD)
#: Relative difference allowed between the two stores' envelopes and bands, as for every other rule
#: (``test_assets_victoriametrics.py``). Measured: envelopes equal (under 0.00005%), bands within 0.03%. The bands
#: differ through the spread: a week of 5-minute increases, which differ at the spike's and the drop's edges
#: (Prometheus extrapolates, VictoriaMetrics starts from the sample before), and of hourly averages whose
#: windows hold 61 minutes in Prometheus 2 (both ends included) and 60 in VictoriaMetrics (start left out).
TOLERANCE = 0.01
#: The spread is in log units and widens the band by e ** (K * spread): compared absolutely, allowing what moves
#: the band by ``TOLERANCE``.
SPREAD_TOLERANCE = math.log(1 + TOLERANCE) / anomaly.K
ABSOLUTE = 1e-9
ALERTS = ("BizmetricsUsageSpikeAnomaly", "BizmetricsUsageDropAnomaly")


def _rate(tenant: str, minute: int, start: int, end: int) -> float:
    """Requests in one minute: a daily sine (0.4x to 2.4x) and a weekly one (0.7x to 1.3x), then the anomaly."""
    t = start + MINUTE * minute
    daily = 1.4 + math.sin(2 * math.pi * (t % 86400) / 86400)
    weekly = 1 + 0.3 * math.sin(2 * math.pi * (t % (7 * 86400)) / (7 * 86400))
    rate = TENANTS[tenant] * daily * weekly
    before = (end - t) // MINUTE
    for name, (first, last, factor) in (("spike", SPIKE), ("drop", DROP)):
        if tenant == name and last < before <= first:
            rate *= factor
    return rate


def _samples(start: int, end: int) -> dict[str, list[tuple[int, float]]]:
    """Per tenant, the counter every minute from ``start`` to ``end``."""
    found = {}
    for tenant in TENANTS:
        total, samples = 1e6, []
        for minute in range((end - start) // MINUTE + 1):
            samples.append((start + MINUTE * minute, total))
            total += _rate(tenant, minute, start, end)
        found[tenant] = samples
    return found


def _labels(tenant: str) -> str:
    return f'endpoint="/orders",job="{JOB}",method="GET",status="200",tenant_id="{tenant}"'


class Store:
    """The query API of Prometheus or VictoriaMetrics, by POST (the inlined expressions are long)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str, at: float) -> dict[tuple[tuple[str, str], ...], float]:
        data = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"{self.url}/api/v1/query", data=data), timeout=300) as r:
            body: dict[str, Any] = json.load(r)
        assert body["status"] == "success", body
        return instant_values(body["data"]["result"])


class Stores:
    def __init__(self, prometheus: Store, victoria: Store, end: int) -> None:
        self.prometheus = prometheus
        self.victoria = victoria
        self.end = end


def _backfill_prometheus(work: Path, samples: dict[str, list[tuple[int, float]]]) -> None:
    lines = ["# TYPE api_requests counter\n"]
    for tenant, points in samples.items():
        lines += [f"api_requests_total{{{_labels(tenant)}}} {v!r} {t}\n" for t, v in points]
    lines.append("# EOF\n")
    source = work / "input.om"
    source.write_text("".join(lines))
    done = subprocess.run(
        [binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", "--quiet", str(source), str(work / "data")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr


def _backfill_victoria(url: str, samples: dict[str, list[tuple[int, float]]]) -> None:
    lines = [
        f"api_requests_total{{{_labels(tenant)}}} {v!r} {t * 1000}\n"
        for tenant, points in samples.items()
        for t, v in points
    ]
    request = urllib.request.Request(f"{url}/api/v1/import/prometheus", data="".join(lines).encode())
    with urllib.request.urlopen(request, timeout=120) as resp:
        assert resp.status == 204, resp.status
    get(f"{url}/internal/force_flush")


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    work = tmp_path_factory.mktemp("anomaly-victoriametrics")
    (work / "data").mkdir()
    end = int(time.time()) // MINUTE * MINUTE - 5 * MINUTE
    samples = _samples(end - DAYS * 86400, end)
    _backfill_prometheus(work, samples)
    (work / "prometheus.yml").write_text("global: {}\n")
    prom_port, vm_port = free_port(), free_port()
    with (
        process(
            [
                binary("prometheus"),
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--storage.tsdb.retention.time=100y",
                "--query.max-samples=200000000",
                "--query.timeout=10m",
                "--log.level=error",
            ]
        ) as prom_proc,
        process(
            [
                binary("victoria-metrics"),
                f"-storageDataPath={work / 'victoria-metrics-data'}",
                f"-httpListenAddr=127.0.0.1:{vm_port}",
                "-retentionPeriod=100y",
                "-search.latencyOffset=0s",
                "-search.disableCache",
                "-search.maxQueryLen=1MB",
                "-search.maxQueryDuration=10m",
                "-loggerLevel=ERROR",
            ]
        ) as vm_proc,
    ):
        prometheus = Store(f"http://127.0.0.1:{prom_port}")
        victoria = Store(f"http://127.0.0.1:{vm_port}")
        wait(lambda: get(f"{victoria.url}/health"), "VictoriaMetrics", proc=vm_proc)
        wait(lambda: get(f"{prometheus.url}/-/ready"), "Prometheus", proc=prom_proc)
        _backfill_victoria(victoria.url, samples)
        probe = "count_over_time(api_requests_total[30d])"
        wait(
            lambda: victoria.query(probe, end) == prometheus.query(probe, end) != {},
            "VictoriaMetrics to hold what Prometheus holds",
            timeout=30,
        )
        yield Stores(prometheus, victoria, end)


def _rules() -> list[Rule]:
    return parse_rules([assets.render()["prometheus/anomaly_rules.yml"]])


def _bands() -> dict[str, str]:
    """Each band record as one expression: a rule that reads only it, inlined."""
    rules = _rules()
    reads = [Rule(name, name, {}, 60, alert=True) for name in BANDS]
    return {name: expr for name, expr in inline([*rules, *reads], {"api_requests"}).items() if name in BANDS}


def _difference(name: str, value: float, other: float) -> float:
    """How far apart, in units of the allowed difference (above 1: a mismatch)."""
    if name == anomaly.SPREAD:
        return abs(value - other) / SPREAD_TOLERANCE
    return 0.0 if abs(value - other) <= ABSOLUTE else abs(value - other) / max(abs(value), abs(other)) / TOLERANCE


def _compare(
    stores: Stores, exprs: dict[str, str], instants: dict[str, int] = INSTANTS, victoria: dict[str, str] | None = None
) -> tuple[list[str], dict[str, float], int]:
    """Mismatches, the largest difference per record (relative; the spread's absolute), values compared.

    ``victoria``: other expressions for VictoriaMetrics (the proof that the comparison can fail).
    """
    mismatches, worst, compared = [], dict.fromkeys(exprs, 0.0), 0
    for instant, before in instants.items():
        at = stores.end - before
        for name, expr in exprs.items():
            prom, vm = stores.prometheus.query(expr, at), stores.victoria.query((victoria or exprs)[name], at)
            if not prom:
                mismatches.append(f"{instant} {name}: no data from Prometheus")
            if set(prom) != set(vm):
                mismatches.append(f"{instant} {name}: labels differ: {sorted(set(prom) ^ set(vm))[:3]}")
                continue
            for labels, value in prom.items():
                other = vm[labels]
                diff = _difference(name, value, other)
                worst[name], compared = max(worst[name], diff), compared + 1
                if diff > 1:
                    mismatches.append(f"{instant} {name} {dict(labels)}: Prometheus {value}, VictoriaMetrics {other}")
    return mismatches, worst, compared


def _report(worst: dict[str, float]) -> str:
    return ", ".join(
        f"{name.split(':')[1]} {d * SPREAD_TOLERANCE:.2e} (log)"
        if name == anomaly.SPREAD
        else f"{name.split(':')[1]} {d * TOLERANCE:.4%}"
        for name, d in worst.items()
    )


@pytest.mark.slow
def test_bands_agree(stores, record_property):
    """Envelopes, spread and bands of every tenant at every instant: the same series, values within tolerance."""
    mismatches, worst, compared = _compare(stores, _bands())
    record_property("victoriametrics_bands", f"{compared} values, max differences: {_report(worst)}")
    print(f"anomaly bands: {compared} values, max differences: {_report(worst)}")
    assert not mismatches, "\n".join(mismatches)
    assert compared == len(INSTANTS) * len(BANDS) * len(TENANTS)


@pytest.mark.slow
def test_alerts_agree(stores):
    """Where each anomaly alert's expression holds: the same tenants in both stores, and the expected ones.

    ``for:`` and ``keep_firing_for:`` are the rule manager's (Prometheus', or vmalert's against
    VictoriaMetrics), applied to these, so equal sets make equal alerts.
    """
    exprs = inline(_rules(), {"api_requests"})
    held = {}
    for instant, before in INSTANTS.items():
        at = stores.end - before
        for alert in ALERTS:
            prom = stores.prometheus.query(exprs[alert], at)
            vm = stores.victoria.query(exprs[alert], at)
            assert set(prom) == set(vm), (instant, alert, prom, vm)
            held[instant, alert] = {dict(labels)["tenant_id"] for labels in prom}
    assert held == {
        ("quiet", "BizmetricsUsageSpikeAnomaly"): set(),
        ("quiet", "BizmetricsUsageDropAnomaly"): set(),
        ("spike", "BizmetricsUsageSpikeAnomaly"): {"spike"},
        ("spike", "BizmetricsUsageDropAnomaly"): set(),
        ("drop", "BizmetricsUsageSpikeAnomaly"): set(),
        ("drop", "BizmetricsUsageDropAnomaly"): {"drop"},
        ("after", "BizmetricsUsageSpikeAnomaly"): set(),
        ("after", "BizmetricsUsageDropAnomaly"): set(),
    }


@pytest.mark.slow
def test_the_comparison_can_fail(stores):
    """A band a few percent wider on one side (its floor factor 1.4 made 1.45) is a mismatch for every tenant."""
    exprs = {anomaly.BAND_UPPER: _bands()[anomaly.BAND_UPPER]}
    wider = repr(math.log(1.45))
    assert repr(math.log(anomaly.MIN_RATIO)) in exprs[anomaly.BAND_UPPER]
    altered = {name: expr.replace(repr(math.log(anomaly.MIN_RATIO)), wider) for name, expr in exprs.items()}
    mismatches, worst, compared = _compare(stores, exprs, {"quiet": INSTANTS["quiet"]}, altered)
    assert worst[anomaly.BAND_UPPER] > 2  # 3.5% apart, 1% allowed
    assert compared == len(TENANTS)
    assert len(mismatches) == len(TENANTS), mismatches
