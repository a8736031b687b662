"""The demo's cost panels: its hand-recorded self-hosted model shows its tokens by type, and no phantom series."""

from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_demo import demo


@pytest.mark.slow
def test_the_demo_counts_its_unpriced_model_once_by_type():
    with demo("--duration", "4") as (proc, url):
        time.sleep(3)
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        proc.communicate(timeout=30)
    unpriced = [
        sample
        for family in text_string_to_metric_families(text)
        if family.name == "agent_unpriced_tokens"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.value > 0
    ]
    triage = {s.labels["token_type"] for s in unpriced if s.labels["agent_id"] == "triage_bot"}
    assert triage == {"input", "output"}
    # record_agent_invocation(tokens_used=..., usage=...) counted its tokens once, typed, under its model.
    assert [s.labels for s in unpriced if s.labels["model"] == "unknown" or s.labels["token_type"] == "untyped"] == []
