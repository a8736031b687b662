"""bizmetrics.testing (capture, fixed durations, the pytest fixture) and exemplars."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from prometheus_client import REGISTRY
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from support.registry import unique
from support.samples import KINDS, make, run

import bizmetrics
from bizmetrics import (
    instrument_agent,
    instrument_cache_lookup,
    instrument_connector_operation,
    instrument_db_query,
    instrument_sync_operation,
    instrument_tool,
    instrument_workflow,
    instrument_workflow_step,
    parse_traceparent,
    set_exemplar_provider,
    trace_context,
)
from bizmetrics.testing import capture, fixed_durations

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


# --- capture -------------------------------------------------------------------------------


def test_capture_reports_deltas_summed_over_matching_series():
    """delta() sums every series of a sample name whose labels include the given ones."""
    ct = unique("ct")
    with capture() as captured:
        for tenant in ("a", "b", "b"):
            bizmetrics.record_connector_operation(ct, "fetch", 42, True, tenant)
        bizmetrics.record_connector_operation(ct, "fetch", 7, False, "a", error_type="Timeout")
    assert captured.delta("connector_operations_total", connector_type=ct) == 4
    assert captured.delta("connector_operations_total", connector_type=ct, tenant_id="b") == 2
    assert captured.delta("connector_operations_total", connector_type=ct, status="error") == 1
    assert captured.delta("connector_operation_duration_count", connector_type=ct) == 4
    assert captured.delta("connector_operation_duration_sum", connector_type=ct) == 42 * 3 + 7
    assert captured.delta("connector_operation_duration_bucket", connector_type=ct, le="50.0") == 4
    assert captured.delta("connector_operation_duration_bucket", connector_type=ct, le="10.0") == 1
    assert captured.delta("connector_errors_total", connector_type=ct, error_type="Timeout") == 1
    assert captured.delta("connector_operations_total", connector_type="nothing-" + ct) == 0


def test_assert_delta_lists_what_changed():
    """A wrong expectation raises AssertionError naming the sample and listing every change."""
    ct = unique("ct")
    with capture() as captured:
        bizmetrics.record_connector_operation(ct, "fetch", 1, True, "acme")
        captured.assert_delta("connector_operations_total", 1, connector_type=ct)
        with pytest.raises(AssertionError) as failure:
            captured.assert_delta("connector_operations_total", 2, connector_type=ct, status="success")
    message = str(failure.value)
    assert "expected 2" in message and "changed by 1" in message
    assert f"connector_type='{ct}'" in message and "connector_operation_duration_count" in message


def test_changes_lists_every_changed_sample():
    """changes() maps (name, label pairs) to the change of every sample that moved."""
    cache = unique("cache")
    with capture() as captured:
        bizmetrics.record_cache_hit(cache, 3)
        bizmetrics.record_cache_miss(cache)
    changes = captured.changes()
    assert changes[("cache_hits_total", (("cache", cache),))] == 3
    assert changes[("cache_misses_total", (("cache", cache),))] == 1
    assert all(delta != 0 for delta in changes.values())


def test_changes_leave_out_prometheus_clients_own_process_and_gc_metrics():
    """The process, platform and GC collectors move on their own: capture() ignores them."""
    with capture() as captured:
        _ = [bytearray(1 << 20) for _ in range(20)]
        import gc

        gc.collect()
    assert not [name for name, _ in captured.changes() if name.startswith(("process_", "python_gc_"))]


def test_fixed_durations_land_in_the_expected_bucket():
    """Under fixed_durations(42), every decorated call of every kind observes exactly 42 ms."""
    ct = unique("ct")

    @instrument_connector_operation("sync", connector_type=ct)
    def sync() -> None:
        pass

    @instrument_connector_operation("coro", connector_type=ct)
    async def coro() -> None:
        await asyncio.sleep(0.01)

    @instrument_connector_operation("gen", connector_type=ct)
    def gen():
        yield 1
        yield 2

    with capture() as captured, fixed_durations(42):
        sync()
        asyncio.run(coro())
        list(gen())
    captured.assert_delta("connector_operation_duration_sum", 126, connector_type=ct)
    captured.assert_delta("connector_operation_duration_bucket", 0, connector_type=ct, le="25.0")
    captured.assert_delta("connector_operation_duration_bucket", 3, connector_type=ct, le="50.0")
    with capture() as after:
        sync()
    assert after.delta("connector_operation_duration_sum", connector_type=ct) < 42


#: Every decorator family, given the fresh name the call records under.
FAMILIES = {
    "connector": lambda name: instrument_connector_operation(name, connector_type="crm"),
    "sync": lambda name: instrument_sync_operation("contacts", operation_name=name, connector_type="crm"),
    "workflow": instrument_workflow,
    "step": lambda name: instrument_workflow_step(name, workflow_id="wf"),
    "agent": instrument_agent,
    "tool": lambda name: instrument_tool(name, agent_id="helper"),
    "db": instrument_db_query,
    "cache": instrument_cache_lookup,
}


def _recorded(family: str, kind: str, fails: bool, fixed: bool) -> dict[Any, float]:
    """What one call records, its fresh name replaced by ``NAME`` so two calls compare."""
    name = unique("call")
    fn = FAMILIES[family](name)(make(kind, result=[1, 2], exc=ValueError("boom") if fails else None))
    with capture() as captured, fixed_durations(5) if fixed else contextlib.nullcontext():
        try:
            run(fn)
        except ValueError:
            assert fails
    return {
        (sample, tuple((k, "NAME" if v == name else v) for k, v in pairs)): change
        for (sample, pairs), change in captured.changes().items()
    }


@pytest.mark.parametrize("fails", [False, True], ids=["success", "failure"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_fixed_durations_change_only_the_durations(family: str, kind: str, fails: bool):
    """Every family and kind, under fixed_durations(5): the same counts as without; each duration is 5 ms."""
    plain, fixed = _recorded(family, kind, fails, False), _recorded(family, kind, fails, True)
    durations = ("_sum", "_bucket")
    assert {k: v for k, v in fixed.items() if not k[0].endswith(durations)} == {
        k: v for k, v in plain.items() if not k[0].endswith(durations)
    }
    observed = [key for key in fixed if key[0].endswith("_count")]
    assert bool(observed) == (family != "cache")  # a cache lookup counts hits and misses, it is not timed
    for name, pairs in observed:
        histogram, count = name.removesuffix("_count"), fixed[(name, pairs)]
        assert fixed[(histogram + "_sum", pairs)] == 5 * count
        for (sample, labels), change in fixed.items():
            if sample == histogram + "_bucket" and set(pairs) <= set(labels):
                assert change == (count if float(dict(labels)["le"]) >= 5 else 0), (sample, labels)


@pytest.mark.slow
def test_capture_reads_the_multiprocess_collector(tmp_path):
    """In multiprocess mode, capture() sees what other processes recorded."""
    script = textwrap.dedent(
        """
        import subprocess, sys
        from bizmetrics.testing import capture
        child = "import bizmetrics; bizmetrics.record_connector_sync('mp', 'rows', 5, 'acme')"
        with capture() as captured:
            subprocess.run([sys.executable, "-c", child], check=True)
            subprocess.run([sys.executable, "-c", child], check=True)
        print(captured.delta("connector_sync_records_total", connector_type="mp"))
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "10.0"


