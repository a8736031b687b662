"""prometheus_client's multiprocess mode, for gunicorn and uvicorn workers.

With ``PROMETHEUS_MULTIPROC_DIR`` set before prometheus_client is first
imported, each worker writes its samples to files in that directory and one
exposition endpoint sums them.  On Linux, bizmetrics names each worker's files
by its pid and start time and merges dead workers' files into one archive
(``_mpfiles``), so a scrape costs the same after thousands of worker
restarts.  See :doc:`/guides/multiprocess`.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, values
from prometheus_client import multiprocess as _mp
from prometheus_client.metrics_core import Metric

from . import _deferred, _log, _mpfiles

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


def _directory() -> str | None:
    return os.environ.get(ENV) or os.environ.get(ENV.lower())


#: Dead workers' files merged by one scrape at most (the rest at the next ones), to bound a scrape's time.
COMPACT_PER_SCRAPE = 1000


class Collector:
    """Every worker's samples: the archive of dead workers and the files of the others, merged.

    Each ``collect()`` first merges the files of dead workers into the archive
    (when no other scrape or compaction holds the directory), then reads.
    """

    def __init__(self, directory: str | None = None) -> None:
        path = directory or _directory()
        if not path or not os.path.isdir(path):
            raise ValueError(f"{ENV} is not set or not a directory")
        self.directory = path

    def collect(self) -> list[Metric]:
        """Return the merged metrics of every worker, live and dead."""
        _deferred.drain()
        if _IDENTITY:
            _touch()
            try:
                _mpfiles.compact(self.directory, blocking=False, limit=COMPACT_PER_SCRAPE)
            except Exception:
                _log.internal_error("compacting dead workers' files")
        return _mpfiles.collect(self.directory)


def registry() -> CollectorRegistry:
    """Return the registry to expose: every worker's samples, or the default registry.

    In multiprocess mode, a fresh registry that collects the samples of every
    worker, dead ones included (expose it, not the default registry, from
    exactly one endpoint); otherwise prometheus_client's default registry,
    so one ``/metrics`` endpoint serves both modes.

    .. versionchanged:: 0.2.0
       Returns the default registry instead of raising when multiprocess mode is off.
    .. versionchanged:: 0.3.0
       Reads dead workers' samples from the archive ``compact()`` writes.
    """
    if not enabled():
        return REGISTRY
    reg = CollectorRegistry()
    reg.register(Collector())
    return reg


def compact(directory: str | None = None) -> int:
    """Merge the files of dead workers into the directory's archive; return how many files it absorbed.

    Every scrape of ``registry()`` does it (at most ``COMPACT_PER_SCRAPE``
    files at a time, and only when no other scrape holds the directory): call
    it yourself only to compact at a time of your choosing.  Safe against pid reuse, concurrent scrapes
    and a ``kill -9`` at any moment (see :doc:`/guides/multiprocess`, item 4).
    Linux only (it needs ``/proc``); 0 elsewhere.

    .. versionadded:: 0.3.0
    """
    directory = directory or _directory()
    if not _IDENTITY or not directory:
        return 0
    return len(_mpfiles.compact(directory))


def mark_process_dead(pid: int) -> None:
    """Drop the live gauges of a dead worker (call it from gunicorn's ``child_exit``)."""
    _mp.mark_process_dead(pid)  # type: ignore[no-untyped-call]
    directory = _directory()
    if directory:
        _drop_dead_live_gauges(directory, glob.glob(os.path.join(glob.escape(directory), f"gauge_live*_{pid}-*.db")))


def _drop_dead_live_gauges(directory: str, paths: list[str]) -> set[int]:
    """Remove the live-gauge files among ``paths`` whose worker (pid and start time) is gone."""
    gone = set()
    for path in paths:
        match = _mpfiles.OWN_FILE.match(os.path.basename(path))
        if match and not _mpfiles.alive(match.group(2), match.group(3)):
            _mpfiles.unlink(path)
            gone.add(int(match.group(2)))
    return gone


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
    own = glob.glob(os.path.join(glob.escape(directory), "gauge_live*_*-*.db"))
    return sorted(set(dead) | _drop_dead_live_gauges(directory, own))


# --- Worker identity ------------------------------------------------------------------
#
# prometheus_client names a worker's files by its pid: a new worker that gets a
# dead one's pid appends to its files, so they could never be merged safely.
# Its value class takes the function that names them; bizmetrics gives it
# "pid-start time", read once per process (again after a fork).

_me: list[Any] = [0, ""]


def identity() -> str:
    """This process's identity in multiprocess file names: ``"{pid}-{start time}"``."""
    pid = os.getpid()
    if pid != _me[0]:
        _me[1] = f"{pid}-{_mpfiles.start_time(pid)}"
        _me[0] = pid
    return str(_me[1])


def _install_identity() -> bool:
    """Name the files of value cells created from now on by identity; return whether it is done."""
    if not enabled() or not _directory() or _mpfiles.start_time(os.getpid()) is None:
        return False
    if getattr(values.ValueClass, "_bizmetrics_identity", False):
        return True
    try:
        base: Any = values.MultiProcessValue(identity)  # type: ignore[no-untyped-call]

        class WorkerValue(base):  # type: ignore[misc]
            """prometheus_client's value, in files named by identity; writing one starts the worker thread."""

            _bizmetrics_identity = True

            def inc(self, amount: float) -> None:
                _touch()
                super().inc(amount)

            def set(self, value: float, timestamp: float | None = None) -> None:
                _touch()
                super().set(value, timestamp)

        values.ValueClass = WorkerValue
    except Exception:
        _log.internal_error("naming multiprocess files by worker identity")
        return False
    return True


_worker: list[int] = [0]


def _touch() -> None:
    """Start this process's worker thread (exemplars, process metrics) if it does not run yet."""
    if _worker[0] != os.getpid():
        _worker[0] = os.getpid()
        directory = _directory()
        if directory:
            from . import _mpworker

            try:
                _mpworker.start(directory, identity)
            except Exception:
                _log.internal_error("starting the worker thread")


#: Whether this process names its files by identity, so dead workers' files can be merged.
_IDENTITY = _install_identity()


def _clean_at_import() -> None:
    if enabled():
        try:
            # No merge here: only a scrape through ``registry()``, which reads the archive, merges, so
            # a service that serves the directory with prometheus_client's own collector loses nothing.
            removed = remove_dead_workers()
        except Exception:
            _log.internal_error("remove_dead_workers")
        else:
            if removed:
                _log.debug("bizmetrics: removed the live gauges of dead workers %s", removed)


_clean_at_import()
