"""AI agents and LLM calls: tokens by type and model, time to first token, tool calls, error classes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import httpx
import pytest
import requests
from anthropic.types import Message, RawContentBlockDeltaEvent, RawMessageDeltaEvent, RawMessageStartEvent
from hypothesis import given
from hypothesis import strategies as st
from openai import APIStatusError
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseCompletedEvent
from prometheus_client import REGISTRY
from support.registry import unique, value
from support.samples import make, run

import bizmetrics
from bizmetrics import _tenants, http_error_type, instrument_agent, instrument_connector_operation, instrument_tool

TYPES = ("input", "output", "cache_read", "cache_write", "reasoning")


def usage_of(agent: str, model: str, tenant: str = "acme") -> dict[str, float]:
    """agent_token_usage_total by type, for one agent, model and tenant."""
    found = {
        kind: value("agent_token_usage_total", agent_id=agent, model=model, token_type=kind, tenant_id=tenant)
        for kind in TYPES
    }
    return {kind: n for kind, n in found.items() if n}


def total_of(agent: str, tenant: str = "acme") -> float:
    return value("agent_tokens_used_total", agent_id=agent, tenant_id=tenant)


# --- the shapes, as SDK objects and as dicts ------------------------------------------


def _chat(usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
        "usage": usage,
    }


CHAT_USAGE = {
    "prompt_tokens": 100,
    "completion_tokens": 40,
    "total_tokens": 140,
    "prompt_tokens_details": {"cached_tokens": 60},
    "completion_tokens_details": {"reasoning_tokens": 10},
}

RESPONSE = {
    "id": "r",
    "object": "response",
    "created_at": 1,
    "model": "gpt-5",
    "output": [],
    "parallel_tool_calls": False,
    "tool_choice": "auto",
    "tools": [],
    "usage": {
        "input_tokens": 80,
        "output_tokens": 30,
        "total_tokens": 110,
        "input_tokens_details": {"cached_tokens": 50, "cache_write_tokens": 5},
        "output_tokens_details": {"reasoning_tokens": 12},
    },
}

ANTHROPIC = {
    "id": "m",
    "type": "message",
    "role": "assistant",
    "model": "claude-x",
    "content": [{"type": "text", "text": "hi"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 100,
        "output_tokens": 50,
        "cache_read_input_tokens": 30,
        "cache_creation_input_tokens": 20,
    },
}


def _anthropic_stream(sdk: bool) -> list[Any]:
    """The raw events of a stream of 264 tokens: 200 in (message_start), 64 out (message_delta)."""
    start = {
        "type": "message_start",
        "message": {**ANTHROPIC, "content": [], "usage": {"input_tokens": 200, "output_tokens": 1}},
    }
    deltas = [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}} for w in "abc"]
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 64},
    }
    if not sdk:
        return [start, *deltas, end]
    return [
        RawMessageStartEvent.model_validate(start),
        *(RawContentBlockDeltaEvent.model_validate(d) for d in deltas),
        RawMessageDeltaEvent.model_validate(end),
    ]


def _chat_stream(sdk: bool) -> list[Any]:
    chunks: list[dict[str, Any]] = [
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o",
            "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}],
        }
        for w in "abc"
    ]
    chunks.append(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o",
            "choices": [],
            "usage": CHAT_USAGE,
        }
    )
    return [ChatCompletionChunk.model_validate(c) for c in chunks] if sdk else chunks


def _responses_stream(sdk: bool) -> list[Any]:
    events: list[Any] = [{"type": "response.output_text.delta", "delta": "hi"}]
    completed = {"type": "response.completed", "sequence_number": 5, "response": RESPONSE}
    events.append(ResponseCompletedEvent.model_validate(completed) if sdk else completed)
    return events


class LangChainMessage:
    """What LangChain's AIMessage carries (no LangChain needed): usage_metadata."""

    def __init__(self, usage_metadata: dict[str, Any]) -> None:
        self.content = "hi"
        self.usage_metadata = usage_metadata


