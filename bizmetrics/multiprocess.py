"""prometheus_client's multiprocess mode, for gunicorn and uvicorn workers.

With ``PROMETHEUS_MULTIPROC_DIR`` set before prometheus_client is first
imported, each worker writes its samples to files in that directory and one
exposition endpoint sums them.  See README, "Several processes".
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, values
from prometheus_client import multiprocess as _mp

from . import _log

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
        _log.logger.warning(
            "bizmetrics: %s is set but prometheus_client was imported before it was; "
            "metrics stay per process. Set the variable before anything imports prometheus_client.",
            ENV,
        )
        return False
    if directory and not os.path.isdir(directory):
        _log.logger.warning("bizmetrics: %s=%r is not a directory; create it before the workers start", ENV, directory)
        return False
    return True


def registry() -> CollectorRegistry:
    """Return a fresh registry that collects the samples of every worker.

    Expose this one (not the default registry) from exactly one endpoint.
    """
    reg = CollectorRegistry()
    _mp.MultiProcessCollector(reg)  # type: ignore[no-untyped-call]
    return reg


def mark_process_dead(pid: int) -> None:
    """Drop the live gauges of a dead worker (call it from gunicorn's ``child_exit``)."""
    _mp.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def child_exit(server: Any, worker: Any) -> None:
    """A ready-made gunicorn ``child_exit`` hook: ``child_exit = bizmetrics.multiprocess.child_exit``."""
    mark_process_dead(worker.pid)
