"""SQLAlchemy, sync and asyncio, against a real PostgreSQL cluster and SQLite: queries and pool series."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import create_async_engine
from support.registry import sample, unique, value
from support.servers import postgres

import bizmetrics.sqlalchemy
from bizmetrics.sqlalchemy import operation_of


@pytest.fixture(scope="module")
def pg() -> Iterator[str]:
    with postgres() as url:
        yield url


STATEMENTS = {
    "select": "SELECT x FROM items WHERE x > 0",
    "insert": "INSERT INTO items (x) VALUES (1)",
    "update": "  UPDATE items SET x = x + 1",
    "delete": "/* tidy */ DELETE FROM items WHERE x > 1000",
}
ops_strategy = st.lists(st.tuples(st.sampled_from(sorted(STATEMENTS)), st.booleans()), min_size=1, max_size=10)


def _counts(names: set[str]) -> dict[str, float]:
    return {name: value("db_query_duration_count", operation=name) for name in names}


def _run_sync(engine: Any, ops: list[tuple[str, bool]], named: str) -> None:
    with engine.begin() as conn:
        for verb, give_name in ops:
            statement = sa.text(STATEMENTS[verb])
            if give_name:
                conn.execute(statement.execution_options(bizmetrics_operation=f"{named}_{verb}"))
            else:
                conn.execute(statement)


def _check(before: dict[str, float], ops: list[tuple[str, bool]], named: str) -> None:
    expected: Counter[str] = Counter(f"{named}_{verb}" if give else verb for verb, give in ops)
    after = _counts(set(before))
    for name in before:
        assert after[name] - before[name] == expected[name], name


def _names(named: str) -> set[str]:
    return set(STATEMENTS) | {f"{named}_{verb}" for verb in STATEMENTS}


@pytest.fixture(scope="module")
def sqlite_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    path = tmp_path_factory.mktemp("sqlite") / "db.sqlite"
    engine = sa.create_engine(f"sqlite:///{path}")
    bizmetrics.sqlalchemy.instrument(engine, pool=unique("sqlite"))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE items (x INTEGER)")
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def pg_engine(pg: str) -> Iterator[Any]:
    engine = sa.create_engine(f"postgresql+psycopg://{pg}")
    bizmetrics.sqlalchemy.instrument(engine, pool=unique("pg"))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS items (x INTEGER)")
    yield engine
    engine.dispose()


@settings(max_examples=15)
@given(ops=ops_strategy)
def test_sqlite_queries_by_verb_or_given_name(sqlite_engine: Any, ops: list[tuple[str, bool]]) -> None:
    """Each statement observes one duration, under its verb or the execution option's name."""
    named = unique("op")
    before = _counts(_names(named))
    _run_sync(sqlite_engine, ops, named)
    _check(before, ops, named)


@settings(max_examples=10)
@given(ops=ops_strategy)
def test_postgres_queries_by_verb_or_given_name(pg_engine: Any, ops: list[tuple[str, bool]]) -> None:
    named = unique("op")
    before = _counts(_names(named))
    _run_sync(pg_engine, ops, named)
    _check(before, ops, named)


@pytest.mark.parametrize("driver", ["postgresql+asyncpg", "sqlite+aiosqlite"])
def test_async_engine_queries(pg: str, tmp_path: Path, driver: str) -> None:
    """An AsyncEngine is instrumented through its sync_engine's events."""
    named = unique("op")
    ops = [("insert", False), ("select", True), ("update", False), ("select", False)]
    before = _counts(_names(named))
    url = f"{driver}://{pg}" if driver.startswith("postgresql") else f"{driver}:///{tmp_path / 'a.sqlite'}"

    async def main() -> None:
        engine = bizmetrics.sqlalchemy.instrument(create_async_engine(url), pool=unique("async"))
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS items (x INTEGER)")
        before.update(_counts(_names(named)))
        async with engine.begin() as conn:
            for verb, give in ops:
                statement = sa.text(STATEMENTS[verb])
                if give:
                    statement = statement.execution_options(bizmetrics_operation=f"{named}_{verb}")
                await conn.execute(statement)
        await engine.dispose()

    asyncio.run(main())
    _check(before, ops, named)


def test_failed_statement_observed_and_raised(sqlite_engine: Any) -> None:
    """A statement that fails raises as before; its duration is observed under its operation."""
    named = unique("broken")
    with sqlite_engine.connect() as conn, pytest.raises(sa.exc.OperationalError):
        conn.execute(sa.text("SELECT * FROM no_such_table").execution_options(bizmetrics_operation=named))
    assert value("db_query_duration_count", operation=named) == 1


def test_statements_without_parameters_are_observed(sqlite_engine: Any) -> None:
    """``no_parameters=True`` (a statement holding a literal ``%``): the dialect's other entry point, timed too."""
    named = unique("literal")
    with sqlite_engine.connect() as conn:
        options = {"no_parameters": True, "bizmetrics_operation": named}
        assert conn.execution_options(**options).exec_driver_sql("SELECT '100%'").scalar() == "100%"
    assert value("db_query_duration_count", operation=named) == 1


def test_an_executemany_is_one_observation(sqlite_engine: Any) -> None:
    """One statement with many parameter sets (the DBAPI's ``executemany``) is one query, timed once."""
    named = unique("bulk")
    statement = sa.text("INSERT INTO items (x) VALUES (:x)").execution_options(bizmetrics_operation=named)
    with sqlite_engine.begin() as conn:
        assert conn.execute(statement, [{"x": i} for i in range(5)]).rowcount == 5
    assert value("db_query_duration_count", operation=named) == 1


