"""redis-py, sync and asyncio, against a real redis-server: hits, misses, latency and errors by command."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from hypothesis import given, settings
from hypothesis import strategies as st
from support.registry import unique, value
from support.servers import redis_server

import bizmetrics.redis


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with redis_server() as p:
        yield p


KEYS = ("a", "b", "c")
# (command, key): what the application does.
Op = tuple[str, str]
ops_strategy = st.lists(
    st.tuples(
        st.sampled_from(["set", "get", "delete", "mget", "hset", "hget", "hgetall", "exists"]), st.sampled_from(KEYS)
    ),
    min_size=1,
    max_size=12,
)


def _expected(ops: list[Op], prefix: str) -> tuple[int, int, Counter[str]]:
    """Ground truth: hits, misses and commands of a sequence, from a model of the store."""
    strings: set[str] = set()
    hashes: set[str] = set()
    hits = misses = 0
    commands: Counter[str] = Counter()
    for command, key in ops:
        commands[command] += 1
        if command == "set":
            strings.add(key)
        elif command == "hset":
            # Hashes live under keys of their own (h:<key>).
            hashes.add(key)
        elif command == "delete":
            strings.discard(key)
            hashes.discard(key)
        elif command == "get":
            hits, misses = (hits + 1, misses) if key in strings else (hits, misses + 1)
        elif command == "mget":
            found = sum(1 for k in KEYS if k in strings)
            hits, misses = hits + found, misses + len(KEYS) - found
        elif command in ("hget", "hgetall"):
            hits, misses = (hits + 1, misses) if key in hashes else (hits, misses + 1)
        elif command == "exists":
            found = sum(1 for k in (key, "never") if k in strings)
            hits, misses = hits + found, misses + 2 - found
    return hits, misses, commands


def _sync(client: Any, ops: list[Op], prefix: str) -> None:
    for command, key in ops:
        k, h = f"{prefix}:{key}", f"{prefix}:h:{key}"
        if command == "set":
            client.set(k, "v")
        elif command == "get":
            client.get(k)
        elif command == "delete":
            client.delete(k, h)
        elif command == "mget":
            client.mget([f"{prefix}:{x}" for x in KEYS])
        elif command == "hset":
            client.hset(h, "f", "v")
        elif command == "hget":
            client.hget(h, "f")
        elif command == "hgetall":
            client.hgetall(h)
        elif command == "exists":
            client.exists(k, f"{prefix}:never")


async def _async(client: Any, ops: list[Op], prefix: str) -> None:
    for command, key in ops:
        k, h = f"{prefix}:{key}", f"{prefix}:h:{key}"
        if command == "set":
            await client.set(k, "v")
        elif command == "get":
            await client.get(k)
        elif command == "delete":
            await client.delete(k, h)
        elif command == "mget":
            await client.mget([f"{prefix}:{x}" for x in KEYS])
        elif command == "hset":
            await client.hset(h, "f", "v")
        elif command == "hget":
            await client.hget(h, "f")
        elif command == "hgetall":
            await client.hgetall(h)
        elif command == "exists":
            await client.exists(k, f"{prefix}:never")


@pytest.mark.parametrize("kind", ["sync", "asyncio"])
@settings(max_examples=25)
@given(ops=ops_strategy)
def test_hits_misses_and_latency_match_the_store(port: int, kind: str, ops: list[Op]) -> None:
    """Reads that return nothing are misses, the others hits; every command observes its latency."""
    cache = unique("sessions")
    prefix = unique("k")
    if kind == "sync":
        client = bizmetrics.redis.instrument(redis.Redis(port=port), cache=cache)
        _sync(client, ops, prefix)
        client.close()
    else:

        async def main() -> None:
            client = bizmetrics.redis.instrument(redis.asyncio.Redis(port=port), cache=cache)
            await _async(client, ops, prefix)
            await client.aclose()

        asyncio.run(main())
    hits, misses, commands = _expected(ops, prefix)
    assert value("cache_hits_total", cache=cache) == hits
    assert value("cache_misses_total", cache=cache) == misses
    # redis-py names DEL for delete.
    for command, count in commands.items():
        name = "del" if command == "delete" else command
        assert value("cache_command_duration_count", cache=cache, command=name) == count, name


@pytest.mark.parametrize("kind", ["sync", "asyncio"])
def test_errors_by_type_raise_unchanged(port: int, kind: str) -> None:
    """A command the server refuses raises the client's error, counted by its class; the latency is observed."""
    cache = unique("cache")
    key = unique("list")
    if kind == "sync":
        client = bizmetrics.redis.instrument(redis.Redis(port=port), cache=cache)
        client.rpush(key, "x")
        with pytest.raises(redis.ResponseError):
            client.get(key)  # WRONGTYPE
        client.close()
    else:

        async def main() -> None:
            client = bizmetrics.redis.instrument(redis.asyncio.Redis(port=port), cache=cache)
            await client.rpush(key, "x")
            with pytest.raises(redis.ResponseError):
                await client.get(key)
            await client.aclose()

        asyncio.run(main())
    assert value("cache_errors_total", cache=cache, command="get", error_type="ResponseError") == 1
    assert value("cache_command_duration_count", cache=cache, command="get") == 1
    assert value("cache_hits_total", cache=cache) == value("cache_misses_total", cache=cache) == 0


def test_connection_errors_counted() -> None:
    """A server that is gone: ConnectionError, counted."""
    from support.servers import free_port

    cache = unique("cache")
    client = bizmetrics.redis.instrument(redis.Redis(port=free_port(), socket_connect_timeout=1), cache=cache)
    with pytest.raises(redis.ConnectionError):
        client.get("k")
    assert value("cache_errors_total", cache=cache, command="get", error_type="ConnectionError") == 1


def test_instrument_twice_counts_once(port: int) -> None:
    cache = unique("cache")
    client = redis.Redis(port=port)
    bizmetrics.redis.instrument(client, cache=cache)
    bizmetrics.redis.instrument(client, cache=cache)
    client.get(unique("nothing"))
    assert value("cache_misses_total", cache=cache) == 1
    assert value("cache_command_duration_count", cache=cache, command="get") == 1
