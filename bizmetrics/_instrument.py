"""The engine every bizmetrics decorator shares.

A decorator describes *what* to record (a ``Site``: how to find the label
bundle for a call, and what to count in a result); this module decides *how*
to time it.  The kind of callable (plain, coroutine, generator, async
generator) is decided once, when decorating, and one of four bodies becomes
the ``__call__`` of a wrapt ``FunctionWrapper`` subclass.  Those bodies are
the hot path: everything that can be resolved at decoration time is, and
every failure inside recording is caught and logged so the application's
result or exception is untouched.
"""

from __future__ import annotations

import importlib
import inspect
from asyncio import CancelledError
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator
from contextvars import ContextVar
from time import perf_counter_ns  # tests patch this name to get exact durations
from types import MethodType
from typing import Any

import wrapt

from . import _log
from .context import tenant_or_current

SYNC, COROUTINE, GENERATOR, ASYNC_GENERATOR = "sync", "coroutine", "generator", "async generator"

_SELF_NAMES = ("self", "cls")


def _attr(obj: Any, name: str) -> Any:
    """``getattr`` that never raises (a property may): missing or broken is ``None``."""
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


class Target:
    """What decorating learned about the wrapped callable.

    Every call reaches the body with the arguments of the underlying
    function, ``self`` or ``cls`` first for methods: ``args`` is what
    ``func`` is called with.
    """

    __slots__ = ("_positions", "func", "kind", "name", "self_like")

    def __init__(self, wrapped: Any) -> None:
        if isinstance(wrapped, (classmethod, staticmethod)) or inspect.ismethod(wrapped):
            func = wrapped.__func__
        else:
            func = wrapped
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
        self.self_like = (
            isinstance(wrapped, classmethod)
            or inspect.ismethod(wrapped)
            or (not isinstance(wrapped, staticmethod) and bool(params) and params[0].name in _SELF_NAMES)
        )
        self._positions = {p.name: i for i, p in enumerate(params) if p.kind in kinds}

    def source(self, args: tuple[Any, ...]) -> Any:
        """Return the object labels are read from: ``self``, ``cls`` or ``None``."""
        return args[0] if args and self.self_like else None

    def has_param(self, name: str) -> bool:
        """Return whether the callable takes a positional parameter ``name``."""
        return name in self._positions

    def arg_reader(self, name: str) -> Callable[[tuple[Any, ...], dict[str, Any]], Any]:
        """Return a reader of argument ``name`` of a call, by keyword or position."""
        pos = self._positions.get(name)
        if pos is None:
            return lambda args, kwargs: kwargs.get(name)

        def read(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if name in kwargs:
                return kwargs[name]
            return args[pos] if pos < len(args) else None

        return read

    def tenant_reader(self) -> Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]:
        """Return ``(source, args, kwargs) -> tenant``: argument, ``self.tenant_id``, context, default."""
        read_arg = self.arg_reader("tenant_id")

        def tenant(source: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            value = read_arg(args, kwargs)
            if value is None:
                if source is not None:
                    value = _attr(source, "tenant_id")
            return tenant_or_current(value)

        return tenant


class Site:
    """What one decorator records, resolved when decorating.

    ``resolve(args, kwargs)`` returns the label bundle of a call;
    ``extract(result)`` and ``extract_item(item)`` return what the family
    counts (records, tokens, cache hits) from a return value or from each
    yielded item (``None``: count the items); ``scope_var``, when set, is a
    context variable set to ``bundle.scope`` while the body runs.
    """

    __slots__ = ("extract", "extract_item", "resolve", "scope_var")

    def __init__(
        self,
        resolve: Callable[[tuple[Any, ...], dict[str, Any]], Any],
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
#
# A body is ``call(self, *args, **kwargs)``: it becomes the ``__call__`` of the
# wrapper itself, so a decorated call is one Python frame (an exception
# passing through a frame costs ~230 ns).  ``func`` is the undecorated
# function and ``args`` include ``self`` / ``cls``.  Labels are resolved at
# call time (so a coroutine or generator carries its caller's tenant); the
# clock runs while the body runs.


def _sync_body(site: Site, func: Any) -> Callable[..., Any]:
    resolve, extract, var = site.resolve, site.extract, site.scope_var

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            bundle = resolve(args, kwargs)
        except Exception:
            _log.internal_error("resolving labels")
            return func(*args, **kwargs)
        start = perf_counter_ns()
        try:
            if var is None:
                result = func(*args, **kwargs)
            else:
                token = var.set(bundle.scope)
                try:
                    result = func(*args, **kwargs)
                finally:
                    var.reset(token)
        except Exception as exc:
            end = perf_counter_ns()
            # _failure inlined: the error path is hot when a remote service is down.
            try:
                bundle.failure((end - start) / 1e6, type(exc).__name__, 0)
            except Exception:
                _log.internal_error("failure")
            raise
        except CancelledError:
            _cancelled(bundle, perf_counter_ns() - start, 0)
            raise
        end = perf_counter_ns()
        # _success inlined: this is the hottest path of all.
        try:
            bundle.success((end - start) / 1e6, 0 if extract is None else _measure(extract, result))
        except Exception:
            _log.internal_error("success")
        return result

    return call


async def _timed_coroutine(coro: Coroutine[Any, Any, Any], bundle: Any, extract: Any) -> Any:
    start = perf_counter_ns()
    try:
        result = await coro
    except Exception as exc:
        end = perf_counter_ns()
        try:
            bundle.failure((end - start) / 1e6, type(exc).__name__, 0)
        except Exception:
            _log.internal_error("failure")
        raise
    except CancelledError:
        _cancelled(bundle, perf_counter_ns() - start, 0)
        raise
    end = perf_counter_ns()
    try:
        bundle.success((end - start) / 1e6, 0 if extract is None else _measure(extract, result))
    except Exception:
        _log.internal_error("success")
    return result


def _timed_generator(gen: Generator[Any, Any, Any], bundle: Any, per_item: Any) -> Generator[Any, Any, Any]:
    # A hand-expanded ``yield from`` that times each resume of the body, so
    # the consumer's time between items is never counted.
    elapsed = 0
    amount: float = 0
    send = action = gen.send
    arg: Any = None
    while True:
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


async def _timed_async_generator(
    agen: AsyncGenerator[Any, Any], bundle: Any, per_item: Any
) -> AsyncGenerator[Any, Any]:
    elapsed = 0
    amount: float = 0
    asend = action = agen.asend
    arg: Any = None
    while True:
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


def _deferred_body(timed: Callable[[Any, Any, Any], Any], extra: str) -> Callable[[Site, Any], Callable[..., Any]]:
    """Body for callables whose work runs later: resolve labels now, time the work when it runs."""

    def make(site: Site, func: Any) -> Callable[..., Any]:
        resolve, param, var = site.resolve, getattr(site, extra), site.scope_var
        scoped = _SCOPED[timed]

        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                bundle = resolve(args, kwargs)
            except Exception:
                _log.internal_error("resolving labels")
                return func(*args, **kwargs)
            work = func(*args, **kwargs)
            if var is not None:
                work = scoped(work, var, bundle.scope)
            return timed(work, bundle, param)

        return call

    return make


# --- Scope: a context variable set while the body runs (workflows) ---------------


async def _scoped_coroutine(coro: Coroutine[Any, Any, Any], var: ContextVar[Any], value: Any) -> Any:
    token = var.set(value)
    try:
        return await coro
    finally:
        var.reset(token)


def _scoped_generator(gen: Generator[Any, Any, Any], var: ContextVar[Any], value: Any) -> Generator[Any, Any, Any]:
    # Set around each resume only: between items the consumer runs, in its own context.
    send = action = gen.send
    arg: Any = None
    while True:
        token = var.set(value)
        try:
            item = action(arg)
        except StopIteration as stop:
            return stop.value
        finally:
            var.reset(token)
        try:
            arg = yield item
        except GeneratorExit:
            gen.close()
            raise
        except BaseException as exc:
            action, arg = gen.throw, exc
        else:
            action = send


async def _scoped_async_generator(
    agen: AsyncGenerator[Any, Any], var: ContextVar[Any], value: Any
) -> AsyncGenerator[Any, Any]:
    asend = action = agen.asend
    arg: Any = None
    while True:
        token = var.set(value)
        try:
            item = await action(arg)
        except StopAsyncIteration:
            return
        finally:
            var.reset(token)
        try:
            arg = yield item
        except GeneratorExit:
            await agen.aclose()
            raise
        except BaseException as exc:
            action, arg = agen.athrow, exc
        else:
            action = asend


_SCOPED: dict[Any, Callable[..., Any]] = {
    _timed_coroutine: _scoped_coroutine,
    _timed_generator: _scoped_generator,
    _timed_async_generator: _scoped_async_generator,
}


def _body(site: Site, kind: str, func: Any) -> Callable[..., Any]:
    if kind == SYNC:
        return _sync_body(site, func)
    return _DEFERRED[kind](site, func)


_DEFERRED = {
    COROUTINE: _deferred_body(_timed_coroutine, "extract"),
    GENERATOR: _deferred_body(_timed_generator, "extract_item"),
    ASYNC_GENERATOR: _deferred_body(_timed_async_generator, "extract_item"),
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


class _Direct(_Wrapper):
    """Base of the per-function wrapper classes, whose ``__call__`` is the body."""

    __slots__ = ()


class _Method(_Direct):
    """A wrapper of a plain function, which becomes an instance method in a class.

    wrapt binds by building a ``BoundFunctionWrapper`` proxy at every attribute
    access, which costs more than the rest of a call's recording.  A bound
    ``MethodType`` over the wrapper is what Python itself builds for a
    function, keeps ``inspect`` and pickling right, and calls ``__call__``
    with the instance first, as the body expects.
    """

    __slots__ = ()

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        return MethodType(self, instance)

    def __set_name__(self, owner: Any, name: str) -> None:
        # Assigned in a class body: it is a method even if its first
        # parameter is not called self.
        target = getattr(self._self_wrapper, "target", None)
        if target is not None:
            target.self_like = True
        super().__set_name__(owner, name)


def _direct(base: type[_Direct], call: Callable[..., Any]) -> type[_Direct]:
    # One class per decorated function, so that ``__call__`` is the body itself.
    return type(base.__name__, (base,), {"__slots__": (), "__call__": call})


def wrap(wrapped: Any, make_site: Callable[[Target], Site]) -> Any:
    """Wrap ``wrapped`` (function, method, classmethod or staticmethod) with the body its kind needs."""
    target = Target(wrapped)
    call = _body(make_site(target), target.kind, target.func)

    # For wrapt's own binding (classmethod, staticmethod) and anything else
    # that calls the wrapper the wrapt way: the body wants ``cls`` in args.
    def adapter(bound: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return call(None, *args, **kwargs)

    def classmethod_adapter(bound: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return call(None, instance, *args, **kwargs)

    if isinstance(wrapped, classmethod):
        adapter = classmethod_adapter
    adapter.target = target  # type: ignore[attr-defined]
    if isinstance(wrapped, (classmethod, staticmethod)):
        return _Wrapper(wrapped, adapter)
    if inspect.ismethod(wrapped):
        return MethodType(_direct(_Method, call)(wrapped.__func__, adapter), wrapped.__self__)
    if inspect.isfunction(wrapped):
        return _direct(_Method, call)(wrapped, adapter)
    return _direct(_Direct, call)(wrapped, adapter)
