"""Tokens given by hand: ``record_agent_invocation(tokens_used=, usage=)`` and ``report_usage`` in every shape."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.registry import exists, unique, value
from test_pricing import reference_openai

import bizmetrics
from bizmetrics import _families, _log, _pricing, instrument_agent

GPT = {"input": 2.5, "cache_read": 1.25, "cache_write": 3.0, "output": 10.0, "reasoning": 12.0}


@pytest.fixture(autouse=True)
def _prices() -> Iterator[None]:
    bizmetrics.set_prices({"gpt-4o": GPT})
    _log.reset()
    yield
    _pricing.set_prices({})
    _families._UNPRICED_LOGGED.clear()


def cost(agent: str, model: str = "gpt-4o") -> float:
    return value("agent_cost_total", agent_id=agent, model=model, tenant_id="acme", currency="USD")


def unpriced(agent: str, model: str, kind: str) -> float:
    return value("agent_unpriced_tokens_total", agent_id=agent, model=model, token_type=kind, tenant_id="acme")


def usage(agent: str, model: str, kind: str) -> float:
    return value("agent_token_usage_total", agent_id=agent, model=model, token_type=kind, tenant_id="acme")


def bill(prompt: int, cached: int, completion: int, reasoning: int) -> float:
    """OpenAI's bill at GPT's prices."""
    return reference_openai(GPT, prompt, cached, completion, reasoning)


counts = st.integers(0, 1_000_000)


# --- record_agent_invocation: tokens_used with a usage are not counted twice -----------------


@settings(max_examples=30, deadline=None)
@given(prompt=st.integers(1, 100_000), completion=counts)
def test_tokens_used_with_a_usage_are_counted_once_by_type_and_never_untyped(prompt, completion):
    agent = unique("agent")
    bizmetrics.record_agent_invocation(
        agent, 10, prompt + completion, True, "acme", model="in-house", usage={"input": prompt, "output": completion}
    )
    assert value("agent_tokens_used_total", agent_id=agent, tenant_id="acme") == prompt + completion
    assert usage(agent, "in-house", "input") == prompt
    assert unpriced(agent, "in-house", "input") == prompt
    for model in ("in-house", "unknown"):
        assert not exists(
            "agent_unpriced_tokens_total", agent_id=agent, model=model, token_type="untyped", tenant_id="acme"
        )
    for kind in ("input", "output", "untyped"):
        assert not exists("agent_token_usage_total", agent_id=agent, model="unknown", token_type=kind, tenant_id="acme")


def test_a_priced_usage_with_tokens_used_logs_no_unpriced_model(caplog):
    caplog.set_level(logging.INFO, "bizmetrics")
    agent = unique("agent")
    bizmetrics.record_agent_invocation(
        agent, 10, 1_100, True, "acme", model="gpt-4o", usage={"input": 1_000, "output": 100}
    )
    assert cost(agent) == pytest.approx(bill(1_000, 0, 100, 0))
    assert "has no price" not in caplog.text


def test_a_bare_count_is_counted_once_as_untyped_under_its_model():
    agent = unique("agent")
    bizmetrics.record_agent_invocation(agent, 10, 120, True, "acme", model="gpt-4o")
    assert unpriced(agent, "gpt-4o", "untyped") == 120
    assert not exists(
        "agent_unpriced_tokens_total", agent_id=agent, model="unknown", token_type="untyped", tenant_id="acme"
    )
    bare = unique("agent")
    bizmetrics.record_agent_invocation(bare, 10, 50, False, "acme")
    assert unpriced(bare, "unknown", "untyped") == 50


# --- report_usage and usage= read every shape instrument_agent reads -------------------------


def openai_usage(prompt: int, cached: int, completion: int, reasoning: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def anthropic_usage(fresh: int, read: int, written: int, output: int) -> dict[str, Any]:
    return {
        "input_tokens": fresh,
        "output_tokens": output,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": written,
    }


def as_object(value: Any) -> Any:
    """The SDK object a dict stands for (attributes, nested)."""
    if isinstance(value, dict):
        return SimpleNamespace(**{key: as_object(item) for key, item in value.items()})
    return value


def reported(what: Any, model: str | None = "gpt-4o") -> str:
    """Report ``what`` inside an instrumented call; return the agent id."""
    agent = unique("agent")

    @instrument_agent(agent)
    def call(tenant_id: str) -> str:
        bizmetrics.report_usage(what, model=model)
        return "text"

    call("acme")
    return agent


def read_by_the_decorator(response: Any) -> str:
    agent = unique("agent")
    instrument_agent(agent)(lambda tenant_id: response)("acme")
    return agent


def same_counts(agent: str, other: str, model: str = "gpt-4o") -> None:
    for kind in ("input", "output", "cache_read", "cache_write", "reasoning"):
        assert usage(agent, model, kind) == usage(other, model, kind), kind
    assert cost(agent, model) == pytest.approx(cost(other, model))
    for one in (agent, other):
        assert not exists("agent_usage_unreported_total", agent_id=one, tenant_id="acme")


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_report_usage_reads_openai_dicts_as_the_decorator_reads_the_objects(data):
    prompt = data.draw(counts)
    cached = data.draw(st.integers(0, prompt))
    completion = data.draw(counts)
    reasoning = data.draw(st.integers(0, completion))
    raw = openai_usage(prompt, cached, completion, reasoning)
    response = {"id": "x", "model": "gpt-4o", "choices": [], "usage": raw}
    expected = bill(prompt, cached, completion, reasoning)
    reference = read_by_the_decorator(as_object(response))
    for given_usage in (response, raw, as_object(raw)):
        agent = reported(given_usage)
        assert cost(agent) == pytest.approx(expected, rel=1e-9, abs=1e-12)
        same_counts(agent, reference)
    # The model a whole response names prices it, without model=.
    assert cost(reported(response, model=None)) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(fresh=counts, read=counts, written=counts, output=counts)
def test_report_usage_reads_anthropic_dicts_as_the_decorator_reads_the_objects(fresh, read, written, output):
    raw = anthropic_usage(fresh, read, written, output)
    message = {"type": "message", "model": "gpt-4o", "content": [], "usage": raw}
    reference = read_by_the_decorator(as_object(message))
    expected = fresh * GPT["input"] + read * GPT["cache_read"] + written * GPT["cache_write"] + output * GPT["output"]
    for given_usage in (message, raw):
        agent = reported(given_usage)
        assert cost(agent) == pytest.approx(expected / 1e6, rel=1e-9, abs=1e-12)
        same_counts(agent, reference)


def test_report_usage_reads_langchain_and_gemini_usage_metadata_dicts():
    langchain = {
        "input_tokens": 1_000,
        "output_tokens": 100,
        "total_tokens": 1_100,
        "input_token_details": {"cache_read": 400},
    }
    agent = reported(langchain)
    assert (usage(agent, "gpt-4o", "input"), usage(agent, "gpt-4o", "cache_read")) == (1_000, 400)
    assert cost(agent) == pytest.approx(bill(1_000, 400, 100, 0))
    gemini = {"prompt_token_count": 1_000, "candidates_token_count": 60, "thoughts_token_count": 40}
    agent = reported(gemini)
    assert (usage(agent, "gpt-4o", "output"), usage(agent, "gpt-4o", "reasoning")) == (100, 40)


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_our_own_mapping_of_token_types_still_works(data):
    tokens = {
        kind: data.draw(counts) for kind in data.draw(st.sets(st.sampled_from(_pricing.PRICED_TYPES), min_size=1))
    }
    tokens["input"] = tokens.get("input", 0) + tokens.get("cache_read", 0) + tokens.get("cache_write", 0)
    tokens["output"] = tokens.get("output", 0) + tokens.get("reasoning", 0)
    expected, _ = _pricing.price_call(tokens, GPT)
    agent = reported(dict(tokens))
    assert cost(agent) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    other = unique("agent")
    bizmetrics.record_agent_invocation(other, 1, 0, True, "acme", model="gpt-4o", usage=dict(tokens))
    assert cost(other) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_record_agent_invocation_takes_a_whole_response_dict():
    response = {"model": "gpt-4o", "usage": {"prompt_tokens": 1_000, "completion_tokens": 100}}
    agent = unique("agent")
    bizmetrics.record_agent_invocation(agent, 10, 1_100, True, "acme", usage=response)
    assert cost(agent) == pytest.approx(bill(1_000, 0, 100, 0))


# --- bad usage: documented behaviour and a log line ------------------------------------------


def test_unknown_token_types_are_not_counted_and_logged(caplog):
    caplog.set_level(logging.WARNING, "bizmetrics")
    agent = reported({"input": 100, "thinking": 50})
    assert usage(agent, "gpt-4o", "input") == 100
    assert not exists(
        "agent_token_usage_total", agent_id=agent, model="gpt-4o", token_type="thinking", tenant_id="acme"
    )
    assert "are not counted: 'thinking'" in caplog.text


@pytest.mark.parametrize("bad", ["abc", math.nan, -1, math.inf, True])
def test_a_cost_that_is_not_a_number_is_ignored_and_logged_and_the_tokens_priced(bad, caplog):
    caplog.set_level(logging.WARNING, "bizmetrics")
    agent = reported({"input": 1_000, "output": 100, "cost": bad})
    assert cost(agent) == pytest.approx(bill(1_000, 0, 100, 0))
    assert f"cost {bad!r}, not a number >= 0" in caplog.text
    gateway = reported({"prompt_tokens": 1_000, "completion_tokens": 100, "cost": bad})
    assert cost(gateway) == pytest.approx(bill(1_000, 0, 100, 0))


def test_input_fewer_than_the_cache_tokens_is_logged(caplog):
    caplog.set_level(logging.WARNING, "bizmetrics")
    # Anthropic's convention given as ours: input 500 outside the cache, 2,000 read, 1,000 written.
    agent = reported({"input": 500, "cache_read": 2_000, "cache_write": 1_000, "output": 10})
    # Documented: the cache reads and writes are priced, the uncached input counts as 0.
    expected = (2_000 * GPT["cache_read"] + 1_000 * GPT["cache_write"] + 10 * GPT["output"]) / 1e6
    assert cost(agent) == pytest.approx(expected)
    assert "reports 500 input tokens but 3000 read from or written to the cache" in caplog.text
