"""The engine every bizmetrics decorator shares.

A decorator describes *what* to record (a ``Site``: how to find the label
bundle for a call, and what to count in a result); this module decides *how*
to time it.  The kind of callable (plain, coroutine, generator, async
generator) is decided once, when decorating, and one of the bodies below
becomes the ``__call__`` of a wrapt ``FunctionWrapper`` subclass.  Those
bodies are the hot path: everything that can be resolved at decoration time
is, and every failure inside recording is caught and logged so the
application's result or exception is untouched.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pickle
import sys
import types
from asyncio import CancelledError, isfuture
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from contextvars import ContextVar
from time import perf_counter_ns  # tests patch this name to get exact durations
from types import MethodType
from typing import Any

import wrapt

from . import _log
from .context import tenant_or_current

SYNC, COROUTINE, GENERATOR, ASYNC_GENERATOR = "sync", "coroutine", "generator", "async generator"
#: A sync callable whose code is a coroutine function behind ``functools.wraps``: it may return an awaitable.
MAYBE_AWAITABLE = "maybe awaitable"

_SELF_NAMES = ("self", "cls")


def _attr(obj: Any, name: str) -> Any:
    """``getattr`` that never raises (a property may): missing or broken is ``None``."""
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def _code_of(func: Any) -> Any:
    """Return the function whose code runs when ``func`` is called: through partials and ``__call__``."""
    while isinstance(func, functools.partial):
        func = func.func
    if not (inspect.isfunction(func) or inspect.ismethod(func) or inspect.isbuiltin(func) or isinstance(func, type)):
        call = type(func).__dict__.get("__call__") or getattr(type(func), "__call__", None)  # noqa: B004
        if inspect.isfunction(call):
            return call
    return func


def _kind_of(func: Any) -> str:
    code = _code_of(func)
    if inspect.isasyncgenfunction(code):
        return ASYNC_GENERATOR
    if inspect.iscoroutinefunction(code) or inspect.iscoroutinefunction(func):
        return COROUTINE
    if inspect.isgeneratorfunction(code):
        return GENERATOR
    try:
        unwrapped = inspect.unwrap(func)
    except ValueError:
        return SYNC
    if unwrapped is not func and inspect.iscoroutinefunction(_code_of(unwrapped)):
        return MAYBE_AWAITABLE
    return SYNC


def _fixed_arguments(func: Any, params: list[inspect.Parameter]) -> dict[str, Any]:
    """Arguments a call gets without passing them: parameter defaults and ``functools.partial`` bindings."""
    fixed = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    if isinstance(func, functools.partial):
        try:
            bound = inspect.signature(func.func).bind_partial(*func.args, **func.keywords).arguments
        except (TypeError, ValueError):
            bound = {}
        for name, value in bound.items():
            fixed.setdefault(name, value)
    return fixed


class Target:
    """What decorating learned about the wrapped callable.

    Every call reaches the body with the arguments of the underlying
    function, ``self`` or ``cls`` first for methods: ``args`` is what
    ``func`` is called with.
    """

    __slots__ = ("_fixed", "_positions", "func", "kind", "name", "qualname", "self_like")

    def __init__(self, wrapped: Any) -> None:
        if isinstance(wrapped, (classmethod, staticmethod)) or inspect.ismethod(wrapped):
            func = wrapped.__func__
        else:
            func = wrapped
        self.func = func
        self.kind = _kind_of(func)
        code = _code_of(func)
        self.name: str = getattr(func, "__name__", None) or getattr(code, "__name__", None) or type(func).__name__
        #: The name and qualified name the coroutine or generator objects of the undecorated function carry.
        self.qualname: tuple[str, str] = (
            getattr(code, "__name__", None) or self.name,
            getattr(code, "__qualname__", None) or self.name,
        )
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
        self._fixed = _fixed_arguments(func, params)

    def source(self, args: tuple[Any, ...]) -> Any:
        """Return the object labels are read from: ``self``, ``cls`` or ``None``."""
        return args[0] if args and self.self_like else None

    def has_param(self, name: str) -> bool:
        """Return whether a call can get ``name`` other than by keyword: a position, a default, a partial."""
        return name in self._positions or name in self._fixed

    def arg_reader(self, name: str) -> Callable[[tuple[Any, ...], dict[str, Any]], Any]:
        """Return a reader of argument ``name`` of a call: by keyword, position, else its default or binding."""
        pos = self._positions.get(name)
        fixed = self._fixed.get(name)
        if pos is None:
            return lambda args, kwargs: kwargs.get(name, fixed)

        def read(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if name in kwargs:
                return kwargs[name]
            return args[pos] if pos < len(args) else fixed

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
    context variable set to ``bundle.scope`` while the body runs;
    ``error_type``, when set, turns an exception into its ``error_type``
    label (else the exception's class name).
    """

    __slots__ = ("error_type", "extract", "extract_item", "resolve", "scope_var")

    def __init__(
        self,
        resolve: Callable[[tuple[Any, ...], dict[str, Any]], Any],
        extract: Callable[[Any], Any] | None = None,
        extract_item: Callable[[Any], Any] | None = None,
        scope_var: ContextVar[Any] | None = None,
        error_type: Callable[[BaseException], object] | None = None,
    ) -> None:
        self.resolve = resolve
        self.extract = extract
        self.extract_item = extract_item
        self.scope_var = scope_var
        self.error_type = error_type


