"""``python -m benchmarks.jobs``: what instrumenting Celery adds per task, against a bare task and OpenTelemetry's.

Five set-ups, each its own app with the same task:

- ``bare``: no instrumentation;
- ``receivers``: receivers that do nothing on the signals bizmetrics 0.3.0
  used (``before_task_publish``, ``task_prerun``, ``task_postrun``): Celery's
  own cost of dispatching them, the floor of any signal-based instrumentation;
- ``hooks``: hooks that do nothing at the places bizmetrics hooks now (the
  app's ``send_task_message``, the task's body, the loader's ``on_task_init``
  and ``on_process_cleanup``): the floor of bizmetrics' way;
- ``bizmetrics``: ``bizmetrics.celery.instrument(app)``;
- ``otel``: opentelemetry-instrumentation-celery with the SDK's tracer
  provider, no exporter (the least a traced service pays).

Two paths per task:

- ``eager``: ``task.apply()``, the task run in place (``task_always_eager``);
- ``worker``: publish to the in-memory broker (``apply_async``: the real
  publish path, headers included) then run the message through
  ``build_tracer``, the function a prefork, threads or solo worker runs for
  each task, with the request a worker builds from it.  The broker's network
  round trip, the same with or without instrumentation, is left out so the
  microseconds show.

Timed (the default): rounds are interleaved (A B C ..., then ... C B A); each
row is the median over rounds of the process's CPU ns per task (other
processes' load does not count), and of the difference to ``bare`` in the
same round.  Signal receivers are process-wide: the ``receivers`` and
``otel`` set-ups are connected only during their own rounds.

Counted (``--callgrind``, valgrind on PATH): each set-up and path in its own
process under ``valgrind --tool=callgrind``, instructions counted only inside
the loop of ``--calls`` tasks after 50 warm-up tasks; the measure to trust on
a loaded machine.  ``--bizmetrics DIR`` counts the bizmetrics of another
checkout (a release, main) in the child processes.
"""

from __future__ import annotations

import argparse
import gc
import json
import operator
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGET_ADDED_NS = 5000.0
SETUPS = ("bare", "receivers", "hooks", "bizmetrics", "otel")
PATHS = ("eager", "worker")
#: The signals bizmetrics 0.3.0 received on the hot path.
SIGNALS = ("before_task_publish", "task_prerun", "task_postrun")
#: Instructions per µs of this kind of machine: see docs/performance/clients-jobs.md.
INSTRUCTIONS_PER_US = 8700


class Setup:
    """One app, and the process-wide part of its instrumentation, turned on and off."""

    def __init__(self, app: Any, on: Callable[[], None] = lambda: None, off: Callable[[], None] = lambda: None):
        self.app, self.on, self.off = app, on, off


def _app(name: str) -> Any:
    from celery import Celery

    app = Celery(f"bench-{name}", broker="memory://", backend="cache+memory://")
    app.conf.update(task_ignore_result=True, task_default_queue=f"bench-{name}")

    @app.task(name="bench.noop", shared=False)  # each app its own task, no other app's
    def noop(x: int) -> int:
        return x

    return app


def _relay(inner: Callable[..., Any]) -> Callable[..., Any]:
    def relay(*args: Any, **kwargs: Any) -> Any:
        return inner(*args, **kwargs)

    return relay


def _hooks(app: Any) -> None:
    """Hooks that do nothing, where bizmetrics hooks."""
    loader = app.loader
    loader.on_task_init = _relay(loader.on_task_init)
    loader.on_process_cleanup = _relay(loader.on_process_cleanup)
    create = app.amqp._create_task_sender
    app.amqp._create_task_sender = lambda: _relay(create())
    for task in app._tasks.values():
        task.run = _relay(task.run)


def setup(name: str) -> Setup:
    """Build set-up ``name`` (one of ``SETUPS``)."""
    from celery import signals

    app = _app(name)
    if name == "hooks":
        _hooks(app)
    elif name == "bizmetrics":
        import bizmetrics.celery

        bizmetrics.celery.instrument(app)
    elif name == "receivers":

        def nothing(**_: Any) -> None:
            pass

        def on() -> None:
            for signal in SIGNALS:
                getattr(signals, signal).connect(nothing, weak=False, dispatch_uid=f"bench.{signal}")

        def off() -> None:
            for signal in SIGNALS:
                getattr(signals, signal).disconnect(nothing, dispatch_uid=f"bench.{signal}")

        return Setup(app, on, off)
    elif name == "otel":
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        from opentelemetry.sdk.trace import TracerProvider

        provider, otel = TracerProvider(), CeleryInstrumentor()
        return Setup(app, lambda: otel.instrument(tracer_provider=provider), lambda: otel.uninstrument())
    return Setup(app)


