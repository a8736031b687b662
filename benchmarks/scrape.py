"""Scrape cost: time and memory per series for many tenants, and time against dead workers.

``python -m benchmarks.scrape --tenants N [--no-created] [--cap N|none]``, in a
fresh process (prometheus_client reads ``PROMETHEUS_DISABLE_CREATED_SERIES``
and bizmetrics ``BIZMETRICS_MAX_TENANTS`` at import): prometheus_client's
``generate_latest()`` and bizmetrics' exposition of the same registry, timed
alternately in one run, in both text formats; prints one JSON object.

``python -m benchmarks.scrape --dead-workers 0,1000,3000``: a multiprocess
directory with that many dead workers (50 counter and 5 histogram series
each) and 4 live ones; a scrape through prometheus_client's
``MultiProcessCollector`` against one through ``bizmetrics.multiprocess``
after it merged the dead workers' files; prints one JSON object per count.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from typing import Any


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(tenants: int, created: bool, repeats: int, cap: str = "none") -> dict[str, Any]:
    """Populate the catalogue for ``tenants`` tenants, then time ``generate_latest``."""
    if not created:
        os.environ["PROMETHEUS_DISABLE_CREATED_SERIES"] = "True"
    os.environ["BIZMETRICS_MAX_TENANTS"] = cap
    from prometheus_client import REGISTRY, generate_latest

    import bizmetrics

    gc.collect()
    baseline_bytes = len(generate_latest(REGISTRY))
    rss0 = _rss_bytes()
    for i in range(tenants):
        tenant = f"tenant_{i}"
        # What a busy tenant leaves behind: a connector operation and a sync
        # (with their error siblings), and an agent call.
        bizmetrics.record_connector_operation("wordpress", "get_posts", 12.0, True, tenant)
        bizmetrics.record_connector_sync("wordpress", "posts", 10, tenant)
        bizmetrics.record_agent_invocation("support_agent", 300.0, 120, True, tenant)
    gc.collect()
    rss1 = _rss_bytes()
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

    from bizmetrics import _exposition

    renderers = {
        "prometheus_client": generate_latest,
        "bizmetrics": _exposition.generate_latest,
        "prometheus_client_om": openmetrics,
        "bizmetrics_om": _exposition.generate_latest_openmetrics,
    }
    timed: dict[str, list[float]] = {name: [] for name in renderers}
    start = time.perf_counter()
    _exposition.generate_latest(REGISTRY)  # builds the text of every series, once
    first = time.perf_counter() - start
    size = 0
    for _ in range(repeats):
        for name, render in renderers.items():
            start = time.perf_counter()
            size = len(render(REGISTRY))
            timed[name].append(time.perf_counter() - start)
    text = generate_latest(REGISTRY).decode()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    # A series is what a user records; with _created on, each counter series
    # also exposes a <name>_created line, which costs scrape time too.
    series = sum(1 for line in lines if "_created{" not in line and "_created " not in line)
    # The best of the runs: the machine's other load only ever adds time.
    seconds = min(timed["prometheus_client"])
    ours = {name: min(t) for name, t in timed.items()}
    return {
        "tenants": tenants,
        "cap": cap,
        "created": created,
        "series": series,
        "lines": len(lines),
        "scrape_ms": seconds * 1000,
        "scrape_us_per_series": seconds * 1e6 / series,
        "exposition_bytes": size,
        "exposition_bytes_per_series": (size - baseline_bytes) / series,
        "memory_bytes_per_series": (rss1 - rss0) / series,
        "bizmetrics_scrape_ms": ours["bizmetrics"] * 1000,
        "bizmetrics_us_per_series": ours["bizmetrics"] * 1e6 / series,
        "openmetrics_scrape_ms": ours["prometheus_client_om"] * 1000,
        "bizmetrics_openmetrics_scrape_ms": ours["bizmetrics_om"] * 1000,
        "bizmetrics_openmetrics_us_per_series": ours["bizmetrics_om"] * 1e6 / series,
        "bizmetrics_first_scrape_ms": first * 1000,
        "speedup": seconds / ours["bizmetrics"],
    }


def _write_worker(directory: str, identity: str, counters: int, histograms: int) -> None:
    """The files one worker leaves: ``counters`` counter and ``histograms`` histogram series."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    counter = MmapedDict(os.path.join(directory, f"counter_{identity}.db"))
    for i in range(counters):
        key = mmap_key("bench_ops", "bench_ops_total", ["op", "tenant_id"], [f"op{i % 10}", f"t{i // 10}"], "Ops.")
        counter.write_value(key, 3.0, 0.0)
    counter.close()
    histogram = MmapedDict(os.path.join(directory, f"histogram_{identity}.db"))
    for i in range(histograms):
        histogram.write_value(mmap_key("bench_ms", "bench_ms_sum", ["op"], [f"op{i}"], "Ms."), 12.5, 0.0)
        for le in ("5.0", "10.0", "25.0", "50.0", "100.0", "250.0", "500.0", "1000.0", "+Inf"):
            key = mmap_key("bench_ms", "bench_ms_bucket", ["op", "le"], [f"op{i}", le], "Ms.")
            histogram.write_value(key, 1.0, 0.0)
    histogram.close()


