"""Cost: prices by model and token type, both cache conventions, unpriced tokens, provider cost, budgets."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.registry import exists, unique, value

import bizmetrics
from bizmetrics import _families, _pricing, _tenants, instrument_agent

GPT = {"input": 2.5, "cache_read": 1.25, "cache_write": 3.0, "output": 10.0, "reasoning": 12.0}
CLAUDE = {"input": 3.0, "cache_read": 0.3, "cache_write": 3.75, "output": 15.0, "reasoning": 15.0}


@pytest.fixture(autouse=True)
def _no_prices() -> Iterator[None]:
    """Each test sets its own prices; none leak into the next."""
    yield
    _pricing.set_prices({})
    _families._UNPRICED_LOGGED.clear()


def cost(agent: str, model: str, tenant: str = "acme", currency: str = "USD") -> float:
    return value("agent_cost_total", agent_id=agent, model=model, tenant_id=tenant, currency=currency)


def unpriced(agent: str, model: str, kind: str, tenant: str = "acme") -> float:
    return value("agent_unpriced_tokens_total", agent_id=agent, model=model, token_type=kind, tenant_id=tenant)


def openai_response(model: str, prompt: int, cached: int, completion: int, reasoning: int) -> dict[str, Any]:
    """An OpenAI Chat Completions response: cached tokens inside prompt tokens, reasoning inside completion."""
    return {
        "model": model,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        },
    }


def anthropic_response(model: str, fresh: int, read: int, written: int, output: int) -> dict[str, Any]:
    """An Anthropic Messages response: cache reads and writes outside input tokens."""
    return {
        "type": "message",
        "model": model,
        "content": [],
        "usage": {
            "input_tokens": fresh,
            "output_tokens": output,
            "cache_read_input_tokens": read,
            "cache_creation_input_tokens": written,
        },
    }


def reference_openai(p: dict[str, float], prompt: int, cached: int, completion: int, reasoning: int) -> float:
    """The bill as OpenAI writes it: cached prompt tokens at the cached price, reasoning at its own."""
    return (
        (prompt - cached) * p["input"]
        + cached * p["cache_read"]
        + (completion - reasoning) * p["output"]
        + reasoning * p["reasoning"]
    ) / 1e6


def reference_anthropic(p: dict[str, float], fresh: int, read: int, written: int, output: int) -> float:
    """The bill as Anthropic writes it: input, cache reads and cache writes are three disjoint counts."""
    return (fresh * p["input"] + read * p["cache_read"] + written * p["cache_write"] + output * p["output"]) / 1e6


def answer(response: dict[str, Any]) -> str:
    """Call an instrumented agent that returns ``response``; return the agent id."""
    agent = unique("agent")
    with bizmetrics.tenant_context("acme"):
        instrument_agent(agent)(lambda: response)()
    return agent


counts = st.integers(0, 2_000_000)
prices = st.fixed_dictionaries({kind: st.floats(0, 100, allow_nan=False) for kind in _pricing.PRICED_TYPES})


@given(prices, counts, counts, counts, counts)
def test_openai_cached_and_reasoning_tokens_are_priced_once(price, prompt, cached, completion, reasoning):
    cached, reasoning = min(cached, prompt), min(reasoning, completion)
    bizmetrics.set_prices({"gpt-4o": price})
    agent = answer(openai_response("gpt-4o", prompt, cached, completion, reasoning))
    expected = reference_openai(price, prompt, cached, completion, reasoning)
    assert cost(agent, "gpt-4o") == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert not exists(
        "agent_unpriced_tokens_total", agent_id=agent, model="gpt-4o", token_type="input", tenant_id="acme"
    )


@given(prices, counts, counts, counts, counts)
def test_anthropic_cache_reads_and_writes_are_priced_once(price, fresh, read, written, output):
    bizmetrics.set_prices({"claude-sonnet-4": price})
    agent = answer(anthropic_response("claude-sonnet-4", fresh, read, written, output))
    expected = reference_anthropic(price, fresh, read, written, output)
    assert cost(agent, "claude-sonnet-4") == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_a_cached_token_is_not_priced_as_input_as_well():
    """10 000 prompt tokens, 8 000 of them cached: 2 000 at the input price, 8 000 at the cached price."""
    bizmetrics.set_prices({"gpt-4o": {"input": 2.5, "cache_read": 1.25, "output": 10}})
    agent = answer(openai_response("gpt-4o", 10_000, 8_000, 0, 0))
    assert cost(agent, "gpt-4o") == pytest.approx((2_000 * 2.5 + 8_000 * 1.25) / 1e6)
    claude = answer(anthropic_response("claude-x", 1_000, 8_000, 500, 0))
    assert cost(claude, "claude-x") == 0  # no price for it


def test_reasoning_without_a_price_of_its_own_is_priced_as_output():
    bizmetrics.set_prices({"o3": {"input": 2, "output": 8}})
    agent = answer(openai_response("o3", 1_000, 0, 500, 300))
    assert cost(agent, "o3") == pytest.approx((1_000 * 2 + 500 * 8) / 1e6)
    assert unpriced(agent, "o3", "reasoning") == 0


def test_the_longest_listed_prefix_prices_a_model_and_an_exact_name_wins():
    bizmetrics.set_prices(
        {
            "gpt-4o": {"input": 2.5, "output": 10},
            "gpt-4o-mini": {"input": 0.15, "output": 0.6},
            "gpt-4o-mini-2024-07-18": {"input": 1, "output": 1},
        }
    )
    dated = answer(openai_response("gpt-4o-2024-08-06", 1_000_000, 0, 0, 0))
    assert cost(dated, "gpt-4o-2024-08-06") == pytest.approx(2.5)
    mini = answer(openai_response("gpt-4o-mini-2025-01-01", 1_000_000, 0, 0, 0))
    assert cost(mini, "gpt-4o-mini-2025-01-01") == pytest.approx(0.15)
    exact = answer(openai_response("gpt-4o-mini-2024-07-18", 1_000_000, 0, 0, 0))
    assert cost(exact, "gpt-4o-mini-2024-07-18") == pytest.approx(1)
    other = answer(openai_response("gpt-4", 1_000_000, 0, 0, 0))
    assert cost(other, "gpt-4") == 0
    assert unpriced(other, "gpt-4", "input") == 1_000_000


def test_tokens_without_a_price_are_counted_apart_and_logged_once_per_model(caplog):
    bizmetrics.set_prices({"claude-x": {"input": 3, "output": 15}})
    caplog.set_level(logging.WARNING, "bizmetrics")
    agent = answer(anthropic_response("claude-x", 100, 30, 20, 50))
    answer(anthropic_response("claude-x", 100, 30, 20, 50))
    # Priced: fresh input and output; the cache types have no price here, and are not priced at 0.
    assert cost(agent, "claude-x") == pytest.approx((100 * 3 + 50 * 15) / 1e6)
    assert (unpriced(agent, "claude-x", "cache_read"), unpriced(agent, "claude-x", "cache_write")) == (30, 20)
    assert unpriced(agent, "claude-x", "input") == 0
    unknown = answer(openai_response("mystery", 7, 0, 3, 0))
    assert not exists("agent_cost_total", agent_id=unknown, model="mystery", tenant_id="acme", currency="USD")
    assert (unpriced(unknown, "mystery", "input"), unpriced(unknown, "mystery", "output")) == (7, 3)
    lines = [r.getMessage() for r in caplog.records if "has no price" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "'claude-x'" in lines[0] and "cache_read" in lines[0] and "'mystery'" in lines[1]


def test_a_bare_token_count_has_no_price():
    bizmetrics.set_prices({"gpt-4o": GPT})
    agent = unique("agent")
    bizmetrics.record_agent_invocation(agent, 10, 120, True, "acme", model="gpt-4o")
    assert unpriced(agent, "gpt-4o", "untyped") == 120
    assert not exists("agent_cost_total", agent_id=agent, model="gpt-4o", tenant_id="acme", currency="USD")


def test_a_cost_the_response_reports_is_counted_as_given():
    bizmetrics.set_prices({"gpt-4o": GPT})
    response = openai_response("gpt-4o", 1_000, 0, 100, 0)
    response["usage"]["cost"] = 0.0123
    agent = answer(response)
    assert cost(agent, "gpt-4o") == pytest.approx(0.0123)
    # Even without a price table entry: the provider's figure needs none.
    other = openai_response("unlisted", 1_000, 0, 100, 0)
    other["usage"]["cost"] = 0.5
    unlisted = answer(other)
    assert cost(unlisted, "unlisted") == pytest.approx(0.5)
    assert unpriced(unlisted, "unlisted", "input") == 0


def test_replacing_prices_prices_new_tokens_only():
    bizmetrics.set_prices({"gpt-4o": {"input": 2, "output": 10}})
    agent = unique("agent")
    instrumented = instrument_agent(agent)(lambda: openai_response("gpt-4o", 1_000_000, 0, 0, 0))

    def call() -> None:
        with bizmetrics.tenant_context("acme"):
            instrumented()

    call()
    assert cost(agent, "gpt-4o") == pytest.approx(2)
    bizmetrics.set_prices({"gpt-4o": {"input": 5, "output": 10}}, currency="USD")
    assert cost(agent, "gpt-4o") == pytest.approx(2)  # counted money is never re-priced
    call()
    assert cost(agent, "gpt-4o") == pytest.approx(7)
    bizmetrics.set_prices({"gpt-4o": {"input": 4}}, currency="EUR")
    call()
    assert cost(agent, "gpt-4o") == pytest.approx(7)
    assert cost(agent, "gpt-4o", currency="EUR") == pytest.approx(4)


@pytest.mark.parametrize("currency", ["", None, 978])
def test_a_currency_that_is_no_code_is_logged_and_usd_is_used(currency: Any, caplog):
    """``set_prices(..., currency=)`` with something that is not a currency code: a warning, and USD."""
    with caplog.at_level("WARNING", logger="bizmetrics"):
        bizmetrics.set_prices({"gpt-4o": {"input": 3}}, currency=currency)
    assert f"currency {currency!r} is not a currency code; using USD" in caplog.text
    agent = unique("agent")
    with bizmetrics.tenant_context("acme"):
        instrument_agent(agent)(lambda: openai_response("gpt-4o", 1_000_000, 0, 0, 0))()
    assert cost(agent, "gpt-4o", currency="USD") == pytest.approx(3)


def test_report_usage_and_record_agent_invocation_are_priced():
    bizmetrics.set_prices({"gpt-4o": GPT, "claude": CLAUDE})
    agent = unique("agent")

    @instrument_agent(agent)
    def chat(tenant_id: str) -> str:
        bizmetrics.report_usage({"input": 1_000, "cache_read": 400, "output": 100}, model="gpt-4o")
        return "text"

    chat("acme")
    assert cost(agent, "gpt-4o") == pytest.approx((600 * 2.5 + 400 * 1.25 + 100 * 10) / 1e6)
    other = unique("agent")
    usage = {"input": 1_000, "cache_read": 300, "cache_write": 200, "output": 100, "reasoning": 40}
    bizmetrics.record_agent_invocation(other, 5, 1_100, True, "acme", model="claude-3", usage=usage)
    expected = (500 * 3 + 300 * 0.3 + 200 * 3.75 + 60 * 15 + 40 * 15) / 1e6
    assert cost(other, "claude-3") == pytest.approx(expected)


def test_cost_goes_through_the_tenant_cap(monkeypatch):
    monkeypatch.setattr(_tenants, "ADMISSION", _tenants.Admission(None))
    bizmetrics.limit_tenants(1)
    bizmetrics.set_prices({"gpt-4o": GPT})
    agent = unique("agent")
    first, second = unique("tenant"), unique("tenant")
    for tenant in (first, second, second):
        with bizmetrics.tenant_context(tenant):
            instrument_agent(agent)(lambda: openai_response("gpt-4o", 1_000_000, 0, 0, 0))()
    assert cost(agent, "gpt-4o", first) == pytest.approx(2.5)
    assert cost(agent, "gpt-4o", bizmetrics.OVERFLOW_TENANT) == pytest.approx(5)
    assert not exists("agent_cost_total", agent_id=agent, model="gpt-4o", tenant_id=second, currency="USD")


def test_load_prices_reads_both_file_forms(tmp_path):
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"gpt-4o": {"input": 2.5, "output": 10}}))
    bizmetrics.load_prices(bare)
    assert (_pricing.current().currency, _pricing.current().lookup("gpt-4o-x")) == ("USD", {"input": 2.5, "output": 10})
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"currency": "EUR", "prices": {"m": {"output": 1}}}))
    bizmetrics.load_prices(wrapped)
    assert (_pricing.current().currency, _pricing.current().lookup("gpt-4o")) == ("EUR", None)


def test_bad_prices_are_logged_and_never_raised(tmp_path, caplog):
    caplog.set_level(logging.WARNING, "bizmetrics")
    bizmetrics.load_prices(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{")
    bizmetrics.load_prices(tmp_path / "broken.json")
    bizmetrics.set_prices({"m": {"input": -1, "output": "x", "bogus": 1, "cache_read": 0.5}, "": {}, "n": 3})  # type: ignore[dict-item]
    assert _pricing.current().prices == {"m": {"cache_read": 0.5}}
    bizmetrics.set_prices(None)  # type: ignore[arg-type]
    assert _pricing.current().prices == {}
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) >= 6


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120, check=True
    )


def test_bizmetrics_prices_is_loaded_at_import(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"currency": "EUR", "prices": {"gpt-4o": {"input": 2.5, "output": 10}}}))
    code = """
        import bizmetrics
        usage = {"input": 4e5, "output": 1e5}
        bizmetrics.record_agent_invocation("a", 1, 0, True, "t", model="gpt-4o-2024", usage=usage)
        from prometheus_client import REGISTRY
        print(REGISTRY.get_sample_value(
            "agent_cost_total", {"agent_id": "a", "model": "gpt-4o-2024", "tenant_id": "t", "currency": "EUR"}))
    """
    assert float(_run(code, {**os.environ, "BIZMETRICS_PRICES": str(path)}).stdout) == pytest.approx(2.0)


def test_set_budget_exposes_the_budget_and_refuses_bad_ones(caplog):
    tenant = unique("tenant")
    bizmetrics.set_budget(tenant, 500)
    bizmetrics.set_budget(tenant, 20, period="day", currency="EUR")
    assert value("bizmetrics_tenant_budget", tenant_id=tenant, period="month", currency="USD") == 500
    assert value("bizmetrics_tenant_budget", tenant_id=tenant, period="day", currency="EUR") == 20
    bizmetrics.set_budget(tenant, 400)
    assert value("bizmetrics_tenant_budget", tenant_id=tenant, period="month", currency="USD") == 400
    caplog.set_level(logging.WARNING, "bizmetrics")
    bizmetrics.set_budget(tenant, -1)
    bizmetrics.set_budget(tenant, float("nan"))
    bizmetrics.set_budget(tenant, 10, period="week")
    assert value("bizmetrics_tenant_budget", tenant_id=tenant, period="month", currency="USD") == 400
    assert not exists("bizmetrics_tenant_budget", tenant_id=tenant, period="week", currency="USD")
    assert len(caplog.records) == 3


WORKER = """
    import sys, threading
    import bizmetrics
    bizmetrics.set_prices({"gpt-4o": {"input": 2.5, "cache_read": 1.25, "output": 10}})
    bizmetrics.set_budget("t1", 250)

    def work():
        for _ in range(200):
            bizmetrics.record_agent_invocation(
                "mp", 1, 0, True, "t1", model="gpt-4o", usage={"input": 1000, "cache_read": 400, "output": 100}
            )
            bizmetrics.record_agent_invocation("mp", 1, 0, True, "t1", model="other", usage={"input": 3})

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
"""


@pytest.mark.slow
def test_cost_is_exact_and_the_budget_not_summed_in_multiprocess_mode(tmp_path: Path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    workers = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(WORKER)], env=env, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
    code = """
        from bizmetrics import multiprocess
        reg = multiprocess.registry()
        labels = {"agent_id": "mp", "tenant_id": "t1"}
        print(reg.get_sample_value("agent_cost_total", {**labels, "model": "gpt-4o", "currency": "USD"}))
        print(reg.get_sample_value("agent_unpriced_tokens_total", {**labels, "model": "other", "token_type": "input"}))
        budget = {"tenant_id": "t1", "period": "month", "currency": "USD"}
        print(reg.get_sample_value("bizmetrics_tenant_budget", budget))
    """
    money, unpriced_tokens, budget = map(float, _run(code, env).stdout.split())
    calls = 3 * 4 * 200
    assert money == pytest.approx(calls * (600 * 2.5 + 400 * 1.25 + 100 * 10) / 1e6, rel=1e-12)
    assert unpriced_tokens == calls * 3
    assert budget == 250


README = Path(__file__).resolve().parent.parent / "docs" / "guides" / "agents.md"


def test_readme_worked_example_matches_the_counter():
    """The agents guide's day of usage, run as written: the counter says what the hand-priced table says."""
    section = README.read_text().split("### A day of usage, priced by hand", 1)[1].split("\n### ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    stated = re.findall(r"^(agent_cost_total\{.*\}) ([\d.]+)$", section, re.M)
    assert len(stated) == 2
    hand = (
        1000 * (400 * 2.5 + 800 * 1.25 + 300 * 10) / 1e6 + 200 * (500 * 3 + 2000 * 0.3 + 1000 * 3.75 + 800 * 15) / 1e6
    )
    assert "**8.57 USD**" in section and hand == pytest.approx(8.57)
    assert sum(float(v) for _, v in stated) == pytest.approx(hand)
    read = "\nfrom prometheus_client import REGISTRY, generate_latest\nprint(generate_latest(REGISTRY).decode())\n"
    exposed = _run(code + read, dict(os.environ)).stdout
    for series, amount in stated:
        found = re.search(rf"^{re.escape(series)} (\S+)$", exposed, re.M)
        assert found, series
        assert float(found.group(1)) == pytest.approx(float(amount), rel=1e-12)


def test_a_stream_of_two_model_calls_prices_each_call_under_its_model():
    """Anthropic raw events: each message_start begins a call, its cache reads priced apart from its input."""
    bizmetrics.set_prices({"claude-a": CLAUDE, "claude-b": {"input": 1, "output": 2}})
    agent = unique("agent")

    def start(model: str, fresh: int, read: int) -> dict[str, Any]:
        usage = {"input_tokens": fresh, "output_tokens": 1, "cache_read_input_tokens": read}
        return {"type": "message_start", "message": {"model": model, "usage": usage}}

    @instrument_agent(agent)
    def stream(tenant_id: str) -> Iterator[dict[str, Any]]:
        yield start("claude-a", 100, 1_000)
        yield {"type": "message_delta", "usage": {"output_tokens": 50}}
        yield start("claude-b", 10, 0)
        yield {"type": "message_delta", "usage": {"output_tokens": 5}}

    list(stream("acme"))
    assert cost(agent, "claude-a") == pytest.approx((100 * 3 + 1_000 * 0.3 + 50 * 15) / 1e6)
    assert cost(agent, "claude-b") == pytest.approx((10 * 1 + 5 * 2) / 1e6)
