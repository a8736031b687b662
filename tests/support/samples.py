"""Sample callables of every kind, built from one template, and a runner for them.

Module-level decorated samples live here too, so they can be pickled by
reference and sent to other processes.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

from bizmetrics import instrument_connector_operation, instrument_sync_operation

KINDS = ("sync", "coroutine", "generator", "async generator")

_TEMPLATES = {
    "sync": """
def {name}({params}):
    _pause(delay)
    if exc is not None:
        raise exc
    return result
""",
    "coroutine": """
async def {name}({params}):
    await _apause(delay)
    if exc is not None:
        raise exc
    return result
""",
    "generator": """
def {name}({params}):
    for item in items:
        _pause(delay)
        yield item
    if exc is not None:
        raise exc
    return result
""",
    "async generator": """
async def {name}({params}):
    for item in items:
        await _apause(delay)
        yield item
    if exc is not None:
        raise exc
""",
}


def _pause(seconds: float) -> None:
    if seconds:
        time.sleep(seconds)


async def _apause(seconds: float) -> None:
    if seconds:
        await asyncio.sleep(seconds)


def make(
    kind: str,
    *,
    result: Any = None,
    exc: BaseException | None = None,
    delay: float = 0.0,
    items: Any = (1, 2, 3),
    params: str = "*args, **kwargs",
    name: str = "work",
) -> Any:
    """Return a new undecorated function of ``kind`` that sleeps ``delay`` (per item), then returns or raises."""
    namespace: dict[str, Any] = {
        "_pause": _pause,
        "_apause": _apause,
        "result": result,
        "exc": exc,
        "delay": delay,
        "items": items,
    }
    exec(_TEMPLATES[kind].format(name=name, params=params), namespace)
    return namespace[name]


def kind_of(fn: Any) -> str:
    if inspect.isasyncgenfunction(fn):
        return "async generator"
    if inspect.iscoroutinefunction(fn):
        return "coroutine"
    if inspect.isgeneratorfunction(fn):
        return "generator"
    return "sync"


async def _collect(agen: Any) -> list[Any]:
    return [item async for item in agen]


def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` the way its kind is used: call, await, or iterate to the end."""
    kind = kind_of(fn)
    if kind == "sync":
        return fn(*args, **kwargs)
    if kind == "coroutine":
        return asyncio.run(fn(*args, **kwargs))
    if kind == "generator":
        return list(fn(*args, **kwargs))
    return asyncio.run(_collect(fn(*args, **kwargs)))


class Config:
    def __init__(self, id: str) -> None:
        self.id = id


@instrument_connector_operation("pickled_op", connector_type="pickle")
def pickled_function(x: int) -> int:
    return x * 2


class PickledConnector:
    tenant_id = "pickle_tenant"
    config = Config("pickle")

    @instrument_sync_operation("rows")
    def fetch(self, n: int) -> list[int]:
        return list(range(n))

    @instrument_connector_operation
    @classmethod
    def ping(cls) -> str:
        return "pong"

    @staticmethod
    @instrument_connector_operation
    def util(x: int) -> int:
        return x + 1
