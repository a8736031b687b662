"""Batch jobs against a real Pushgateway: counters add up across runs, the run gauges, and push failures."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import random
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from support.registry import unique
from support.servers import batch_run, binary, free_port, get, pushgateway, wait
from support.strategies import grouping_values

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
        assert push_job_metrics(nowhere, "nightly", timeout=2, retries=0) is False
    assert f"pushing job 'nightly' to {nowhere} failed" in caplog.text

    with batch_job(nowhere, "nightly", timeout=2, retries=0) as run:
        pass
    assert (run.success, run.pushed, run.spooled) == (True, False, False)

    with (
        pytest.raises(PushError, match="pushing batch job 'nightly'"),
        batch_job(nowhere, "nightly", timeout=2, raise_on_push_failure=True, retries=0),
    ):
        pass
    # The block's own exception wins over a failed push.
    with (
        pytest.raises(ZeroDivisionError),
        batch_job(nowhere, "nightly", timeout=2, raise_on_push_failure=True, retries=0),
    ):
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


# --- Grouping keys, retries and the spool ----------------------------------------------------------

#: One run of a batch job in a fresh process, as cron runs it: records syncs for tenants, then
#: pushes with the given options; prints what the run says of its push.
RUN = """
import json, sys
import bizmetrics
from bizmetrics.batch import batch_job
args = json.loads(sys.argv[1])
with batch_job(args["gateway"], args["job"], **args["options"]) as run:
    for tenant, records in args["records"]:
        bizmetrics.record_connector_sync("wordpress", "posts", records, tenant)