def dead_workers(counts: list[int], repeats: int) -> list[dict[str, Any]]:
    """Scrape time against the number of dead workers, prometheus_client's collector beside bizmetrics'."""

    from bizmetrics import _mpfiles

    with open("/proc/sys/kernel/pid_max") as f:
        gone = int(f.read()) + 1  # pids no process can have: dead workers
    # Live workers: this process and three that sleep.
    sleepers = [subprocess.Popen(["sleep", "3600"]) for _ in range(3)]
    live = [f"{pid}-{_mpfiles.start_time(pid)}" for pid in [os.getpid()] + [p.pid for p in sleepers]]
    try:
        return _dead_workers(counts, repeats, gone, live)
    finally:
        for proc in sleepers:
            proc.kill()
            proc.wait()


def _dead_workers(counts: list[int], repeats: int, gone: int, live: list[str]) -> list[dict[str, Any]]:
    import tempfile

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    from bizmetrics import _mpfiles

    results = []
    for count in counts:
        with tempfile.TemporaryDirectory() as directory:
            for i in range(count):
                _write_worker(directory, f"{gone + i}-{i}", 50, 5)
            for identity in live:
                _write_worker(directory, identity, 50, 5)
            stock = CollectorRegistry()
            MultiProcessCollector(stock, path=directory)
            theirs = []
            for _ in range(repeats):
                start = time.perf_counter()
                expected = generate_latest(stock)
                theirs.append(time.perf_counter() - start)
            start = time.perf_counter()
            _mpfiles.compact(directory)
            compaction = time.perf_counter() - start
            ours_registry = CollectorRegistry()

            class Ours:
                def collect(self) -> Any:
                    _mpfiles.compact(directory, blocking=False)
                    return _mpfiles.collect(directory)

            ours_registry.register(Ours())
            ours = []
            for _ in range(repeats):
                start = time.perf_counter()
                body = generate_latest(ours_registry)
                ours.append(time.perf_counter() - start)
            # Same totals (sample order aside) before and after the merge.
            assert sorted(body.splitlines()) == sorted(expected.splitlines()), "totals differ"
            results.append(
                {
                    "dead_workers": count,
                    "files_before": 2 * (count + len(live)),
                    "prometheus_client_ms": min(theirs) * 1000,
                    "bizmetrics_ms": min(ours) * 1000,
                    "first_compaction_ms": compaction * 1000,
                    "exposition_bytes": len(body),
                }
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int)
    parser.add_argument("--dead-workers", help="comma-separated counts of dead workers (the multiprocess benchmark)")
    parser.add_argument("--no-created", action="store_true")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each renderer; the best one counts")
    parser.add_argument("--cap", default="none", help="BIZMETRICS_MAX_TENANTS for the run (default: none, no cap)")
    args = parser.parse_args()
    if args.dead_workers:
        json.dump(dead_workers([int(n) for n in args.dead_workers.split(",")], args.repeats), sys.stdout)
        return
    if args.tenants is None:
        parser.error("--tenants or --dead-workers is required")
    json.dump(measure(args.tenants, not args.no_created, args.repeats, args.cap), sys.stdout)


if __name__ == "__main__":
    main()
