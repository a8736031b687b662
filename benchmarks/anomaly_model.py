"""A numpy model of our anomaly rules on the NAB series: tune a setting in seconds instead of half an hour.

``python -m benchmarks.anomaly_model [--quick] [--only a,b] [--set k=3,duration=600] [--grid JSON] [--rows]``

The measure is :mod:`benchmarks.anomaly` (a real Prometheus evaluating the
shipped rules, about 30 minutes a strategy on the full data under load: every
alert's expression inlines the whole chain of recording rules as subqueries).
This module computes the same arithmetic on arrays, with Prometheus 2.x
semantics (ranges closed at both ends, subqueries on steps aligned to the
epoch, linear quantiles, ``for:`` and ``keep_firing_for:`` by the benchmark's
own :func:`~benchmarks.anomaly.apply_for`), and scores with the benchmark's
own :func:`~benchmarks.anomaly.score`: about 15 s per candidate after a
minute or two of loading.  On the full NAB data with the 0.3.0 settings it
gave 22 of 23 windows and 368 false episodes where Prometheus gave 22 and 363.
``--grid '{"duration": [300, 600], "k": [3, 4]}'`` scores every combination.
Numbers for the documentation come from the real benchmark only.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bizmetrics.assets import anomaly

from .anomaly import Series, apply_for, default_data, load_nab, score, seconds, synthetic, total


@dataclass(frozen=True)
class Settings:
    """A candidate: :func:`bizmetrics.assets.anomaly.build`'s keywords (durations in seconds) and a few more."""

    k: float = anomaly.K
    min_ratio: float = anomaly.MIN_RATIO
    floor_events: float = anomaly.FLOOR_EVENTS
    duration: float = seconds(anomaly.FOR)
    keep: float = seconds(anomaly.KEEP_FIRING_FOR)
    #: Minutes of the value's window (the shipped rules: 5).
    window: int = 5
    #: Cap of the excess (log units).
    cap: float = 1.0
    #: Minutes a deviation must be averaged over before it counts (0: none; the value itself).
    smooth: int = 0


def _windows(x: np.ndarray, width: int) -> np.ndarray:
    """Row i: x[i - width + 1 .. i] (NaN-padded at the start)."""
    padded = np.concatenate([np.full(width - 1, np.nan), x])
    return np.lib.stride_tricks.sliding_window_view(padded, width)


def _lag(x: np.ndarray, by: int) -> np.ndarray:
    out = np.full_like(x, np.nan)
    if by < len(x):
        out[by:] = x[: len(x) - by]
    return out


def _quantile_over(x: np.ndarray, q: float, width: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-NaN rows (before the history starts) are NaN, as no sample is
        return np.asarray(np.nanquantile(_windows(x, width), q, axis=1))


def _mean_over(x: np.ndarray, width: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.nanmean(_windows(x, width), axis=1)


def value(s: Series, window: int) -> np.ndarray:
    c = np.asarray(s.counter)
    v = np.full(len(c), np.nan)
    v[window:] = c[window:] - c[:-window]
    return v


def envelope(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lags = [23 * 60 + 30, 167 * 60 + 30]
    uppers = [_lag(_quantile_over(v, 0.9, 61), lag) for lag in lags]
    lowers = [_lag(_quantile_over(v, 0.1, 61), lag) for lag in lags]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.nanmax(np.vstack(uppers), axis=0), np.nanmin(np.vstack(lowers), axis=0)


def firing(s: Series, st: Settings, cache: dict[Any, Any]) -> dict[str, list[bool]]:
    key = (s.name, st.window)
    if key not in cache:
        v = value(s, st.window)
        cache[key] = (v, *envelope(v))
    v, up_env, low_env = cache[key]
    f = st.floor_events * st.window / 5
    lv = np.log(v + f)
    up = lv - np.log(up_env + f)
    down = np.log(low_env + f) - lv
    excess = np.clip(np.fmax(up, down), 0, st.cap)
    excess[np.isnan(up) & np.isnan(down)] = np.nan
    e1h = _mean_over(excess, 61)
    # avg_over_time(e1h[1w:1h]): the hour-aligned points in [t - 1w, t].
    minute0 = s.start // 60
    n = len(v)
    idx = np.arange(n)
    hour_points = np.where((minute0 + idx) % 60 == 0)[0]
    hourly = e1h[hour_points]
    cums = np.concatenate([[0.0], np.cumsum(np.nan_to_num(hourly))])
    cnt = np.concatenate([[0], np.cumsum(~np.isnan(hourly))])
    # For each minute: the last hour point at or before it (j), and the first at or after t - 1w.
    j = np.searchsorted(hour_points, idx, side="right")  # points [0, j) are <= t
    i0 = np.searchsorted(hour_points, idx - 7 * 1440, side="left")
    with np.errstate(all="ignore"):
        spread = (cums[j] - cums[i0]) / (cnt[j] - cnt[i0])
    tol = math.log(st.min_ratio) + st.k * spread
    if st.smooth:
        up = _mean_over(np.where(np.isnan(up), np.nan, up), st.smooth)
        down = _mean_over(np.where(np.isnan(down), np.nan, down), st.smooth)
    out = {}
    for name, dev in (("up", up), ("down", down)):
        held = list(np.nan_to_num(dev - tol, nan=-1.0) > 0)
        out[name] = apply_for(held, st.duration, st.keep)
    return out


def evaluate(series: list[Series], st: Settings, cache: dict[Any, Any]) -> dict[str, Any]:
    rows = [score(s, firing(s, st, cache)) for s in series]
    return {"rows": rows, "total": total(rows)}


def line(st: Settings, result: dict[str, Any]) -> str:
    t = result["total"]
    return (
        f"{t['detected']}/{t['windows']} false {t['false_per_series_week']:.2f}/wk ({t['false_episodes']})"
        f" firing {t['firing_outside']:.1%} delay {t['median_delay_min']}  {st}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.anomaly_model")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--only", default="")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--set", default="", help="settings: k=3,duration=600")
    parser.add_argument("--grid", default="", help="json: {name: [values]}")
    parser.add_argument("--rows", action="store_true", help="print each series' row too")
    parser.add_argument("--json", type=Path, help="write the last candidate's report (the benchmark's format)")
    args = parser.parse_args(argv)
    series = synthetic() if args.quick else load_nab(args.data or default_data())
    if args.only:
        series = [s for s in series if s.name in set(args.only.split(","))]
    base = Settings()
    for pair in filter(None, args.set.split(",")):
        key, _, val = pair.partition("=")
        base = replace(base, **{key: type(getattr(base, key))(float(val))})
    cache: dict[Any, Any] = {}
    grid = json.loads(args.grid) if args.grid else {}
    for combo in itertools.product(*grid.values()) if grid else [()]:
        st = replace(base, **dict(zip(grid, combo, strict=True)))
        result = evaluate(series, st, cache)
        if args.json:
            args.json.write_text(json.dumps({"model": result}, indent=2) + "\n")
        print(line(st, result), flush=True)
        if args.rows:
            for r in result["rows"]:
                print(
                    f"   {r['series']:32} {r['detected']}/{r['windows']} false {r['false_episodes']:3}"
                    f" firing {r['firing_outside_minutes']:5} missed {r['missed']} delays {r['delays_min']}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
