"""The engine every bizmetrics decorator shares.

A decorator describes *what* to record (a ``Site``: how to find the label
bundle for a call, and what to count in a result); this module decides *how*
to time it.  The kind of callable (plain, coroutine, generator, async
generator) is decided once, when decorating, and wrapt is handed one of four
wrapper bodies.  Those bodies are the hot path: everything that can be
resolved at decoration time is, and every failure inside recording is
caught and logged so the application's result or exception is untouched.
"""

from __future__ import annotations

import importlib
import inspect
from asyncio import CancelledError
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator
from contextvars import ContextVar
from time import perf_counter_ns  # tests patch this name to get exact durations
from typing import Any

import wrapt

from . import _log
from ._values import DEFAULT_TENANT
from .context import _TENANT

SYNC, COROUTINE, GENERATOR, ASYNC_GENERATOR = "sync", "coroutine", "generator", "async generator"

_SELF_NAMES = ("self", "cls")


def _attr(obj: Any, name: str) -> Any:
    """``getattr`` that never raises (a property may): missing or broken is ``None``."""
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


class Target:
    """What decorating learned about the wrapped callable."""

    __slots__ = ("_positions", "func", "kind", "name", "self_like")

    def __init__(self, wrapped: Any) -> None:
        func = wrapped.__func__ if isinstance(wrapped, (classmethod, staticmethod)) else wrapped
        self.func = func
        if inspect.isasyncgenfunction(func):
            self.kind = ASYNC_GENERATOR
        elif inspect.iscoroutinefunction(func):
            self.kind = COROUTINE
        elif inspect.isgeneratorfunction(func):
            self.kind = GENERATOR
        else:
            self.kind = SYNC
        self.name: str = getattr(func, "__name__", None) or type(func).__name__
        try:
            params = list(inspect.signature(func).parameters.values())
        except (TypeError, ValueError):
            params = []
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self.self_like = not isinstance(wrapped, staticmethod) and bool(params) and params[0].name in _SELF_NAMES
        self._positions = {p.name: i for i, p in enumerate(params) if p.kind in kinds}

    def source(self, instance: Any, args: tuple[Any, ...]) -> Any:
        """Return the object labels are read from: ``self``, ``cls`` or ``None``."""
        if instance is not None:
            return instance
        if self.self_like and args:
            # Called through the class, or a classmethod under a decorator that
            # does not bind (Python 3.13): the first argument is self or cls.
            return args[0]
        return None

    def arg_reader(self, name: str) -> Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]:
        """Return a reader of argument ``name`` of a call, by keyword or position."""
        pos = self._positions.get(name)
        if pos is None:
            return lambda instance, args, kwargs: kwargs.get(name) if kwargs else None
        bound_pos = pos - 1 if self.self_like else pos

        def read(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if kwargs and name in kwargs:
                return kwargs[name]
            i = bound_pos if instance is not None else pos
            return args[i] if 0 <= i < len(args) else None

        return read

    def tenant_reader(self) -> Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]:
        """Return ``(source, instance, args, kwargs) -> tenant``: argument, ``self.tenant_id``, context."""
        read_arg = self.arg_reader("tenant_id")

        def tenant(source: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            value = read_arg(instance, args, kwargs)
            if value is None:
                if source is not None:
                    value = _attr(source, "tenant_id")
                if value is None:
                    value = _TENANT.get()
                    if value is None:
                        return DEFAULT_TENANT
            return value

        return tenant


class Site:
    """What one decorator records, resolved when decorating.

    ``resolve(instance, args, kwargs)`` returns the label bundle of a call;
    ``extract(result)`` and ``extract_item(item)`` return what the family
    counts (records, tokens, cache hits) from a return value or from each
    yielded item (``None``: count the items); ``scope_var``, when set, is a
    context variable set to ``bundle.scope`` while the body runs.
    """

    __slots__ = ("extract", "extract_item", "resolve", "scope_var")

    def __init__(
        self,
        resolve: Callable[[Any, tuple[Any, ...], dict[str, Any]], Any],
        extract: Callable[[Any], float] | None = None,
        extract_item: Callable[[Any], float] | None = None,
        scope_var: ContextVar[Any] | None = None,
    ) -> None:
        self.resolve = resolve
        self.extract = extract
        self.extract_item = extract_item
        self.scope_var = scope_var


# --- Recording, never raising --------------------------------------------------


def _success(bundle: Any, ns: int, amount: float) -> None:
    try:
        bundle.success(ns / 1e6, amount)
    except Exception:
        _log.internal_error("success")


def _failure(bundle: Any, ns: int, exc: BaseException, amount: float) -> None:
    try:
        bundle.failure(ns / 1e6, type(exc).__name__, amount)
    except Exception:
        _log.internal_error("failure")


def _cancelled(bundle: Any, ns: int, amount: float) -> None:
    try:
        bundle.cancelled(ns / 1e6, amount)
    except Exception:
        _log.internal_error("cancelled")


def _measure(extract: Callable[[Any], float], value: Any) -> float:
    try:
        return extract(value)
    except Exception:
        _log.internal_error("extracting a count")
        return 0


# --- The four wrapper bodies ---------------------------------------------------


def _sync_body(site: Site) -> Callable[..., Any]:
    resolve, extract, var = site.resolve, site.extract, site.scope_var

    def body(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            bundle = resolve(instance, args, kwargs)
        except Exception:
            _log.internal_error("resolving labels")
            return wrapped(*args, **kwargs)
        token = var.set(bundle.scope) if var is not None else None
        start = perf_counter_ns()
        try:
            result = wrapped(*args, **kwargs)
            end = perf_counter_ns()
        except Exception as exc:
            _failure(bundle, perf_counter_ns() - start, exc, 0)
            raise
        except CancelledError:
            _cancelled(bundle, perf_counter_ns() - start, 0)
            raise
        finally:
            if token is not None:
                var.reset(token)  # type: ignore[union-attr]
        _success(bundle, end - start, _measure(extract, result) if extract is not None else 0)
        return result

    return body


async def _timed_coroutine(coro: Coroutine[Any, Any, Any], bundle: Any, site: Site) -> Any:
    var = site.scope_var
    token = var.set(bundle.scope) if var is not None else None
    start = perf_counter_ns()
    try:
        result = await coro
        end = perf_counter_ns()
    except Exception as exc:
        _failure(bundle, perf_counter_ns() - start, exc, 0)
        raise
    except CancelledError:
        _cancelled(bundle, perf_counter_ns() - start, 0)
        raise
    finally:
        if token is not None:
            var.reset(token)  # type: ignore[union-attr]
    extract = site.extract
    _success(bundle, end - start, _measure(extract, result) if extract is not None else 0)
    return result


def _timed_generator(gen: Generator[Any, Any, Any], bundle: Any, site: Site) -> Generator[Any, Any, Any]:
    # A hand-expanded ``yield from`` that times each resume of the body, so
    # the consumer's time between items is never counted.
    per_item, var = site.extract_item, site.scope_var
    scope = bundle.scope if var is not None else None
    elapsed = 0
    amount: float = 0
    send = action = gen.send
    arg: Any = None
    while True:
        token = var.set(scope) if var is not None else None
        start = perf_counter_ns()
        try:
            item = action(arg)
        except StopIteration as stop:
            _success(bundle, elapsed + perf_counter_ns() - start, amount)
            return stop.value
        except Exception as exc:
            _failure(bundle, elapsed + perf_counter_ns() - start, exc, amount)
            raise
        except CancelledError:
            _cancelled(bundle, elapsed + perf_counter_ns() - start, amount)
            raise
        finally:
            if token is not None:
                var.reset(token)  # type: ignore[union-attr]
        elapsed += perf_counter_ns() - start
        amount += 1 if per_item is None else _measure(per_item, item)
        try:
            arg = yield item
        except GeneratorExit:
            # The consumer stopped early: close the body, and count what it yielded as a success.
            start = perf_counter_ns()
            try:
                gen.close()
            except Exception as exc:
                _failure(bundle, elapsed + perf_counter_ns() - start, exc, amount)
                raise
            _success(bundle, elapsed + perf_counter_ns() - start, amount)
            raise
        except BaseException as exc:
            action, arg = gen.throw, exc
        else:
            action = send


async def _timed_async_generator(agen: AsyncGenerator[Any, Any], bundle: Any, site: Site) -> AsyncGenerator[Any, Any]:
    per_item, var = site.extract_item, site.scope_var
    scope = bundle.scope if var is not None else None
    elapsed = 0
    amount: float = 0
    asend = action = agen.asend
    arg: Any = None
    while True:
        token = var.set(scope) if var is not None else None
        start = perf_counter_ns()
        try:
            item = await action(arg)
        except StopAsyncIteration:
            _success(bundle, elapsed + perf_counter_ns() - start, amount)
            return
        except Exception as exc:
            _failure(bundle, elapsed + perf_counter_ns() - start, exc, amount)
            raise
        except CancelledError:
            _cancelled(bundle, elapsed + perf_counter_ns() - start, amount)
            raise
        finally:
            if token is not None:
                var.reset(token)  # type: ignore[union-attr]
        elapsed += perf_counter_ns() - start
        amount += 1 if per_item is None else _measure(per_item, item)
        try:
            arg = yield item
        except GeneratorExit:
            start = perf_counter_ns()
            try:
                await agen.aclose()
            except Exception as exc:
                _failure(bundle, elapsed + perf_counter_ns() - start, exc, amount)
                raise
            _success(bundle, elapsed + perf_counter_ns() - start, amount)
            raise
        except BaseException as exc:
            action, arg = agen.athrow, exc
        else:
            action = asend


def _deferred_body(site: Site, timed: Callable[[Any, Any, Site], Any]) -> Callable[..., Any]:
    """Body for callables whose work runs later: resolve labels now, time the work when it runs."""
    resolve = site.resolve

    def body(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            bundle = resolve(instance, args, kwargs)
        except Exception:
            _log.internal_error("resolving labels")
            return wrapped(*args, **kwargs)
        return timed(wrapped(*args, **kwargs), bundle, site)

    return body


_BODIES: dict[str, Callable[[Site], Callable[..., Any]]] = {
    SYNC: _sync_body,
    COROUTINE: lambda site: _deferred_body(site, _timed_coroutine),
    GENERATOR: lambda site: _deferred_body(site, _timed_generator),
    ASYNC_GENERATOR: lambda site: _deferred_body(site, _timed_async_generator),
}


# --- wrapt proxies that pickle -------------------------------------------------


# wrapt's own annotations differ between its 1.x and 2.x lines; bizmetrics
# supports both, so its subclasses see the proxies as untyped.
_BoundBase: Any = wrapt.BoundFunctionWrapper
_FunctionBase: Any = wrapt.FunctionWrapper


def _resolve_qualname(module: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class _BoundWrapper(_BoundBase):  # type: ignore[misc]
    __slots__ = ()

    def __reduce_ex__(self, protocol: Any) -> Any:
        instance = self._self_instance
        if instance is not None:
            return getattr, (instance, self.__name__)
        return _resolve_qualname, (self.__module__, self.__qualname__)


class _Wrapper(_FunctionBase):  # type: ignore[misc]
    """wrapt's ``FunctionWrapper``, pickled by reference like the function it wraps."""

    __slots__ = ()
    __bound_function_wrapper__ = _BoundWrapper

    def __reduce_ex__(self, protocol: Any) -> Any:
        return _resolve_qualname, (self.__module__, self.__qualname__)


class _FunctionWrapper(_Wrapper):
    """For plain functions and static or class methods, called unbound.

    wrapt looks up ``__self__`` on the wrapped function at every unbound call,
    which raises and catches an AttributeError for a plain function; such a
    call never has an instance, so skip the lookup.
    """

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_wrapper(self.__wrapped__, None, args, kwargs)


def wrap(wrapped: Any, make_site: Callable[[Target], Site]) -> Any:
    """Wrap ``wrapped`` (function, method, classmethod or staticmethod) with the body its kind needs."""
    target = Target(wrapped)
    body = _BODIES[target.kind](make_site(target))
    if inspect.isfunction(wrapped) or isinstance(wrapped, (classmethod, staticmethod)):
        return _FunctionWrapper(wrapped, body)
    return _Wrapper(wrapped, body)