LANGCHAIN = {
    "input_tokens": 90,
    "output_tokens": 25,
    "total_tokens": 115,
    "input_token_details": {"cache_read": 40, "cache_creation": 10},
    "output_token_details": {"reasoning": 5},
}
GEMINI = {
    "prompt_token_count": 70,
    "candidates_token_count": 20,
    "thoughts_token_count": 8,
    "cached_content_token_count": 30,
    "total_token_count": 98,
}

# shape -> (result or stream items, model reported, expected types)
SINGLE = {
    "openai chat": (
        lambda sdk: ChatCompletion.model_validate(_chat(CHAT_USAGE)) if sdk else _chat(CHAT_USAGE),
        "gpt-4o",
        {"input": 100, "output": 40, "cache_read": 60, "reasoning": 10},
    ),
    "openai responses": (
        lambda sdk: Response.model_validate(RESPONSE) if sdk else RESPONSE,
        "gpt-5",
        {"input": 80, "output": 30, "cache_read": 50, "cache_write": 5, "reasoning": 12},
    ),
    "anthropic": (
        lambda sdk: Message.model_validate(ANTHROPIC) if sdk else ANTHROPIC,
        "claude-x",
        {"input": 150, "output": 50, "cache_read": 30, "cache_write": 20},
    ),
    "langchain": (
        lambda sdk: LangChainMessage(LANGCHAIN) if sdk else {"usage_metadata": LANGCHAIN},
        "unknown",
        {"input": 90, "output": 25, "cache_read": 40, "cache_write": 10, "reasoning": 5},
    ),
    "gemini": (
        lambda sdk: {"usage_metadata": GEMINI, "model": "gemini-2"} if sdk else {"usage_metadata": GEMINI},
        None,
        {"input": 70, "output": 28, "cache_read": 30, "reasoning": 8},
    ),
}

STREAMS = {
    "openai chat stream": (_chat_stream, "gpt-4o", {"input": 100, "output": 40, "cache_read": 60, "reasoning": 10}),
    "openai responses stream": (
        _responses_stream,
        "gpt-5",
        {"input": 80, "output": 30, "cache_read": 50, "cache_write": 5, "reasoning": 12},
    ),
    "anthropic raw stream": (_anthropic_stream, "claude-x", {"input": 200, "output": 64}),
    "langchain chunks": (
        lambda sdk: [
            LangChainMessage({"input_tokens": 90, "output_tokens": 0}),
            LangChainMessage({"input_tokens": 0, "output_tokens": 25}),
        ],
        "unknown",
        {"input": 90, "output": 25},
    ),
    "gemini chunks (cumulative)": (
        lambda sdk: [
            {"usage_metadata": {"prompt_token_count": 70, "candidates_token_count": 5}},
            {"usage_metadata": {"prompt_token_count": 70, "candidates_token_count": 20}},
        ],
        "unknown",
        {"input": 70, "output": 20},
    ),
}


@pytest.mark.parametrize("sdk", [True, False], ids=["sdk", "dict"])
@pytest.mark.parametrize("shape", list(SINGLE))
def test_a_response_counts_its_tokens_by_type_and_model(shape, sdk):
    """Each shape, as the SDK's object and as a plain dict, counts exactly its tokens by type, under its model."""
    build, model, expected = SINGLE[shape]
    result = build(sdk)
    agent = unique("agent")
    if model is None:
        model = "gemini-2" if sdk else "unknown"

    @instrument_agent(agent)
    def answer(tenant_id: str) -> Any:
        return result

    assert answer("acme") is result
    assert usage_of(agent, model) == expected
    assert total_of(agent) == expected["input"] + expected["output"]


@pytest.mark.parametrize("kind", ["generator", "async generator"])
@pytest.mark.parametrize("sdk", [True, False], ids=["sdk", "dict"])
@pytest.mark.parametrize("shape", list(STREAMS))
def test_a_stream_counts_every_token(shape, sdk, kind):
    """Streams count all their tokens: the Anthropic stream 264 of 264, cumulative reports not double-counted."""
    build, model, expected = STREAMS[shape]
    items = build(sdk)
    agent = unique("agent")
    stream = instrument_agent(agent)(make(kind, items=items))
    assert run(stream, tenant_id="acme") == list(items)
    assert usage_of(agent, model) == expected
    assert total_of(agent) == expected["input"] + expected["output"]


