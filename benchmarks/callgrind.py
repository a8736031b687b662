"""``python -m benchmarks.callgrind``: CPU instructions per decorated call, counted by callgrind.

A loaded machine changes how long a call takes, not how many instructions
it executes: each case runs under ``valgrind --tool=callgrind`` in a fresh
interpreter (``PYTHONHASHSEED=0``), makes 50 warm-up calls, then the
measured calls inside ``operator.call`` with the garbage collector off;
callgrind collects only inside that call (``--collect-atstart=no
--toggle-collect=_operator_call``), so the interpreter's start-up and
imports are left out and counts repeat to within 0.1% between runs.

Every case is a loop over the benchmark's ``Connector`` (labels from
``self``, no ``tenant_context``), binding the method at each call, as
``python -m benchmarks`` does.  Per-item costs are the slope between
streams of 0 and 100 items.  Needs CPython 3.11 or later (``operator.call``)
and valgrind on ``PATH``.

    python -m benchmarks.callgrind                 # every case, two at a time
    python -m benchmarks.callgrind coro coro_err   # some cases
    python -m benchmarks.callgrind --out DIR coro  # keep callgrind.out.<case> for callgrind_annotate
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import operator
import os
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: Each case's loop, by name: ``(connector's method, fails, items)``; ``items`` is ``None`` for calls.
CASES: dict[str, tuple[str, bool, int | None]] = {
    "bare": ("bare", False, None),
    "hand": ("hand", False, None),
    "hand_err": ("hand", True, None),
    "sync": ("deco", False, None),
    "sync_err": ("deco", True, None),
    "abare": ("abare", False, None),
    "ahand": ("ahand", False, None),
    "ahand_err": ("ahand", True, None),
    "coro": ("adeco", False, None),
    "coro_err": ("adeco", True, None),
    "ctx": ("with_context", False, None),
    "gbare0": ("gbare", False, 0),
    "gbare100": ("gbare", False, 100),
    "gen0": ("gdeco", False, 0),
    "gen100": ("gdeco", False, 100),
    "agbare0": ("agbare", False, 0),
    "agbare100": ("agbare", False, 100),
    "agen0": ("agdeco", False, 0),
    "agen100": ("agdeco", False, 100),
}
WARM_UP = 50


_LOOPS = """
def calls():
    for _ in range(n):
        try:
            c.METHOD()
        except Boom:
            pass

async def coroutines():
    for _ in range(n):
        try:
            await c.METHOD()
        except Boom:
            pass

def generators():
    for _ in range(n):
        for _item in c.METHOD(items):
            pass

async def streams():
    for _ in range(n):
        async for _item in c.METHOD(items):
            pass

def in_context():
    with tenant_context(TENANT):
        for _ in range(n):
            with_context()
"""


def _loop(case: str, n: int) -> Callable[[], object]:
    """The measured loop of ``case``: ``n`` calls (or streams), each binding the method anew.

    The loops are compiled for the method's name, so each call reads it as
    an application does (``c.deco()``: an attribute read and a call).
    """
    from bizmetrics import tenant_context

    from .cases import TENANT, Boom, Connector, with_context

    method, fails, items = CASES[case]
    namespace: dict[str, Any] = {
        "c": Connector(fail=fails),
        "n": n,
        "items": items,
        "Boom": Boom,
        "tenant_context": tenant_context,
        "TENANT": TENANT,
        "with_context": with_context,
    }
    exec(_LOOPS.replace("METHOD", method), namespace)  # the benchmark's own text, never input
    if method == "with_context":
        return namespace["in_context"]  # type: ignore[no-any-return]
    if items is None and not method.startswith("a"):
        return namespace["calls"]  # type: ignore[no-any-return]
    if items is None or method.startswith("a"):
        loop = asyncio.new_event_loop()
        make = namespace["coroutines" if items is None else "streams"]
        return lambda: loop.run_until_complete(make())
    return namespace["generators"]  # type: ignore[no-any-return]


def drive(case: str, n: int) -> None:
    """Run ``case``'s warm-up, then ``n`` measured calls inside ``operator.call`` (what callgrind counts)."""
    _loop(case, WARM_UP)()
    measured = _loop(case, n)
    gc.collect()
    gc.disable()
    operator.call(measured)


def count(case: str, n: int, python: str, out: str | None = None) -> int:
    """Instructions callgrind collects for ``n`` calls of ``case``."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    command = [
        "valgrind",
        "--tool=callgrind",
        "--collect-atstart=no",
        "--toggle-collect=_operator_call",
        f"--callgrind-out-file={out or os.devnull}",
        python,
        "-m",
        "benchmarks.callgrind",
        "--drive",
        case,
        str(n),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"callgrind reported no count for {case}:\n{done.stderr}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", help=f"cases to count (default: all): {', '.join(CASES)}")
    parser.add_argument("--calls", type=int, default=1000, help="measured calls per case (streams: a tenth)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter to count")
    parser.add_argument("--jobs", type=int, default=2, help="valgrind processes at once")
    parser.add_argument("--out", help="keep each case's callgrind.out.<case> in this directory")
    parser.add_argument("--drive", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive:
        drive(args.drive[0], int(args.drive[1]))
        return
    cases = args.cases or list(CASES)
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown cases: {', '.join(unknown)}")

    def per_call(case: str) -> tuple[str, int]:
        n = args.calls if CASES[case][2] is None else max(1, args.calls // 10)
        out = None if args.out is None else os.path.join(args.out, f"callgrind.out.{case}")
        return case, count(case, n, args.python, out) // n

    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(pool.map(per_call, cases))
    for case in cases:
        print(f"{case:10} {results[case]:>10,} instructions a call")
    for bare, deco in (("gbare", "gen"), ("agbare", "agen")):
        if {f"{deco}0", f"{deco}100"} <= results.keys():
            slope = (results[f"{deco}100"] - results[f"{deco}0"]) / 100
            line = f"{deco:10} {slope:>10,.0f} instructions an item"
            if {f"{bare}0", f"{bare}100"} <= results.keys():
                bare_slope = (results[f"{bare}100"] - results[f"{bare}0"]) / 100
                line += f" (bare {bare_slope:,.0f}: +{slope - bare_slope:,.0f})"
            print(line)
    for deco, hand in (("sync", "hand"), ("sync_err", "hand_err"), ("coro", "ahand"), ("coro_err", "ahand_err")):
        if {deco, hand} <= results.keys():
            print(f"{deco:10} {results[deco] / results[hand]:>10.3f} of the hand-written pattern")


if __name__ == "__main__":
    main()