def paths(app: Any) -> dict[str, Callable[[int], None]]:
    """Each path: run ``n`` tasks."""
    from celery.app.trace import build_tracer

    task = app.tasks["bench.noop"]
    queue = app.conf.task_default_queue
    connection = app.connection_for_write()
    producer = app.amqp.Producer(connection.default_channel)

    def eager(n: int) -> None:
        apply = task.apply
        for i in range(n):
            apply((i,))

    def worker(n: int) -> None:
        apply_async = task.apply_async
        tracer = build_tracer(task.name, task, app=app, eager=False, hostname="bench@localhost")
        channel = connection.default_channel
        delivery = {"routing_key": queue, "exchange": ""}
        for i in range(n):
            apply_async((i,), producer=producer)
            message = channel.basic_get(queue, no_ack=True)
            headers = message.headers
            request = {**headers, "delivery_info": delivery, "is_eager": False}
            args, kwargs, _ = message.decode()
            tracer(headers["id"], args, kwargs, request)

    return {"eager": eager, "worker": worker}


def run(rounds: int, calls: int, names: tuple[str, ...]) -> dict[str, Any]:
    import celery

    kinds = {name: setup(name) for name in names}
    ways = {name: paths(kind.app) for name, kind in kinds.items()}
    per: dict[tuple[str, str], list[float]] = {(k, w): [] for k in kinds for w in PATHS}
    for name, kind in kinds.items():  # warm up each set-up: label children, code paths
        kind.on()
        for way in ways[name].values():
            way(max(1, calls // 10))
        kind.off()
    for r in range(rounds):
        for name in list(kinds) if r % 2 == 0 else list(reversed(kinds)):
            kind = kinds[name]
            kind.on()
            gc.collect()
            gc.disable()
            try:
                for path, way in ways[name].items():
                    start = time.process_time_ns()
                    way(calls)
                    per[(name, path)].append((time.process_time_ns() - start) / calls)
            finally:
                gc.enable()
                kind.off()
    rows = []
    measured: dict[str, float] = {}
    for (kind_name, path), times in per.items():
        bare = per[("bare", path)]
        added = statistics.median(t - b for t, b in zip(times, bare, strict=True))
        rows.append({"setup": kind_name, "path": path, "ns_per_task": statistics.median(times), "added_ns": added})
        if kind_name != "bare":
            measured[f"{kind_name} {path}: ns added per task"] = added
    return {
        "python": sys.version.split()[0],
        "celery": celery.__version__,
        "rounds": rounds,
        "calls": calls,
        "rows": rows,
        "measured": measured,
        "target_added_ns": TARGET_ADDED_NS,
    }


def count_one(name: str, path: str, calls: int) -> None:
    """Run ``calls`` tasks of one set-up and path inside ``operator.call``: what callgrind counts."""
    kind = setup(name)
    kind.on()
    way = paths(kind.app)[path]
    way(50)
    gc.collect()
    gc.disable()
    operator.call(way, calls)


def count(calls: int, names: tuple[str, ...], bizmetrics_dir: str | None) -> dict[str, Any]:
    """Instructions per task of each set-up and path, each in its own process under callgrind."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    # The child runs this file as a script: bizmetrics comes from bizmetrics_dir, else this checkout.
    root = bizmetrics_dir or str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    found: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for path in PATHS:
                out = os.path.join(tmp, f"{name}.{path}")
                cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=_operator_call"]
                cmd += [f"--callgrind-out-file={out}", sys.executable, str(Path(__file__).resolve())]
                subprocess.run(
                    [*cmd, "--count", name, path, "--calls", str(calls)],
                    env=env,
                    check=True,
                    cwd=tmp,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                summary = re.search(r"^summary: (\d+)", Path(out).read_text(), re.M)
                assert summary, f"no callgrind summary for {name} {path}"
                found.setdefault(name, {})[path] = int(summary.group(1)) // calls
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.jobs", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 rounds of 200 tasks")
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated, of: " + ", ".join(SETUPS))
    parser.add_argument("--callgrind", action="store_true", help="count instructions per task under callgrind")
    parser.add_argument("--bizmetrics", help="with --callgrind: the checkout whose bizmetrics is counted")
    parser.add_argument("--count", nargs=2, metavar=("SETUP", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    names = tuple(args.setups.split(","))
    if args.count:
        count_one(args.count[0], args.count[1], args.calls)
        return 0
    if args.callgrind:
        calls = 200 if args.quick else args.calls
        found = count(calls, names, args.bizmetrics)
        print(f"{'setup':<12}{'path':<8}{'instructions':>14}{'added':>10}{'added µs':>10}")
        for name, by_path in found.items():
            for path, n in by_path.items():
                added = n - found["bare"][path] if "bare" in found else 0
                print(f"{name:<12}{path:<8}{n:>14,}{added:>+10,}{added / INSTRUCTIONS_PER_US:>10.1f}")
        report: dict[str, Any] = {"calls": calls, "instructions_per_task": found}
    else:
        rounds, calls = (3, 200) if args.quick else (args.rounds, args.calls)
        report = run(rounds, calls, names)
        print(f"Celery {report['celery']}, CPython {report['python']}: {rounds} interleaved rounds of {calls} tasks")
        print(f"{'setup':<12}{'path':<8}{'ns/task':>12}{'added ns':>12}")
        for row in report["rows"]:
            print(f"{row['setup']:<12}{row['path']:<8}{row['ns_per_task']:>12.0f}{row['added_ns']:>12.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
