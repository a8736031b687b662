"""Real Redis, Celery and RQ workers for the background-job tests: processes on loopback, state in temp dirs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

#: Reads a multiprocess directory as an exporter would (dead workers' live gauges dropped first).
SCRAPE = (
    "import sys; from bizmetrics import multiprocess; from prometheus_client import generate_latest; "
    "multiprocess.remove_dead_workers(); sys.stdout.write(generate_latest(multiprocess.registry()).decode())"
)


def env(mpdir: Path, **extra: str) -> dict[str, str]:
    """The environment of a worker or publisher: multiprocess mode in ``mpdir``, the tests importable."""
    found = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mpdir), **extra}
    if "PYTHONPATH" in extra and os.environ.get("PYTHONPATH"):
        # The test's own import path too (a checkout under test), after the task modules.
        found["PYTHONPATH"] = f"{extra['PYTHONPATH']}{os.pathsep}{os.environ['PYTHONPATH']}"
    found.pop("BIZMETRICS_NAMESPACE", None)
    return found


def scrape(mpdir: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a multiprocess directory, keyed by name and sorted labels."""
    out = subprocess.run([sys.executable, "-c", SCRAPE], env=env(mpdir), capture_output=True, text=True, check=True)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(out.stdout)
        for s in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, lab), v in samples.items() if n == name and set(labels.items()) <= set(lab))


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


TENANTS = ("acme", "beta", "gamma")
#: A planned task: tenant, ms it sleeps, whether it fails, how many times it asks for a retry first.
Task = tuple[str, int, bool, int]
#: Task id -> the publisher's clock just before and just after publishing it.
Published = dict[str, tuple[float, float]]


def plan(count: int) -> list[Task]:
    """Tasks of three tenants: some fail, some retry once or twice, each sleeps a little."""
    return [(TENANTS[i % 3], 5 + (i % 4) * 5, i % 5 == 1, (i % 7 == 3) + (i % 11 == 4)) for i in range(count)]


def ground_truth_waits(runs: Path, published: Published) -> list[tuple[float, float]]:
    """The bounds of every run's queue wait in ms: from its publish (a retry's: its republish) to its start.

    A task notes ``{id}.{run}.start`` when it starts and, when it asks for a retry,
    ``{id}.{run}.republish``: ``[before, after]`` the republish, ``after`` null
    when the queue republishes it later (RQ): the next run's start bounds it.
    """
    waits = []
    for task_id, (before, after) in published.items():
        k = 0
        while (runs / f"{task_id}.{k}.start").exists():
            start = json.loads((runs / f"{task_id}.{k}.start").read_text())
            waits.append(((start - after) * 1000, (start - before) * 1000))
            if (runs / f"{task_id}.{k}.republish").exists():
                before, after = json.loads((runs / f"{task_id}.{k}.republish").read_text())
                if after is None:
                    after = json.loads((runs / f"{task_id}.{k + 1}.start").read_text())
            k += 1
    return waits


def check(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float],
    task: str,
    tasks: list[Task],
    waits: list[tuple[float, float]],
    killed: int = 0,
) -> None:
    """Compare a scrape with the ground truth; ``killed`` runs (of no tenant) started but never finished."""
    q = {"queue": "work", "task": task}
    for tenant in TENANTS:
        mine = [t for t in tasks if t[0] == tenant]
        retried = sum(t[3] for t in mine)
        t = {**q, "tenant_id": tenant}
        assert value(samples, "job_executions_total", status="success", **t) == sum(not m[2] for m in mine)
        assert value(samples, "job_executions_total", status="error", **t) == sum(m[2] for m in mine)
        assert value(samples, "job_executions_total", status="retry", **t) == retried
        assert value(samples, "job_executions_total", status="cancelled", **t) == 0
        assert value(samples, "job_retries_total", **t) == retried
        # The task body ran with the publisher's tenant current.
        assert (
            value(samples, "workflow_executions_total", tenant_id=tenant, workflow_id="inside") == len(mine) + retried
        )
    # A task published with no tenant current (the killed one) runs with none.
    assert value(samples, "workflow_executions_total", tenant_id="default_tenant") == killed
    runs = len(tasks) + sum(t[3] for t in tasks)
    assert value(samples, "job_duration_count", **q) == runs
    assert value(samples, "job_duration_sum", **q) >= sum(t[1] * (1 + t[3]) for t in tasks)
    # A killed run's wait was observed when it started.
    assert value(samples, "job_queue_wait_count", **q) == runs + killed == len(waits)
    # Read on the worker from the publisher's clock (the same machine): within the bounds, give or take
    # the time from the start hook to the body, and RQ's microsecond timestamps.
    low, high = sum(w[0] for w in waits), sum(w[1] for w in waits)
    assert low - 2.0 * len(waits) <= value(samples, "job_queue_wait_sum", **q) <= high + 0.01 * len(waits)
    assert value(samples, "job_in_progress", **q) == 0


def publish(work: Path, environ: dict[str, str], tasks: list[Task], hang: bool = False) -> Published:
    """Run ``publish.py`` in ``work`` (another process): publish ``tasks``, wait for them; or one hanging task."""
    out = subprocess.run(
        [sys.executable, "publish.py", json.dumps(tasks), *(["hang"] if hang else [])],
        cwd=work,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return {k: tuple(v) for k, v in json.loads(out.stdout).items()}


# RQ job functions for workers in the test process: RQ imports a job's function by its dotted name.


def rq_tenant() -> str | None:
    """The tenant current inside the job."""
    import bizmetrics

    return bizmetrics.current_tenant()


def rq_flaky(retries: int, failures: int) -> str | None:
    """Raise in the first ``failures`` runs of a job enqueued with ``Retry(max=retries)``, then return the tenant."""
    from rq import get_current_job

    job = get_current_job()
    assert job is not None
    if retries - (job.retries_left or 0) < failures:
        raise RuntimeError("try again")
    return rq_tenant()
