"""Reading counts out of return values: records synced, tokens used, cache hits.

The rules are documented in docs/guides/decorators.md ("Counting records") and
docs/guides/agents.md ("Counting tokens").
An extractor never raises for an unknown format: it counts 0 and says so on
the ``bizmetrics`` logger at debug level.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sized
from typing import Any

from . import _log, _values

RECORD_LISTS = ("records", "items", "data", "results")
COUNT_KEYS = ("count", "total")


def _field(value: Any, name: str) -> Any:
    if isinstance(value, Mapping):
        return value.get(name)
    try:
        return getattr(value, name, None)
    except Exception:
        return None


def _collection_size(value: Any) -> int | None:
    if isinstance(value, Sized) and not isinstance(value, (str, bytes, bytearray, memoryview, Mapping)):
        return len(value)
    return None


def _size(value: Any) -> int | None:
    """``_collection_size``, without its ABC checks for the exact built-in types that decide it at once."""
    cls = type(value)
    if cls is list or cls is tuple or cls is set or cls is frozenset:
        return len(value)
    if value is None:
        return None
    return _collection_size(value)


def _number(value: Any) -> float | None:
    """A number (see ``_values.number``) that is not a collection, or ``None``."""
    if type(value) is int:
        return value
    if isinstance(value, (Sized, Mapping)) and not isinstance(value, str):
        return None
    return _values.number(value)


def count_records(result: Any, resource_type: str) -> float:
    """Return how many records ``result`` holds (see docs/guides/decorators.md, "Counting records").

    The exact built-in types the rules decide without ABC checks (a list, a
    tuple, a set, an int, a float, ``None``, a ``dict``) take a short cut;
    everything else, subclasses included, goes through ``_count_by_rules``.
    The two agree on every input (``tests/test_extract.py``).
    """
    cls = type(result)
    if cls is list or cls is tuple or cls is set or cls is frozenset:
        return len(result)
    if cls is dict:
        # Neither a sized collection (rule 1: a mapping) nor a number (rule 2).
        for name in (*RECORD_LISTS, resource_type):
            size = _size(result.get(name))
            if size is not None:
                return size
        for name in COUNT_KEYS:
            value = result.get(name)
            if value is not None:
                number = _number(value)
                if number is not None:
                    return _values.amount(number, "record count")
        return _uncountable(result)
    if cls is int or cls is float:
        return _values.amount(result, "record count")
    if result is None:
        return _uncountable(result)
    return _count_by_rules(result, resource_type)


def _uncountable(result: Any) -> float:
    _log.debug("bizmetrics: cannot count records in a %s; counted 0", type(result).__name__)
    return 0


def _count_by_rules(result: Any, resource_type: str) -> float:
    """The rules of docs/guides/decorators.md, "Counting records", for any ``result``."""
    size = _collection_size(result)
    if size is not None:
        return size
    number = _number(result)
    if number is not None:
        return _values.amount(number, "record count")
    if result is not None and not isinstance(result, (str, bytes, bool)):
        for name in (*RECORD_LISTS, resource_type):
            size = _collection_size(_field(result, name))
            if size is not None:
                return size
        for name in COUNT_KEYS:
            number = _number(_field(result, name))
            if number is not None:
                return _values.amount(number, "record count")
    return _uncountable(result)


def records_counter(count: Callable[[Any], Any] | str | None, resource_type: str) -> Callable[[Any], float]:
    """Return the record counter for ``instrument_sync_operation(count=...)``."""
    if count is None:
        return lambda result: count_records(result, resource_type)
    if callable(count):
        return lambda result: _as_count(count(result), "count()")
    name = count

    def by_name(result: Any) -> float:
        return _as_count(_field(result, name), name)

    return by_name


def _as_count(value: Any, what: str) -> float:
    size = _size(value)
    if size is not None:
        return size
    number = _number(value)
    if number is not None:
        return _values.amount(number, what)
    _log.debug("bizmetrics: %s gave a %s, not a count; counted 0", what, type(value).__name__)
    return 0


#: The Responses stream events that end a call and carry its usage.
RESPONSE_ENDS = ("response.completed", "response.incomplete", "response.failed")

#: The token types of ``agent_token_usage_total``: ``input`` and ``output`` are all tokens sent and
#: received; ``cache_read`` and ``cache_write`` are subsets of ``input``, ``reasoning`` of ``output``.
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write", "reasoning")


class Usage:
    """The tokens of one model response, or of a stream so far, by type and by model call.

    ``tokens``, ``model`` and ``untyped`` describe the current model call
    (``untyped`` holds tokens whose split is unknown: a bare count);
    ``done`` holds the calls before it, as ``Usage`` objects of their own;
    ``cost`` is the money the provider reported for the current call (a
    ``cost`` field in its usage), or ``None``.
    How a report adds to what came before (``a + b``):

    - ``start``: ``b`` begins a new call (Anthropic's ``message_start``);
    - ``end``: ``b`` is the whole usage of its call (OpenAI's final usage
      chunk, ``response.completed``): it adds to the current call, which
      then ends, so the next report begins another;
    - ``replace``: ``b`` is cumulative within the current call (Anthropic's
      ``message_delta``, Gemini chunks): its counts replace the earlier
      counts of the same types;
    - otherwise ``b`` adds to the current call (LangChain chunks).

    ``0 + usage`` is ``usage``, so the engine can sum stream items as numbers.
    """

    __slots__ = ("cost", "done", "end", "model", "replace", "start", "tokens", "untyped")

    def __init__(
        self,
        tokens: dict[str, float],
        model: Any = None,
        *,
        untyped: float = 0,
        replace: bool = False,
        start: bool = False,
        end: bool = False,
        done: tuple[Usage, ...] = (),
        cost: float | None = None,
    ) -> None:
        self.tokens = tokens
        self.model = model
        self.untyped = untyped
        self.replace = replace
        self.start = start
        self.end = end
        self.done = done
        self.cost = cost

    @property
    def total(self) -> float:
        """Input plus output tokens, plus the untyped ones, of every call: what ``agent_tokens_used_total`` counts."""
        own = self.tokens.get("input", 0) + self.tokens.get("output", 0) + self.untyped
        return own + sum(call.total for call in self.done)

    @property
    def reported(self) -> bool:
        """Whether any call reported its tokens (a model name alone is no report)."""
        own = bool(self.tokens) or bool(self.untyped) or self.cost is not None
        return own or any(call.reported for call in self.done)

    def calls(self) -> tuple[Usage, ...]:
        """Each model call's usage, oldest first: ``done`` and the current one."""
        current = Usage(self.tokens, self.model, untyped=self.untyped, cost=self.cost)
        return (*self.done, current) if current.reported else self.done

    def __bool__(self) -> bool:
        own = bool(self.tokens) or bool(self.untyped) or self.cost is not None
        return own or self.model is not None or bool(self.done)

    def __add__(self, other: Any) -> Usage:
        if not isinstance(other, Usage):
            if not other:
                return self
            other = Usage({}, untyped=float(other))
        done = self.done + other.done
        cost = other.cost
        if (other.start or self.end) and (self.tokens or self.untyped or self.cost is not None):
            # A new call begins: the current one is done.
            current = Usage(self.tokens, self.model, untyped=self.untyped, cost=self.cost)
            done = (*self.done, current, *other.done)
            tokens, model, untyped = dict(other.tokens), other.model, other.untyped
        elif other.start or self.end:
            # Nothing counted yet: only a model name, which the new call's own name overrides.
            tokens, untyped = dict(other.tokens), other.untyped
            model = other.model if other.model is not None else self.model
        else:
            tokens = dict(self.tokens)
            for kind, count in other.tokens.items():
                tokens[kind] = count if other.replace else tokens.get(kind, 0) + count
            model = self.model if self.model is not None else other.model
            untyped = self.untyped + other.untyped
            if cost is None:
                cost = self.cost
            elif self.cost is not None and not other.replace:
                cost += self.cost
        return Usage(tokens, model, untyped=untyped, end=other.end, done=done, cost=cost)

    def __radd__(self, other: Any) -> Usage:
        if not other:
            return self
        return Usage({}, untyped=float(other)) + self

    def __repr__(self) -> str:
        done = f", done={self.done!r}" if self.done else ""
        cost = "" if self.cost is None else f", cost={self.cost!r}"
        return f"Usage({self.tokens!r}, model={self.model!r}, untyped={self.untyped!r}{cost}{done})"


def _num(value: Any, *path: str) -> float | None:
    for name in path:
        if value is None:
            return None
        value = _field(value, name)
    if value is None:
        return None
    number = _number(value)
    return None if number is None else _values.amount(number, "tokens")


def _cost(value: Any) -> float | None:
    """The ``cost`` a usage reports, or ``None``: a cost that is not a number >= 0 is logged and ignored."""
    raw = _field(value, "cost")
    if raw is None:
        return None
    number = _number(raw)
    if number is None or not math.isfinite(number) or number < 0:
        _log.warn(
            "usage-cost",
            "bizmetrics: a usage reports the cost %r, not a number >= 0; ignored (its tokens are priced instead)",
            raw,
        )
        return None
    return float(number)


def _put(tokens: dict[str, float], kind: str, count: float | None) -> None:
    if count is not None:
        tokens[kind] = count


def _from_usage(usage: Any, model: Any, replace: bool = False, start: bool = False, end: bool = False) -> Usage | None:
    """Read an OpenAI (Chat Completions or Responses) or Anthropic ``usage`` object or dict."""
    tokens: dict[str, float] = {}
    prompt, completion = _num(usage, "prompt_tokens"), _num(usage, "completion_tokens")
    if prompt is not None or completion is not None:
        # OpenAI Chat Completions: prompt_tokens include the cached ones.
        _put(tokens, "input", prompt)
        _put(tokens, "output", completion)
        _put(tokens, "cache_read", _num(usage, "prompt_tokens_details", "cached_tokens"))
        _put(tokens, "cache_write", _num(usage, "prompt_tokens_details", "cache_write_tokens"))
        _put(tokens, "reasoning", _num(usage, "completion_tokens_details", "reasoning_tokens"))
    else:
        inp, out = _num(usage, "input_tokens"), _num(usage, "output_tokens")
        cache_read, cache_write = _num(usage, "cache_read_input_tokens"), _num(usage, "cache_creation_input_tokens")
        if cache_read is not None or cache_write is not None:
            # Anthropic: input_tokens exclude the tokens read from or written to the cache.
            if inp is not None or cache_read is not None or cache_write is not None:
                tokens["input"] = (inp or 0) + (cache_read or 0) + (cache_write or 0)
        else:
            # OpenAI Responses: input_tokens include the cached ones.
            _put(tokens, "input", inp)
            cache_read = _num(usage, "input_tokens_details", "cached_tokens")
            cache_write = _num(usage, "input_tokens_details", "cache_write_tokens")
        _put(tokens, "output", out)
        _put(tokens, "cache_read", cache_read)
        _put(tokens, "cache_write", cache_write)
        _put(tokens, "reasoning", _num(usage, "output_tokens_details", "reasoning_tokens"))
    # Some gateways (OpenRouter, LiteLLM proxies) report the call's cost with its usage.
    cost = _cost(usage)
    if not tokens:
        total = _num(usage, "total_tokens")
        if total is None and cost is None:
            return None
        return Usage({}, model, untyped=total or 0, replace=replace, start=start, end=end, cost=cost)
    return Usage(tokens, model, replace=replace, start=start, end=end, cost=cost)


def _from_metadata(meta: Any, model: Any) -> Usage | None:
    """Read a LangChain ``usage_metadata`` (summed over chunks) or a Gemini one (cumulative)."""
    tokens: dict[str, float] = {}
    prompt = _num(meta, "prompt_token_count")
    if prompt is not None or _num(meta, "candidates_token_count") is not None:
        # Gemini: thoughts are output tokens counted apart from the candidates.
        candidates, thoughts = _num(meta, "candidates_token_count"), _num(meta, "thoughts_token_count")
        _put(tokens, "input", prompt)
        if candidates is not None or thoughts is not None:
            tokens["output"] = (candidates or 0) + (thoughts or 0)
        _put(tokens, "cache_read", _num(meta, "cached_content_token_count"))
        _put(tokens, "reasoning", thoughts)
        return Usage(tokens, model, replace=True)
    _put(tokens, "input", _num(meta, "input_tokens"))
    _put(tokens, "output", _num(meta, "output_tokens"))
    _put(tokens, "cache_read", _num(meta, "input_token_details", "cache_read"))
    _put(tokens, "cache_write", _num(meta, "input_token_details", "cache_creation"))
    _put(tokens, "reasoning", _num(meta, "output_token_details", "reasoning"))
    if not tokens:
        total = _num(meta, "total_tokens")
        return None if total is None else Usage({}, model, untyped=total)
    return Usage(tokens, model)


def read_usage(result: Any) -> Usage | float:
    """Return the token usage a model response (or one stream item) reports (docs/guides/agents.md, tokens)."""
    if result is None or isinstance(result, (str, bytes, bool)):
        number = _number(result) if isinstance(result, str) else None
        return 0 if number is None else _values.amount(number, "tokens")
    number = _number(result)
    if number is not None:
        return _values.amount(number, "tokens")
    kind = _field(result, "type")
    if kind == "message_start":
        message = _field(result, "message")
        usage = _from_usage(_field(message, "usage"), _field(message, "model"), replace=True, start=True)
    elif kind == "message_delta":
        usage = _from_usage(_field(result, "usage"), None, replace=True)
    elif kind in RESPONSE_ENDS:
        # The last event of one Responses call, finished or not: its usage is the whole call's.
        response = _field(result, "response")
        usage = _from_usage(_field(response, "usage"), _field(response, "model"), end=True)
    else:
        model = _field(result, "model")
        raw = _field(result, "usage")
        if raw is not None:
            # A whole response, or a Chat Completions stream's last chunk: one call's usage.
            usage = _from_usage(raw, model, end=True)
        else:
            meta = _field(result, "usage_metadata")
            if meta is None:
                meta = _field(_field(result, "response_metadata"), "usage_metadata")
            usage = _from_metadata(meta, model) if meta is not None else None
        if usage is None and isinstance(model, str):
            # A stream chunk without usage still names the model.
            return Usage({}, model)
    if usage is None:
        if isinstance(kind, str):
            return 0  # a stream event that carries no usage (a text delta): nothing to say
        if hasattr(result, "__aiter__") or hasattr(result, "__next__"):
            _log.warn(
                "agent-stream",
                "bizmetrics: an agent returned a stream (%s): its tokens are not counted and its time ends "
                "when the stream is created. Make the agent a generator that yields the chunks, or use tokens=",
                type(result).__name__,
            )
        else:
            _log.debug("bizmetrics: cannot find token usage in a %s; counted 0", type(result).__name__)
        return 0
    return usage


def tokens_counter(tokens: Callable[[Any], Any] | str | None) -> Callable[[Any], Any]:
    """Return the token reader for ``instrument_agent(tokens=...)``: a ``Usage`` or a number."""
    if tokens is None:
        return read_usage
    if callable(tokens):
        return lambda result: as_tokens(tokens(result), "tokens()")
    name = tokens
    return lambda result: as_tokens(_field(result, name), name)


#: The other keys of a mapping of token types: the model that used them, the cost the provider reported.
OWN_KEYS = frozenset((*TOKEN_TYPES, "model", "cost"))
#: Keys that only a LangChain or Gemini ``usage_metadata`` has: read as such before as a ``usage``.
METADATA_KEYS = ("input_token_details", "output_token_details", "prompt_token_count", "candidates_token_count")


def as_tokens(value: Any, what: str) -> Usage | float:
    """A ``tokens=`` result: a count, or a mapping of token types to counts.

    Keys that are not token types (nor ``model`` or ``cost``) are not
    counted, and said (rate-limited) on the ``bizmetrics`` logger.
    """
    if isinstance(value, Mapping):
        found = {kind: _num(value, kind) for kind in TOKEN_TYPES}
        typed = {kind: count for kind, count in found.items() if count is not None}
        cost = _cost(value)
        unknown = sorted(repr(key) for key in value if key not in OWN_KEYS)
        if unknown:
            _log.warn(
                "usage-keys:" + what,
                "bizmetrics: %s: keys that are not token types (%s) are not counted: %s",
                what,
                ", ".join(TOKEN_TYPES),
                ", ".join(unknown),
            )
        if typed or cost is not None:
            return Usage(typed, value.get("model"), cost=cost)
    return _as_count(value, what)


def read_given(value: Any, what: str) -> Usage | float:
    """Tokens given by hand (``report_usage``, ``record_agent_invocation(usage=...)``).

    A mapping with any of our token types is ours (``as_tokens``); anything
    else is read as ``instrument_agent`` reads a response (a whole response,
    a stream event), else as a bare ``usage`` (OpenAI, Anthropic) or
    ``usage_metadata`` (LangChain, Gemini): as objects or as dicts alike.
    """
    ours = isinstance(value, Mapping)
    if ours and any(kind in value for kind in TOKEN_TYPES):
        return as_tokens(value, what)
    read = read_usage(value)
    if (read.reported if isinstance(read, Usage) else read) or value is None or isinstance(value, (str, bytes, bool)):
        return read
    model = _field(value, "model")
    metadata_first = any(_field(value, key) is not None for key in METADATA_KEYS)
    for reader in (_from_metadata, _from_usage) if metadata_first else (_from_usage, _from_metadata):
        usage = reader(value, model)
        if usage is not None and usage.reported:
            return usage
    return as_tokens(value, what) if ours else read