# --- Recording, never raising --------------------------------------------------


def _success(bundle: Any, ns: int, amount: float) -> None:
    try:
        bundle.success(ns / 1e6, amount)
    except Exception:
        _log.internal_error("success")


def _error_name(classify: Callable[[BaseException], object] | None, exc: BaseException) -> Any:
    """The ``error_type`` label of ``exc``: the decorator's ``error_type=`` of it, else its class name."""
    if classify is not None:
        try:
            name = classify(exc)
        except Exception:
            _log.internal_error("error_type=")
        else:
            if name is not None:
                return name
    return type(exc).__name__


def _failure(bundle: Any, ns: int, exc: BaseException, amount: float, classify: Any = None) -> None:
    try:
        bundle.failure(ns / 1e6, _error_name(classify, exc), amount)
    except Exception:
        _log.internal_error("failure")


def _cancelled(bundle: Any, ns: int, amount: float) -> None:
    try:
        bundle.cancelled(ns / 1e6, amount)
    except Exception:
        _log.internal_error("cancelled")


def _ended(bundle: Any, ns: int | None, exc: BaseException, amount: float, classify: Any = None) -> None:
    """Record a call that ended with ``exc``: an error, a cancellation, or (anything else) nothing."""
    ms = None if ns is None else ns / 1e6
    try:
        if isinstance(exc, Exception):
            bundle.failure(ms, _error_name(classify, exc), amount)
        elif isinstance(exc, CancelledError):
            bundle.cancelled(ms, amount)
    except Exception:
        _log.internal_error("recording an outcome")


def _measure(extract: Callable[[Any], float], value: Any) -> float:
    try:
        return extract(value)
    except Exception:
        _log.internal_error("extracting a count")
        return 0


# --- The wrapper bodies ----------------------------------------------------------
#
# A body is ``call(self, *args, **kwargs)``: it becomes the ``__call__`` of the
# wrapper itself, so a decorated call is one Python frame (an exception
# passing through a frame costs ~230 ns).  ``func`` is the undecorated
# function and ``args`` include ``self`` / ``cls``.  Labels are resolved at
# call time (so a coroutine or generator carries its caller's tenant); the
# clock runs while the body runs.


def _sync_body(site: Site, func: Any) -> Callable[..., Any]:
    resolve, extract, var, classify = site.resolve, site.extract, site.scope_var, site.error_type

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
                bundle.failure(
                    (end - start) / 1e6, type(exc).__name__ if classify is None else _error_name(classify, exc), 0
                )
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


def _close(work: Any) -> None:
    close = _attr(work, "close")
    if close is not None:
        try:
            close()
        except Exception:
            _log.internal_error("closing an awaitable")


