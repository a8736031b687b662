"""prometheus_client's multiprocess mode, for gunicorn and uvicorn workers.

With ``PROMETHEUS_MULTIPROC_DIR`` set before prometheus_client is first
imported, each worker writes its samples to files in that directory and one
exposition endpoint sums them.  See README, "Several processes".
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, values
from prometheus_client import multiprocess as _mp

from . import _deferred, _log

ENV = "PROMETHEUS_MULTIPROC_DIR"


def enabled() -> bool:
    """Return whether prometheus_client runs in multiprocess mode in this process."""
    return values.ValueClass is not values.MutexValue


def check_import_order() -> bool:
    """Warn if ``PROMETHEUS_MULTIPROC_DIR`` is set but prometheus_client ignored it.

    prometheus_client chooses its value storage once, when it is first
    imported: if the variable was set later, every worker keeps its own
    counts and the exposition sums nothing.  Returns whether the setup is
    consistent.
    """
    directory = os.environ.get(ENV) or os.environ.get(ENV.lower())
    if directory and not enabled():
        _log.warning(
            "bizmetrics: %s is set but prometheus_client was imported before it was; "
            "metrics stay per process. Set the variable before anything imports prometheus_client.",
            ENV,
        )
        return False
    if directory and not os.path.isdir(directory):
        _log.warning("bizmetrics: %s=%r is not a directory; create it before the workers start", ENV, directory)
        return False
    return True


def registry() -> CollectorRegistry:
    """Return the registry to expose: every worker's samples, or the default registry.

    In multiprocess mode, a fresh registry that collects the samples of every
    worker (expose it, not the default registry, from exactly one endpoint);
    otherwise prometheus_client's default registry, so one ``/metrics``
    endpoint serves both modes.

    .. versionchanged:: 0.2.0
       Returns the default registry instead of raising when multiprocess mode is off.
    """
    if not enabled():
        return REGISTRY
    reg = CollectorRegistry()
    reg.register(_deferred.DRAIN_COLLECTOR)  # this worker's deferred records reach its files first
    _mp.MultiProcessCollector(reg)  # type: ignore[no-untyped-call]
    return reg


def mark_process_dead(pid: int) -> None:
    """Drop the live gauges of a dead worker (call it from gunicorn's ``child_exit``)."""
    _mp.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def child_exit(server: Any, worker: Any) -> None:
    """A ready-made gunicorn ``child_exit`` hook: ``child_exit = bizmetrics.multiprocess.child_exit``."""
    mark_process_dead(worker.pid)


_LIVE_FILE = re.compile(r"gauge_live[a-z]*_(\d+)\.db\Z")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # A killed worker its parent has not reaped yet is a zombie: dead.
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def remove_dead_workers(directory: str | None = None) -> list[int]:
    """Drop the live gauges of every worker that is no longer running; return their pids.

    The remedy for servers without a worker exit hook (``uvicorn --workers N``):
    bizmetrics calls it when it is imported in multiprocess mode, so a
    replacement worker cleans up after the one it replaces, and before each
    scrape served by ``metrics_app()``.  POSIX only; a no-op elsewhere.

    .. versionadded:: 0.2.0
    """
    directory = directory or os.environ.get(ENV) or os.environ.get(ENV.lower())
    if os.name != "posix" or not directory:
        return []
    dead = []
    pids = set()
    for path in glob.glob(os.path.join(glob.escape(directory), "gauge_live*_*.db")):
        match = _LIVE_FILE.search(os.path.basename(path))
        if match:
            pids.add(int(match.group(1)))
    for pid in sorted(pids):
        if pid != os.getpid() and not _alive(pid):
            try:
                _mp.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
            except OSError:
                continue  # another worker removed it first
            dead.append(pid)
    return dead


def _clean_at_import() -> None:
    if enabled():
        try:
            removed = remove_dead_workers()
        except Exception:
            _log.internal_error("remove_dead_workers")
        else:
            if removed:
                _log.debug("bizmetrics: removed the live gauges of dead workers %s", removed)


_clean_at_import()
