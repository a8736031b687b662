"""``python -m benchmarks.jobs``: what instrumenting Celery adds per task, against a bare task and OpenTelemetry's.

Four set-ups of one app, switched between rounds (signals are process-wide):
``bare`` (no instrumentation), ``receivers`` (receivers that do nothing on the
signals bizmetrics uses: Celery's own cost of dispatching them),
``bizmetrics`` (``bizmetrics.celery.instrument``)
and ``otel`` (opentelemetry-instrumentation-celery with the SDK's tracer
provider, no exporter: the least a traced service pays).  Two paths per task:

- ``eager``: ``task.apply()``, the task run in place (``task_always_eager``);
- ``worker``: publish to the in-memory broker (``apply_async``: the real
  publish path, headers and ``before_task_publish`` included) then run the
  message through ``build_tracer``, the function a prefork, threads or solo
  worker runs for each task, with the request a worker builds from it.  The
  broker's network round trip, the same with or without instrumentation, is
  left out so the microseconds show.

Rounds are interleaved (A B C D, then D C B A); each row is the median over
rounds of the process's CPU ns per task (other processes' load does not count),
and of the difference to ``bare`` in the same round.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

TARGET_ADDED_NS = 5000.0


def _app() -> Any:
    from celery import Celery

    app = Celery("bench", broker="memory://", backend="cache+memory://")
    app.conf.update(task_ignore_result=True, task_default_queue="bench")

    @app.task(name="bench.noop")
    def noop(x: int) -> int:
        return x

    return app


class Setup:
    """Turns one kind of instrumentation on and off."""

    def __init__(self, name: str, on: Callable[[], None], off: Callable[[], None]) -> None:
        self.name, self.on, self.off = name, on, off


def setups(app: Any) -> list[Setup]:
    from celery import signals

    import bizmetrics.celery

    def biz_on() -> None:
        bizmetrics.celery._INSTRUMENTED.discard(id(app))
        bizmetrics.celery.instrument(app)

    def biz_off() -> None:
        for name, receiver in bizmetrics.celery.RECEIVERS.items():
            getattr(signals, name).disconnect(receiver, dispatch_uid=f"bizmetrics.{name}")
        bizmetrics.celery._INSTRUMENTED.discard(id(app))

    def nothing(**_: Any) -> None:
        pass

    def empty_on() -> None:
        for name in bizmetrics.celery.RECEIVERS:
            getattr(signals, name).connect(nothing, weak=False, dispatch_uid=f"bench.{name}")

    def empty_off() -> None:
        for name in bizmetrics.celery.RECEIVERS:
            getattr(signals, name).disconnect(nothing, dispatch_uid=f"bench.{name}")

    found = [
        Setup("bare", lambda: None, lambda: None),
        # Receivers that do nothing on the same signals: what Celery's dispatch alone costs.
        Setup("receivers", empty_on, empty_off),
        Setup("bizmetrics", biz_on, biz_off),
    ]
    try:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        print("opentelemetry-instrumentation-celery is not installed: pip install '.[bench]'", file=sys.stderr)
        return found
    provider = TracerProvider()
    otel = CeleryInstrumentor()
    found.append(Setup("otel", lambda: otel.instrument(tracer_provider=provider), lambda: otel.uninstrument()))
    return found


def paths(app: Any) -> dict[str, Callable[[int], float]]:
    """Each path: run ``n`` tasks, return the elapsed ns."""
    from celery.app.trace import build_tracer

    task = app.tasks["bench.noop"]
    connection = app.connection_for_write()
    producer = app.amqp.Producer(connection.default_channel)

    def eager(n: int) -> float:
        apply = task.apply
        start = time.process_time_ns()
        for i in range(n):
            apply((i,))
        return time.process_time_ns() - start

    def worker(n: int) -> float:
        apply_async = task.apply_async
        tracer = build_tracer(task.name, task, app=app, eager=False, hostname="bench@localhost")
        channel = connection.default_channel
        start = time.process_time_ns()
        for i in range(n):
            apply_async((i,), producer=producer)
            message = channel.basic_get("bench", no_ack=True)
            headers = message.headers
            request = {**headers, "delivery_info": {"routing_key": "bench", "exchange": ""}, "is_eager": False}
            args, kwargs, _ = message.decode()
            tracer(headers["id"], args, kwargs, request)
        return time.process_time_ns() - start

    return {"eager": eager, "worker": worker}


def run(rounds: int, calls: int) -> dict[str, Any]:
    import celery

    app = _app()
    kinds = setups(app)
    ways = paths(app)
    per: dict[tuple[str, str], list[float]] = {(k.name, w): [] for k in kinds for w in ways}
    for kind in kinds:  # warm up each set-up: label children, code paths
        kind.on()
        for way in ways.values():
            way(max(1, calls // 10))
        kind.off()
    for r in range(rounds):
        for kind in kinds if r % 2 == 0 else list(reversed(kinds)):
            kind.on()
            gc.collect()
            gc.disable()
            try:
                for name, way in ways.items():
                    per[(kind.name, name)].append(way(calls) / calls)
            finally:
                gc.enable()
                kind.off()
    rows = []
    measured: dict[str, float] = {}
    for (kind, way), times in per.items():
        bare = per[("bare", way)]
        added = statistics.median(t - b for t, b in zip(times, bare, strict=True))
        rows.append({"setup": kind, "path": way, "ns_per_task": statistics.median(times), "added_ns": added})
        if kind != "bare":
            measured[f"{kind} {way}: ns added per task"] = added
    return {
        "python": sys.version.split()[0],
        "celery": celery.__version__,
        "rounds": rounds,
        "calls": calls,
        "rows": rows,
        "measured": measured,
        "target_added_ns": TARGET_ADDED_NS,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.jobs", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 rounds of 200 tasks")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    rounds, calls = (3, 200) if args.quick else (args.rounds, args.calls)
    report = run(rounds, calls)
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
