"""Celery end to end: real workers (prefork, threads, solo) on a real Redis, tasks published from another process.

Every count, queue wait and retry is compared with the ground truth the tasks and the publisher write down.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.jobs import check, env, ground_truth_waits, plan, publish, scrape, value, write
from support.servers import free_port, get, process, redis_url, wait

pytestmark = pytest.mark.slow

APP = """
import json, os, time
from celery import Celery
import bizmetrics, bizmetrics.celery

app = Celery("jobapp", broker=os.environ["BROKER"], backend=os.environ["BROKER"])
app.conf.update(task_default_queue="work", worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True)
bizmetrics.celery.instrument(app)
RUNS = os.environ["RUNS"]


def note(name, when):
    with open(os.path.join(RUNS, name), "w") as f:
        f.write(json.dumps(when))


@app.task(bind=True, max_retries=5)
def work(self, ms=0, fail=False, retries=0, hang=False):
    note(f"{self.request.id}.{self.request.retries}.start", time.time())
    bizmetrics.record_workflow_execution("inside", 1.0, True)  # booked to the publisher's tenant
    if hang:
        note("hang.pid", os.getpid())
        time.sleep(600)
    time.sleep(ms / 1000)
    if self.request.retries < retries:
        before = time.time()
        retry = self.retry(countdown=0, throw=False)  # published when it returns
        note(f"{self.request.id}.{self.request.retries}.republish", (before, time.time()))
        raise retry
    if fail:
        raise ValueError("boom")
    return self.request.retries
"""

PUBLISH = """
import json, sys, time
import bizmetrics
from jobapp import work

if sys.argv[2:] == ["hang"]:
    before = time.time()
    result = work.delay(hang=True)
    print(json.dumps({result.id: (before, time.time())}))
    sys.exit()
sent = []
for tenant, ms, fail, retries in json.loads(sys.argv[1]):
    with bizmetrics.tenant_context(tenant):
        before = time.time()
        result = work.delay(ms=ms, fail=fail, retries=retries)
        sent.append((result, (before, time.time())))
published = {}
for result, at in sent:
    try:
        result.get(timeout=120, propagate=False)
    except Exception:
        pass
    published[result.id] = at
print(json.dumps(published))
"""


def setup(tmp_path: Path, url: str) -> tuple[Path, Path, dict[str, str]]:
    mpdir, runs = tmp_path / "mp", tmp_path / "runs"
    mpdir.mkdir()
    runs.mkdir()
    write(tmp_path / "jobapp.py", APP)
    write(tmp_path / "publish.py", PUBLISH)
    return mpdir, runs, env(mpdir, BROKER=url, RUNS=str(runs), PYTHONPATH=str(tmp_path))


def worker(tmp_path: Path, environ: dict[str, str], pool: str, concurrency: int) -> process:
    cmd = [sys.executable, "-m", "celery", "-A", "jobapp", "worker", "-P", pool, "-c", str(concurrency), "-Q", "work"]
    cmd += ["--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"]
    return process(cmd, cwd=tmp_path, env=environ)


@pytest.mark.parametrize(("pool", "concurrency"), [("prefork", 2), ("solo", 1), ("threads", 3)])
def test_worker_counts_waits_retries_and_tenants_match_ground_truth(
    tmp_path: Path, pool: str, concurrency: int
) -> None:
    with redis_url(tmp_path / "redis") as url:
        mpdir, runs, environ = setup(tmp_path, url)
        tasks = plan(24)
        with worker(tmp_path, environ, pool, concurrency):
            published = publish(tmp_path, environ, tasks)
            check(scrape(mpdir), "jobapp.work", tasks, ground_truth_waits(runs, published))


def test_kill_9_of_a_pool_process_mid_task_loses_or_doubles_nothing_finished(tmp_path: Path) -> None:
    with redis_url(tmp_path / "redis") as url:
        mpdir, runs, environ = setup(tmp_path, url)
        before = plan(12)
        after = [(tenant, ms, fail, 0) for tenant, ms, fail, _ in plan(9)]
        with worker(tmp_path, environ, "prefork", 2) as proc:
            published = publish(tmp_path, environ, before)
            published |= publish(tmp_path, environ, [], hang=True)
            pid = int(wait(lambda: (runs / "hang.pid").exists() and (runs / "hang.pid").read_text(), "the hung task"))
            samples = scrape(mpdir)
            assert value(samples, "job_in_progress", queue="work", task="jobapp.work") == 1
            os.kill(pid, signal.SIGKILL)
            wait(
                lambda: not os.path.exists(f"/proc/{pid}") or "zombie" in Path(f"/proc/{pid}/status").read_text(),
                "kill",
            )
            published |= publish(tmp_path, environ, after)
            assert proc.poll() is None
            samples = scrape(mpdir)
        # The killed run's in-progress count is gone with its process; every finished task is counted once.
        check(samples, "jobapp.work", before + after, ground_truth_waits(runs, published), killed=1)


README = Path(__file__).parent.parent / "docs" / "guides" / "jobs.md"

README_TASKS = """
app.conf.update(broker_url=os.environ["BROKER"], result_backend=os.environ["BROKER"], task_default_queue="work")