def test_the_anthropic_example_counts_264_of_264():
    """The issue's example: message_start's 200 input tokens are no longer missed."""
    agent = unique("agent")

    @instrument_agent(agent)
    def stream(tenant_id: str) -> Iterable[Any]:
        yield from _anthropic_stream(sdk=True)

    list(stream("acme"))
    assert total_of(agent) == 264


def test_model_comes_from_the_decorator_then_the_call_then_the_response():
    """model=: the decorator's, else the call's model argument, else the response's, else unknown."""
    agent = unique("agent")
    response = _chat({"prompt_tokens": 3, "completion_tokens": 2})

    @instrument_agent(agent, model="pinned")
    def fixed(tenant_id: str, model: str) -> Any:
        return response

    @instrument_agent(agent)
    def by_argument(tenant_id: str, model: str = "default-model") -> Any:
        return response

    @instrument_agent(agent)
    def by_response(tenant_id: str) -> Any:
        return response

    @instrument_agent(agent)
    def by_nothing(tenant_id: str) -> Any:
        return {"usage": {"input_tokens": 1, "output_tokens": 1}}

    fixed("acme", "ignored")
    by_argument("acme", model="claude-call")
    by_argument("acme")
    by_response("acme")
    by_nothing("acme")
    assert usage_of(agent, "pinned") == {"input": 3, "output": 2}
    assert usage_of(agent, "claude-call") == {"input": 3, "output": 2}
    assert usage_of(agent, "default-model") == {"input": 3, "output": 2}
    assert usage_of(agent, "gpt-4o") == {"input": 3, "output": 2}
    assert usage_of(agent, "unknown") == {"input": 1, "output": 1}


def test_tokens_override_may_return_a_mapping_of_types():
    """tokens= returning a mapping counts by type; returning a number still feeds agent_tokens_used_total."""
    agent = unique("agent")

    @instrument_agent(agent, tokens=lambda r: {"input": r[0], "output": r[1], "reasoning": 1}, model="m")
    def typed(tenant_id: str) -> tuple[int, int]:
        return (7, 3)

    @instrument_agent(agent, tokens="n")
    def counted(tenant_id: str) -> dict[str, int]:
        return {"n": 5}

    typed("acme")
    counted("acme")
    assert usage_of(agent, "m") == {"input": 7, "output": 3, "reasoning": 1}
    assert total_of(agent) == 15


@given(parts=st.lists(st.tuples(st.integers(0, 500), st.integers(0, 500)), min_size=1, max_size=6))
def test_a_failed_call_still_counts_the_tokens_it_streamed(parts):
    """Whatever a stream reports before it fails is counted (tokens cost money on failure too)."""
    agent = unique("agent")
    items = [{"usage_metadata": {"input_tokens": i, "output_tokens": o}} for i, o in parts]
    stream = instrument_agent(agent)(make("generator", items=items, exc=RuntimeError("cut")))
    with pytest.raises(RuntimeError):
        run(stream, tenant_id="acme")
    assert total_of(agent) == sum(i + o for i, o in parts)
    assert value("agent_invocations_total", agent_id=agent, status="error", tenant_id="acme") == 1


def test_the_helper_records_tokens_by_type():
    """record_agent_invocation(..., model=, usage=) feeds agent_token_usage_total."""
    agent = unique("agent")
    bizmetrics.record_agent_invocation(agent, 10, 30, True, "acme", model="m", usage={"input": 20, "output": 10})
    assert usage_of(agent, "m") == {"input": 20, "output": 10}
    assert total_of(agent) == 30


# --- time to first token ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["generator", "async generator"])
def test_time_to_first_token_is_the_first_resume(kind, clock):
    """With a clock ticking 1 ms per read, a stream's first item takes 1 ms: one observation of 1 ms."""
    agent = unique("agent")
    stream = instrument_agent(agent)(make(kind, items=["Hel", "lo", "!"]))  # text deltas, no usage
    run(stream, tenant_id="acme")
    assert value("agent_time_to_first_token_count", agent_id=agent) == 1
    assert value("agent_time_to_first_token_sum", agent_id=agent) == 1
    assert value("agent_time_to_first_token_bucket", agent_id=agent, le="10.0") == 1