class _Pending:
    """The user's awaitable, held until the timed coroutine starts awaiting it.

    A decorated coroutine that never starts (a task cancelled before its
    first step, a coroutine closed or dropped un-awaited) never runs the
    timed body; this holder's finaliser then closes the user's coroutine, so
    it cannot warn "never awaited" a second time (the timed coroutine, named
    after the user's function, warns if it was dropped, as an undecorated
    one would), and counts the call as cancelled, with no duration.
    """

    __slots__ = ("bundle", "work")
    bundle: Any
    work: Any

    def __del__(self) -> None:
        work = self.work
        if work is not None:
            _close(work)
            try:
                self.bundle.cancelled(None, 0)
            except Exception:
                _log.internal_error("cancelled")


async def _timed_coroutine(pending: _Pending, extract: Any, var: ContextVar[Any] | None, classify: Any) -> Any:
    coro, bundle = pending.work, pending.bundle
    pending.work = None
    token = None if var is None else var.set(bundle.scope)
    start = perf_counter_ns()
    try:
        result = await coro
    except Exception as exc:
        end = perf_counter_ns()
        try:
            bundle.failure(
                (end - start) / 1e6, type(exc).__name__ if classify is None else _error_name(classify, exc), 0
            )
        except Exception:
            _log.internal_error("failure")
        raise
    except CancelledError:
        _cancelled(bundle, perf_counter_ns() - start, 0)
        raise
    finally:
        if token is not None:
            var.reset(token)  # type: ignore[union-attr]
    end = perf_counter_ns()
    try:
        bundle.success((end - start) / 1e6, 0 if extract is None else _measure(extract, result))
    except Exception:
        _log.internal_error("success")
    return result


def _first_item(first: Callable[[float], None], ns: int) -> None:
    try:
        first(ns / 1e6)
    except Exception:
        _log.internal_error("time to first item")


def _timed_generator(
    gen: Generator[Any, Any, Any], bundle: Any, per_item: Any, classify: Any
) -> Generator[Any, Any, Any]:
    # A hand-expanded ``yield from`` that times each resume of the body, so
    # the consumer's time between items is never counted.
    elapsed = 0
    amount: Any = 0
    first = getattr(bundle, "first_item", None)
    send = action = gen.send
    arg: Any = None
    while True:
        start = perf_counter_ns()
        try:
            item = action(arg)
        except StopIteration as stop:
            _success(bundle, elapsed + perf_counter_ns() - start, amount)
            return stop.value
        except BaseException as exc:
            _ended(bundle, elapsed + perf_counter_ns() - start, exc, amount, classify)
            raise
        elapsed += perf_counter_ns() - start
        if first is not None:
            _first_item(first, elapsed)
            first = None
        amount += 1 if per_item is None else _measure(per_item, item)
        try:
            arg = yield item
        except GeneratorExit:
            # The consumer stopped early: close the body, and count what it yielded as a success.
            start = perf_counter_ns()
            try:
                gen.close()
            except Exception as exc:
                _failure(bundle, elapsed + perf_counter_ns() - start, exc, amount, classify)
                raise
            _success(bundle, elapsed + perf_counter_ns() - start, amount)
            raise
        except BaseException as exc:
            action, arg = gen.throw, exc
        else:
            action = send


def _first_asend(agen: AsyncGenerator[Any, Any]) -> Awaitable[Any]:
    """Return ``agen.asend(None)``, made with the event loop's async generator hooks off.

    The wrapper that iterates ``agen`` closes it; registered with the loop
    too, ``agen`` would be closed twice at once when the loop finalises an
    abandoned stream ("aclose(): asynchronous generator is already running").
    """
    hooks = sys.get_asyncgen_hooks()
    if hooks[0] is None and hooks[1] is None:
        return agen.asend(None)
    sys.set_asyncgen_hooks(None, None)
    try:
        return agen.asend(None)
    finally:
        sys.set_asyncgen_hooks(*hooks)


