"""The main job: ``python -m bizmetrics demo`` serves every family over HTTP."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_metrics import CATALOGUE


def _ctrl_c_delivered() -> None:
    """In the child: SIGINT handled by default and not blocked, whatever this test process inherited or set.

    An in-process worker of another test (RQ's) takes SIGINT over, a background CI shell ignores it, and a
    blocked signal stays blocked across exec: the demo must see Ctrl-C as a user's terminal sends it.
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def demo(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run the demo on a free port; yield the process and its /metrics URL."""
    with subprocess.Popen(
        [sys.executable, "-m", "bizmetrics", "demo", "--port", "0", "--seed", "1", *args],
        preexec_fn=_ctrl_c_delivered,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", first)
        try:
            assert match, first
            yield proc, match.group(0)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.mark.slow
def test_demo_serves_every_family_and_stops_after_duration():
    """Scraped over HTTP while it runs, the demo exposes samples of every family; it exits by itself."""
    # Scraped until every family has a sample (a loaded machine slows the demo's first rounds),
    # always before the demo's own deadline ends it.
    with demo("--duration", "8") as (proc, url):
        deadline = time.monotonic() + 6
        while True:
            with urllib.request.urlopen(url, timeout=10) as resp:
                families = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
            missing = [
                name
                for name, _, _, _ in CATALOGUE
                if name not in families
                or not any(s.value > 0 for s in families[name].samples if not s.name.endswith("_created"))
            ]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert not missing, missing
        for name, kind, _, _ in CATALOGUE:
            assert families[name].type == kind
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "done after" in out


@pytest.mark.slow
def test_demo_stops_cleanly_on_ctrl_c():
    """SIGINT (Ctrl-C) stops the demo with exit code 0 and a summary."""
    with demo() as (proc, url):
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "stopped" in out
        assert url.startswith("http://127.0.0.1:"), "binds loopback unless told otherwise"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "-5"], "argument --port: '-5' is not a port number"),
        (["--port", "70000"], "argument --port: '70000' is not a port number"),
        (["--duration", "-1"], "argument --duration: '-1' is not a positive number of seconds"),
        (["--duration", "nan"], "argument --duration: 'nan' is not a positive number of seconds"),
        (["--port", "http"], "argument --port: 'http' is not a port number"),
        (["--duration", "soon"], "argument --duration: 'soon' is not a positive number of seconds"),
    ],
)
def test_demo_refuses_bad_port_and_duration_with_a_clear_message(args: list[str], message: str, capsys):
    """Bad arguments are an argparse error (exit 2, usage and the reason), not a traceback or a demo that starts."""
    from bizmetrics.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["demo", *args])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_help_shows_the_defaults(capsys):
    from bizmetrics.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["demo", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for default in (
        "(default: 8000)",
        "(default: 127.0.0.1",
        "(default: run until Ctrl-C)",
        "(default: a random seed)",
    ):
        assert default in text


INTERRUPTED = """
import os, signal, sys
from bizmetrics import demo

calls = [0]


def create_deal(self, name):
    # Ctrl-C while the round's synchronous part runs, just before the next round's tasks start.
    calls[0] += 1
    if calls[0] == 4:
        os.kill(os.getpid(), signal.SIGINT)
    return name


demo.HubSpotConnector.create_deal = create_deal
sys.exit(demo.run(port=0, seed=1))
"""


@pytest.mark.slow
def test_demo_ctrl_c_mid_round_leaves_no_coroutine_never_awaited(tmp_path):
    """Ctrl-C lets the round finish: exit 0, a summary, and no 'coroutine ... was never awaited' warnings."""
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, preexec_fn=_ctrl_c_delivered
    )
    assert done.returncode == 0, done.stderr
    assert "stopped" in done.stdout
    assert "never awaited" not in done.stderr
    # Nothing but the notices of the models the demo leaves unpriced on purpose (README, "Cost and budgets").
    assert [line for line in done.stderr.splitlines() if "has no price for its" not in line] == []


@pytest.mark.slow
def test_demo_api_is_served_through_the_wsgi_middleware():
    """The demo's API metrics come from real HTTP requests: ours, with our tenant, are counted exactly."""
    import uuid

    tenant = f"t_{uuid.uuid4().hex[:12]}"
    with demo("--duration", "30") as (_proc, url):
        base = url.removesuffix("/metrics")
        for i in (1, 2, 3, 99):
            req = urllib.request.Request(f"{base}/api/posts/{i}", headers={"X-Tenant-ID": tenant})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    assert resp.status == 200
            except urllib.error.HTTPError as exc:
                assert (i, exc.code) == (99, 404)
        deadline = time.monotonic() + 20
        while True:
            samples = _scrape(url)
            # Ours, all four: the middleware records a request once its response is sent, so a scrape right
            # after the last answer may come before its record.
            ours = ("tenant_id", tenant)
            own = sum(v for (name, labels), v in samples.items() if name == "api_requests_total" and ours in labels)
            if own == 4 and any(("tenant_id", "tenant_123") in labels for _, labels in samples):
                break
            assert time.monotonic() < deadline, "the demo sent no requests to its API"
            time.sleep(0.5)

        def api(status: str) -> float | None:
            labels = {"method": "GET", "endpoint": "/api/posts/{id}", "status": status, "tenant_id": tenant}
            return samples.get(("api_requests_total", tuple(sorted(labels.items()))))

        assert api("200") == 3
        assert api("404") == 1
        assert api("500") == 0
        assert not any(("endpoint", "/metrics") in labels for _, labels in samples), "/metrics is excluded"


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


#: The demo, run in a process whose catalogue is namespaced; prints its last line, then the exposition.
NAMESPACED_RUN = """
import io, sys
from prometheus_client import generate_latest
from bizmetrics import demo
out = io.StringIO()
assert demo.run(port=0, duration=float(sys.argv[1]), seed=1, out=out) == 0
print(out.getvalue().splitlines()[-1])
print(generate_latest().decode())
"""


def test_demo_summary_counts_the_namespaced_metrics(tmp_path):
    """With ``BIZMETRICS_NAMESPACE`` set, the demo's closing summary is the sum of what it exposes, not zeros."""
    import os

    env = {**os.environ, "BIZMETRICS_NAMESPACE": "acme"}
    done = subprocess.run(
        [sys.executable, "-c", NAMESPACED_RUN, "0.5"], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    last, exposition = done.stdout.split("\n", 1)
    samples = [s for f in text_string_to_metric_families(exposition) for s in f.samples]
    assert samples and all(s.name.startswith(("acme_", "bizmetrics_", "python_", "process_")) for s in samples)

    def total(name: str, **match: str) -> int:
        found = [s.value for s in samples if s.name == f"acme_{name}" and match.items() <= s.labels.items()]
        return round(sum(found))

    expected = (
        f"connector ops {total('connector_operations_total')} "
        f"(errors {total('connector_operations_total', status='error')}), "
        f"records {total('connector_sync_records_total')}, "
        f"workflows {total('workflow_executions_total')}, "
        f"agent calls {total('agent_invocations_total')}, "
        f"tokens {total('agent_tokens_used_total')}, "
        f"api requests {total('api_requests_total')}"
    )
    assert last.endswith(expected), (last, expected)
    assert all(int(n) > 0 for n in re.findall(r"\d+", expected)), expected