def test_time_to_first_token_excludes_the_consumer_and_counts_a_slow_start():
    """A 60 ms first item and a slow consumer: the time to first token is about 60 ms."""
    agent = unique("agent")

    @instrument_agent(agent)
    async def stream(tenant_id: str):
        await asyncio.sleep(0.06)
        yield "first"
        yield "second"

    async def consume() -> None:
        async for _ in stream("acme"):
            await asyncio.sleep(0.05)

    asyncio.run(consume())
    ttft = value("agent_time_to_first_token_sum", agent_id=agent)
    assert 55 <= ttft < 105
    assert value("agent_time_to_first_token_bucket", agent_id=agent, le="50.0") == 0
    assert value("agent_time_to_first_token_bucket", agent_id=agent, le="100.0") == 1


def test_a_plain_agent_call_records_no_time_to_first_token():
    """Only streams (generators) have a first item."""
    agent = unique("agent")
    instrument_agent(agent)(lambda tenant_id: "answer")("acme")
    assert value("agent_time_to_first_token_count", agent_id=agent) == 0


# --- tool calls ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "coroutine", "generator", "async generator"])
def test_tool_calls_in_every_kind(kind, clock):
    """instrument_tool records calls by status, errors by type and duration, for the four kinds."""
    agent, tool = unique("agent"), unique("tool")
    ok = instrument_tool(tool, agent_id=agent)(make(kind, result=1, items=(1,)))
    bad = instrument_tool(tool, agent_id=agent)(make(kind, items=(1,), exc=TimeoutError("slow")))
    run(ok, tenant_id="acme")
    with pytest.raises(TimeoutError):
        run(bad, tenant_id="acme")
    labels = {"agent_id": agent, "tool": tool, "tenant_id": "acme"}
    assert value("agent_tool_calls_total", **labels, status="success") == 1
    assert value("agent_tool_calls_total", **labels, status="error") == 1
    assert value("agent_tool_errors_total", **labels, error_type="TimeoutError") == 1
    assert value("agent_tool_duration_count", agent_id=agent, tool=tool) == 2


@pytest.mark.parametrize("kind", ["sync", "coroutine", "generator", "async generator"])
def test_a_tool_called_inside_an_agent_takes_its_agent_id(kind):
    """Nested in an instrument_agent call (any kind), a tool records that agent; outside it, unknown."""
    agent, tool = unique("agent"), unique("tool")

    @instrument_tool(tool)
    def search(tenant_id: str) -> str:
        return "found"

    if kind == "sync":

        def body(tenant_id: str) -> str:
            return search(tenant_id)
    elif kind == "coroutine":

        async def body(tenant_id: str) -> str:  # type: ignore[misc]
            await asyncio.sleep(0)
            return search(tenant_id)
    elif kind == "generator":

        def body(tenant_id: str):  # type: ignore[misc]
            yield search(tenant_id)
    else:

        async def body(tenant_id: str):  # type: ignore[misc]
            yield search(tenant_id)

    run(instrument_agent(agent)(body), tenant_id="acme")
    search("acme")
    assert value("agent_tool_calls_total", agent_id=agent, tool=tool, status="success", tenant_id="acme") == 1
    assert value("agent_tool_calls_total", agent_id="unknown", tool=tool, status="success", tenant_id="acme") == 1


def test_record_tool_call_helper():
    """record_tool_call records a tool call by hand, with the enclosing agent when agent_id is None."""
    tool = unique("tool")
    bizmetrics.record_tool_call("a1", tool, 12, False, "acme", error_type="Boom")
    assert value("agent_tool_errors_total", agent_id="a1", tool=tool, error_type="Boom", tenant_id="acme") == 1


# --- error classes ---------------------------------------------------------------------------


def _httpx_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://127.0.0.1/x")
    response = httpx.Response(status, request=request)
    return httpx.HTTPStatusError("bad", request=request, response=response)


def _requests_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError("bad", response=response)


def _openai_error(status: int) -> APIStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    return APIStatusError("bad", response=httpx.Response(status, request=request), body=None)


class AiohttpLike(Exception):
    def __init__(self, status: int) -> None:
        super().__init__("bad")
        self.status = status