async def _timed_async_generator(
    agen: AsyncGenerator[Any, Any], bundle: Any, per_item: Any, classify: Any
) -> AsyncGenerator[Any, Any]:
    elapsed = 0
    amount: Any = 0
    first = getattr(bundle, "first_item", None)
    asend = agen.asend
    step = _first_asend(agen)
    while True:
        start = perf_counter_ns()
        try:
            item = await step
        except StopAsyncIteration:
            _success(bundle, elapsed + perf_counter_ns() - start, amount)
            return
        except BaseException as exc:
            _ended(bundle, elapsed + perf_counter_ns() - start, exc, amount, classify)
            raise
        elapsed += perf_counter_ns() - start
        if first is not None:
            _first_item(first, elapsed)
            first = None
        amount += 1 if per_item is None else _measure(per_item, item)
        try:
            arg = yield item
        except GeneratorExit:
            start = perf_counter_ns()
            try:
                await agen.aclose()
            except Exception as exc:
                _failure(bundle, elapsed + perf_counter_ns() - start, exc, amount, classify)
                raise
            _success(bundle, elapsed + perf_counter_ns() - start, amount)
            raise
        except BaseException as exc:
            step = agen.athrow(exc)
        else:
            step = asend(arg)


# --- Scope: a context variable set while a generator's body runs (workflows) -------


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
            # Closed early or collected: the body's finally blocks run in its scope too.
            token = var.set(value)
            try:
                gen.close()
            finally:
                var.reset(token)
            raise
        except BaseException as exc:
            action, arg = gen.throw, exc
        else:
            action = send


async def _scoped_async_generator(
    agen: AsyncGenerator[Any, Any], var: ContextVar[Any], value: Any
) -> AsyncGenerator[Any, Any]:
    asend = agen.asend
    step = _first_asend(agen)
    while True:
        token = var.set(value)
        try:
            item = await step
        except StopAsyncIteration:
            return
        finally:
            var.reset(token)
        try:
            arg = yield item
        except GeneratorExit:
            token = var.set(value)
            try:
                await agen.aclose()
            finally:
                var.reset(token)
            raise
        except BaseException as exc:
            step = agen.athrow(exc)
        else:
            step = asend(arg)


def _named(relay: Callable[..., Any], target: Target) -> Callable[..., Any]:
    """Return a copy of ``relay`` whose coroutine or generator objects carry the wrapped function's names.

    Warnings, task reprs and tracebacks then name the user's function, at no cost per call.
    """
    name, qualname = target.qualname
    clone = types.FunctionType(relay.__code__, relay.__globals__, name, relay.__defaults__, relay.__closure__)
    clone.__qualname__ = qualname
    return clone


def _coroutine_body(site: Site, func: Any, timed: Callable[..., Any]) -> Callable[..., Any]:
    resolve, extract, var, classify = site.resolve, site.extract, site.scope_var, site.error_type

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            bundle = resolve(args, kwargs)
        except Exception:
            _log.internal_error("resolving labels")
            return func(*args, **kwargs)
        work = func(*args, **kwargs)  # bad arguments raise here, at the call, as undecorated
        pending = _Pending()
        pending.work, pending.bundle = work, bundle
        return timed(pending, extract, var, classify)

    return call


def _future_done(future: Any, bundle: Any, start: int, extract: Any, classify: Any) -> None:
    ns = perf_counter_ns() - start
    if future.cancelled():
        _cancelled(bundle, ns, 0)
        return
    exc = future.exception()
    if exc is not None:
        _ended(bundle, ns, exc, 0, classify)
    else:
        _success(bundle, ns, 0 if extract is None else _measure(extract, future.result()))


def _maybe_awaitable_body(site: Site, func: Any, timed: Callable[..., Any]) -> Callable[..., Any]:
    """Body for a sync callable that may return an awaitable (a ``functools.wraps`` wrapper of a coroutine)."""
    resolve, extract, var, classify = site.resolve, site.extract, site.scope_var, site.error_type

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            bundle = resolve(args, kwargs)
        except Exception:
            _log.internal_error("resolving labels")
            return func(*args, **kwargs)
        start = perf_counter_ns()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            _ended(bundle, perf_counter_ns() - start, exc, 0, classify)
            raise
        if inspect.iscoroutine(result):
            pending = _Pending()
            pending.work, pending.bundle = result, bundle
            return timed(pending, extract, var, classify)
        if isfuture(result):
            # A Future or Task is returned as it is; its outcome is recorded when it is done.
            try:
                result.add_done_callback(lambda done: _future_done(done, bundle, start, extract, classify))
            except Exception:
                _log.internal_error("watching a future")
            return result
        _success(bundle, perf_counter_ns() - start, 0 if extract is None else _measure(extract, result))
        return result

    return call