def test_pool_series_against_the_pool(pg: str) -> None:
    """Size, in use, created, invalidated, checkout waits and timeouts follow what the pool did."""
    name = unique("pool")
    engine = sa.create_engine(f"postgresql+psycopg://{pg}", pool_size=2, max_overflow=0, pool_timeout=0.3)
    bizmetrics.sqlalchemy.instrument(engine, pool=name)
    first, second = engine.connect(), engine.connect()
    first.exec_driver_sql("SELECT 1")
    assert value("db_connection_pool_in_use", pool=name) == 2 == engine.pool.checkedout()
    assert value("db_connection_pool_size", pool=name) == 2
    assert value("db_connection_pool_connections_created_total", pool=name) == 2
    # A third checkout waits for pool_timeout, then gives up.
    with pytest.raises(sa.exc.TimeoutError):
        engine.connect()
    assert value("db_connection_pool_checkout_timeouts_total", pool=name) == 1
    assert value("db_connection_pool_checkout_wait_count", pool=name) == 3
    assert value("db_connection_pool_checkout_wait_sum", pool=name) >= 300
    # An invalidated connection is closed: it leaves the pool.
    second.invalidate()
    second.close()
    assert value("db_connection_pool_connections_invalidated_total", pool=name) == 1
    assert value("db_connection_pool_size", pool=name) == 1
    assert value("db_connection_pool_in_use", pool=name) == 1 == engine.pool.checkedout()
    first.close()
    assert value("db_connection_pool_in_use", pool=name) == 0
    # A new connection replaces the invalidated one.
    with engine.connect() as third, engine.connect() as fourth:
        third.exec_driver_sql("SELECT 1")
        fourth.exec_driver_sql("SELECT 1")
    assert value("db_connection_pool_connections_created_total", pool=name) == 3
    assert value("db_connection_pool_size", pool=name) == 2
    engine.dispose()
    assert value("db_connection_pool_size", pool=name) == 0
    # After dispose() the new pool is watched too.
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
        assert value("db_connection_pool_in_use", pool=name) == 1
    assert value("db_connection_pool_size", pool=name) == 1
    engine.dispose()


def test_pool_under_threads_is_exact(pg: str) -> None:
    """Many threads checking out and in: in use ends at 0, waits count every checkout."""
    name = unique("pool")
    engine = sa.create_engine(f"postgresql+psycopg://{pg}", pool_size=3, max_overflow=0, pool_timeout=30)
    bizmetrics.sqlalchemy.instrument(engine, pool=name)
    per_thread, threads = 20, 6
    peak = []

    def work() -> None:
        for _ in range(per_thread):
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
                peak.append(sample("db_connection_pool_in_use", pool=name))

    runners = [threading.Thread(target=work) for _ in range(threads)]
    for t in runners:
        t.start()
    for t in runners:
        t.join()
    assert value("db_connection_pool_in_use", pool=name) == 0
    assert value("db_connection_pool_checkout_wait_count", pool=name) == per_thread * threads
    assert value("db_connection_pool_connections_created_total", pool=name) == 3
    assert max(p or 0 for p in peak) <= 3
    engine.dispose()


def test_instrument_existing_pool_and_twice(pg: str) -> None:
    """Connections opened before instrument() are counted from it; a second instrument() adds nothing."""
    name = unique("pool")
    engine = sa.create_engine(f"postgresql+psycopg://{pg}")
    held = engine.connect()
    bizmetrics.sqlalchemy.instrument(engine, pool=name)
    bizmetrics.sqlalchemy.instrument(engine, pool=name)
    assert value("db_connection_pool_in_use", pool=name) == 1
    named = unique("op")
    held.execute(sa.text("SELECT 1").execution_options(bizmetrics_operation=named))
    assert value("db_query_duration_count", operation=named) == 1
    held.close()
    assert value("db_connection_pool_in_use", pool=name) == 0
    engine.dispose()


@given(st.text(max_size=60))
def test_operation_is_never_sql_text(statement: str) -> None:
    """Whatever the statement, the operation is one of the known verbs or ``other``."""
    assert operation_of(statement) in bizmetrics.sqlalchemy.VERBS | {"other"}


def test_verbs() -> None:
    assert operation_of("  -- hi\n(SELECT 1) UNION (SELECT 2)") == "select"
    assert operation_of("with t as (select 1) select * from t") == "with"
    assert operation_of("INSERT INTO x VALUES ('select')") == "insert"
    assert operation_of("acme_secret_table") == "other"


def test_queries_timed_without_connection_events(tmp_path: Path) -> None:
    """instrument() adds no connection-event listener (each turns on SQLAlchemy's dispatch around every
    execution); the application's own cursor and do_execute listeners still run once per statement."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'e.sqlite'}")
    bizmetrics.sqlalchemy.instrument(engine, pool=unique("events"))
    assert not engine._has_events
    seen: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: seen.append("cursor"))
    sa.event.listen(engine, "do_execute", lambda *a: seen.append("do_execute"))
    named = unique("many")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        insert = sa.text("INSERT INTO t (x) VALUES (:x)").execution_options(bizmetrics_operation=named)
        conn.execute(insert, [{"x": 1}, {"x": 2}])
        conn.execute(sa.text("SELECT x FROM t").execution_options(bizmetrics_operation=named + "_one"), {})
    # One executemany is one statement; the app's do_execute listener saw the other two, once each.
    assert value("db_query_duration_count", operation=named) == 1
    assert value("db_query_duration_count", operation=named + "_one") == 1
    assert seen.count("cursor") == 3 and seen.count("do_execute") == 2
    engine.dispose()
