"""SQLAlchemy: query durations and connection-pool series from one call.

``bizmetrics.sqlalchemy.instrument(engine, pool="main")`` on an ``Engine`` or
an ``AsyncEngine``:

- every statement observes ``db_query_duration{operation}`` (timed around the
  dialect's ``do_execute``, ``do_execute_no_params`` and ``do_executemany`` of
  this engine): the name given
  with ``execution_options(bizmetrics_operation="load_invoices")``, else the
  statement's verb (``select``, ``insert``...), never its text;
- the pool fills ``db_connection_pool_size`` (connections open),
  ``db_connection_pool_in_use`` (checked out), ``db_connection_pool_checkout_wait``
  (ms), ``db_connection_pool_checkout_timeouts_total`` and
  ``db_connection_pool_connections_created_total`` / ``_invalidated_total``
  (through the pool's events).

Importing this module does not import SQLAlchemy; ``instrument`` does.
"""

from __future__ import annotations

import importlib
import re
from time import perf_counter_ns
from typing import Any

from . import _cache, _log
from ._families import DB_POOL_FAMILY, DB_QUERY_FAMILY

__all__ = ["OPERATION_OPTION", "VERBS", "instrument", "operation_of"]

#: The execution option that names a statement's ``operation``.
OPERATION_OPTION = "bizmetrics_operation"

#: Statement verbs recorded as themselves; any other first word is ``other``.
VERBS = frozenset(
    (
        "select",
        "insert",
        "update",
        "delete",
        "merge",
        "upsert",
        "replace",
        "with",
        "values",
        "call",
        "begin",
        "commit",
        "rollback",
        "savepoint",
        "release",
        "create",
        "alter",
        "drop",
        "truncate",
        "grant",
        "revoke",
        "set",
        "show",
        "explain",
        "analyze",
        "vacuum",
        "copy",
        "lock",
        "pragma",
        "declare",
        "fetch",
        "close",
        "listen",
        "notify",
    )
)

# Leading blanks, comments and parentheses, then the first word.
_FIRST_WORD = re.compile(r"(?:\s+|--[^\n]*\n?|/\*.*?\*/|\()*([A-Za-z]+)", re.S)
_verbs: dict[str, str] = {}
#: Distinct statements whose verb is remembered (statements are few and reused; a bound all the same).
_MAX_STATEMENTS = 4096


def operation_of(statement: object) -> str:
    """Return the verb of an SQL statement (``select``), or ``other``; never any of its text."""
    if not isinstance(statement, str):
        return "other"
    found = _verbs.get(statement)
    if found is None:
        match = _FIRST_WORD.match(statement)
        word = match.group(1).lower() if match else ""
        found = word if word in VERBS else "other"
        if len(_verbs) < _MAX_STATEMENTS:
            _verbs[statement] = found
    return found


def _operation(context: Any, statement: object) -> str:
    named = context.execution_options.get(OPERATION_OPTION) if context is not None else None
    return named if isinstance(named, str) and named else operation_of(statement)


#: The bundle of each statement without a given name (emptied with the catalogue's caches).
_by_statement = _cache.Cache()


def _bundle(context: Any, statement: str, named: object) -> Any:
    seen = _cache.generation()
    bundle = DB_QUERY_FAMILY.get(_operation(context, statement))
    if named is None and len(_by_statement) < _MAX_STATEMENTS:
        _cache.store(_by_statement, statement, bundle, seen)
    return bundle


def _observe(context: Any, statement: str, start: int) -> None:
    """Observe one statement's duration from ``start`` under its operation; never raise."""
    ms = (perf_counter_ns() - start) / 1e6
    try:
        named = context.execution_options.get(OPERATION_OPTION) if context is not None else None
        bundle = _by_statement.get(statement) if named is None else None
        if bundle is None:
            bundle = _bundle(context, statement, named)
        bundle.success(ms, 0)
    except Exception:
        _log.internal_error("sqlalchemy query")


