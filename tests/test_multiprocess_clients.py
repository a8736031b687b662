"""The client instrumentations in multiprocess mode: counters add up over workers, gauges count live workers only."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

WORKER = """
    import sys
    import httpx, sqlalchemy as sa
    import bizmetrics.httpx, bizmetrics.sqlalchemy

    queries, held, remaining = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    engine = sa.create_engine("sqlite:///" + sys.argv[4], pool_size=5)
    bizmetrics.sqlalchemy.instrument(engine, pool="mp")
    kept = [engine.connect() for _ in range(held)]
    for _ in range(queries):
        kept[0].execute(sa.text("SELECT 1").execution_options(bizmetrics_operation="mp_query"))

    def answer(request):
        status = 429 if remaining == "0" else 200
        return httpx.Response(status, headers={"x-ratelimit-remaining": remaining})

    client = bizmetrics.httpx.instrument(httpx.Client(transport=httpx.MockTransport(answer)), targets={"api.x": "mp"})
    client.get("https://api.x/items")
    print("ready", flush=True)
    sys.stdin.readline()
    import os
    os._exit(0)  # as a killed worker: its connections were never given back
"""

READ = """
    import json
    from bizmetrics import multiprocess
    reg = multiprocess.registry()
    def get(name, **labels):
        return reg.get_sample_value(name, labels)
    print(json.dumps({
        "queries": get("db_query_duration_count", operation="mp_query"),
        "in_use": get("db_connection_pool_in_use", pool="mp"),
        "size": get("db_connection_pool_size", pool="mp"),
        "created": get("db_connection_pool_connections_created_total", pool="mp"),
        "limited": get("connector_rate_limited_total", connector_type="mp", tenant_id="default_tenant"),
        "remaining": get("connector_rate_limit_remaining", connector_type="mp", tenant_id="default_tenant"),
        "operations": get("connector_operations_total", connector_type="mp", operation="GET", status="success",
                          tenant_id="default_tenant"),
    }))
"""


def _worker(env: dict[str, str], db: Path, queries: int, held: int, remaining: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WORKER), str(queries), str(held), remaining, str(db)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _read(env: dict[str, str]) -> dict[str, float | None]:
    import json

    out = subprocess.run([sys.executable, "-c", textwrap.dedent(READ)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result: dict[str, float | None] = json.loads(out.stdout)
    return result


@pytest.mark.slow
def test_counters_add_up_and_gauges_count_live_workers(tmp_path: Path) -> None:
    mp = tmp_path / "mp"
    mp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "BIZMETRICS_HTTP_STATUS"}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(mp)
    db = tmp_path / "db.sqlite"
    gone = _worker(env, db, queries=5, held=2, remaining="0")
    alive = _worker(env, db, queries=3, held=1, remaining="42")
    try:
        both = _read(env)
        assert both["queries"] == 8 and both["created"] == 3
        assert both["in_use"] == 3 and both["size"] == 3
        assert both["limited"] == 1 and both["remaining"] == 42  # the most recent report
        gone.communicate("\n", timeout=30)
        after = _read(env)
        # The dead worker's counts stay; its connections and quota report are gone with it.
        assert after["queries"] == 8 and after["created"] == 3 and after["limited"] == 1
        assert after["operations"] == 1
        assert after["in_use"] == 1 and after["size"] == 1
        assert after["remaining"] == 42
    finally:
        for proc in (gone, alive):
            if proc.poll() is None:
                proc.communicate("\n", timeout=30)
