"""The price table and budgets: loading prices never raises, prefix pricing is said, budgets go through the cap."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from support.registry import exists, unique, value

import bizmetrics
from bizmetrics import _families, _log, _pricing, _tenants, instrument_agent

GPT = {"input": 2.5, "output": 10.0}


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    _log.reset()
    yield
    _pricing.set_prices({})
    _pricing._PREFIX_LOGGED.clear()
    _families._UNPRICED_LOGGED.clear()


def deep_json(path: os.PathLike[str], depth: int = 100_000) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.write("[" * depth + "]" * depth)


def test_load_prices_of_none_or_a_number_logs_and_changes_nothing(caplog):
    caplog.set_level(logging.WARNING, "bizmetrics")
    bizmetrics.set_prices({"gpt-4o": GPT})
    for bad in (None, 3):
        bizmetrics.load_prices(bad)  # type: ignore[arg-type]
        assert f"load_prices({bad!r}): not a file path; prices unchanged" in caplog.text
    assert _pricing.current().prices == {"gpt-4o": GPT}


def test_a_deeply_nested_price_file_is_logged_and_changes_nothing(tmp_path, caplog):
    caplog.set_level(logging.WARNING, "bizmetrics")
    bizmetrics.set_prices({"gpt-4o": GPT})
    deep = tmp_path / "deep.json"
    deep_json(deep)
    bizmetrics.load_prices(deep)
    assert "(nested too deeply); prices unchanged" in caplog.text
    assert _pricing.current().prices == {"gpt-4o": GPT}


def test_import_with_a_deeply_nested_bizmetrics_prices_goes_on(tmp_path):
    deep = tmp_path / "deep.json"
    deep_json(deep)
    code = "import bizmetrics; print(bizmetrics._pricing.current().prices)"
    env = {**os.environ, "BIZMETRICS_PRICES": str(deep)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{}"
    assert "nested too deeply" in done.stderr


def test_a_model_priced_by_a_prefix_is_said_once(caplog):
    caplog.set_level(logging.INFO, "bizmetrics")
    bizmetrics.set_prices({"gpt-4o": GPT})
    model = unique("gpt-4o-")
    for _ in range(3):
        assert _pricing.current().lookup(model) == GPT
    said = [r for r in caplog.records if "a prefix of its name" in r.getMessage()]
    assert [r.getMessage() for r in said] == [
        f"bizmetrics: model {model!r} is priced by the entry 'gpt-4o', a prefix of its name"
    ]
    assert said[0].levelno == logging.INFO
    # An exact entry is not news.
    caplog.clear()
    _pricing.current().lookup("gpt-4o")
    assert "prefix" not in caplog.text


def test_a_negative_price_and_an_unknown_token_type_are_said_for_what_they_are(caplog):
    caplog.set_level(logging.WARNING, "bizmetrics")
    bizmetrics.set_prices({"m": {"input": -1, "thinking": 2, "output": 3}})
    assert _pricing.current().prices == {"m": {"output": 3.0}}
    assert "the input price of model 'm' is -1, not a number >= 0 (per million tokens); ignored" in caplog.text
    assert "model 'm' has a price for 'thinking', which is not a token type" in caplog.text


@pytest.fixture
def cap_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_tenants, "ADMISSION", _tenants.Admission(None))
    bizmetrics.limit_tenants(1)


def spend(agent: str, tenant: str) -> None:
    with bizmetrics.tenant_context(tenant):
        response = {"model": "gpt-4o", "usage": {"prompt_tokens": 1_000_000, "completion_tokens": 0}}
        instrument_agent(agent)(lambda: response)()


@pytest.mark.usefixtures("cap_of_one")
def test_a_budget_over_the_tenant_cap_is_not_set_under_its_tenant(caplog):
    caplog.set_level(logging.WARNING, "bizmetrics")
    bizmetrics.set_prices({"gpt-4o": GPT})
    agent, first, second = unique("agent"), unique("tenant"), unique("tenant")
    spend(agent, first)
    spend(agent, second)  # over the cap: its cost is __overflow__'s
    bizmetrics.set_budget(first, 100)
    bizmetrics.set_budget(second, 100)
    assert value("bizmetrics_tenant_budget", tenant_id=first, period="month", currency="USD") == 100
    # A budget under `second` would never meet its cost (recorded as __overflow__): it is not set.
    for tenant in (second, bizmetrics.OVERFLOW_TENANT):
        assert not exists("bizmetrics_tenant_budget", tenant_id=tenant, period="month", currency="USD")
    assert f"set_budget({second!r}): the tenant cap is reached" in caplog.text


@pytest.mark.usefixtures("cap_of_one")
def test_a_budget_set_first_admits_its_tenant_so_its_cost_keeps_its_id():
    bizmetrics.set_prices({"gpt-4o": GPT})
    agent, budgeted, other = unique("agent"), unique("tenant"), unique("tenant")
    bizmetrics.set_budget(budgeted, 100)
    spend(agent, other)  # the cap is full: folded
    spend(agent, budgeted)
    cost = {"agent_id": agent, "model": "gpt-4o", "currency": "USD"}
    assert value("agent_cost_total", tenant_id=budgeted, **cost) == pytest.approx(2.5)
    assert value("agent_cost_total", tenant_id=bizmetrics.OVERFLOW_TENANT, **cost) == pytest.approx(2.5)
    assert value("bizmetrics_tenant_budget", tenant_id=budgeted, period="month", currency="USD") == 100


def test_price_file_currency_labels_provider_reported_cost(tmp_path):
    """A provider's own cost is counted in the price table's currency (documented)."""
    prices = tmp_path / "eur.json"
    prices.write_text(json.dumps({"currency": "EUR", "prices": {"gpt-4o": GPT}}))
    bizmetrics.load_prices(prices)
    agent = unique("agent")
    with bizmetrics.tenant_context("acme"):
        instrument_agent(agent)(lambda: {"model": "x", "usage": {"prompt_tokens": 1, "cost": 0.5}})()
    assert value("agent_cost_total", agent_id=agent, model="x", tenant_id="acme", currency="EUR") == 0.5