def _users_pytest(directory: object, test_file: str) -> str:
    """Run pytest on a user's test file in a fresh process, as the user would; return its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "BIZMETRICS_", "PROMETHEUS_"))}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.mark.slow
def test_the_pytest_fixture_works_in_a_users_test_run(tmp_path):
    """A user's test file uses bizmetrics_capture (from the pytest11 entry point) in a real pytest run."""
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            import pytest
            from bizmetrics import instrument_connector_operation
            from bizmetrics.testing import fixed_durations


            @instrument_connector_operation("sync_contacts", connector_type="hubspot")
            def sync_contacts(tenant_id):
                return 1


            def test_records(bizmetrics_capture):
                with fixed_durations(30):
                    sync_contacts("acme")
                bizmetrics_capture.assert_delta(
                    "connector_operations_total", 1, connector_type="hubspot", tenant_id="acme", status="success"
                )
                bizmetrics_capture.assert_delta(
                    "connector_operation_duration_bucket", 1, le="50.0", connector_type="hubspot"
                )


            def test_a_wrong_expectation_fails(bizmetrics_capture):
                sync_contacts("acme")
                with pytest.raises(AssertionError, match="What changed"):
                    bizmetrics_capture.assert_delta("connector_operations_total", 5, connector_type="hubspot")
            """
        )
    )
    assert "2 passed" in _users_pytest(tmp_path, "test_user.py")


@pytest.mark.slow
def test_a_conftest_can_still_turn_on_multiprocess_mode_with_the_plugin_installed(tmp_path):
    """The plugin is loaded before any conftest: a conftest setting PROMETHEUS_MULTIPROC_DIR still gets that mode."""
    directory = str(tmp_path / "mp")
    (tmp_path / "conftest.py").write_text(
        f"import os\nos.makedirs({directory!r})\nos.environ['PROMETHEUS_MULTIPROC_DIR'] = {directory!r}\n"
    )
    (tmp_path / "test_mode.py").write_text(
        textwrap.dedent(
            """
            from prometheus_client import values
            import bizmetrics


            def test_multiprocess_mode(bizmetrics_capture):
                assert values.ValueClass is not values.MutexValue
                bizmetrics.record_connector_sync("mp", "rows", 3, "acme")
                bizmetrics_capture.assert_delta("connector_sync_records_total", 3, connector_type="mp")
            """
        )
    )
    assert "1 passed" in _users_pytest(tmp_path, "test_mode.py")


# --- exemplars --------------------------------------------------------------------------------


def _exemplar_lines(name_prefix: str, marker: str) -> list[str]:
    text = openmetrics_latest(REGISTRY).decode()
    return [line for line in text.splitlines() if line.startswith(name_prefix) and marker in line and " # {" in line]


def test_every_duration_histogram_and_operation_counter_carries_the_trace():
    """With a trace current, each duration histogram and operation counter gets the exemplar."""
    t = unique("x")
    trace = unique("trace").replace("_", "")

    @instrument_connector_operation("op", connector_type=t)
    def op() -> None:
        pass

    @instrument_workflow(t)
    def flow() -> None:
        step()

    @instrument_workflow_step("step")
    def step() -> None:
        pass

    @instrument_agent(t)
    def stream():
        yield {"usage": {"input_tokens": 1, "output_tokens": 1}}
        tool()

    @instrument_tool("tool")
    def tool() -> None:
        pass

    @instrument_db_query(t)
    def query() -> None:
        pass

    with trace_context(trace, SPAN):
        op()
        flow()
        list(stream())
        query()
        bizmetrics.record_api_request("GET", "/" + t, 200, 3)
    marker = f'trace_id="{trace}"'
    for prefix in (
        "connector_operation_duration_bucket",
        "workflow_execution_duration_bucket",
        "workflow_step_duration_bucket",
        "agent_response_duration_bucket",
        "agent_time_to_first_token_bucket",
        "agent_tool_duration_bucket",
        "db_query_duration_bucket",
        "api_request_duration_bucket",
        "connector_operations_total",
        "workflow_executions_total",
        "agent_invocations_total",
        "agent_tool_calls_total",
        "api_requests_total",
    ):
        lines = _exemplar_lines(prefix, t)
        assert any(marker in line and f'span_id="{SPAN}"' in line for line in lines), prefix


def test_no_trace_no_exemplar_and_span_id_only_when_known():
    """Outside a trace nothing carries an exemplar; a trace without span id has only trace_id."""
    t = unique("x")
    bizmetrics.record_db_query(t, 1)
    assert _exemplar_lines("db_query_duration_bucket", t) == []
    with trace_context("abc123"):
        bizmetrics.record_db_query(t, 1)
    lines = _exemplar_lines("db_query_duration_bucket", t)
    assert lines and all('{trace_id="abc123"}' in line for line in lines)


def test_over_long_exemplars_are_dropped_never_raised(caplog):
    """A trace id too long for OpenMetrics' 128 characters is dropped with a warning; the record is kept."""
    from bizmetrics import _log

    _log.reset()
    t = unique("x")
    with trace_context("f" * 200), capture() as captured:
        bizmetrics.record_db_query(t, 1)
    captured.assert_delta("db_query_duration_count", 1, operation=t)
    assert _exemplar_lines("db_query_duration_bucket", t) == []
    assert any("exemplar" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "bad",
    [{"__trace_id": "abc"}, {"trace id": "abc"}, {"trace_id": "\ud800"}, {"trace_id": "x" * 130}, {}, ["trace"]],
)
def test_an_exemplar_prometheus_would_refuse_is_dropped_and_the_record_counted_once(bad):
    """Reserved or invalid names, lone surrogates, over-long values: no exemplar, the record counted once,
    and the OpenMetrics exposition still renders."""
    t = unique("x")
    set_exemplar_provider(lambda: bad)
    try:
        with capture() as captured:
            bizmetrics.record_connector_operation(t, "op", 12, True, "acme")
    finally:
        set_exemplar_provider(None)
    captured.assert_delta("connector_operations_total", 1, connector_type=t)
    captured.assert_delta("connector_operation_duration_count", 1, connector_type=t)
    captured.assert_delta("connector_operation_duration_sum", 12, connector_type=t)
    assert _exemplar_lines("connector_operations_total", t) == []


