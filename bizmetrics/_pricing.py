"""Prices of model tokens, and the money of one model call (docs/guides/agents.md, "Cost and budgets").

The price table is immutable: ``set_prices`` and ``load_prices`` build a new
one and swap it in, so a bundle that cached a model's prices knows they are
stale by the table's identity (its ``generation``).  Money already counted
stays as it was priced.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Mapping

from . import _log, _values

__all__ = ["PRICED_TYPES", "Table", "current", "load_prices", "price_call", "set_prices"]

#: The token types of a price table, each priced on its own share of a call's tokens (see ``split``).
PRICED_TYPES = ("input", "output", "cache_read", "cache_write", "reasoning")
#: Token types that fall back to another type's price when they have none of their own.
FALLBACK = {"reasoning": "output"}
#: The environment variable naming a JSON price table to load at import.
ENV = "BIZMETRICS_PRICES"
PER = 1_000_000.0


class Table:
    """A price table: model (or model prefix) -> price per million tokens by token type, in one currency."""

    __slots__ = ("_prefixes", "currency", "generation", "prices")

    def __init__(self, prices: dict[str, dict[str, float]], currency: str, generation: int) -> None:
        self.prices = prices
        self.currency = currency
        self.generation = generation
        # Longest first: the first prefix that matches is the longest listed one.
        self._prefixes = sorted(prices, key=len, reverse=True)

    def lookup(self, model: str) -> dict[str, float] | None:
        """The prices of ``model``: its own, else those of the longest listed prefix of it, else ``None``.

        A model priced by a prefix is said once (at info level) on the ``bizmetrics`` logger.
        """
        found = self.prices.get(model)
        if found is not None:
            return found
        for prefix in self._prefixes:
            if model.startswith(prefix):
                if model not in _PREFIX_LOGGED:
                    _PREFIX_LOGGED.add(model)
                    _log.info("bizmetrics: model %r is priced by the entry %r, a prefix of its name", model, prefix)
                return self.prices[prefix]
        return None


_lock = threading.Lock()
_table = Table({}, "USD", 0)
#: The models said to be priced by a prefix (once each).
_PREFIX_LOGGED: set[str] = set()


def current() -> Table:
    """The price table in force."""
    return _table


def _clean(prices: object) -> dict[str, dict[str, float]]:
    """The valid entries of ``prices``; each bad one is logged and left out."""
    if not isinstance(prices, Mapping):
        _log.warning("bizmetrics: prices must map models to prices by token type, not a %s; none set", type(prices))
        return {}
    clean: dict[str, dict[str, float]] = {}
    for model, by_type in prices.items():
        if not isinstance(model, str) or not model or not isinstance(by_type, Mapping):
            _log.warning(
                "bizmetrics: the price entry %r is not a model name and its prices by token type; ignored", model
            )
            continue
        own: dict[str, float] = {}
        for kind, price in by_type.items():
            if kind not in PRICED_TYPES:
                _log.warning(
                    "bizmetrics: model %r has a price for %r, which is not a token type (%s); that price is ignored",
                    model,
                    kind,
                    ", ".join(PRICED_TYPES),
                )
                continue
            number = _values.number(price)
            if number is None or not math.isfinite(number) or number < 0:
                _log.warning(
                    "bizmetrics: the %s price of model %r is %r, not a number >= 0 (per million tokens); ignored",
                    kind,
                    model,
                    price,
                )
                continue
            own[kind] = float(number)
        clean[model] = own
    return clean


def set_prices(prices: Mapping[str, Mapping[str, float]], *, currency: str = "USD") -> None:
    """Price the tokens counted from now on: ``{model: {token_type: price per million tokens}}``.

    A model's prices are its own entry, else the longest listed prefix of its
    name (``gpt-4o`` prices ``gpt-4o-2024-08-06``).  Token types: ``input``,
    ``output``, ``cache_read``, ``cache_write``, ``reasoning`` (``reasoning``
    without a price of its own takes ``output``'s).  The table replaces the
    previous one; money already counted keeps its price.  Bad entries are
    logged and left out, never raised.

    .. versionadded:: 0.3.0
    """
    global _table
    try:
        clean = _clean(prices)
        if not isinstance(currency, str) or not currency:
            _log.warning("bizmetrics: currency %r is not a currency code; using USD", currency)
            currency = "USD"
        with _lock:
            _table = Table(clean, _values.label(currency, "currency"), _table.generation + 1)
    except Exception:
        _log.internal_error("set_prices")


def load_prices(path: str | os.PathLike[str]) -> None:
    """Set the prices of a JSON file: the mapping of ``set_prices``, or ``{"currency": ..., "prices": {...}}``.

    A file that cannot be read or parsed (nested too deeply included), or a
    ``path`` that is not a path (``None``), is logged and changes nothing:
    this never raises, at import (``BIZMETRICS_PRICES``) or when called.

    .. versionadded:: 0.3.0
    """
    try:
        name = os.fspath(path)
    except TypeError:
        _log.warning("bizmetrics: load_prices(%r): not a file path; prices unchanged", path)
        return
    try:
        with open(name, encoding="utf-8") as file:
            loaded = json.load(file)
    except (OSError, ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        _log.warning("bizmetrics: cannot load prices from %r (%s); prices unchanged", name, reason)
        return
    except Exception:
        _log.internal_error("load_prices")
        return
    if isinstance(loaded, Mapping) and isinstance(loaded.get("prices"), Mapping):
        set_prices(loaded["prices"], currency=loaded.get("currency", "USD"))
    else:
        set_prices(loaded)


def split(tokens: Mapping[str, float]) -> dict[str, float]:
    """A call's tokens (as ``agent_token_usage_total`` counts them) in disjoint shares, one per price.

    ``input`` includes the cache reads and writes and ``output`` the reasoning
    (``bizmetrics._extract.Usage``), so they are taken out: ``input`` here is
    the input read neither from nor into the cache, ``output`` the output that
    is not reasoning.  Each token is priced exactly once.
    """
    cache_read = tokens.get("cache_read", 0)
    cache_write = tokens.get("cache_write", 0)
    reasoning = tokens.get("reasoning", 0)
    if tokens.get("input", 0) < cache_read + cache_write:
        _log.warn(
            "usage-cache",
            "bizmetrics: a call reports %g input tokens but %g read from or written to the cache: input counts every "
            "input token, the cached ones included (Anthropic's input_tokens do not: add cache_read_input_tokens and "
            "cache_creation_input_tokens to it); its uncached input is counted as 0",
            tokens.get("input", 0),
            cache_read + cache_write,
        )
    if tokens.get("output", 0) < reasoning:
        _log.warn(
            "usage-reasoning",
            "bizmetrics: a call reports %g output tokens but %g reasoning tokens: output counts every output token, "
            "reasoning included; its output other than reasoning is counted as 0",
            tokens.get("output", 0),
            reasoning,
        )
    return {
        "input": max(tokens.get("input", 0) - cache_read - cache_write, 0),
        "cache_read": cache_read,
        "cache_write": cache_write,
        "output": max(tokens.get("output", 0) - reasoning, 0),
        "reasoning": reasoning,
    }


def price_call(tokens: Mapping[str, float], prices: Mapping[str, float] | None) -> tuple[float, dict[str, float]]:
    """The money of one call's tokens at ``prices``, and its tokens that have no price, by type."""
    money = 0.0
    unpriced: dict[str, float] = {}
    for kind, count in split(tokens).items():
        if not count:
            continue
        price = None
        if prices is not None:
            price = prices.get(kind)
            if price is None and kind in FALLBACK:
                price = prices.get(FALLBACK[kind])
        if price is None:
            unpriced[kind] = count
        else:
            money += count * price / PER
    return money, unpriced


def _load_from_environment() -> None:
    # Never raises: a bad price file must not stop the application from importing bizmetrics.
    try:
        path = os.environ.get(ENV)
        if path:
            load_prices(path)
    except Exception:
        _log.internal_error("loading BIZMETRICS_PRICES")


_load_from_environment()


#: The periods a budget can cover (calendar periods, UTC).
PERIODS = ("month", "day")


def set_budget(tenant_id: str, amount: float, *, period: str = "month", currency: str = "USD") -> None:
    """Expose a tenant's budget for a calendar period (UTC) as ``bizmetrics_tenant_budget``.

    ``period`` is ``"month"`` or ``"day"``.  Every worker may set it: in
    multiprocess mode the latest value set is the budget, never a sum.  A bad
    amount or period is logged and sets nothing.  ``currency`` must be the
    price table's (``set_prices(currency=...)``): the rules compare money of
    the same currency only.  The tenant goes through the tenant cap as its
    cost does: setting a budget admits it; a tenant over the cap (its cost
    recorded as ``__overflow__``) gets no budget, and a log line.

    .. versionadded:: 0.3.0
    """
    try:
        number = _values.number(amount)
        if number is None or not math.isfinite(number) or number < 0:
            _log.warning("bizmetrics: set_budget(%r): the amount %r is not a number >= 0; ignored", tenant_id, amount)
            return
        if period not in PERIODS:
            _log.warning("bizmetrics: set_budget(%r): period %r is not one of %s; ignored", tenant_id, period, PERIODS)
            return
        from ._tenants import ADMISSION, OVERFLOW_TENANT
        from .metrics import TENANT_BUDGET

        tenant = _values.label(tenant_id, "tenant_id", _values.DEFAULT_TENANT)
        # Through the tenant cap as the cost is: a budget set first admits its tenant.
        if ADMISSION.admit(tenant) != tenant:
            _log.warn(
                "budget-over-cap",
                "bizmetrics: set_budget(%r): the tenant cap is reached, so this tenant's cost is recorded as %r; "
                "its budget is not set (pin the tenant with limit_tenants(..., pinned=...) or set budgets first)",
                tenant,
                OVERFLOW_TENANT,
            )
            return
        TENANT_BUDGET.labels(tenant, period, _values.label(currency, "currency", "USD")).set(number)
    except Exception:
        _log.internal_error("set_budget")