@pytest.mark.parametrize("make_error", [_httpx_error, _requests_error, _openai_error, AiohttpLike])
@pytest.mark.parametrize("status", [401, 500, 503])
def test_http_error_type_reads_the_status_of_real_client_errors(make_error, status):
    """httpx, requests, OpenAI SDK and aiohttp-style errors become http_<status>."""
    assert http_error_type(make_error(status)) == f"http_{status}"


def test_http_error_type_falls_back_to_the_class_name():
    """An exception without an HTTP status (or a broken one) is its class name."""
    assert http_error_type(ValueError("x")) == "ValueError"
    odd = requests.HTTPError("no response")
    assert http_error_type(odd) == "HTTPError"


@pytest.mark.parametrize("kind", ["sync", "coroutine", "generator", "async generator"])
def test_error_type_classifies_connector_errors(kind):
    """error_type=http_error_type: 401, 500 and 503 are three error types, not one HTTPStatusError."""
    ct = unique("ct")
    for status in (401, 500, 503):
        op = instrument_connector_operation("call", connector_type=ct, error_type=http_error_type)(
            make(kind, items=(1,), exc=_httpx_error(status))
        )
        with pytest.raises(httpx.HTTPStatusError):
            run(op, tenant_id="acme")
    for status in (401, 500, 503):
        labels = {"connector_type": ct, "operation": "call", "tenant_id": "acme"}
        assert value("connector_errors_total", **labels, error_type=f"http_{status}") == 1
    assert (
        value("connector_operations_total", connector_type=ct, operation="call", status="error", tenant_id="acme") == 3
    )


@pytest.mark.parametrize(
    ("classify", "expected"),
    [
        (lambda exc: "bad\nname" + "x" * 300, "bad_name" + "x" * 120),
        (lambda exc: None, "KeyError"),
        (lambda exc: 1 / 0, "KeyError"),
    ],
)
def test_error_type_results_are_cleaned_and_failures_fall_back(classify, expected):
    """error_type= results are cleaned like labels; None or a raising callable gives the class name."""
    wf = unique("wf")

    @bizmetrics.instrument_workflow(wf, error_type=classify)
    def flow(tenant_id: str) -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        flow("acme")
    assert value("workflow_failures_total", workflow_id=wf, error_type=expected, tenant_id="acme") == 1


def test_agent_metrics_go_through_the_tenant_cap(monkeypatch):
    """Token usage and tool calls of tenants over the cap land on __overflow__."""
    monkeypatch.setattr(_tenants, "ADMISSION", _tenants.Admission(0))
    agent = unique("agent")
    tenant = unique()

    @instrument_agent(agent, model="m")
    def answer(tenant_id: str) -> Any:
        return {"usage": {"input_tokens": 2, "output_tokens": 3}}

    answer(tenant)
    bizmetrics.record_tool_call(agent, "search", 1, True, tenant)
    assert usage_of(agent, "m", tenant="__overflow__") == {"input": 2, "output": 3}
    assert (
        value("agent_tool_calls_total", agent_id=agent, tool="search", status="success", tenant_id="__overflow__") == 1
    )


def test_an_agent_returning_a_stream_object_is_said_to_count_nothing(caplog):
    """An agent that returns an SDK stream (an async iterator) instead of yielding it: a warning says so."""
    from bizmetrics import _log

    _log.reset()

    class AsyncStream:
        def __aiter__(self) -> Any:
            return self

        async def __anext__(self) -> Any:
            raise StopAsyncIteration

    @instrument_agent(unique("agent"))
    async def answer(tenant_id: str) -> Any:
        return AsyncStream()

    asyncio.run(answer("acme"))
    assert any("returned a stream" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


# --- usage that is not reported, ends a stream early, or spans several model calls -----


def _unreported(agent: str, tenant: str = "acme") -> float:
    return value("agent_usage_unreported_total", agent_id=agent, tenant_id=tenant)


def _chat_chunks(model: str, usage: dict[str, Any] | None, words: str = "ab") -> list[dict[str, Any]]:
    chunks: list[dict[str, Any]] = [
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}],
        }
        for w in words
    ]
    if usage is not None:
        chunks.append(
            {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [], "usage": usage}
        )
    return chunks


