"""Records made by garbage-collector finalisers never take a lock, and are counted exactly once drained."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap

import pytest
from prometheus_client import REGISTRY, generate_latest
from support.registry import unique, value

from bizmetrics import _deferred, instrument_connector_operation

# A child process, so that a deadlock trips its watchdog (faulthandler exits it) instead of hanging the suite.
STRESS = textwrap.dedent(
    """
    import faulthandler, gc, os, random, sys, threading
    faulthandler.dump_traceback_later(60, exit=True)
    mode = sys.argv[1]
    import asyncio
    import bizmetrics
    from bizmetrics import instrument_agent, instrument_connector_operation, instrument_workflow, tenant_context
    from bizmetrics.metrics import CACHE_HITS, CONNECTOR_OPERATIONS
    from bizmetrics.multiprocess import registry
    from prometheus_client import generate_latest

    class Connector:
        tenant_id = "t"
        class config:
            id = "stress"

        @instrument_connector_operation("never_awaited")
        async def never_awaited(self):
            return 1

        @instrument_connector_operation("abandoned")
        def abandoned(self):
            yield 1
            yield 2

    @instrument_workflow("flow")
    def flow(tenant_id):
        yield 1
        yield 2

    @instrument_agent("suspended_agent")
    async def suspended(tenant_id):
        await asyncio.sleep(0)
        return 1

    @instrument_agent("stream_agent")
    def stream():
        yield {"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 3, "output_tokens": 1}}}
        yield "text"

    N, THREADS = int(sys.argv[2]), 3
    made = [0] * THREADS

    def churn(index):
        rng = random.Random(index)
        c = Connector()
        for i in range(N):
            # A threshold drawn per iteration lands the collection at every point of what follows,
            # inside prometheus_client's locks included.
            gc.set_threshold(rng.randint(1, 40))
            coro = c.never_awaited()
            gen = c.abandoned()
            next(gen)
            agent = stream()
            next(agent)
            # Closed by the collector with two or three context variables set in their scope.
            workflow = flow("own")
            next(workflow)
            started = suspended("own")
            started.send(None)
            box = [coro, gen, agent, workflow, started]
            box.append(box)  # a cycle: only the collector frees it
            del coro, gen, agent, workflow, started, box
            made[index] += 1
            # New series, of the metric the finalisers record into and of another metric, while
            # this thread updates its own context variables.
            with tenant_context(f"t{i}"):
                CONNECTOR_OPERATIONS.labels("stress", f"op{index}_{i}", "success", "t")
                CACHE_HITS.labels(f"cache{index}_{i}").inc()

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gc.set_threshold(700, 10, 10)
    gc.collect()
    text = generate_latest(registry()).decode()

    def sample(name, *labels):
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name + "{") and all(label in line for label in labels)
        )

    total = sum(made)
    print(total,
          sample("connector_operations_total", 'operation="never_awaited"', 'status="cancelled"'),
          sample("connector_operations_total", 'operation="abandoned"', 'status="success"'),
          sample("agent_invocations_total", 'agent_id="stream_agent"', 'status="success"'),
          sample("agent_token_usage_total", 'agent_id="stream_agent"', 'model="m"', 'token_type="input"'),
          sample("workflow_executions_total", 'workflow_id="flow"', 'status="success"', 'tenant_id="own"'))
    """
)


# Not marked slow: it runs on every supported CPython (about a second each when nothing hangs).
@pytest.mark.parametrize("mode", ["single", "multiprocess"])
def test_finalisers_recording_inside_prometheus_client_locks_never_hang_and_count_exactly(mode, tmp_path):
    """Cycles of never-awaited coroutines, abandoned generators and streams, collected inside ``labels()``."""
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if mode == "multiprocess":
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    script = tmp_path / "stress.py"
    script.write_text(STRESS)
    done = subprocess.run(
        [sys.executable, "-W", "ignore", str(script), mode, "1500"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, f"watchdog tripped or the child failed:\n{done.stderr[-3000:]}"
    total, cancelled, abandoned, streams, tokens, flows = (float(x) for x in done.stdout.split())
    assert total == 4500
    assert (cancelled, abandoned, streams, tokens, flows) == (total, total, total, 3 * total, total)


class Connector:
    """A connector with a coroutine operation and a sync one, labelled with a fresh tenant per instance."""

    def __init__(self) -> None:
        self.tenant_id = unique()

    @instrument_connector_operation("queued")
    async def op(self) -> int:
        return 1

    @instrument_connector_operation("ordinary")
    def ordinary(self) -> int:
        return 1


def _queue_by_the_collector(connector: Connector, n: int) -> None:
    """Leave ``n`` never-awaited calls in cycles and run the collector, whose finalisers queue their records.

    The caller re-enables the collector (``gc.disable()`` keeps it from running anywhere else first).
    """
    gc.collect()
    gc.disable()
    for _ in range(n):
        coro = connector.op()
        box: list[object] = [coro]
        box.append(box)
        del coro, box
    gc.collect()  # the finalisers run here, inside a collection
    assert _deferred.pending() >= n


# The relays of never-awaited coroutines warn "never awaited", as undecorated ones would.
@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_record_made_inside_a_collection_waits_in_the_queue_until_a_scrape():
    """Inside the collector a finaliser only queues its record; the next collection of the registry adds it."""
    connector = Connector()
    try:
        _queue_by_the_collector(connector, 3)
        labels = {"connector_type": "unknown", "operation": "queued", "status": "cancelled"}
        labels["tenant_id"] = connector.tenant_id
        assert REGISTRY._names_to_collectors["connector_operations_total"].labels(*labels.values())._value.get() == 0
        generate_latest(REGISTRY)
        assert _deferred.pending() == 0
        assert value("connector_operations_total", **labels) == 3
    finally:
        gc.enable()


@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_ordinary_record_drains_what_finalisers_queued():
    """The next record of any thread adds the queued records first, so nothing waits for a scrape forever."""
    connector = Connector()
    try:
        _queue_by_the_collector(connector, 2)
        connector.ordinary()
        assert _deferred.pending() == 0
    finally:
        gc.enable()


def test_a_failing_deferred_record_is_logged_and_the_rest_still_drain(caplog):
    """One broken record never stops the drain, nor raises into the code that drains."""
    done = []

    def broken() -> None:
        raise RuntimeError("broken record")

    _deferred.defer(broken)
    _deferred.defer(lambda: done.append(1))
    _deferred.drain()
    assert done == [1]
    assert _deferred.pending() == 0
    assert "recording a deferred outcome" in caplog.text


def test_queued_records_are_drained_at_interpreter_exit_into_multiprocess_files(tmp_path):
    """A worker that exits with records still queued writes them to its files before it goes."""
    script = textwrap.dedent(
        """
        import gc
        from bizmetrics import instrument_connector_operation, _deferred

        class C:
            tenant_id = "exit"
            @instrument_connector_operation("at_exit")
            async def op(self):
                return 1

        gc.disable()
        for _ in range(4):
            coro = C().op()
            box = [coro]; box.append(box)
            del coro, box
        gc.collect()
        assert _deferred.pending() == 4, _deferred.pending()
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-W", "ignore", "-c", script], env=env, check=True, timeout=60)
    reader = textwrap.dedent(
        """
        from prometheus_client import generate_latest
        from bizmetrics.multiprocess import registry
        print(generate_latest(registry()).decode())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", reader], env=env, check=True, timeout=60, capture_output=True, text=True
    ).stdout
    assert 'operation="at_exit",status="cancelled",tenant_id="exit"} 4.0' in out


FINALISER_CALLS = textwrap.dedent(
    """
    import faulthandler, gc, sys
    faulthandler.dump_traceback_later(30, exit=True)
    import bizmetrics
    from bizmetrics import current_tenant, current_workflow, instrument_connector_operation, instrument_workflow
    from bizmetrics.metrics import CONNECTOR_OPERATIONS, WORKFLOW_EXECUTIONS
    from prometheus_client import generate_latest
    from bizmetrics.multiprocess import registry

    @instrument_workflow("cleanup_flow")
    def cleanup(tenant_id):
        return connector_close()

    @instrument_connector_operation("close", connector_type="finaliser")
    def connector_close():
        bizmetrics.record_connector_sync("finaliser", "rows", 2)
        return 1

    class Resource:
        def __init__(self, tenant):
            self.tenant = tenant
            self.me = self  # a cycle: freed by the collector
        def __del__(self):
            cleanup(self.tenant)

    for i in range(200):
        Resource(f"acme{i}")
    # The collector runs while this thread holds the locks a new series needs
    # (as if it had interrupted labels()); the finalisers' calls make new series.
    with CONNECTOR_OPERATIONS._lock, WORKFLOW_EXECUTIONS._lock:
        gc.collect()
        assert (current_tenant(), current_workflow()) == (None, None), (current_tenant(), current_workflow())
    text = generate_latest(registry()).decode()

    def total(name, *labels):
        return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                   if l.startswith(name + "{") and all(x in l for x in labels))

    print(total("workflow_executions_total", 'workflow_id="cleanup_flow"', 'status="success"'),
          total("connector_operations_total", 'operation="close"', 'status="success"', 'tenant_id="acme7"'),
          total("connector_sync_records_total", 'connector_type="finaliser"', 'tenant_id="acme7"'))
    """
)


@pytest.mark.parametrize("mode", ["single", "multiprocess"])
def test_decorated_calls_and_helpers_made_by_finalisers_never_take_a_lock_nor_leave_a_scope(mode, tmp_path):
    """A ``__del__`` that calls decorated functions and helpers, collected while the metrics' locks are held.

    Their new series are made, and recorded, when the queue drains; the
    interrupted thread's tenant and workflow are as the collector found them.
    The tenant of the outer call still reaches the inner ones.
    """
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if mode == "multiprocess":
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", FINALISER_CALLS],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, f"watchdog tripped or the child failed:\n{done.stderr[-3000:]}"
    flows, closes, records = (float(x) for x in done.stdout.split())
    assert (flows, closes, records) == (200, 1, 2)