def _generator_body(site: Site, func: Any, timed: Callable[..., Any], scoped: Callable[..., Any]) -> Callable[..., Any]:
    resolve, per_item, var, classify = site.resolve, site.extract_item, site.scope_var, site.error_type

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            bundle = resolve(args, kwargs)
        except Exception:
            _log.internal_error("resolving labels")
            return func(*args, **kwargs)
        work = func(*args, **kwargs)
        if var is not None:
            work = scoped(work, var, bundle.scope)
        return timed(work, bundle, per_item, classify)

    return call


def _body(site: Site, target: Target) -> Callable[..., Any]:
    """Return the body for the wrapped callable's kind."""
    kind, func = target.kind, target.func
    if kind == SYNC:
        return _sync_body(site, func)
    if kind == COROUTINE:
        return _coroutine_body(site, func, _named(_timed_coroutine, target))
    if kind == MAYBE_AWAITABLE:
        return _maybe_awaitable_body(site, func, _named(_timed_coroutine, target))
    if kind == GENERATOR:
        return _generator_body(site, func, _named(_timed_generator, target), _scoped_generator)
    return _generator_body(site, func, _named(_timed_async_generator, target), _scoped_async_generator)


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


def _by_reference(proxy: Any, protocol: Any) -> Any:
    """Reduce ``proxy`` to its module and qualified name, as pickle does for functions.

    A function that cannot be found by that name (a local function) fails
    with the error pickle gives for the undecorated function, instead of
    making a pickle that cannot be loaded.
    """
    module, qualname = proxy.__module__, proxy.__qualname__
    try:
        found = _resolve_qualname(module, qualname)
    except Exception:
        pickle.dumps(proxy.__wrapped__, protocol)
        raise pickle.PicklingError(f"Can't pickle {qualname!r}: it is not found as {module}.{qualname}") from None
    if found is not proxy and not isinstance(found, (_BoundBase, _FunctionBase)):
        # That name holds something else (the undecorated function, say), as pickle says of functions.
        raise pickle.PicklingError(f"Can't pickle {qualname!r}: it's not the same object as {module}.{qualname}")
    return _resolve_qualname, (module, qualname)


class _Copyable:
    """Functions are immutable to ``copy``: a copy of a decorated function is the function itself."""

    __slots__ = ()

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: Any) -> Any:
        return self


class _BoundWrapper(_Copyable, _BoundBase):  # type: ignore[misc]
    __slots__ = ()

    def __reduce_ex__(self, protocol: Any) -> Any:
        instance = self._self_instance
        if instance is not None:
            return getattr, (instance, self.__name__)
        return _by_reference(self, protocol)


class _Wrapper(_Copyable, _FunctionBase):  # type: ignore[misc]
    """wrapt's ``FunctionWrapper``, pickled by reference and copied as the function it wraps."""

    __slots__ = ()
    __bound_function_wrapper__ = _BoundWrapper

    def __reduce_ex__(self, protocol: Any) -> Any:
        return _by_reference(self, protocol)


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
    """Wrap ``wrapped`` (function, method, classmethod or staticmethod) with the body its kind needs.

    Decorating never raises because of bizmetrics: if building the wrapper
    fails, the failure is logged and ``wrapped`` is returned undecorated.
    """
    try:
        return _wrap(wrapped, make_site)
    except Exception:
        _log.internal_error("decorating")
        return wrapped


def _wrap(wrapped: Any, make_site: Callable[[Target], Site]) -> Any:
    target = Target(wrapped)
    call = _body(make_site(target), target)

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
