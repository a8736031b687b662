"""Batch jobs against a real Pushgateway: counters add up across runs, the run gauges, and push failures."""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Iterator

import pytest
from helpers import unique
from ops_helpers import batch_run, binary, free_port, get, pushgateway, wait
from prometheus_client.parser import text_string_to_metric_families

import bizmetrics
from bizmetrics.batch import LAST_DURATION, LAST_RUN_SUCCESS, LAST_SUCCESS, PushError, batch_job, push_job_metrics


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Pushgateway on loopback with its persistence file in a temporary directory."""
    port = free_port()
    with pushgateway(port, tmp_path_factory.mktemp("pushgateway")):
        address = f"127.0.0.1:{port}"
        wait(lambda: get(f"http://{address}/-/ready"), "the Pushgateway")
        yield address


def _samples(gateway: str, job: str, instance: str = "") -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What the Pushgateway exposes for one group, without the group's labels."""
    found = {}
    for family in text_string_to_metric_families(get(f"http://{gateway}/metrics")):
        for s in family.samples:
            if s.labels.get("job") == job and s.labels.get("instance", "") == instance:
                labels = tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("job", "instance")))
                found[(s.name, labels)] = s.value
    return found


@pytest.mark.slow
def test_runs_in_new_processes_add_up(gateway):
    """Three runs, each a fresh process, of 47, 10 and 5 records: the Pushgateway holds 47, 57, then 62."""
    job, tenant = unique("job"), unique("t")
    records = (
        "connector_sync_records_total",
        (("connector_type", "wordpress"), ("resource_type", "posts"), ("tenant_id", tenant)),
    )
    seen = []
    for count in (47, 10, 5):
        batch_run(gateway, job, "cron-1", count, tenant)
        seen.append(_samples(gateway, job, "cron-1")[records])
    assert seen == [47.0, 57.0, 62.0]
    # A histogram adds up too, bucket by bucket: 3 operations of 30 ms.
    pushed = _samples(gateway, job, "cron-1")
    hist = (("connector_type", "wordpress"), ("operation", "get_posts"))

    def bucket(le: str) -> float:
        return pushed[("connector_operation_duration_bucket", tuple(sorted((*hist, ("le", le)))))]

    assert pushed[("connector_operation_duration_count", hist)] == 3.0
    assert pushed[("connector_operation_duration_sum", hist)] == 90.0
    assert (bucket("25"), bucket("50"), bucket("+Inf")) == (0.0, 3.0, 3.0)  # as the Pushgateway writes bounds
    # Another group of the same job (another instance) counts on its own.
    batch_run(gateway, job, "cron-2", 4, tenant)
    assert _samples(gateway, job, "cron-2")[records] == 4.0
    assert _samples(gateway, job, "cron-1")[records] == 62.0


@pytest.mark.slow
def test_pushes_from_one_process_add_only_what_is_new(gateway):
    """A process that pushes twice adds what it counted between the pushes, not its whole total again."""
    job, tenant = unique("job"), unique("t")
    key = (
        "connector_sync_records_total",
        (("connector_type", "hubspot"), ("resource_type", "contacts"), ("tenant_id", tenant)),
    )
    bizmetrics.record_connector_sync("hubspot", "contacts", 5, tenant)
    assert push_job_metrics(gateway, job) is True
    assert _samples(gateway, job)[key] == 5.0
    bizmetrics.record_connector_sync("hubspot", "contacts", 3, tenant)
    assert push_job_metrics(gateway, job) is True
    assert _samples(gateway, job)[key] == 8.0
    assert push_job_metrics(gateway, job) is True
    assert _samples(gateway, job)[key] == 8.0


@pytest.mark.slow
def test_run_gauges_and_a_failed_run(gateway):
    """A good run pushes success 1, its duration and its time; a failed one pushes 0 and keeps the last success."""
    job = unique("job")
    before = time.time()
    with batch_job(gateway, job, grouping_key={"instance": "cron-1"}) as run:
        time.sleep(0.05)
    assert (run.job, run.success, run.pushed) == (job, True, True)
    assert run.duration_seconds is not None and 0.05 <= run.duration_seconds < 5
    first = _samples(gateway, job, "cron-1")
    assert first[(LAST_RUN_SUCCESS, ())] == 1.0
    assert first[(LAST_DURATION, ())] == pytest.approx(run.duration_seconds)
    assert before <= first[(LAST_SUCCESS, ())] <= time.time()

    with pytest.raises(KeyError), batch_job(gateway, job, grouping_key={"instance": "cron-1"}) as failed:
        raise KeyError("the remote API changed")
    assert (failed.success, failed.pushed) == (False, True)
    second = _samples(gateway, job, "cron-1")
    assert second[(LAST_RUN_SUCCESS, ())] == 0.0
    assert second[(LAST_SUCCESS, ())] == first[(LAST_SUCCESS, ())]
    assert second[(LAST_DURATION, ())] == pytest.approx(failed.duration_seconds)


def test_a_failed_push_is_told_never_raised_unless_asked(caplog):
    """Nothing listens: push_job_metrics returns False and logs; batch_job says so, and raises only on request."""
    nowhere = f"127.0.0.1:{free_port()}"
    with caplog.at_level(logging.ERROR, logger="bizmetrics"):
        assert push_job_metrics(nowhere, "nightly", timeout=2) is False
    assert f"pushing job 'nightly' to {nowhere} failed" in caplog.text

    with batch_job(nowhere, "nightly", timeout=2) as run:
        pass
    assert (run.success, run.pushed) == (True, False)

    with (
        pytest.raises(PushError, match="pushing batch job 'nightly'"),
        batch_job(nowhere, "nightly", timeout=2, raise_on_push_failure=True),
    ):
        pass
    # The block's own exception wins over a failed push.
    with pytest.raises(ZeroDivisionError), batch_job(nowhere, "nightly", timeout=2, raise_on_push_failure=True):
        1 / 0  # noqa: B018


@pytest.mark.slow
def test_pushed_metrics_pass_promtool_check_metrics(gateway):
    """``promtool check metrics`` finds no problem in what a batch job pushes (seconds, not milliseconds)."""
    job = unique("job")
    with batch_job(gateway, job, grouping_key={"instance": "cron-1"}):
        bizmetrics.record_connector_sync("wordpress", "posts", 1, unique("t"))
    exposition = get(f"http://{gateway}/metrics")
    ours = {LAST_RUN_SUCCESS, LAST_DURATION, LAST_SUCCESS} | {
        family.name for family in text_string_to_metric_families(exposition) if family.name.startswith("connector_")
    }
    done = subprocess.run([binary("promtool"), "check", "metrics"], input=exposition, capture_output=True, text=True)
    problems = [line for line in (done.stdout + done.stderr).splitlines() if line.split(" ", 1)[0] in ours]
    assert problems == []
    # The check can fail: the former name, in milliseconds, is reported.
    old = "".join(f"{line}\n" for line in ("# HELP x_ms Duration", "# TYPE x_ms gauge", "x_ms 5")).replace(
        "x_ms", "batch_job_last_duration_ms"
    )
    flagged = subprocess.run([binary("promtool"), "check", "metrics"], input=old, capture_output=True, text=True)
    assert "batch_job_last_duration_ms" in flagged.stdout + flagged.stderr
    assert json.loads(get(f"http://{gateway}/api/v1/metrics"))["status"] == "success"