@app.task(name="proj.add")
def add(x, y):
    bizmetrics.record_workflow_execution("inside", 1.0, True)
    return x + y
"""

README_PUBLISH = """
import bizmetrics
from readme_proj import add

results = []
for i in range(9):
    with bizmetrics.tenant_context(("acme", "beta", "gamma")[i % 3]):
        results.append(add.delay(i, 1))
assert [r.get(timeout=120) for r in results] == [i + 1 for i in range(9)]
"""


def test_readme_prefork_set_up_serves_every_pool_process_from_the_main_one(tmp_path: Path) -> None:
    """The jobs guide's prefork set-up, as pasted (its port aside): one endpoint, in the worker, sums the pool."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (block,) = [b for b in blocks if "def serve_metrics" in b]
    port = free_port()
    write(tmp_path / "readme_proj.py", block.replace("9100", str(port)) + README_TASKS)
    write(tmp_path / "publish_readme.py", README_PUBLISH)
    with redis_url(tmp_path / "redis") as url:
        mpdir = tmp_path / "mp"
        mpdir.mkdir()
        environ = env(mpdir, BROKER=url, PYTHONPATH=str(tmp_path))
        cmd = [sys.executable, "-m", "celery", "-A", "readme_proj", "worker", "-P", "prefork", "-c", "2", "-Q", "work"]
        with process([*cmd, "--without-gossip", "--without-mingle", "-l", "warning"], cwd=tmp_path, env=environ) as p:
            wait(lambda: get(f"http://127.0.0.1:{port}/metrics"), "the worker's /metrics", proc=p)
            subprocess.run([sys.executable, "publish_readme.py"], cwd=tmp_path, env=environ, check=True, timeout=300)
            text = get(f"http://127.0.0.1:{port}/metrics")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    for tenant in ("acme", "beta", "gamma"):
        labels = {"queue": "work", "task": "proj.add", "tenant_id": tenant}
        assert value(samples, "job_executions_total", status="success", **labels) == 3
        assert value(samples, "workflow_executions_total", workflow_id="inside", tenant_id=tenant) == 3
    assert value(samples, "job_queue_wait_count", queue="work", task="proj.add") == 9
    assert value(samples, "job_in_progress", queue="work", task="proj.add") == 0


REVOKE = """
import time
import bizmetrics
from jobapp import app, work

# A revoke is a broadcast: a worker not listening yet (slow to start on a loaded machine) never hears it.
deadline = time.time() + 120
while not app.control.ping(timeout=0.5) and time.time() < deadline:
    pass
with bizmetrics.tenant_context("acme"):
    result = work.apply_async(countdown=3)
time.sleep(0.5)
result.revoke()
print(result.id)
"""


def test_a_task_revoked_before_it_ran_is_cancelled_for_its_tenant(tmp_path: Path) -> None:
    with redis_url(tmp_path / "redis") as url:
        mpdir, runs, environ = setup(tmp_path, url)
        write(tmp_path / "revoke.py", REVOKE)
        with worker(tmp_path, environ, "solo", 1):
            out = subprocess.run(
                [sys.executable, "revoke.py"], cwd=tmp_path, env=environ, capture_output=True, text=True, check=True
            )
            task_id = out.stdout.strip()
            q = {"queue": "work", "task": "jobapp.work", "tenant_id": "acme"}
            wait(lambda: value(scrape(mpdir), "job_executions_total", status="cancelled", **q) == 1, "the revoked task")
            samples = scrape(mpdir)
    assert not (runs / f"{task_id}.0.start").exists()
    assert value(samples, "job_executions_total", status="success", **q) == 0
    assert value(samples, "job_in_progress", queue="work", task="jobapp.work") == 0
