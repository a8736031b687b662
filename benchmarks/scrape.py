"""Scrape cost: ``generate_latest()`` time and memory per series, for many tenants.

Run as ``python -m benchmarks.scrape --tenants N [--no-created] [--cap N|none]``
in a fresh process (prometheus_client reads ``PROMETHEUS_DISABLE_CREATED_SERIES``
and bizmetrics ``BIZMETRICS_MAX_TENANTS`` at import); prints one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
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
    times = []
    size = 0
    for _ in range(repeats):
        start = time.perf_counter()
        size = len(generate_latest(REGISTRY))
        times.append(time.perf_counter() - start)
    text = generate_latest(REGISTRY).decode()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    # A series is what a user records; with _created on, each counter series
    # also exposes a <name>_created line, which costs scrape time too.
    series = sum(1 for line in lines if "_created{" not in line and "_created " not in line)
    seconds = statistics.median(times)
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
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, required=True)
    parser.add_argument("--no-created", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cap", default="none", help="BIZMETRICS_MAX_TENANTS for the run (default: none, no cap)")
    args = parser.parse_args()
    json.dump(measure(args.tenants, not args.no_created, args.repeats, args.cap), sys.stdout)


if __name__ == "__main__":
    main()