@pytest.mark.parametrize("kind", ["generator", "async generator"])
@pytest.mark.parametrize(
    "items",
    [
        pytest.param(_chat_chunks("gpt-4o", None), id="openai-without-include_usage"),
        pytest.param(["plain", "text"], id="plain-text"),
    ],
)
def test_a_stream_ending_without_a_usage_report_counts_as_unreported_not_as_zero(kind, items, caplog):
    """No usage report is counted in agent_usage_unreported_total, with one warning per agent saying what to do."""
    agent = unique("agent")
    stream = instrument_agent(agent)(make(kind, items=items))
    for _ in range(3):
        run(stream, tenant_id="acme")
    assert _unreported(agent) == 3
    assert total_of(agent) == 0
    warnings = [r for r in caplog.records if agent in r.getMessage() and "include_usage" in r.getMessage()]
    assert len(warnings) == 1
    assert "report_usage" in warnings[0].getMessage()


def test_a_stream_the_client_closes_before_its_usage_is_unreported():
    """Closed early, before the usage chunk arrives: the call succeeded and its tokens are unknown."""
    agent = unique("agent")
    stream = instrument_agent(agent)(make("generator", items=_chat_chunks("gpt-4o", CHAT_USAGE)))
    gen = stream(tenant_id="acme")
    next(gen)
    gen.close()
    assert _unreported(agent) == 1
    assert value("agent_invocations_total", agent_id=agent, status="success", tenant_id="acme") == 1


def test_a_stream_with_its_usage_and_a_failed_call_are_not_unreported():
    """A reported stream is not unreported; neither is a call that failed before any response."""
    agent = unique("agent")
    run(instrument_agent(agent)(make("generator", items=_chat_chunks("gpt-4o", CHAT_USAGE))), tenant_id="acme")
    with pytest.raises(ValueError):
        run(instrument_agent(agent)(make("sync", exc=ValueError("down"))), tenant_id="acme")
    assert _unreported(agent) == 0
    assert total_of(agent) == CHAT_USAGE["prompt_tokens"] + CHAT_USAGE["completion_tokens"]


def _response_event(kind: str, model: str, inp: int, out: int) -> dict[str, Any]:
    usage = {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out}
    return {"type": kind, "sequence_number": 1, "response": {**RESPONSE, "model": model, "usage": usage}}


@pytest.mark.parametrize("end", ["response.incomplete", "response.failed", "response.completed"])
def test_a_streamed_response_that_ends_incomplete_or_failed_counts_its_usage(end):
    """Every last event of a Responses stream carries the call's usage, finished or not."""
    agent = unique("agent")
    items = [{"type": "response.output_text.delta", "delta": "hi"}, _response_event(end, "gpt-5", 70, 9)]
    run(instrument_agent(agent)(make("generator", items=items)), tenant_id="acme")
    assert usage_of(agent, "gpt-5") == {"input": 70, "output": 9}
    assert _unreported(agent) == 0


def _anthropic_call(model: str, inp: int, deltas: list[int]) -> list[dict[str, Any]]:
    start = {
        "type": "message_start",
        "message": {**ANTHROPIC, "model": model, "usage": {"input_tokens": inp, "output_tokens": 1}},
    }
    events: list[dict[str, Any]] = [start]
    for cumulative in deltas:
        events.append({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}})
        events.append({"type": "message_delta", "delta": {"stop_reason": None}, "usage": {"output_tokens": cumulative}})
    return events


calls = st.lists(
    st.tuples(
        st.sampled_from(["model-a", "model-b", "model-c"]),
        st.integers(0, 500),
        st.lists(st.integers(1, 300), min_size=1, max_size=3).map(sorted),
    ),
    min_size=1,
    max_size=4,
)


