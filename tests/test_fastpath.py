"""The fast recording path is exact: the same exposition as prometheus_client's public API."""

from __future__ import annotations

import threading

from hypothesis import given
from hypothesis import strategies as st
from support.registry import unique, value

from bizmetrics import _families, _fastpath, metrics, record_connector_operation


def test_fast_path_is_on_in_single_process_mode():
    """With a supported prometheus_client and no multiprocess mode, the self-test passes."""
    assert metrics.FAST_PATH is _fastpath.FAST_PATH is True


@given(
    amounts=st.lists(st.floats(min_value=0, max_value=1e7, allow_nan=False), max_size=40),
    buckets=st.sampled_from([metrics.CONNECTOR_BUCKETS, metrics.API_BUCKETS, metrics.AGENT_BUCKETS]),
)
def test_fast_path_matches_the_public_api(amounts, buckets):
    """Any amounts, on bizmetrics' buckets (bounds included): the import-time self-test agrees."""
    assert _fastpath.self_test(amounts + list(buckets[:3]), buckets)


def test_the_self_test_can_fail(monkeypatch):
    """A fast path that puts an observation in the wrong bucket is caught."""
    monkeypatch.setattr(_fastpath, "bisect_left", lambda bounds, amount: 0)
    assert not _fastpath.self_test([3.0], (1.0, 5.0))


def test_catalogue_children_share_the_lock():
    """Every value cell of a catalogue child takes the shared lock, so public-API records exclude fast ones."""
    child = metrics.CONNECTOR_OPERATION_DURATION.labels(unique("ct"), "op")
    assert child._sum._lock is _fastpath.LOCK
    assert all(bucket._lock is _fastpath.LOCK for bucket in child._buckets)
    assert metrics.CONNECTOR_OPERATIONS.labels("a", "b", "success", unique())._value._lock is _fastpath.LOCK


def test_fast_and_public_records_never_lose_counts_under_threads():
    """Threads recording through the helpers and through labels().inc() on the same series: exact."""
    tenant = unique()
    child = metrics.CONNECTOR_OPERATIONS.labels("threads", "op", "success", tenant)

    def fast():
        for _ in range(2000):
            record_connector_operation("threads", "op", 1.0, True, tenant)

    def public():
        for _ in range(2000):
            child.inc()

    workers = [threading.Thread(target=f) for f in (fast, public, fast, public)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    labels = {"connector_type": "threads", "operation": "op", "tenant_id": tenant}
    assert value("connector_operations_total", **labels, status="success") == 8000


def test_a_signal_raising_inside_a_record_never_leaves_the_lock_held():
    """A signal handler's exception (a timeout) during a record propagates; the shared lock is released."""
    import signal
    import time

    class Timeout(BaseException):
        pass

    inside = [False]

    def handler(signum, frame):
        if inside[0]:
            inside[0] = False  # one exception per record: never while the test handles the last one
            raise Timeout

    cache = _families.CACHE_FAMILY.get(unique("sig"))
    operation = _families.CONNECTOR_OPERATION_FAMILY.get("sig", "op", unique())
    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.00002)
    interrupted = 0
    try:
        for i in range(200_000):
            try:
                inside[0] = True
                if i & 1:
                    cache.count(True, 1)
                else:
                    operation.success(3.0, 0)
                inside[0] = False
            except Timeout:
                interrupted += 1
                assert not _fastpath.LOCK._is_owned()
                if interrupted == 100:
                    break
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        inside[0] = False
        time.sleep(0.01)  # a signal still pending is handled here, by the disarmed handler
        signal.signal(signal.SIGALRM, previous)
        leaked = 0
        while _fastpath.LOCK._is_owned():  # so that a failure here does not hang the other tests
            _fastpath.LOCK.release()
            leaked += 1
    assert interrupted > 0
    assert leaked == 0


def test_a_forked_child_never_starts_with_the_lock_held():
    """While another thread records, every child of a fork can take the shared lock."""
    import os
    import time

    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            record_connector_operation("fork", "op", 1.0, True)

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    time.sleep(0.05)
    stuck = 0
    try:
        for _ in range(50):
            pid = os.fork()
            if pid == 0:
                os._exit(0 if _fastpath.LOCK.acquire(timeout=2) else 3)
            _, status = os.waitpid(pid, 0)
            stuck += os.WEXITSTATUS(status) == 3
    finally:
        stop.set()
        thread.join(timeout=10)
    assert stuck == 0
    assert not thread.is_alive()


def test_the_self_test_fails_if_prometheus_client_stops_taking_the_cells_lock(monkeypatch):
    """Sharing the lock relies on MutexValue.inc taking ``self._lock``: a version that does not is refused."""
    from prometheus_client.values import MutexValue

    def inc_without_lock(self, amount):
        self._value += amount

    monkeypatch.setattr(MutexValue, "inc", inc_without_lock)
    assert not _fastpath.self_test()
