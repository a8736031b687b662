"""``python -m benchmarks``: decorator overhead in one interleaved run, and scrape cost.

Every case runs once per round, in A B C ... order (reversed every other
round to cancel drift), with the garbage collector off while sampling.  Each
row reports the median over rounds of the per-round ns/call, of the per-round
difference to the bare call of the same kind, and of the per-round ratio to
the hand-written pattern of the same kind and path.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
from typing import Any

from . import middleware
from .cases import Case, all_cases

TARGETS = {
    "sync method, success / hand-written": 0.36,
    "coroutine method, success / hand-written": 0.40,
    "sync method, error / hand-written": 0.50,
    "coroutine method, error / hand-written": 0.50,
    "trace current, + ns per record (exemplar on the counter and the histogram)": 300.0,
    "generator ns per item": 200.0,
    "async generator ns per item": 300.0,
    "generator of 10, success / hand-written": 1.0,
    "sync operation, success / hand-written": 0.40,
}


def _calls(case: Case, calls: int) -> int:
    return max(1, calls // 10) if case.items > 10 else calls


def sample(cases: list[Case], rounds: int, calls: int) -> dict[int, list[float]]:
    """Return, for each case (by index), its ns/call in every round."""
    for case in cases:  # warm up: caches, label children, code paths
        case.run(max(1, _calls(case, calls) // 10))
    per_round: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    order = list(range(len(cases)))
    for r in range(rounds):
        gc.collect()
        gc.disable()
        try:
            for i in order if r % 2 == 0 else reversed(order):
                n = _calls(cases[i], calls)
                per_round[i].append(cases[i].run(n) / n)
        finally:
            gc.enable()
    return per_round


def _find(cases: list[Case], case: Case, group: str) -> int | None:
    for i, other in enumerate(cases):
        if other.group == group and other.kind == case.kind and other.path == case.path and other.items == case.items:
            return i
    return None


def summarize(cases: list[Case], per_round: dict[int, list[float]]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Rows for the table, and the numbers the targets speak of."""
    rows = []
    for i, case in enumerate(cases):
        times = per_round[i]
        bare, hand = _find(cases, case, "bare"), _find(cases, case, "hand")
        row: dict[str, Any] = {
            "case": case.name,
            "kind": case.kind,
            "path": case.path,
            "group": case.group,
            "items": case.items,
            "doc": case.doc,
            "ns_per_call": statistics.median(times),
            "overhead_ns": None,
            "ratio_to_hand": None,
        }
        if bare is not None:
            row["overhead_ns"] = statistics.median(t - b for t, b in zip(times, per_round[bare], strict=True))
        if hand is not None:
            row["ratio_to_hand"] = statistics.median(t / h for t, h in zip(times, per_round[hand], strict=True))
        rows.append(row)

    def ratio(kind: str, path: str) -> float:
        return next(
            r["ratio_to_hand"]
            for r in rows
            if r["case"] == "bizmetrics method" and r["kind"] == kind and r["path"] == path
        )

    def per_item(kind: str, group: str = "bizmetrics") -> tuple[float, float]:
        idx = {(c.group, c.items): i for i, c in enumerate(cases) if c.kind == kind and c.items in (0, 100)}
        deco0, deco100 = per_round[idx[group, 0]], per_round[idx[group, 100]]
        bare0, bare100 = per_round[idx["bare", 0]], per_round[idx["bare", 100]]
        slope = statistics.median(
            ((d1 - d0) - (b1 - b0)) / 100 for d0, d1, b0, b1 in zip(deco0, deco100, bare0, bare100, strict=True)
        )
        fixed = statistics.median(d0 - b0 for d0, b0 in zip(deco0, bare0, strict=True))
        return slope, fixed

    def paired_difference(case: str, other: str) -> float:
        """Median over rounds of ``case`` minus ``other`` (sync, success), ns per call."""
        index = {c.name: i for i, c in enumerate(cases) if c.kind == "sync" and c.path == "success"}
        return statistics.median(a - b for a, b in zip(per_round[index[case]], per_round[index[other]], strict=True))

    gen_item, gen_fixed = per_item("generator")
    agen_item, agen_fixed = per_item("async generator")
    measured = {
        "sync method, success / hand-written": ratio("sync", "success"),
        "coroutine method, success / hand-written": ratio("coroutine", "success"),
        "sync method, error / hand-written": ratio("sync", "error"),
        "coroutine method, error / hand-written": ratio("coroutine", "error"),
        "sync method, trace current / hand-written": next(
            r["ratio_to_hand"] for r in rows if r["case"] == "bizmetrics method, trace current"
        ),
        "trace current, + ns per record (exemplar on the counter and the histogram)": paired_difference(
            "bizmetrics method, trace current", "bizmetrics method"
        ),
        "generator ns per item": gen_item,
        "async generator ns per item": agen_item,
        "generator floor ns per item (two clock reads, nothing else)": per_item("generator", "floor")[0],
        "async generator floor ns per item (two clock reads, nothing else)": per_item("async generator", "floor")[0],
        "generator of 10, success / hand-written": ratio("generator", "success"),
        "async generator of 10, success / hand-written": ratio("async generator", "success"),
        "sync operation, success / hand-written": ratio("sync operation", "success"),
        "generator fixed ns per call": gen_fixed,
        "async generator fixed ns per call": agen_fixed,
    }
    return rows, measured


