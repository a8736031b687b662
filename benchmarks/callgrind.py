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
import inspect
import operator
import os
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: Each case, by name: ``(kind, the call, fails, items)``; the call is read as an application
#: writes it (``c.deco()``: an attribute read and a call), ``items`` is the stream's length.
CASES: dict[str, tuple[str, str, bool, int]] = {
    "bare": ("sync", "c.bare()", False, 0),
    "hand": ("sync", "c.hand()", False, 0),
    "hand_err": ("sync", "c.hand()", True, 0),
    "sync": ("sync", "c.deco()", False, 0),
    "sync_err": ("sync", "c.deco()", True, 0),
    "abare": ("coroutine", "c.abare()", False, 0),
    "ahand": ("coroutine", "c.ahand()", False, 0),
    "ahand_err": ("coroutine", "c.ahand()", True, 0),
    "coro": ("coroutine", "c.adeco()", False, 0),
    "coro_err": ("coroutine", "c.adeco()", True, 0),
    # A function whose tenant comes from ``tenant_context``: no scope to set.
    "ctx": ("sync in context", "with_context()", False, 0),
}
for _items in (0, 100):
    CASES.update(
        {
            f"gbare{_items}": ("generator", "c.gbare(items)", False, _items),
            f"gfloor{_items}": ("generator", "floor_relay(c.gbare(items))", False, _items),
            f"gen{_items}": ("generator", "c.gdeco(items)", False, _items),
            f"agbare{_items}": ("async generator", "c.agbare(items)", False, _items),
            f"agfloor{_items}": ("async generator", "afloor_relay(c.agbare(items))", False, _items),
            f"agen{_items}": ("async generator", "c.agdeco(items)", False, _items),
            # The stream's own tenant already current: no scope, no context of its own.
            f"agctx{_items}": ("async generator in context", "c.agdeco(items)", False, _items),
        }
    )
#: Per-item slopes: ``(name, the case's stem, the bare stem)``.
SLOPES = (
    ("generator", "gen", "gbare"),
    ("generator floor", "gfloor", "gbare"),
    ("async generator", "agen", "agbare"),
    ("async generator, tenant current", "agctx", "agbare"),
    ("async generator floor", "agfloor", "agbare"),
)
WARM_UP = 50

_LOOPS = {
    "sync": """
def loop():
    for _ in range(n):
        try:
            CALL
        except Boom:
            pass
""",
    "sync in context": """
def loop():
    with tenant_context(TENANT):
        for _ in range(n):
            CALL
""",
    "coroutine": """
async def loop():
    for _ in range(n):
        try:
            await CALL
        except Boom:
            pass
""",
    "generator": """
def loop():
    for _ in range(n):
        for _item in CALL:
            pass
""",
    "async generator": """
async def loop():
    for _ in range(n):
        async for _item in CALL:
            pass
""",
    "async generator in context": """
async def loop():
    with tenant_context(TENANT):
        for _ in range(n):
            async for _item in CALL:
                pass
""",
}


def _loop(case: str, n: int) -> Callable[[], object]:
    """The measured loop of ``case``: ``n`` calls (or streams), each binding the method anew."""
    from bizmetrics import tenant_context

    from .cases import TENANT, Boom, Connector, afloor_relay, floor_relay, with_context

    kind, call, fails, items = CASES[case]
    namespace: dict[str, Any] = {
        "c": Connector(fail=fails),
        "n": n,
        "items": items,
        "Boom": Boom,
        "tenant_context": tenant_context,
        "TENANT": TENANT,
        "with_context": with_context,
        "floor_relay": floor_relay,
        "afloor_relay": afloor_relay,
    }
    exec(_LOOPS[kind].replace("CALL", call), namespace)  # the benchmark's own text, never input
    loop = namespace["loop"]
    if inspect.iscoroutinefunction(loop):
        event_loop = asyncio.new_event_loop()
        return lambda: event_loop.run_until_complete(loop())
    return loop  # type: ignore[no-any-return]


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
        n = args.calls if not CASES[case][3] else max(1, args.calls // 10)
        out = None if args.out is None else os.path.join(args.out, f"callgrind.out.{case}")
        return case, count(case, n, args.python, out) // n

    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(pool.map(per_call, cases))
    for case in cases:
        print(f"{case:10} {results[case]:>10,} instructions a call")
    for name, stem, bare in SLOPES:
        if {f"{stem}0", f"{stem}100", f"{bare}0", f"{bare}100"} <= results.keys():
            slope = (results[f"{stem}100"] - results[f"{stem}0"]) / 100
            over = slope - (results[f"{bare}100"] - results[f"{bare}0"]) / 100
            print(f"{name:32} {slope:>8,.0f} instructions an item, {over:>+7,.0f} over the bare one")
    for deco, hand in (("sync", "hand"), ("sync_err", "hand_err"), ("coro", "ahand"), ("coro_err", "ahand_err")):
        if {deco, hand} <= results.keys():
            print(f"{deco:10} {results[deco] / results[hand]:>10.3f} of the hand-written pattern")


if __name__ == "__main__":
    main()