def _time_statements(dialect: Any) -> None:
    """Time the dialect's three ways of executing a statement, on this one dialect object.

    Every statement SQLAlchemy sends reaches the DBAPI through one of them
    (unless a ``do_execute`` listener executes it itself).  A wrapped method,
    not ``before_cursor_execute``/``after_cursor_execute`` listeners: any
    connection-event listener turns on SQLAlchemy's event dispatch around
    every execution (``before_execute``, ``after_execute``, the cursor
    events), which by itself costs several times the 2 µs per query budget.
    A statement that fails took time too: it is observed, and raises as before.
    """
    execute, no_params, many = dialect.do_execute, dialect.do_execute_no_params, dialect.do_executemany

    def do_execute(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        start = perf_counter_ns()
        try:
            execute(cursor, statement, parameters, context)
        finally:
            _observe(context, statement, start)

    def do_execute_no_params(cursor: Any, statement: str, context: Any = None) -> None:
        start = perf_counter_ns()
        try:
            no_params(cursor, statement, context)
        finally:
            _observe(context, statement, start)

    def do_executemany(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        start = perf_counter_ns()
        try:
            many(cursor, statement, parameters, context)
        finally:
            _observe(context, statement, start)

    dialect.do_execute = do_execute
    dialect.do_execute_no_params = do_execute_no_params
    dialect.do_executemany = do_executemany


class _PoolWatch:
    """The pool series of one engine: pool events, and the pool's ``connect()`` for waits and timeouts."""

    def __init__(self, engine: Any, name: str, timeout_error: type[BaseException]) -> None:
        self.engine = engine
        self.series = DB_POOL_FAMILY.get(name)
        self.timeout_error = timeout_error
        self.wrapped: Any = None

    def start(self, event: Any) -> None:
        pool = self.engine.pool
        series = self.series
        # Connections the pool already holds (a QueuePool says how many).
        try:
            if hasattr(pool, "checkedout") and hasattr(pool, "checkedin"):
                series.in_use.inc(pool.checkedout())
                series.size.inc(pool.checkedout() + pool.checkedin())
        except Exception:
            _log.internal_error("sqlalchemy pool state")
        self.wrap(pool)
        size, in_use, created, invalidated = series.size, series.in_use, series.created, series.invalidated

        def connect(dbapi_connection: Any, record: Any) -> None:
            created.inc()
            size.inc()

        def close(dbapi_connection: Any, record: Any) -> None:
            size.dec()

        def detach(dbapi_connection: Any, record: Any) -> None:
            # A detached connection leaves the pool, still checked out.
            size.dec()
            in_use.dec()

        def invalidate(dbapi_connection: Any, record: Any, exception: Any) -> None:
            invalidated.inc()

        def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
            in_use.inc()
            if self.engine.pool is not self.wrapped:  # engine.dispose() made a new pool
                self.wrap(self.engine.pool)

        def checkin(dbapi_connection: Any, record: Any) -> None:
            in_use.dec()

        for name, listener in (
            ("connect", connect),
            ("close", close),
            ("detach", detach),
            ("invalidate", invalidate),
            ("soft_invalidate", invalidate),
            ("checkout", checkout),
            ("checkin", checkin),
        ):
            event.listen(self.engine, name, listener)

    def wrap(self, pool: Any) -> None:
        """Time the pool's public ``connect()`` on this one pool object: no event covers the wait."""
        self.wrapped = pool
        inner = pool.connect
        wait, timeouts, timeout_error = self.series.wait, self.series.timeouts, self.timeout_error

        def connect() -> Any:
            start = perf_counter_ns()
            try:
                found = inner()
            except timeout_error:
                wait.observe((perf_counter_ns() - start) / 1e6)
                timeouts.inc()
                raise
            wait.observe((perf_counter_ns() - start) / 1e6)
            return found

        pool.connect = connect


def instrument(engine: Any, *, pool: str = "default") -> Any:
    """Record the queries and the connection pool of a SQLAlchemy ``Engine`` or ``AsyncEngine``; return it.

    :param engine: the engine (an ``AsyncEngine``'s ``sync_engine`` is what is
        listened to).
    :param pool: the ``pool`` label of its pool series.

    Instrumenting the same engine twice does nothing the second time.

    .. versionadded:: 0.3.0
    """
    event = importlib.import_module("sqlalchemy.event")
    exc = importlib.import_module("sqlalchemy.exc")
    sync_engine = getattr(engine, "sync_engine", engine)
    if getattr(sync_engine, "_bizmetrics_instrumented", False):
        return engine
    _time_statements(sync_engine.dialect)
    _PoolWatch(sync_engine, pool, exc.TimeoutError).start(event)
    sync_engine._bizmetrics_instrumented = True
    return engine