def scrape_costs(sizes: list[int]) -> list[dict[str, Any]]:
    """Run the scrape benchmark in fresh processes: with and without ``_created`` series, without
    a tenant cap, and with the default cap (2000 tenants)."""
    results = []
    for tenants in sizes:
        for created, cap in ((True, "none"), (False, "none"), (True, "2000")):
            cmd = [sys.executable, "-m", "benchmarks.scrape", "--tenants", str(tenants), "--cap", cap]
            if not created:
                cmd.append("--no-created")
            env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_DISABLE_CREATED_SERIES"}
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            results.append(json.loads(out))
    return results


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def print_report(rows: list[dict[str, Any]], measured: dict[str, float], scrape: list[dict[str, Any]]) -> None:
    print(f"{'kind':<16} {'path':<8} {'case':<38} {'ns/call':>9} {'+ns vs bare':>11} {'/hand':>6}")
    for r in rows:
        print(
            f"{r['kind']:<16} {r['path']:<8} {r['case']:<38} {r['ns_per_call']:>9.0f} "
            f"{_fmt(r['overhead_ns'], '>11.0f'):>11} {_fmt(r['ratio_to_hand'], '>6.2f'):>6}"
        )
    print()
    print("targets (measured / target):")
    for name, got in measured.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else ("  ok" if got <= target else "  MISSED")
        print(f"  {name:<48} {got:>9.3f}" + ("" if target is None else f" / {target:g}{verdict}"))
    if scrape:
        print()
        print(
            f"{'tenants':>8} {'cap':>5} {'_created':>8} {'series':>8} {'lines':>8} {'scrape ms':>10} {'us/series':>10} "
            f"{'RSS B/series':>12} {'text B/series':>13} {'bizmetrics ms':>13} {'us/series':>9} {'OM ms':>7} "
            f"{'bizmetrics OM ms':>16} {'us/series':>9}"
        )
        for s in scrape:
            print(
                f"{s['tenants']:>8} {s.get('cap', 'none'):>5} {'yes' if s['created'] else 'no':>8} "
                f"{s['series']:>8} {s['lines']:>8} "
                f"{s['scrape_ms']:>10.1f} {s['scrape_us_per_series']:>10.2f} {s['memory_bytes_per_series']:>12.0f} "
                f"{s['exposition_bytes_per_series']:>13.0f} {s['bizmetrics_scrape_ms']:>13.1f} "
                f"{s['bizmetrics_us_per_series']:>9.2f} {s['openmetrics_scrape_ms']:>7.1f} "
                f"{s['bizmetrics_openmetrics_scrape_ms']:>16.1f} {s['bizmetrics_openmetrics_us_per_series']:>9.2f}"
            )


def dead_worker_costs(counts: list[int]) -> list[dict[str, Any]]:
    """Scrape time in multiprocess mode against dead workers, in a fresh process."""
    if not counts:
        return []
    cmd = [sys.executable, "-m", "benchmarks.scrape", "--dead-workers", ",".join(map(str, counts))]
    result: list[dict[str, Any]] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return result


def print_dead_workers(rows: list[dict[str, Any]]) -> None:
    print()
    print(f"{'dead workers':>12} {'files':>6} {'prometheus_client ms':>20} ", end="")
    print(f"{'bizmetrics ms':>13} {'first merge ms':>14}")
    for r in rows:
        print(
            f"{r['dead_workers']:>12} {r['files_before']:>6} {r['prometheus_client_ms']:>20.1f} "
            f"{r['bizmetrics_ms']:>13.1f} {r['first_compaction_ms']:>14.0f}"
        )


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """Write a bar chart of each case's ratio to the hand-written pattern."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["ratio_to_hand"] is not None and r["group"] != "hand" and r["items"] <= 10]
    labels = [f"{r['kind']} {r['path']}: {r['case']}" for r in shown]
    ratios = [r["ratio_to_hand"] for r in shown]
    colors = {"bare": "#bbbbbb", "prometheus_client": "#e6a23c", "floor": "#909399", "bizmetrics": "#409eff"}
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(shown) + 1.5))
    ax.barh(range(len(shown)), ratios, color=[colors.get(r["group"], "#333") for r in shown])
    ax.set_yticks(range(len(shown)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xlabel("time per call / the spec's hand-written pattern of the same kind (lower is better)")
    ax.set_title("bizmetrics decorator overhead")
    for y, value in enumerate(ratios):
        ax.text(value, y, f" {value:.2f}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rounds, few calls, 1k tenants")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 21; --quick 2)")
    parser.add_argument("--calls", type=int, default=None, help="calls per case per round (default 4000; --quick 50)")
    parser.add_argument("--json", metavar="PATH", help="write every row and ratio as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG bar chart of the ratios (needs matplotlib)")
    parser.add_argument("--no-scrape", action="store_true", help="skip the scrape-cost benchmark")
    parser.add_argument("--no-middleware", action="store_true", help="skip the HTTP middleware benchmark")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 21)
    calls = args.calls or (50 if args.quick else 4000)
    sizes = [] if args.no_scrape else ([1000] if args.quick else [1000, 2000, 10_000, 50_000])

    cases = all_cases()
    rows, measured = summarize(cases, sample(cases, rounds, calls))
    scrape = scrape_costs(sizes)
    print_report(rows, measured, scrape)
    dead = dead_worker_costs([] if args.no_scrape else ([0, 100] if args.quick else [0, 300, 1000, 3000]))
    if dead:
        print_dead_workers(dead)
    http = None
    if not args.no_middleware:
        http = middleware.measure(rounds, 100 if args.quick else 2000)
        print()
        middleware.report(http)
    meta = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "prometheus_client": importlib.metadata.version("prometheus-client"),
        "wrapt": importlib.metadata.version("wrapt"),
        "bizmetrics": importlib.metadata.version("bizmetrics"),
        "rounds": rounds,
        "calls": calls,
    }
    if args.json:
        with open(args.json, "w") as f:
            report = {"meta": meta, "rows": rows, "measured": measured, "targets": TARGETS, "scrape": scrape}
            report["middleware"] = http
            report["dead_workers"] = dead
            json.dump(report, f, indent=1)
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
