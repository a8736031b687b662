"""The main job: ``python -m bizmetrics demo`` serves every family over HTTP."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_catalogue import CATALOGUE


@contextmanager
def demo(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run the demo on a free port; yield the process and its /metrics URL."""
    with subprocess.Popen(
        [sys.executable, "-m", "bizmetrics", "demo", "--port", "0", "--seed", "1", *args],
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
    with demo("--duration", "4") as (proc, url):
        time.sleep(3)
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        for name, kind, _, _ in CATALOGUE:
            assert name in families, name
            assert families[name].type == kind
            assert any(s.value > 0 for s in families[name].samples if not s.name.endswith("_created")), name
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