print(json.dumps({"pushed": run.pushed, "spooled": run.spooled}))
"""


def run_job(gateway: str, job: str, records: list[tuple[str, int]], **options: object) -> dict[str, object]:
    """Run one run of ``job`` in a new process; return its ``pushed``, ``spooled`` and its log (``log``)."""
    args = {"gateway": gateway, "job": job, "records": records, "options": options}
    done = subprocess.run([sys.executable, "-c", RUN, json.dumps(args)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    outcome: dict[str, object] = json.loads(done.stdout)
    outcome["log"] = done.stderr
    return outcome


def records(gateway: str, job: str, tenant: str, **group: object) -> float | None:
    """The records ``RUN`` synced for ``tenant``, in the group ``job`` + ``group``, as the Pushgateway exposes them."""
    want = {"job": job, "tenant_id": tenant, "connector_type": "wordpress", "resource_type": "posts"}
    want.update((k, str(v)) for k, v in group.items())
    found = []
    for family in text_string_to_metric_families(get(f"http://{gateway}/metrics")):
        for s in family.samples:
            extra = set(s.labels) - set(want) - {"instance"}
            if s.name == "connector_sync_records_total" and want.items() <= s.labels.items() and not extra:
                found.append(s.value)
    assert len(found) <= 1, found
    return found[0] if found else None


def spool_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix == ".json")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("key", "value"),
    [("tenant_id", None), ("shard", 3)],
    ids=["label-of-the-catalogue", "non-text-value"],
)
def test_grouping_keys_on_a_catalogue_label_or_with_a_non_text_value_add_up_across_runs(gateway, key, value):
    """``{"tenant_id": t}`` (a catalogue label) and ``{"shard": 3}`` add up over three runs, as ``instance`` does."""
    job, tenant = unique("job"), unique("t")
    group = {key: tenant if value is None else value}
    seen = []
    for count in (47, 10, 5):
        # Another tenant's series cannot be pushed into a tenant's group: left out, with a warning.
        outcome = run_job(gateway, job, [(tenant, count), ("someone_else", 1)], grouping_key=group)
        assert (outcome["pushed"], outcome["spooled"]) == (True, False), outcome["log"]
        seen.append(records(gateway, job, tenant, **group))
    assert seen == [47.0, 57.0, 62.0]
    if key == "tenant_id":
        assert "are not pushed into this group" in str(outcome["log"])
        assert records(gateway, job, "someone_else") is None
    else:
        assert records(gateway, job, "someone_else", **group) == 3.0


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(value=grouping_values, first=st.integers(1, 1000), second=st.integers(0, 1000))
def test_any_grouping_value_adds_up_across_pushes(gateway, value, first, second):
    """Whatever the grouping value (number, bool, text with ``/`` or none), a second push adds to the first."""
    job, tenant = unique("job"), unique("t")
    bizmetrics.record_connector_sync("hubspot", "deals", first, tenant)
    assert push_job_metrics(gateway, job, grouping_key={"shard": value}) is True
    bizmetrics.record_connector_sync("hubspot", "deals", second, tenant)
    assert push_job_metrics(gateway, job, grouping_key={"shard": value}) is True
    body = json.loads(get(f"http://{gateway}/api/v1/metrics"))
    [entry] = [e for e in body["data"] if e["labels"]["job"] == job]
    assert entry["labels"].get("shard", "") == str(value)
    series = entry["connector_sync_records_total"]["metrics"]
    assert [float(m["value"]) for m in series if m["labels"].get("tenant_id") == tenant] == [first + second]


class FlakyGateway:
    """A loopback HTTP server in front of a real Pushgateway: reads pass, pushes fail as told.

    ``mode`` is ``"503"`` (pushes answered 503, not applied), ``"hang"`` (pushes
    never answered, not applied) or ``"applied-hang"`` (pushes applied by the
    real Pushgateway, but the answer never comes).
    """

    def __init__(self, upstream: str, mode: str) -> None:
        self.upstream, self.mode, self.pushes = upstream, mode, 0
        self.release = threading.Event()
        flaky = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.relay()

            def do_POST(self) -> None:
                flaky.pushes += 1
                if flaky.mode == "503":
                    self.send_error(503, "overloaded")
                    return
                if flaky.mode == "applied-hang":
                    self.relay(answer=False)
                flaky.release.wait(60)  # the client gives up first: a timeout

            def relay(self, answer: bool = True) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                request = urllib.request.Request(
                    f"http://{flaky.upstream}{self.path}", data=body or None, method=self.command
                )
                if self.headers.get("Content-Type"):
                    request.add_header("Content-Type", self.headers["Content-Type"])
                with urllib.request.urlopen(request, timeout=10) as resp:
                    status, payload = resp.status, resp.read()
                if answer:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FlakyGateway:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_a_run_while_the_gateway_is_down_is_spooled_and_the_next_run_adds_it(tmp_path):
    """Gateway up, down, up again (its persistence file kept): runs of 47, 10, 5 records show 47, then 62; none lost."""
    port, spool = free_port(), tmp_path / "spool"
    address, job, tenant = f"127.0.0.1:{port}", unique("job"), unique("t")
    options = {"grouping_key": {"instance": "cron-1"}, "spool_dir": str(spool), "retries": 1, "backoff": 0.1}
    with pushgateway(port, tmp_path) as proc:
        wait(lambda: get(f"http://{address}/-/ready"), "the Pushgateway", proc=proc)
        assert run_job(address, job, [(tenant, 47)], **options)["pushed"] is True
    assert spool_files(spool) == []
    down = run_job(address, job, [(tenant, 10)], **options)
    assert (down["pushed"], down["spooled"]) == (False, True)
    assert "attempt 2 of 2" in str(down["log"]) and "its counts are kept in" in str(down["log"])
    assert len(spool_files(spool)) == 1
    with pushgateway(port, tmp_path) as proc:
        wait(lambda: get(f"http://{address}/-/ready"), "the Pushgateway", proc=proc)
        assert records(address, job, tenant, instance="cron-1") == 47.0, "the persistence file kept the first run"
        assert run_job(address, job, [(tenant, 5)], **options)["pushed"] is True
        assert records(address, job, tenant, instance="cron-1") == 62.0
        assert spool_files(spool) == [], "consumed once pushed"
        assert run_job(address, job, [], **options)["pushed"] is True
        assert records(address, job, tenant, instance="cron-1") == 62.0, "never added twice"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["503", "hang"])
def test_a_push_answered_5xx_or_timing_out_is_retried_then_spooled_for_the_next_run(gateway, tmp_path, mode):
    """Pushes answered 503, or never answered, are retried ``retries`` times, then kept; the next run adds them."""
    job, tenant = unique("job"), unique("t")
    options = {"spool_dir": str(tmp_path), "retries": 2, "backoff": 0.05, "timeout": 1}
    with FlakyGateway(gateway, mode) as flaky:
        failed = run_job(flaky.address, job, [(tenant, 7)], **options)
        assert flaky.pushes == 3, "the first attempt and 2 retries"
    assert (failed["pushed"], failed["spooled"]) == (False, True)
    assert records(gateway, job, tenant) is None
    assert run_job(gateway, job, [(tenant, 5)], **options)["pushed"] is True
    assert records(gateway, job, tenant) == 12.0
    assert spool_files(tmp_path) == []


@pytest.mark.slow
def test_a_push_the_gateway_applied_but_never_answered_is_not_counted_twice(gateway, tmp_path):
    """The answer to an applied push is lost (twice): the retry and the next run do not add its counts again."""
    job, tenant = unique("job"), unique("t")
    options = {"spool_dir": str(tmp_path), "retries": 1, "backoff": 0.05, "timeout": 1}
    assert run_job(gateway, job, [(tenant, 40)], **options)["pushed"] is True
    with FlakyGateway(gateway, "applied-hang") as flaky:
        lost = run_job(flaky.address, job, [(tenant, 7)], **options)
        assert flaky.pushes == 2
    assert (lost["pushed"], lost["spooled"]) == (False, True)
    assert records(gateway, job, tenant) == 47.0, "the same absolute values were pushed twice, not 7 added twice"
    assert run_job(gateway, job, [(tenant, 5)], **options)["pushed"] is True
    assert records(gateway, job, tenant) == 52.0
    assert spool_files(tmp_path) == []


def test_a_corrupt_spool_file_is_set_aside_with_a_warning(gateway, tmp_path, caplog):
    """A spool file cut short is renamed aside and logged, never half-read; the push goes on without it."""
    job, tenant = unique("job"), unique("t")
    nowhere = f"127.0.0.1:{free_port()}"
    bizmetrics.record_connector_sync("wordpress", "posts", 9, tenant)
    with batch_job(nowhere, job, spool_dir=tmp_path, retries=0, grouping_key={"tenant_id": tenant}) as failed:
        pass
    assert (failed.pushed, failed.spooled) == (False, True)
    [spooled] = spool_files(tmp_path)
    spooled.write_text(spooled.read_text()[:-7])  # as if cut short
    bizmetrics.record_connector_sync("wordpress", "posts", 2, tenant)
    with caplog.at_level(logging.WARNING, logger="bizmetrics"):
        with batch_job(gateway, job, spool_dir=tmp_path, retries=0, grouping_key={"tenant_id": tenant}) as run:
            pass
    assert (run.pushed, run.spooled) == (True, False)
    assert f"spool file {spooled} cannot be read" in caplog.text
    assert spool_files(tmp_path) == []
    assert [p.name.split(".unreadable-")[0] for p in tmp_path.glob("*.unreadable-*")] == [spooled.name]
    assert records(gateway, job, tenant) == 2.0, "the set-aside 9 are not pushed"


def test_spooled_counts_of_jobs_and_groups_never_mix(gateway, tmp_path):
    """Two jobs and two groups spooled in one directory: each next push takes its own counts only."""
    nowhere = f"127.0.0.1:{free_port()}"
    a, b = unique("job"), unique("job")
    runs = [(a, unique("t"), 3), (a, unique("t"), 4), (b, unique("t"), 5)]
    for target in (nowhere, gateway):
        for job, tenant, count in runs:
            if target == nowhere:
                bizmetrics.record_connector_sync("wordpress", "posts", count, tenant)
            key = {"tenant_id": tenant}
            pushed = push_job_metrics(target, job, grouping_key=key, spool_dir=tmp_path, retries=0)
            assert pushed is (target == gateway)
        assert len(spool_files(tmp_path)) == (3 if target == nowhere else 0)
    for job, tenant, count in runs:
        assert [records(gateway, j, tenant) for j in (a, b)] == [count if j == job else None for j in (a, b)]


@pytest.mark.slow
def test_concurrent_runs_sharing_a_spool_dir_count_every_record_once(gateway, tmp_path):
    """Six runs at once with the gateway down, then six at once with it up: every record counted exactly once."""
    job, tenant = unique("job"), unique("t")
    nowhere = f"127.0.0.1:{free_port()}"
    options = {"spool_dir": str(tmp_path), "retries": 0}
    for target, counts in ((nowhere, (1, 2, 3, 4, 5, 6)), (gateway, (10, 20, 30, 40, 50, 60))):
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            outcomes = list(pool.map(lambda n, target=target: run_job(target, job, [(tenant, n)], **options), counts))
        assert all(o["pushed"] is (target == gateway) for o in outcomes), [o["log"] for o in outcomes]
    assert records(gateway, job, tenant) == 21.0 + 210.0
    assert spool_files(tmp_path) == []


#: Records one record and pushes to a dead gateway with a spool, over and over, saying how many pushes returned.
SPOOL_LOOP = """
import sys
import bizmetrics
from bizmetrics.batch import push_job_metrics
nowhere, job, tenant, spool = sys.argv[1:]
for n in range(1, 100000):
    bizmetrics.record_connector_sync("wordpress", "posts", 1, tenant)
    for i in range(200):  # many series: a long spool file
        bizmetrics.record_connector_sync("wordpress", f"r{i}", 1, tenant)
    push_job_metrics(nowhere, job, spool_dir=spool, retries=0)
    print(n, flush=True)
