"""Against a real Redis in this process: RQ synchronous queues, and queue depth read from the broker at scrapes."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support import servers
from support.registry import unique, value

import bizmetrics
import bizmetrics.celery
import bizmetrics.rq

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with servers.redis_url(tmp_path_factory.mktemp("redis")) as url:
        yield url


def depths(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    return {s.labels["queue"]: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_rq_synchronous_queue_runs_are_executions_with_the_callers_tenant_and_no_wait(redis_url: str) -> None:
    from redis import Redis
    from rq import Queue

    bizmetrics.rq.instrument()
    bizmetrics.rq.instrument()  # idempotent
    name, tenant = unique("sync"), unique("tenant")
    queue = Queue(name, is_async=False, connection=Redis.from_url(redis_url))
    with bizmetrics.tenant_context(tenant):
        job = queue.enqueue(bizmetrics.current_tenant)
    assert job.return_value() == tenant
    q = {"queue": name, "task": "bizmetrics.context.current_tenant"}
    assert value("job_executions_total", **q, status="success", tenant_id=tenant) == 1
    assert value("job_duration_count", **q) == 1
    assert value("job_queue_wait_count", **q) == 0
    assert value("job_in_progress", **q) == 0


def test_celery_queue_depth_is_read_from_the_broker_at_scrape_time(redis_url: str) -> None:
    from celery import Celery

    app = Celery(unique("app"), broker=redis_url)
    app.conf.task_default_queue = name = unique("depth")
    registry = CollectorRegistry()
    bizmetrics.celery.instrument(app, queue_depth=[name], registry=registry)
    assert depths(registry) == {}  # a queue the broker does not know yet is left out
    for _ in range(5):
        app.send_task("never.run")
    assert depths(registry) == {name: 5.0}


def test_rq_queue_depth_is_read_from_redis_at_scrape_time(redis_url: str) -> None:
    from redis import Redis
    from rq import Queue

    connection = Redis.from_url(redis_url)
    name = unique("depth")
    registry = CollectorRegistry()
    bizmetrics.rq.instrument(queue_depth=[name], connection=connection, registry=registry)
    assert depths(registry) == {name: 0.0}
    for _ in range(4):
        Queue(name, connection=connection).enqueue("os.getpid")
    assert depths(registry) == {name: 4.0}


def test_a_broker_that_never_answers_leaves_the_depth_out_of_the_scrape(tmp_path: Path) -> None:
    from celery import Celery

    with socket.socket() as server:  # accepts connections, never answers: a hung broker
        server.bind(("127.0.0.1", 0))
        server.listen()
        app = Celery(unique("app"), broker=f"redis://127.0.0.1:{server.getsockname()[1]}/0")
        registry = CollectorRegistry()
        bizmetrics.celery.instrument(app, queue_depth=["work"], depth_timeout=0.1, registry=registry)
        assert depths(registry) == {}
