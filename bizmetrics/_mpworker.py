"""What each worker shares in multiprocess mode besides its samples: exemplars and process metrics.

prometheus_client drops exemplars in multiprocess mode and exposes no
process metrics for the workers.  Each worker (on Linux, with its files
named by identity, see ``_mpfiles``) runs one daemon thread that, every
``INTERVAL`` seconds:

- writes the latest exemplar of each of its series to
  ``exemplars_{identity}.json`` (temporary file, then rename), when one
  changed; a scrape exposes, per series, the latest across workers, dead
  ones included (merged into the archive);
- sets its resident memory and open file descriptors (gauges ``liveall``
  per worker and ``livesum`` summed: a dead worker's drop out) and adds the
  CPU seconds it used since the last time to a counter (summed over every
  worker, dead ones too: it never goes down).

A record only puts its exemplar in a dict: no file, no lock.  The thread
starts with the first value a process writes (so a gunicorn master that
only forks never has one, and no fork happens with it running there), again
in a forked child.  It is a thread of its own, so the multiprocess value
lock it takes to set its gauges never makes a record of another thread wait
on itself; a fork during those few microseconds a second would leave the
child's copy of that prometheus_client lock held (prometheus_client never
re-initialises it), so a process that records should not fork afterwards
(docs/guides/multiprocess.md).
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time
from typing import Any

from prometheus_client import Counter, Gauge

# First: it names this process's files by identity before the metrics below create theirs.
from . import _log, _mpfiles, multiprocess  # noqa: F401

#: Seconds between two writes of a worker's exemplars and process metrics.
INTERVAL = 1.0

_store: dict[str, tuple[dict[str, str], float, float]] = {}
_dirty = False
_started = 0  # the pid whose thread runs
_directory: str | None = None
_identity: Any = None


def keep(value: Any, exemplar: dict[str, str], amount: float) -> None:
    """Keep ``exemplar`` as the latest of the series of ``value`` (a multiprocess value cell)."""
    global _dirty
    key = getattr(value, "_key", None)
    if key is not None:
        _store[key] = (exemplar, amount, time.time())
        _dirty = True


def flush() -> None:
    """Write this worker's exemplars if they changed since the last write."""
    global _dirty
    if not _dirty or _directory is None:
        return
    _dirty = False
    data = json.dumps({key: [labels, value, ts] for key, (labels, value, ts) in list(_store.items())})
    _mpfiles.replace_file(_directory, f"exemplars_{_identity()}.json", data)


# --- Process metrics ---------------------------------------------------------------------
#
# On no registry: prometheus_client's default one has its own process_* metrics
# (this process's), and the multiprocess collector reads these from the files.

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class _Metrics:
    """The process metrics, created with the thread (their files need the directory)."""

    def __init__(self) -> None:
        self.worker_rss = Gauge(
            "process_worker_resident_memory_bytes",
            "Resident memory of each live worker in bytes",
            registry=None,
            multiprocess_mode="liveall",
        )
        self.worker_fds = Gauge(
            "process_worker_open_fds",
            "Open file descriptors of each live worker",
            registry=None,
            multiprocess_mode="liveall",
        )
        self.rss = Gauge(
            "process_resident_memory_bytes",
            "Resident memory of all live workers in bytes",
            registry=None,
            multiprocess_mode="livesum",
        )
        self.fds = Gauge(
            "process_open_fds", "Open file descriptors of all live workers", registry=None, multiprocess_mode="livesum"
        )
        self.cpu = Counter(
            "process_cpu_seconds",
            "User and system CPU time spent by all workers, live and dead, in seconds",
            registry=None,
        )


_metrics: _Metrics | None = None
_cpu_seen = [0.0]


def _sample_process() -> None:
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS
    with open("/proc/self/statm", "rb") as f:
        rss = int(f.read().split()[1]) * _PAGE
    fds = len(os.listdir("/proc/self/fd"))
    global _metrics
    if _metrics is None:
        _metrics = _Metrics()
    _metrics.worker_rss.set(rss)
    _metrics.rss.set(rss)
    _metrics.worker_fds.set(fds)
    _metrics.fds.set(fds)
    if cpu > _cpu_seen[0]:
        _metrics.cpu.inc(cpu - _cpu_seen[0])
        _cpu_seen[0] = cpu


def tick() -> None:
    """One round of the worker thread: exemplars and process metrics."""
    try:
        flush()
    except Exception:
        _log.internal_error("writing a worker's exemplars")
    try:
        _sample_process()
    except Exception:
        _log.internal_error("sampling a worker's process metrics")


def _run() -> None:
    while True:
        time.sleep(INTERVAL)
        tick()


def start(directory: str, identity: Any) -> None:
    """Start this process's worker thread, unless it runs (a forked child starts its own)."""
    global _directory, _identity, _started
    pid = os.getpid()
    if _started == pid:
        return
    _started = pid
    _directory, _identity = directory, identity
    # A forked child's CPU time starts again from 0; its parent's exemplars are its parent's.
    _cpu_seen[0] = 0.0
    _store.clear()
    threading.Thread(target=_run, name="bizmetrics-worker", daemon=True).start()


def _at_exit() -> None:
    if _started == os.getpid():
        tick()


atexit.register(_at_exit)