def test_a_surrogate_in_a_trace_context_never_breaks_the_scrape():
    """trace_context with a lone surrogate: dropped, and the OpenMetrics scrape still renders."""
    t = unique("x")
    with trace_context("\ud800"):
        bizmetrics.record_db_query(t, 1)
    assert _exemplar_lines("db_query_duration_bucket", t) == []


def test_the_exemplar_provider_supplies_traces_and_none_restores_the_default():
    """set_exemplar_provider(fn) gives each record fn()'s exemplar; a raising or None provider records plain."""
    t = unique("x")
    set_exemplar_provider(lambda: {"trace_id": "from-provider"})
    try:
        bizmetrics.record_db_query(t, 1)
        with trace_context("from-context"):
            bizmetrics.record_db_query(t + "2", 1)
    finally:
        set_exemplar_provider(None)
    assert any('trace_id="from-provider"' in line for line in _exemplar_lines("db_query_duration_bucket", t))
    assert any('trace_id="from-context"' in line for line in _exemplar_lines("db_query_duration_bucket", t + "2"))
    set_exemplar_provider(lambda: 1 / 0)
    try:
        bizmetrics.record_db_query(t + "3", 1)
    finally:
        set_exemplar_provider(None)
    bizmetrics.record_db_query(t + "4", 1)
    assert _exemplar_lines("db_query_duration_bucket", t + "3") == []
    assert _exemplar_lines("db_query_duration_bucket", t + "4") == []


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"00-{TRACE}-{SPAN}-01", {"trace_id": TRACE, "span_id": SPAN}),
        (f"00-{TRACE.upper()}-{SPAN}-03".encode(), {"trace_id": TRACE, "span_id": SPAN}),
        (f"00-{TRACE}-{SPAN}-00", None),  # not sampled
        (f"00-{'0' * 32}-{SPAN}-01", None),  # invalid trace id
        (f"ff-{TRACE}-{SPAN}-01", None),  # invalid version
        ("00-abc-def-01", None),
        ("garbage", None),
        ("", None),
        (None, None),
    ],
)
def test_traceparent_parsing(header, expected):
    """A sampled W3C traceparent gives the exemplar; unsampled or malformed ones give None."""
    assert parse_traceparent(header) == expected