@given(calls=calls, shape=st.sampled_from(["anthropic", "responses", "chat"]))
def test_a_stream_of_several_model_calls_adds_them_up_each_under_its_own_model(calls, shape):
    """A tool loop in one stream: each call adds up under its own model; cumulative reports replace within a call."""
    agent = unique("agent")
    items: list[Any] = []
    expected: dict[str, dict[str, float]] = {}
    for model, inp, outs in calls:
        if shape == "anthropic":
            items += _anthropic_call(model, inp, outs)
            out = outs[-1]
        elif shape == "responses":
            out = outs[-1]
            items += [
                {"type": "response.output_text.delta", "delta": "x"},
                _response_event("response.completed", model, inp, out),
            ]
        else:
            out = outs[-1]
            items += _chat_chunks(model, {"prompt_tokens": inp, "completion_tokens": out, "total_tokens": inp + out})
        tokens = expected.setdefault(model, {"input": 0, "output": 0})
        tokens["input"] += inp
        tokens["output"] += out
    run(instrument_agent(agent)(make("generator", items=items)), tenant_id="acme")
    for model, tokens in expected.items():
        assert usage_of(agent, model) == {k: v for k, v in tokens.items() if v}
    assert total_of(agent) == sum(t["input"] + t["output"] for t in expected.values())


def _openai_like(inp: int, out: int) -> Any:
    return ChatCompletion.model_validate(
        _chat({"prompt_tokens": inp, "completion_tokens": out, "total_tokens": inp + out})
    )


@pytest.mark.parametrize("kind", ["sync", "coroutine", "generator", "async generator"])
def test_report_usage_adds_tokens_to_the_running_agent_call(kind):
    """From a mapping, an SDK response or with model=: booked to the call's agent and tenant, and not unreported."""
    agent = unique("agent")
    tenant = unique("tenant")

    def body() -> None:
        bizmetrics.report_usage({"input": 10, "output": 4}, model="tool-model")
        bizmetrics.report_usage(_openai_like(5, 2))

    if kind == "sync":

        def fn(tenant_id: str) -> str:
            body()
            return "text"
    elif kind == "coroutine":

        async def fn(tenant_id: str) -> str:  # type: ignore[misc]
            body()
            return "text"
    elif kind == "generator":

        def fn(tenant_id: str) -> Any:  # type: ignore[misc]
            yield "text"
            body()
    else:

        async def fn(tenant_id: str) -> Any:  # type: ignore[misc]
            yield "text"
            body()

    run(instrument_agent(agent)(fn), tenant)
    assert usage_of(agent, "tool-model", tenant) == {"input": 10, "output": 4}
    assert usage_of(agent, "gpt-4o", tenant) == {"input": 5, "output": 2}
    assert total_of(agent, tenant) == 21
    assert _unreported(agent, tenant) == 0


def test_report_usage_outside_an_agent_records_nothing_and_logs_once(caplog):
    """Outside an instrument_agent call there is no call to add to: one log line, nothing recorded."""
    before = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in REGISTRY.collect() for s in f.samples}
    bizmetrics.report_usage({"input": 10})
    bizmetrics.report_usage({"input": 10})
    after = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in REGISTRY.collect() for s in f.samples}
    assert {k: v for k, v in after.items() if "token" in k[0]} == {k: v for k, v in before.items() if "token" in k[0]}
    assert len([r for r in caplog.records if "outside an instrument_agent call" in r.getMessage()]) == 1


def test_usage_reported_inside_a_tool_is_booked_to_the_enclosing_agent():
    """An LLM call made inside a tool reports its usage to the agent call that runs the tool."""
    agent = unique("agent")

    @instrument_tool("search")
    def search() -> str:
        bizmetrics.report_usage({"input": 7, "output": 3})
        return "found"

    @instrument_agent(agent)
    def answer(tenant_id: str) -> str:
        return search()

    answer("acme")
    assert usage_of(agent, "unknown") == {"input": 7, "output": 3}
    assert _unreported(agent) == 0


def test_report_usage_books_the_model_the_usage_names_before_the_agents_own():
    """An LLM call inside a tool may use another model than the agent's: the usage's model wins, then the agent's."""
    agent = unique("agent")

    @instrument_agent(agent, model="agent-model")
    def answer(tenant_id: str) -> str:
        bizmetrics.report_usage(_openai_like(3, 1))  # names gpt-4o
        bizmetrics.report_usage({"input": 5, "output": 2})  # names no model: the agent's
        return "text"

    answer("acme")
    assert usage_of(agent, "gpt-4o") == {"input": 3, "output": 1}
    assert usage_of(agent, "agent-model") == {"input": 5, "output": 2}