"""


@pytest.mark.slow
def test_a_run_killed_while_spooling_never_leaves_a_half_written_spool(gateway, tmp_path):
    """``kill -9`` at any moment of spooling: the next run reads a whole spool, and adds exactly what was spooled."""
    nowhere = f"127.0.0.1:{free_port()}"
    rng = random.Random(5)
    for attempt in range(8):
        job, tenant, spool = unique("job"), unique("t"), tmp_path / str(attempt)
        with subprocess.Popen(
            [sys.executable, "-c", SPOOL_LOOP, nowhere, job, tenant, str(spool)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        ) as proc:
            assert proc.stdout is not None
            for _ in range(2 + attempt):
                done = int(proc.stdout.readline())
            time.sleep(rng.uniform(0, 0.01))  # somewhere in the next round: recording, reading, writing the spool
            proc.kill()
            done = max([done, *(int(line) for line in proc.stdout.read().split())])
        outcome = run_job(gateway, job, [], spool_dir=str(spool), retries=0)
        assert outcome["pushed"] is True and "cannot be read" not in str(outcome["log"]), outcome["log"]
        # The push that was cut short had either replaced the spool or not.
        assert records(gateway, job, tenant) in (float(done), float(done + 1))


def test_bad_retries_and_backoff_fall_back_to_the_defaults_with_a_warning(caplog):
    """``retries=-1`` or ``backoff=nan`` are not numbers >= 0: the defaults are used and said, nothing raised."""
    from bizmetrics import _log

    _log.reset()
    nowhere = f"127.0.0.1:{free_port()}"
    with caplog.at_level(logging.WARNING, logger="bizmetrics"):
        assert push_job_metrics(nowhere, "nightly", retries=-1, backoff=0.0, timeout=2) is False
        assert push_job_metrics(nowhere, "nightly", retries=0, backoff=float("nan"), timeout=2) is False
    assert "retries=-1 is not a number >= 0; using 3" in caplog.text
    assert "attempt 4 of 4" in caplog.text
    assert "backoff=nan is not a number >= 0; using 0.5" in caplog.text


def test_a_spool_dir_that_cannot_be_used_is_said_and_the_push_goes_on(gateway, tmp_path, caplog):
    """``spool_dir`` names a file, not a directory: a warning, and the push works without a spool."""
    job, tenant = unique("job"), unique("t")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    bizmetrics.record_connector_sync("wordpress", "posts", 4, tenant)
    with caplog.at_level(logging.WARNING, logger="bizmetrics"):
        with batch_job(gateway, job, spool_dir=not_a_dir, grouping_key={"tenant_id": tenant}) as run:
            pass
    assert (run.pushed, run.spooled) == (True, False)
    assert f"spool directory {not_a_dir} is not usable" in caplog.text
    assert records(gateway, job, tenant) == 4.0