@pytest.mark.slow
def test_multiprocess_mode_keeps_the_latest_exemplar_of_each_series_across_workers(tmp_path):
    """In multiprocess mode a trace gives exemplars: per series the latest of any worker, a dead one's included."""
    script = textwrap.dedent(
        """
        import os, time
        import bizmetrics
        from bizmetrics import _mpworker, multiprocess
        from prometheus_client.openmetrics.exposition import generate_latest

        def worker(trace, query):
            pid = os.fork()
            if pid == 0:
                with bizmetrics.trace_context(trace, "5pan"):
                    bizmetrics.record_db_query(query, 3)
                _mpworker.flush()
                os._exit(0)
            os.waitpid(pid, 0)

        worker("dead1", "q")
        time.sleep(0.01)
        worker("dead2", "q")  # later: its exemplar replaces the first worker's
        worker("dead3", "other")
        with bizmetrics.trace_context("live", "5pan"):
            bizmetrics.record_db_query("mine", 7)
        _mpworker.flush()
        print(generate_latest(multiprocess.registry()).decode())
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "bizmetrics" not in out.stderr  # no warning any more
    lines = out.stdout.splitlines()

    def bucket(operation, le):
        prefix = f'db_query_duration_bucket{{le="{le}",operation="{operation}"}} '
        return next(line[len(prefix) :] for line in lines if line.startswith(prefix))

    assert bucket("q", "5.0") == '2.0 # {span_id="5pan",trace_id="dead2"} 3.0 ' + bucket("q", "5.0").rsplit(" ", 1)[1]
    assert bucket("other", "5.0").startswith('1.0 # {span_id="5pan",trace_id="dead3"} 3.0 ')
    assert bucket("mine", "10.0").startswith('1.0 # {span_id="5pan",trace_id="live"} 7.0 ')
    assert " # " not in bucket("q", "1.0")  # no observation there: no exemplar
    assert not list(tmp_path.glob("exemplars_*.json"))[3:]  # the dead workers' files were merged away


# --- the middleware takes the trace from traceparent ------------------------------------------


def test_the_asgi_middleware_sets_the_trace_from_a_sampled_traceparent():
    """A sampled traceparent puts its trace on the request's and the handler's records; an unsampled one does not."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from test_asgi import run

    from bizmetrics.asgi import MetricsMiddleware

    t = unique("x")

    async def handler(request: Request) -> PlainTextResponse:
        bizmetrics.record_db_query(t, 1)
        return PlainTextResponse(str(bizmetrics._trace.current()))

    app = Starlette(routes=[Route("/" + t, handler)], middleware=[Middleware(MetricsMiddleware)])
    sampled, unsampled = f"00-{TRACE}-{SPAN}-01", f"00-{'1' * 32}-{SPAN}-00"
    answers = run(app, "/" + t, traceparent=sampled) + run(app, "/" + t, traceparent=unsampled)
    assert TRACE in answers[0].text and answers[1].text == "None"
    marker = f'trace_id="{TRACE}"'
    assert any(marker in line for line in _exemplar_lines("api_request_duration_bucket", t))
    assert any(marker in line for line in _exemplar_lines("api_requests_total", t))
    assert any(marker in line for line in _exemplar_lines("db_query_duration_bucket", t))
    assert not any("1" * 32 in line for line in _exemplar_lines("api_requests_total", t))


def test_a_provider_wins_over_the_traceparent_header():
    """With an exemplar provider set, the middleware leaves traceparent alone: the provider's span is used."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from test_asgi import run

    from bizmetrics.asgi import MetricsMiddleware

    t = unique("x")

    async def handler(request: object) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/" + t, handler)], middleware=[Middleware(MetricsMiddleware)])
    set_exemplar_provider(lambda: {"trace_id": "server", "span_id": "aaaaaaaaaaaaaaaa"})
    try:
        run(app, "/" + t, traceparent=f"00-{TRACE}-{SPAN}-01")
    finally:
        set_exemplar_provider(None)
    lines = _exemplar_lines("api_requests_total", t)
    assert lines and all('span_id="aaaaaaaaaaaaaaaa"' in line and TRACE not in line for line in lines)


def test_the_wsgi_middleware_sets_the_trace_from_a_sampled_traceparent():
    """The WSGI middleware does the same from HTTP_TRACEPARENT."""
    from bizmetrics.wsgi import MetricsMiddleware

    t = unique("x")

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        bizmetrics.record_db_query(t, 1)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    wrapped = MetricsMiddleware(app, route=lambda environ: "/" + t)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/" + t, "HTTP_TRACEPARENT": f"00-{TRACE}-{SPAN}-01"}
    body = wrapped(environ, lambda status, headers, exc_info=None: None)
    assert b"".join(body) == b"ok"
    body.close()  # type: ignore[attr-defined]
    marker = f'trace_id="{TRACE}"'
    assert any(marker in line for line in _exemplar_lines("api_request_duration_bucket", t))
    assert any(marker in line for line in _exemplar_lines("db_query_duration_bucket", t))


def test_the_bizmetrics_capture_fixture_captures_the_whole_test(bizmetrics_capture):
    """The plugin's fixture (this suite loads it through the pytest11 entry point too) is a running capture."""
    cache = unique("cache")
    bizmetrics.record_cache_hit(cache, 2)
    bizmetrics.record_cache_miss(cache)
    bizmetrics_capture.assert_delta("cache_hits_total", 2, cache=cache)
    assert bizmetrics_capture.delta("cache_misses_total", cache=cache) == 1
    with pytest.raises(AssertionError, match="What changed"):
        bizmetrics_capture.assert_delta("cache_hits_total", 3, cache=cache)
