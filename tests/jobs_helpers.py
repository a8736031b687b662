"""Real Redis, Celery and RQ workers for the background-job tests: processes on loopback, state in temp dirs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ops_helpers import binary, free_port, process, wait
from prometheus_client.parser import text_string_to_metric_families

#: Reads a multiprocess directory as an exporter would (dead workers' live gauges dropped first).
SCRAPE = (
    "import sys; from bizmetrics import multiprocess; from prometheus_client import generate_latest; "
    "multiprocess.remove_dead_workers(); sys.stdout.write(generate_latest(multiprocess.registry()).decode())"
)


@contextmanager
def redis_server(work: Path) -> Iterator[str]:
    """A real redis-server on a free loopback port, its state in ``work``; yields its URL."""
    import redis

    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    cmd = [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with process([*cmd, "--dir", str(work)]) as proc:
        client = redis.Redis(host="127.0.0.1", port=port)
        wait(client.ping, "redis-server", proc=proc)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"


def env(mpdir: Path, **extra: str) -> dict[str, str]:
    """The environment of a worker or publisher: multiprocess mode in ``mpdir``, the tests importable."""
    found = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mpdir), **extra}
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
