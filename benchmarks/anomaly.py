"""Anomaly rules on labelled data: ours against Grafana's promql-anomaly-detection, through a real Prometheus.

``python -m benchmarks.anomaly [--data DIR] [--quick] [--json FILE] [--strategies ours,adaptive,robust]``

Data: the Numenta Anomaly Benchmark (NAB) series and windows in ``DIR``
(``--data``, else the environment variable ``BIZMETRICS_ANOMALY_DATA``, else
``../shared/anomaly-data`` beside the repository): ``data/<folder>/<file>.csv``
(``timestamp,value``) and ``windows.json``.  ``--quick`` (the CI smoke run)
uses a small synthetic series instead, with a spike and a silence.

How a series becomes a counter: each row's count is the increase of
``api_requests_total{job="nab", tenant_id=<file name>}`` spread evenly over
its interval, sampled every 60 s (as a 1-minute scrape sees it).  A file with
negative values (``art_daily_flatmiddle``) is shifted up by its minimum first:
a counter cannot fall.  The samples go in as OpenMetrics through
``promtool tsdb create-blocks-from openmetrics``.

How the rules are evaluated: a real Prometheus serves that TSDB.  Each
alert's expression, with every recorded series it reads replaced by the rule
that records it (``tests.support.rules.inline``: a range becomes a subquery at the rule
group's interval), is evaluated with the HTTP API's ``query_range`` every
60 s over every series' whole range (the whole chain of rules at once, which
is where the run's time goes); ``for:``
and ``keep_firing_for:`` are applied here, as Prometheus' rule manager does:
an alert fires once its expression has held at every evaluation for ``for:``,
and keeps firing until ``keep_firing_for:`` after the expression last held.
One difference with live evaluation: a recorded series that ends has no
staleness marker, so queries see it for 5 more minutes (the lookback).

Scoring (per series and in total): NAB's windows; a probation period of the
first 15% of the rows or 8 days, whichever is longer (the weekly reference
needs a week of history, and a day more for its hour and spread), in which no
window and no alert is scored.  A window is detected when any anomaly alert of
its series fires inside it (delay: from the window's start to the first
firing minute in it).  A false episode is a firing episode (a run of firing
minutes, all alerts of the series together) that starts outside every window;
reported per series-week of scored time.  ``firing outside`` is the share of
the scored minutes outside windows during which an alert fires.

The anchor, Grafana's promql-anomaly-detection (``rules/adaptive.yml`` and
``rules/robust.yml``), is rewritten in :mod:`benchmarks.anomaly_anchor` and fed
what its README recommends: ``sum by (job, tenant_id) (rate(api_requests_total[5m]))``
tagged ``anomaly_type: requests``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bizmetrics.assets import anomaly
from tests.support.rules import Rule, inline, parse_rules
from tests.support.rules import seconds as seconds

from . import anomaly_anchor

STEP = 60
#: Longest query_range: Prometheus answers at most 11,000 points per series.
CHUNK = 7 * 86400
DAY = 86400
PROBATION_SHARE = 0.15
PROBATION_MIN = 8 * DAY
JOB = "nab"
COUNTER = "api_requests_total"


@dataclass
class Series:
    """One labelled series: per-minute counter samples and its anomaly windows (unix seconds)."""

    name: str
    start: int
    #: The counter at start, start + 60, ...
    counter: list[float]
    windows: list[tuple[float, float]]
    probation_end: float

    @property
    def end(self) -> int:
        return self.start + STEP * (len(self.counter) - 1)


def _ts(text: str) -> float:
    return datetime.strptime(text.split(".")[0], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


def default_data() -> Path:
    """``BIZMETRICS_ANOMALY_DATA``, else ``../shared/anomaly-data`` beside the repository."""
    env = os.environ.get("BIZMETRICS_ANOMALY_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "anomaly-data"


def _as_counter(times: list[float], values: list[float]) -> tuple[int, list[float]]:
    """Counts per interval -> a counter spread evenly over each interval, sampled every 60 s."""
    interval = times[1] - times[0]
    low = min(values)
    if low < 0:
        values = [v - low for v in values]
    start = int(times[0])
    end = int(times[-1] + interval)
    counter = []
    total = 0.0
    index = 0
    for t in range(start, end + 1, STEP):
        # Cumulative count at t: whole intervals before t plus the share of the current one.
        while index < len(times) and times[index] + interval <= t:
            total += values[index]
            index += 1
        partial = values[index] * (t - times[index]) / interval if index < len(times) and t > times[index] else 0.0
        counter.append(total + partial)
    return start, counter


def load_nab(directory: Path) -> list[Series]:
    windows = json.loads((directory / "windows.json").read_text())
    found = []
    for relative in sorted(windows):
        with open(directory / "data" / relative) as f:
            rows = list(csv.reader(f))[1:]
        times = [_ts(row[0]) for row in rows]
        values = [float(row[1]) for row in rows]
        start, counter = _as_counter(times, values)
        probation = max(times[int(len(times) * PROBATION_SHARE)], start + PROBATION_MIN)
        found.append(
            Series(
                Path(relative).stem,
                start,
                counter,
                [(_ts(a), _ts(b)) for a, b in windows[relative]],
                probation,
            )
        )
    return found


def synthetic() -> list[Series]:
    """Ten days of a seasonal tenant (a 5x spike and a silence on day 10) and a sparse one with no anomaly."""
    rng = random.Random(7)
    start = int(datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp())  # a Monday
    minutes = 10 * 1440

    def rate(minute: int) -> float:
        day = minute // 1440
        weekend = 0.5 if day % 7 in (5, 6) else 1.0
        return 20 * weekend * (1.4 + math.sin(2 * math.pi * (minute % 1440) / 1440))

    def poisson(lam: float) -> int:
        # Knuth's method: lam stays small here.
        limit, k, p = math.exp(-lam), 0, 1.0
        while True:
            p *= rng.random()
            if p <= limit:
                return k
            k += 1

    spike = (9 * 1440 + 300, 9 * 1440 + 360)
    silence = (9 * 1440 + 900, 9 * 1440 + 1020)
    busy, sparse = [0.0], [0.0]
    for m in range(minutes):
        lam = rate(m)
        if spike[0] <= m < spike[1]:
            lam *= 5
        if silence[0] <= m < silence[1]:
            lam = 0.0
        busy.append(busy[-1] + poisson(lam))
        sparse.append(sparse[-1] + poisson(0.2))
    windows = [(start + 60.0 * a, start + 60.0 * (b + 60)) for a, b in (spike, silence)]
    probation = start + PROBATION_MIN
    return [
        Series("synthetic_seasonal", start, busy, windows, probation),
        Series("synthetic_sparse", start, sparse, [], probation),
    ]


# --- Prometheus --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _format(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))


class Store:
    """A TSDB in a temporary directory, served by a real Prometheus restarted whenever blocks are added."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.data = work / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        (work / "prometheus.yml").write_text("global: {}\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def add(self, families: dict[str, dict[tuple[tuple[str, str], ...], list[tuple[float, float]]]], kind: str) -> None:
        """Write samples (name -> labels -> [(t, v)]) as OpenMetrics and turn them into blocks of the TSDB.

        One file per week of samples: promtool reads its whole input once per 2-hour block it
        writes, so one file of months would be read thousands of times.
        """
        weeks: dict[int, list[str]] = {}
        for name, series in families.items():
            for labels, samples in series.items():
                text = _labels(dict(labels))
                for t, v in samples:
                    weeks.setdefault(int(t // (7 * DAY)), []).append(f"{name}{{{text}}} {_format(v)} {t:.3f}\n")
        base = name.removesuffix("_total") if kind == "counter" else name
        self.stop()
        paths = []
        for week, lines in weeks.items():
            path = self.work / f"input-{week}.om"
            path.write_text(f"# TYPE {base} {kind}\n" + "".join(lines) + "# EOF\n")
            paths.append(path)

        def create(path: Path) -> None:
            done = subprocess.run(
                ["promtool", "tsdb", "create-blocks-from", "openmetrics", "--quiet", str(path), str(self.data)],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise RuntimeError(f"promtool create-blocks-from openmetrics: {done.stderr[-2000:]}")
            path.unlink()

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(create, paths))

    def start(self) -> None:
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={self.work / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.data}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=100y",
                "--query.max-samples=200000000",
                "--query.timeout=30m",
                "--log.level=error",
                # No compaction while the benchmark queries: the blocks stay as promtool wrote them.
                "--storage.tsdb.min-block-duration=2h",
                "--storage.tsdb.max-block-duration=2h",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited: {self.proc.stderr.read().decode()[-2000:] if self.proc.stderr else ''}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError("prometheus did not get ready")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()
        self.proc = None

    def query_range(self, expr: str, start: float, end: float, step: int) -> list[dict[str, Any]]:
        """Every series of ``expr`` over [start, end], in chunks Prometheus accepts."""
        found: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        t = start
        while t <= end:
            stop = min(end, t + CHUNK)
            params = urllib.parse.urlencode({"query": expr, "start": t, "end": stop, "step": step})
            request = urllib.request.Request(f"{self.url}/api/v1/query_range", data=params.encode())
            with urllib.request.urlopen(request, timeout=1800) as resp:
                body = json.load(resp)
            if body["status"] != "success":
                raise RuntimeError(f"{expr}: {body}")
            for series in body["data"]["result"]:
                key = tuple(sorted(series["metric"].items()))
                found.setdefault(key, []).extend((float(ts), float(v)) for ts, v in series["values"])
            t = stop + step
        return [{"metric": dict(key), "values": values} for key, values in found.items()]


# --- Evaluation (the rules are read and inlined by tests/support/rules.py) ----------------------


def _eras(series: list[Series]) -> list[tuple[int, int]]:
    """Time ranges covering every series, merged where they overlap (fewer, longer queries)."""
    spans = sorted((s.start, s.end) for s in series)
    merged: list[list[int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1] + DAY:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def evaluate(
    store: Store,
    rules: list[Rule],
    series: list[Series],
    signals: set[str] | None = None,
    alerts: set[str] | None = None,
    log: bool = True,
) -> dict[str, dict[str, list[bool]]]:
    """Every alert's inlined expression over every series' range: firing state per series and alert, per minute."""
    eras = _eras(series)
    store.start()
    firing: dict[str, dict[str, list[bool]]] = {s.name: {} for s in series}
    by_name = {s.name: s for s in series}
    exprs = inline(rules, signals)
    for rule in (r for r in rules if r.alert and (alerts is None or r.name in alerts)):
        began = time.monotonic()

        def run(era: tuple[int, int], expr: str = exprs[rule.name]) -> list[dict[str, Any]]:
            return store.query_range(expr, era[0], era[1], STEP)

        with ThreadPoolExecutor(2) as pool:
            result = [item for part in pool.map(run, eras) for item in part]
        for item in result:
            tenant = item["metric"].get("tenant_id", "")
            if tenant not in by_name:
                continue
            s = by_name[tenant]
            held = [False] * len(s.counter)
            for t, _ in item["values"]:
                i = round((t - s.start) / STEP)
                if 0 <= i < len(held):
                    held[i] = True
            key = (
                f"{rule.name}{_labels({k: v for k, v in item['metric'].items() if k not in ('__name__', 'tenant_id')})}"
            )
            firing[tenant][key] = apply_for(held, rule.duration, rule.keep)
        if log:
            print(f"  alert {rule.name}: {len(result)} series, {time.monotonic() - began:.0f} s", flush=True)
    store.stop()
    return firing


def apply_for(held: list[bool], duration: float, keep: float) -> list[bool]:
    """Firing per evaluation, from whether the expression held: Prometheus' ``for:`` and ``keep_firing_for:``."""
    out = [False] * len(held)
    active_since: int | None = None
    last_held: int | None = None
    firing = False
    for i, h in enumerate(held):
        if h:
            last_held = i
            if active_since is None:
                active_since = i
            if (i - active_since) * STEP >= duration:
                firing = True
        elif firing and last_held is not None and (i - last_held) * STEP < keep:
            pass  # kept firing
        else:
            firing = False
            active_since = None
        out[i] = firing
    return out


# --- Scoring -------------------------------------------------------------------------------------


def score(s: Series, alerts: dict[str, list[bool]]) -> dict[str, Any]:
    n = len(s.counter)
    fire = [any(a[i] for a in alerts.values()) for i in range(n)]
    times = [s.start + STEP * i for i in range(n)]
    inside = [any(a <= t <= b for a, b in s.windows) for t in times]
    scored = [t >= s.probation_end for t in times]
    windows = [(a, b) for a, b in s.windows if a >= s.probation_end]
    detected, delays = 0, []
    for a, b in windows:
        hits = [t for t, f in zip(times, fire, strict=True) if f and a <= t <= b]
        if hits:
            detected += 1
            delays.append((hits[0] - a) / 60)
    false_episodes = 0
    for i in range(n):
        if fire[i] and (i == 0 or not fire[i - 1]) and scored[i] and not inside[i]:
            false_episodes += 1
    outside = [i for i in range(n) if scored[i] and not inside[i]]
    firing_outside = sum(fire[i] for i in outside)
    weeks = sum(scored) * STEP / (7 * DAY)
    return {
        "series": s.name,
        "windows": len(windows),
        "detected": detected,
        "missed": [
            datetime.fromtimestamp(a, timezone.utc).strftime("%Y-%m-%d %H:%M")
            for a, b in windows
            if not any(f and a <= t <= b for t, f in zip(times, fire, strict=True))
        ],
        "false_episodes": false_episodes,
        "weeks": weeks,
        "firing_outside_minutes": firing_outside,
        "outside_minutes": len(outside),
        "delays_min": delays,
    }


def total(rows: list[dict[str, Any]]) -> dict[str, Any]:
    weeks = sum(r["weeks"] for r in rows)
    delays = sorted(d for r in rows for d in r["delays_min"])
    return {
        "windows": sum(r["windows"] for r in rows),
        "detected": sum(r["detected"] for r in rows),
        "false_episodes": sum(r["false_episodes"] for r in rows),
        "series_weeks": weeks,
        "false_per_series_week": sum(r["false_episodes"] for r in rows) / weeks if weeks else 0.0,
        "firing_outside": sum(r["firing_outside_minutes"] for r in rows)
        / max(1, sum(r["outside_minutes"] for r in rows)),
        "median_delay_min": delays[len(delays) // 2] if delays else None,
    }


#: The signals the benchmark's counter feeds (the other signals' rules would read nothing).
SIGNALS = {"ours": {"api_requests"}}
#: The alerts that can fire on that counter (the error ratio and latency alerts read other signals).
ALERTS = {"ours": {"BizmetricsUsageSpikeAnomaly", "BizmetricsUsageDropAnomaly"}}

STRATEGIES = {
    "ours": lambda: [anomaly.build()],
    "adaptive": lambda: [anomaly_anchor.input_rules("adaptive"), anomaly_anchor.ADAPTIVE],
    "robust": lambda: [anomaly_anchor.input_rules("robust"), anomaly_anchor.ROBUST],
}


def raw_families(series: list[Series]) -> dict[str, dict[tuple[tuple[str, str], ...], list[tuple[float, float]]]]:
    fam: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    for s in series:
        labels = (("endpoint", "/x"), ("job", JOB), ("method", "GET"), ("status", "200"), ("tenant_id", s.name))
        fam[labels] = [(s.start + STEP * i, v) for i, v in enumerate(s.counter)]
    return {COUNTER: fam}


def run(series: list[Series], strategies: dict[str, list[str]], log: bool = True) -> dict[str, Any]:
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bizmetrics-anomaly-") as tmp:
        base = Path(tmp) / "base"
        Store(base).add(raw_families(series), "counter")
        for name, texts in strategies.items():
            began = time.monotonic()
            if log:
                print(f"{name}:", flush=True)
            work = Path(tmp) / name
            shutil.copytree(base, work)
            store = Store(work)
            try:
                firing = evaluate(store, parse_rules(texts), series, SIGNALS.get(name), ALERTS.get(name), log)
            finally:
                store.stop()
            rows = [score(s, firing[s.name]) for s in series]
            report[name] = {"rows": rows, "total": total(rows), "seconds": time.monotonic() - began}
            if log:
                print(f"  {name}: {json.dumps(report[name]['total'])}", flush=True)
            shutil.rmtree(work)
    return report


def table(report: dict[str, Any]) -> str:
    lines = [
        "| strategy | windows detected | false episodes / series-week | firing outside windows | median delay (min) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, result in report.items():
        t = result["total"]
        lines.append(
            f"| {name} | {t['detected']} / {t['windows']} | {t['false_per_series_week']:.2f} ({t['false_episodes']})"
            f" | {t['firing_outside']:.1%} | {t['median_delay_min'] if t['median_delay_min'] is not None else '-'} |"
        )
    lines += ["", "| series | " + " | ".join(f"{n}: detected, false, firing" for n in report) + " |"]
    lines.append("|---|" + "---|" * len(report))
    names = [r["series"] for r in next(iter(report.values()))["rows"]]
    for i, series_name in enumerate(names):
        cells = []
        for result in report.values():
            r = result["rows"][i]
            share = r["firing_outside_minutes"] / max(1, r["outside_minutes"])
            cells.append(
                f"{r['detected']}/{r['windows']}, {r['false_episodes']}"
                f" ({r['false_episodes'] / r['weeks']:.1f}/wk), {share:.1%}"
            )
        lines.append(f"| {series_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.anomaly", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="NAB data directory (default: $BIZMETRICS_ANOMALY_DATA or ../shared/anomaly-data)",
    )
    parser.add_argument("--quick", action="store_true", help="a small synthetic series instead of NAB (CI smoke run)")
    parser.add_argument("--strategies", default="ours,adaptive,robust")
    parser.add_argument("--only", default="", help="comma-separated series names to keep")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--settings", default="", help="other settings of our rules, as anomaly.build's keywords: k=2.5,min_ratio=1.4"
    )
    args = parser.parse_args(argv)
    if args.quick:
        series = synthetic()
    else:
        directory = args.data or default_data()
        if not (directory / "windows.json").exists():
            parser.error(f"no NAB data in {directory}: pass --data DIR or set BIZMETRICS_ANOMALY_DATA")
        series = load_nab(directory)
    if args.only:
        keep = set(args.only.split(","))
        series = [s for s in series if s.name in keep]
    strategies = {name: STRATEGIES[name]() for name in args.strategies.split(",")}
    if args.settings and "ours" in strategies:
        settings: dict[str, Any] = {}
        for pair in args.settings.split(","):
            key, _, value = pair.partition("=")
            settings[key] = value if key in ("duration", "keep_firing_for") else float(value)
        strategies["ours"] = [anomaly.build(**settings)]
    report = run(series, strategies)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
