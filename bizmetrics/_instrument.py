"""The engine every bizmetrics decorator shares.

A decorator describes *what* to record: a ``Site``, whose ``resolve(args,
kwargs)`` returns the call's label bundle (see ``_families.Bundle``) and
whose ``count`` says what the family counts in a result.  This module
decides *how* to time it, and knows nothing of labels or metrics.

The kind of callable (plain, coroutine, generator, async generator) is
decided once, when decorating; its body becomes the ``__call__`` of a wrapt
``FunctionWrapper`` subclass generated for, and named after, the wrapped
function, so the user's function runs inside one more Python frame only
(resolving labels and recording are calls made before and after it, which
an exception from the user's code never passes through).  Coroutines and
generators run in one relay per kind, which times each resume of the user's
code and sets the bundle's scope around it.  ``_outcome`` states the outcome
rules once.  Every failure inside recording is caught and logged, so the
application's result or exception is untouched.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pickle
import sys
import threading
import types
from asyncio import CancelledError, isfuture
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator
from contextvars import ContextVar, Token, copy_context
from time import perf_counter as clock  # seconds; tests patch ``clock`` and ``CLOCK_MS`` for exact durations
from types import MethodType
from typing import TYPE_CHECKING, Any, Literal, SupportsIndex

import wrapt

from . import _deferred, _log
from ._deferred import QUEUE as _QUEUE

if TYPE_CHECKING:
    from ._families import Bundle

#: Milliseconds per unit of ``clock``.
CLOCK_MS = 1e3

Kind = Literal["sync", "coroutine", "generator", "async generator", "maybe awaitable"]
SYNC: Kind = "sync"
COROUTINE: Kind = "coroutine"
GENERATOR: Kind = "generator"
ASYNC_GENERATOR: Kind = "async generator"
#: A sync callable whose code is a coroutine function behind ``functools.wraps``: it may return an awaitable.
MAYBE_AWAITABLE: Kind = "maybe awaitable"

_SELF_NAMES = ("self", "cls")

Args = tuple[object, ...]
Kwargs = dict[str, object]
#: What a family counts in a result or an item (records, tokens, hits).
Count = Callable[[Any], object]
#: ``error_type=``: turns an exception into its ``error_type`` label.
Classify = Callable[[BaseException], object]


def _code_of(func: object) -> object:
    """Return the function whose code runs when ``func`` is called: through partials and ``__call__``."""
    while isinstance(func, functools.partial):
        func = func.func
    if not (inspect.isfunction(func) or inspect.ismethod(func) or inspect.isbuiltin(func) or isinstance(func, type)):
        call = type(func).__dict__.get("__call__") or getattr(type(func), "__call__", None)  # noqa: B004
        if inspect.isfunction(call):
            return call
    return func


def _kind_of(func: object) -> Kind:
    code = _code_of(func)
    if inspect.isasyncgenfunction(code):
        return ASYNC_GENERATOR
    if inspect.iscoroutinefunction(code) or inspect.iscoroutinefunction(func):
        return COROUTINE
    if inspect.isgeneratorfunction(code):
        return GENERATOR
    try:
        unwrapped = inspect.unwrap(func)  # type: ignore[arg-type]
    except ValueError:
        return SYNC
    if unwrapped is not func and inspect.iscoroutinefunction(_code_of(unwrapped)):
        return MAYBE_AWAITABLE
    return SYNC


class Target:
    """What decorating learned about the wrapped callable.

    Every call reaches the body with the arguments of ``func``: ``self`` or
    ``cls`` first when ``self_like``.
    """

    __slots__ = ("func", "kind", "name", "qualname", "self_like")

    def __init__(self, wrapped: Any, in_class: bool = False) -> None:
        if isinstance(wrapped, (classmethod, staticmethod)) or inspect.ismethod(wrapped):
            func = wrapped.__func__
        else:
            func = wrapped
        self.func: Callable[..., Any] = func
        self.kind = _kind_of(func)
        code = _code_of(func)
        self.name: str = getattr(func, "__name__", None) or getattr(code, "__name__", None) or type(func).__name__
        #: The name and qualified name the coroutine or generator objects of the undecorated function carry.
        self.qualname: tuple[str, str] = (
            getattr(code, "__name__", None) or self.name,
            getattr(code, "__qualname__", None) or self.name,
        )
        try:
            first = next(iter(inspect.signature(func).parameters), None)
        except (TypeError, ValueError):
            first = None
        #: Whether ``args[0]`` is the instance or class: a method, a classmethod, a function
        #: assigned in a class body, or a function whose first parameter is ``self`` or ``cls``.
        self.self_like = (
            isinstance(wrapped, classmethod)
            or inspect.ismethod(wrapped)
            or (not isinstance(wrapped, staticmethod) and (in_class or first in _SELF_NAMES))
        )


#: ``begin(bundle) -> bundle``: the bundle one call records into (an agent's call, say).
Begin = Callable[[Any], Any]
#: ``enter(bundle, own_tenant) -> entered``: sets the context variables the body runs with.
Enter = Callable[[Any, object], Any]


class Site:
    """What one decorator records, resolved when decorating.

    ``resolve(args, kwargs)`` returns ``(bundle, own_tenant)``: the call's
    bundle, and the tenant the call names itself (its ``tenant_id`` argument
    or ``self.tenant_id``; ``None`` when it comes from the context or the
    default).  ``count(result)`` and ``count_item(item)`` say what the family
    counts in a return value or in each yielded item (``None``: nothing, and
    one per item).  ``begin``, when set, turns the bundle into the one a
    single call records into; ``enter``, when set, sets the context
    variables the body runs with (the tenant, the workflow, the agent) and
    returns their tokens for ``_leave``.  ``own_scope``, given instead of
    ``enter``, is a scope of one variable: the call's own tenant is set in it
    unless it is ``None`` or already current, which the sync and coroutine
    bodies do inline (the hottest paths).  ``error_type``, when set, turns an
    exception into its ``error_type`` label (else the exception's class name).
    """

    __slots__ = ("begin", "count", "count_item", "enter", "error_type", "own_scope", "resolve")

    def __init__(
        self,
        resolve: Callable[[Args, Kwargs], tuple[Bundle, object]],
        count: Count | None = None,
        count_item: Count | None = None,
        begin: Begin | None = None,
        enter: Enter | None = None,
        error_type: Classify | None = None,
        own_scope: ContextVar[object] | None = None,
    ) -> None:
        self.resolve = resolve
        self.count = count
        self.count_item = count_item
        self.begin = begin
        self.enter = enter if own_scope is None else _enter_own(own_scope)
        self.error_type = error_type
        self.own_scope = own_scope


def is_new(own: object, current: object) -> bool:
    """Whether a call's own tenant ``own`` differs from the ``current`` one (a ``str`` by its text)."""
    return current is not own and not (type(own) is str and own == current)


def _enter_own(var: ContextVar[object]) -> Enter:
    """``Site.enter`` for an ``own_scope``: set the call's own value in ``var``, unless it is ``None`` or current.

    Setting and resetting a context variable costs ~2,000 instructions; most
    calls run inside a request or job that already made their tenant current.
    """
    get, set_ = var.get, var.set

    def enter(bundle: object, own: object) -> Token[object] | None:
        return None if own is None or not is_new(own, get()) else set_(own)

    return enter


def _leave(entered: Any) -> None:
    """Reset what ``Site.enter`` set, innermost first; inside a garbage collection leave the context alone.

    A finaliser that sets and resets several context variables while the
    collector interrupts a thread updating its own can crash CPython 3.10
    and 3.11, and the context of a relay closed by the collector is not the
    interrupted thread's to change.
    """
    if _deferred.collector is not None and _deferred.collecting():
        return
    try:
        if type(entered) is Token:
            entered.var.reset(entered)
        else:
            for token in reversed(entered):
                token.var.reset(token)
    except ValueError:  # closed from another context (a task's coroutine closed elsewhere)
        pass


# --- The outcome rules ---------------------------------------------------------------


def _error_name(classify: Classify | None, exc: BaseException) -> object:
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


def _outcome(
    bundle: Bundle, elapsed: float | None, exc: BaseException | None, amount: Any, classify: Classify | None
) -> None:
    """Record how a call ended; never raises.

    No exception is a success (a generator closed early by its consumer
    too); an ``Exception`` is a failure, by its error type; a
    ``CancelledError`` is a cancellation; anything else (``KeyboardInterrupt``,
    ``SystemExit``, ``GeneratorExit``) records nothing.  ``elapsed`` (in
    ``clock`` units) is ``None`` for a call that never ran.  Inside a garbage
    collection the record is deferred (``_deferred``); otherwise records
    deferred earlier are drained first.
    """
    ms = None if elapsed is None else elapsed * CLOCK_MS
    if _QUEUE or _deferred.collector is not None:
        if _deferred.collecting():
            _defer_outcome(bundle, ms, exc, amount, classify)
            return
        _deferred.drain()
    try:
        if exc is None:
            bundle.success(ms, amount)
        elif isinstance(exc, Exception):
            bundle.failure(ms, type(exc).__name__ if classify is None else _error_name(classify, exc), amount)
        elif isinstance(exc, CancelledError):
            bundle.cancelled(ms, amount)
    except Exception:
        _log.internal_error("recording an outcome")


def _defer_outcome(
    bundle: Bundle, ms: float | None, exc: BaseException | None, amount: Any, classify: Classify | None
) -> None:
    """Queue the record ``_outcome`` would make: the error type is read now, so the exception is not kept."""
    try:
        if exc is None:
            _deferred.defer(functools.partial(bundle.success, ms, amount))
        elif isinstance(exc, Exception):
            error = type(exc).__name__ if classify is None else _error_name(classify, exc)
            _deferred.defer(functools.partial(bundle.failure, ms, error, amount))
        elif isinstance(exc, CancelledError):
            _deferred.defer(functools.partial(bundle.cancelled, ms, amount))
    except Exception:
        _log.internal_error("deferring an outcome")


def _measure(count: Count, value: object) -> Any:
    try:
        return count(value)
    except Exception:
        _log.internal_error("extracting a count")
        return 0


def _resolved(resolve: Callable[[Args, Kwargs], tuple[Bundle, object]], args: Args, kwargs: Kwargs) -> Any:
    """``(bundle, own_tenant)`` of the call, or ``None`` (logged) if resolving its labels failed.

    The call then runs undecorated.
    """
    try:
        return resolve(args, kwargs)
    except Exception:
        _log.internal_error("resolving labels")
        return None


# --- The bodies and relays -------------------------------------------------------------
#
# A body is ``call(*args, **kwargs)``: it becomes the ``__call__`` of the
# wrapper itself, and what a method of the sync kind binds (an exception
# passing through a frame costs ~230 ns).  ``func`` is the undecorated
# function and ``args`` include ``self`` / ``cls``.  Labels are resolved at call time (so a coroutine or generator
# carries its caller's tenant); the clock runs while the user's code runs.
# The scope (``Site.enter``'s context variables) is set while the user's
# code runs: around the call or the awaited coroutine; a generator's or an
# async generator's body runs in a context of its own (see the relays).  A
# call made inside a garbage collection (by a finaliser) never changes the
# interrupted thread's context: a sync call runs in a scoped copy of it, a
# coroutine started there without its scope.

Body = Callable[..., object]


def _sync_body(site: Site, func: Callable[..., Any]) -> Body:
    resolve, count, begin, enter, classify = site.resolve, site.count, site.begin, site.enter, site.error_type
    scope = site.own_scope
    scope_get, scope_set, scope_reset = (None, None, None) if scope is None else (scope.get, scope.set, scope.reset)

    def call(*args: object, **kwargs: object) -> object:
        # The hottest path of all: resolving, an own scope and a success are inlined here
        # (``_resolved``, ``_enter_own`` and ``_outcome`` state them once for the other paths).
        try:
            bundle, own = resolve(args, kwargs)
        except Exception:
            _log.internal_error("resolving labels")
            return func(*args, **kwargs)
        if begin is not None:
            bundle = begin(bundle)
        entered = None
        target = func
        if enter is not None:
            if _deferred.collector is not None and _deferred.collecting():
                target = _in_scoped_copy(enter, bundle, own, func)
            elif scope_get is None:
                entered = enter(bundle, own)
            elif own is not None:
                current = scope_get()
                if current is not own and not (type(own) is str and own == current):
                    entered = scope_set(own)  # type: ignore[misc]
        start = clock()
        try:
            result = target(*args, **kwargs)
        except Exception as exc:
            elapsed = clock() - start
            if _QUEUE or _deferred.collector is not None:
                _outcome(bundle, elapsed, exc, 0, classify)
                raise
            try:
                bundle.failure(
                    elapsed * CLOCK_MS, type(exc).__name__ if classify is None else _error_name(classify, exc), 0
                )
            except Exception:
                _log.internal_error("recording an outcome")
            raise
        except BaseException as exc:
            _outcome(bundle, clock() - start, exc, 0, classify)
            raise
        finally:
            if entered is not None:
                if scope_reset is not None and _deferred.collector is None:
                    scope_reset(entered)  # one variable, outside any collection: what ``_leave`` would do
                else:
                    _leave(entered)
        elapsed = clock() - start
        if _QUEUE or _deferred.collector is not None:
            _outcome(bundle, elapsed, None, 0 if count is None else _measure(count, result), classify)
            return result
        try:
            bundle.success(elapsed * CLOCK_MS, 0 if count is None else _measure(count, result))
        except Exception:
            _log.internal_error("recording an outcome")
        return result

    return call


def _in_scoped_copy(enter: Enter, bundle: Bundle, own: object, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func``, to run in a copy of the context with the call's scope set in it.

    For a call made by a finaliser: it keeps its scope, and the context of
    the thread the collector interrupted is left as it was.
    """
    ctx = copy_context()
    ctx.run(enter, bundle, own)
    return functools.partial(ctx.run, func)


def _close(work: object) -> None:
    close = getattr(work, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            _log.internal_error("closing an awaitable")


class _Pending:
    """The user's awaitable, held until the timed coroutine starts awaiting it.

    A decorated coroutine that never starts (a task cancelled before its
    first step, a coroutine closed or dropped un-awaited) never runs the
    relay; this holder's finaliser then closes the user's coroutine, so it
    cannot warn "never awaited" a second time (the relay, named after the
    user's function, warns if it was dropped, as an undecorated one would),
    and counts the call as cancelled, with no duration: deferred when the
    garbage collector runs it (see ``_deferred``).

    A relay that starts empties its holder and puts it back in ``_HOLDERS``
    for the next call: a holder dies, and its finaliser runs, only for a
    call that never started (or when the pool is full), not at the end of
    every call (~1,000 instructions with the allocation).
    """

    __slots__ = ("bundle", "work")
    bundle: Bundle | None
    work: Awaitable[Any] | None

    def __del__(self) -> None:
        work = self.work
        if work is not None:
            _close(work)
            _outcome(self.bundle, None, CancelledError(), 0, None)  # type: ignore[arg-type]


#: Emptied holders for the next calls.  ``pop`` and ``append`` take no lock (as ``_deferred``'s queue);
#: a holder is only ever in the pool or in the hands of one call.
_HOLDERS: deque[_Pending] = deque(maxlen=256)


def _pending(work: Awaitable[Any], bundle: Bundle) -> _Pending:
    """A holder of ``work`` (recycled if one is free), for a relay to empty when it starts."""
    try:
        pending = _HOLDERS.pop()
    except IndexError:
        pending = _Pending()
    pending.work, pending.bundle = work, bundle
    return pending


def _interrupted(bundle: Bundle, start: float, exc: BaseException, classify: Classify | None, entered: Any) -> None:
    """Record a relay's ``BaseException`` that is no ``Exception`` (a cancellation), then leave its scope."""
    try:
        _outcome(bundle, clock() - start, exc, 0, classify)
    finally:
        if entered is not None:
            _leave(entered)


#: ``relay(pending, work, bundle, own)``: the timed coroutine that awaits ``work``.
Relay = Callable[[_Pending, Any, Any, object], Coroutine[Any, Any, Any]]


def _coroutine_relay(site: Site) -> Relay:
    """The timed coroutine of one site: awaits the user's ``work``, its scope set, and records the outcome.

    The site's settings are read once, here.  Outcomes are recorded as
    ``_outcome`` states them, inlined on the paths of an ``Exception`` and
    a success.  The scope is reset, as by ``_leave``, once the work is
    done (a success: before recording; an exception: after recording, in a
    ``finally`` of its own branch), not in a ``finally`` around the whole
    ``try``, through which an exception leaving the relay would pass twice
    more (~600 instructions).
    """
    begin, enter, classify, count, scope = site.begin, site.enter, site.error_type, site.count, site.own_scope
    scope_get, scope_set, scope_reset = (None, None, None) if scope is None else (scope.get, scope.set, scope.reset)
    give = _HOLDERS.append

    async def relay(pending: _Pending, work: Any, bundle: Any, own: object) -> Any:
        pending.work = pending.bundle = None  # started: nothing left for its finaliser to close
        give(pending)
        del pending
        if begin is not None:
            bundle = begin(bundle)
        entered = None
        if enter is not None and not (_deferred.collector is not None and _deferred.collecting()):
            if scope_get is None:
                entered = enter(bundle, own)
            elif own is not None:  # ``_enter_own``, inlined
                current = scope_get()
                if current is not own and not (type(own) is str and own == current):
                    entered = scope_set(own)  # type: ignore[misc]
        start = clock()
        try:
            result = await work
        except Exception as exc:
            try:
                elapsed = clock() - start
                if _QUEUE or _deferred.collector is not None:
                    _outcome(bundle, elapsed, exc, 0, classify)
                else:
                    bundle.failure(
                        elapsed * CLOCK_MS, type(exc).__name__ if classify is None else _error_name(classify, exc), 0
                    )
            except Exception:
                _log.internal_error("recording an outcome")
            except BaseException:  # raised by a signal handler while recording: the scope is left all the same
                if entered is not None:
                    _leave(entered)
                raise
            if entered is not None:
                if scope_reset is not None and _deferred.collector is None:
                    try:
                        scope_reset(entered)  # one variable, outside any collection: what ``_leave`` does
                    except ValueError:
                        pass
                else:
                    _leave(entered)
            raise
        except BaseException as exc:
            _interrupted(bundle, start, exc, classify, entered)
            raise
        if entered is not None:
            if scope_reset is not None and _deferred.collector is None:
                try:
                    scope_reset(entered)
                except ValueError:
                    pass
            else:
                _leave(entered)
        elapsed = clock() - start
        if _QUEUE or _deferred.collector is not None:
            _outcome(bundle, elapsed, None, 0 if count is None else _measure(count, result), classify)
            return result
        try:
            bundle.success(elapsed * CLOCK_MS, 0 if count is None else _measure(count, result))
        except Exception:
            _log.internal_error("recording an outcome")
        return result

    return relay


def _body_context(site: Site, bundle: Bundle, own: object) -> tuple[Bundle, Callable[..., Any] | None]:
    """A stream's bundle for this call, and the ``run`` of a context of the body's own if the call sets a scope."""
    if site.begin is not None:
        bundle = site.begin(bundle)
    if site.enter is not None:
        ctx = copy_context()
        if ctx.run(site.enter, bundle, own) is not None:
            return bundle, ctx.run
    return bundle, None


def _timed_generator(
    gen: Generator[Any, Any, Any],
    bundle: Bundle,
    own: object,
    count_item: Count | None,
    site: Site,
) -> Generator[Any, Any, Any]:
    # A hand-expanded ``yield from`` that times each resume of the body, so
    # the consumer's time between items is never counted.  With a scope, the
    # body runs in a context of its own, copied from the consumer's at the
    # first resume, with the scope set in it once: ``ctx.run`` costs ~10 ns a
    # resume where setting and resetting one variable costs ~150; without
    # one, in the consumer's, as undecorated.  ``elapsed -= clock()`` before
    # a resume and ``elapsed += clock()`` after it add up the resumes with
    # the fewest operations per item.
    classify = site.error_type
    bundle, run = _body_context(site, bundle, own)
    send, throw = gen.send, gen.throw
    elapsed = 0.0
    amount: Any = 0
    first = True
    action = send
    arg: Any = None
    while True:
        elapsed -= clock()
        try:
            item = action(arg) if run is None else run(action, arg)
        except StopIteration as stop:
            _outcome(bundle, elapsed + clock(), None, amount, classify)
            return stop.value
        except BaseException as exc:
            _outcome(bundle, elapsed + clock(), exc, amount, classify)
            raise
        elapsed += clock()
        if first:
            first = False
            _first_item(bundle, elapsed)
        amount += 1 if count_item is None else _measure(count_item, item)
        try:
            arg = yield item
        except GeneratorExit:
            # Closed early (or collected): close the body, and count what it yielded as a success.
            # With a scope, in the body's own context: a finaliser never touches the thread's.
            elapsed -= clock()
            try:
                if run is None:
                    gen.close()
                else:
                    run(gen.close)
            except BaseException as exc:
                _outcome(bundle, elapsed + clock(), exc, amount, classify)
                raise
            _outcome(bundle, elapsed + clock(), None, amount, classify)
            raise
        except BaseException as exc:
            action, arg = throw, exc
        else:
            action = send


def _first_item(bundle: Bundle, elapsed: float) -> None:
    try:
        bundle.first_item(elapsed * CLOCK_MS)
    except Exception:
        _log.internal_error("time to first item")


def _first_asend(agen: AsyncGenerator[Any, Any]) -> Awaitable[Any]:
    """Return ``agen.asend(None)``, made with the event loop's async generator hooks off.

    The relay that iterates ``agen`` closes it; registered with the loop
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


def _step_in(run: Callable[..., Any], step: Any) -> tuple[bool, Any]:
    """Start ``step`` (an ``asend``, ``athrow`` or ``aclose`` awaitable) by ``run``: ``(done, what)``.

    ``run`` is a context's ``run``: the step runs in that context while the
    awaiting task's own stays untouched.  A step that completes at once (a
    body that yields without awaiting: most items of a stream) is done and
    gives what awaiting it would; one that awaits gives ``_resumed``, to await.
    """
    try:
        signal = run(step.send, None)
    except StopIteration as stop:
        return True, stop.value
    return False, _resumed(run, step, signal)


@types.coroutine
def _resumed(run: Callable[..., Any], step: Any, signal: Any) -> Generator[Any, Any, Any]:
    """The rest of a step that awaited: hand its ``signal`` to the task, resume it by ``run``."""
    send, throw = step.send, step.throw
    try:
        while True:
            try:
                value = yield signal
            except GeneratorExit:
                run(step.close)
                raise
            except BaseException as exc:  # a cancellation, or what the consumer throws
                signal = run(throw, exc)
            else:
                signal = run(send, value)
    except StopIteration as stop:
        return stop.value


#: What ``_pump`` yields when the body has yielded an item (the item is in the pump's box).
_ITEM = object()


def _pump(agen: AsyncGenerator[Any, Any], step: Awaitable[Any], box: list[Any]) -> Generator[Any, Any, None]:
    """The steps of ``agen`` as one generator, each ``send`` or ``throw`` started by a context's ``run``.

    ``yield from`` a step passes what the body awaits to the task, and
    finishes the step without a Python-level exception; the item is put in
    ``box`` and announced by yielding ``_ITEM``.  An exception thrown in at
    an item is thrown into the body there (``athrow``), one thrown in while
    the body awaits goes to that await.  ``StopAsyncIteration`` and the
    body's exceptions end the pump.
    """
    asend, athrow = agen.asend, agen.athrow
    while True:
        box[0] = yield from step  # type: ignore[misc]
        try:
            arg = yield _ITEM
        except GeneratorExit:
            raise
        except BaseException as exc:
            step = athrow(exc)
        else:
            step = asend(arg)


@types.coroutine
def _awaiting(run: Callable[..., Any], pump: Generator[Any, Any, None], signal: Any) -> Generator[Any, Any, None]:
    """The rest of a pump's step that awaited: hand its signals to the task, resume it by ``run``."""
    send, throw = pump.send, pump.throw
    while signal is not _ITEM:
        try:
            value = yield signal
        except GeneratorExit:
            run(pump.close)
            raise
        except BaseException as exc:  # a cancellation, or what the consumer throws
            signal = run(throw, exc)
        else:
            signal = run(send, value)


async def _timed_async_generator(
    agen: AsyncGenerator[Any, Any],
    bundle: Bundle,
    own: object,
    count_item: Count | None,
    site: Site,
) -> AsyncGenerator[Any, Any]:
    # As ``_timed_generator``, awaiting each step of ``agen``.  With a scope,
    # the body runs in a context of its own: its steps are those of one
    # generator (``_pump``) resumed by the context's ``run``, which costs
    # about what awaiting the step does; setting and resetting a variable
    # around each step of a task costs about twice as much.
    elapsed = 0.0
    amount: Any = 0
    first = True
    classify = site.error_type
    bundle, run = _body_context(site, bundle, own)
    asend = agen.asend
    step = _first_asend(agen)
    box: list[Any] = [None]
    pump = send = None
    if run is not None:
        pump = _pump(agen, step, box)
        send = pump.send
    action: Any = send
    arg: Any = None
    while True:
        elapsed -= clock()
        try:
            if run is None:
                item = await step
            else:
                signal = run(action, arg)
                if signal is not _ITEM:
                    await _awaiting(run, pump, signal)  # type: ignore[arg-type]
                item = box[0]
        except StopAsyncIteration:
            _outcome(bundle, elapsed + clock(), None, amount, classify)
            return
        except BaseException as exc:
            _outcome(bundle, elapsed + clock(), exc, amount, classify)
            raise
        elapsed += clock()
        if first:
            first = False
            _first_item(bundle, elapsed)
        amount += 1 if count_item is None else _measure(count_item, item)
        try:
            arg = yield item
        except GeneratorExit:
            # Closed early, or finalised (by the loop, or by the collector): the body's context, never the thread's.
            elapsed -= clock()
            try:
                if run is None:
                    await agen.aclose()
                else:
                    done, closing = _step_in(run, agen.aclose())
                    if not done:
                        await closing
            except BaseException as exc:
                _outcome(bundle, elapsed + clock(), exc, amount, classify)
                raise
            _outcome(bundle, elapsed + clock(), None, amount, classify)
            raise
        except BaseException as exc:
            if pump is None:
                step = agen.athrow(exc)
            else:
                action, arg = pump.throw, exc
        else:
            if pump is None:
                step = asend(arg)
            else:
                action = send


def _named(relay: Callable[..., Any], target: Target) -> Callable[..., Any]:
    """Return a copy of ``relay`` whose coroutine or generator objects carry the wrapped function's names.

    Warnings, task reprs and tracebacks then name the user's function, at no cost per call.
    """
    name, qualname = target.qualname
    clone = types.FunctionType(relay.__code__, relay.__globals__, name, relay.__defaults__, relay.__closure__)
    clone.__qualname__ = qualname
    return clone


def _coroutine_body(site: Site, func: Callable[..., Any], relay: Relay) -> Body:
    resolve = site.resolve
    take = _HOLDERS.pop

    def call(*args: object, **kwargs: object) -> object:
        try:  # ``_resolved`` and ``_pending``, inlined
            bundle, own = resolve(args, kwargs)
        except Exception:
            _log.internal_error("resolving labels")
            return func(*args, **kwargs)
        work = func(*args, **kwargs)  # bad arguments raise here, at the call, as undecorated
        try:
            pending = take()
        except IndexError:
            pending = _Pending()
        pending.work = work
        pending.bundle = bundle
        return relay(pending, work, bundle, own)

    return call


def _future_done(future: Any, bundle: Bundle, start: float, count: Count | None, classify: Classify | None) -> None:
    elapsed = clock() - start
    if future.cancelled():
        _outcome(bundle, elapsed, CancelledError(), 0, classify)
        return
    exc = future.exception()
    if exc is not None:
        _outcome(bundle, elapsed, exc, 0, classify)
    else:
        _outcome(bundle, elapsed, None, 0 if count is None else _measure(count, future.result()), classify)


def _maybe_awaitable_body(site: Site, func: Callable[..., Any], relay: Relay) -> Body:
    """Body for a sync callable that may return an awaitable (a ``functools.wraps`` wrapper of a coroutine)."""
    resolve, count, begin, enter, classify = site.resolve, site.count, site.begin, site.enter, site.error_type

    def call(*args: object, **kwargs: object) -> object:
        resolved = _resolved(resolve, args, kwargs)
        if resolved is None:
            return func(*args, **kwargs)
        base, own = resolved
        bundle = base if begin is None else begin(base)
        entered = (
            None
            if enter is None or (_deferred.collector is not None and _deferred.collecting())
            else enter(bundle, own)
        )
        start = clock()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            _outcome(bundle, clock() - start, exc, 0, classify)
            raise
        finally:
            if entered is not None:
                _leave(entered)
        if inspect.iscoroutine(result):
            # Timed (and scoped again) while awaited, from the shared bundle.
            return relay(_pending(result, base), result, base, own)
        if isfuture(result):
            # A Future or Task is returned as it is; its outcome is recorded when it is done.
            try:
                result.add_done_callback(lambda done: _future_done(done, bundle, start, count, classify))
            except Exception:
                _log.internal_error("watching a future")
            return result
        _outcome(bundle, clock() - start, None, 0 if count is None else _measure(count, result), classify)
        return result

    return call


def _generator_body(site: Site, func: Callable[..., Any], relay: Callable[..., Any]) -> Body:
    """Body for generator and async generator functions: ``relay`` times the iteration."""
    resolve, count_item = site.resolve, site.count_item

    def call(*args: object, **kwargs: object) -> object:
        resolved = _resolved(resolve, args, kwargs)
        if resolved is None:
            return func(*args, **kwargs)
        bundle, own = resolved
        return relay(func(*args, **kwargs), bundle, own, count_item, site)

    return call


def _body(site: Site, target: Target) -> Body:
    """Return the body for the wrapped callable's kind."""
    kind, func = target.kind, target.func
    if kind == SYNC:
        return _sync_body(site, func)
    if kind == COROUTINE:
        return _coroutine_body(site, func, _named(_coroutine_relay(site), target))
    if kind == MAYBE_AWAITABLE:
        return _maybe_awaitable_body(site, func, _named(_coroutine_relay(site), target))
    if kind == GENERATOR:
        return _generator_body(site, func, _named(_timed_generator, target))
    return _generator_body(site, func, _named(_timed_async_generator, target))


# --- wrapt proxies that pickle -------------------------------------------------


# wrapt's own annotations differ between its 1.x and 2.x lines; bizmetrics
# supports both, so its subclasses see the proxies as untyped.
_BoundBase: Any = wrapt.BoundFunctionWrapper
_FunctionBase: Any = wrapt.FunctionWrapper


def _resolve_qualname(module: str, qualname: str) -> object:
    obj: object = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _by_reference(proxy: Any, protocol: int) -> tuple[Callable[[str, str], object], tuple[str, str]]:
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

    def __copy__(self) -> _Copyable:
        return self

    def __deepcopy__(self, memo: object) -> _Copyable:
        return self


class _BoundWrapper(_Copyable, _BoundBase):  # type: ignore[misc]
    __slots__ = ()

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Callable[..., object], tuple[object, ...]]:
        instance = self._self_instance
        if instance is not None:
            return getattr, (instance, self.__name__)
        return _by_reference(self, int(protocol))


class _Wrapper(_Copyable, _FunctionBase):  # type: ignore[misc]
    """wrapt's ``FunctionWrapper``, pickled by reference and copied as the function it wraps."""

    __slots__ = ()
    __bound_function_wrapper__ = _BoundWrapper

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Callable[..., object], tuple[object, ...]]:
        return _by_reference(self, int(protocol))


class _Callable(_Wrapper):
    """Base of the wrapper classes generated per decorated callable: their ``__call__`` is the body."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<instrumented {self.__wrapped__!r}>"


class _Function(_Callable):
    """Base of the wrapper classes of plain functions, which bind as methods in a class.

    wrapt binds by building a ``BoundFunctionWrapper`` proxy at every attribute
    access, which costs more than the rest of a call's recording.  A bound
    ``MethodType`` over the wrapper is what Python itself builds for a
    function, keeps ``inspect`` and pickling right, and calls ``__call__``
    with the instance first, as the body expects.
    """

    __slots__ = ()
    #: ``(wrapped, make_site)`` of a function not known to be a method, to build its twin from.
    _bizmetrics_source: tuple[Callable[..., Any], Callable[[Target], Site]] | None = None
    #: The twin, built as a method, once bound.
    _bizmetrics_method: _Callable | None = None

    def __get__(self, instance: object, owner: type | None = None) -> object:
        # Every call of a decorated method runs this: nothing but the bind.
        return self if instance is None else MethodType(self, instance)


class _Twinned(_Function):
    """Base of the wrapper classes of functions not known to be methods (no ``self`` or ``cls`` first).

    Such a function is still a method when it is bound to an instance: it is
    then bound as a twin wrapper built as a method (once, on first binding),
    so it reads labels from the instance when called as a method and not
    when called directly.
    """

    __slots__ = ()

    def __get__(self, instance: object, owner: type | None = None) -> object:
        if instance is None:
            return self
        method = type(self)._bizmetrics_method
        if method is None:
            method = _method_twin(self)
        return MethodType(method, instance)


def _method_twin(wrapper: _Function) -> _Callable:
    """Return the twin of ``wrapper`` built as a method, building it (once per class) if need be.

    If building fails, the failure is logged and ``wrapper`` itself is the twin.
    """
    cls = type(wrapper)
    twin = cls._bizmetrics_method
    if twin is not None:
        return twin
    with _twins_lock:  # one twin per class, so a bound method's identity never changes
        twin = cls._bizmetrics_method
        if twin is not None:
            return twin
        source = cls._bizmetrics_source
        twin = wrapper
        if source is not None:
            try:
                built = _build(*source, in_class=True)
            except Exception:
                _log.internal_error("decorating")
            else:
                if isinstance(built, _Callable):
                    twin = built
        cls._bizmetrics_method = twin
        return twin


_twins_lock = threading.RLock()


def _generated(base: type[_Callable], target: Target, call: Body, source: object = None) -> type[_Callable]:
    """A wrapper class for one decorated callable, named after it, whose ``__call__`` is ``call``."""
    # Any str is a valid __name__, but a class name must not hold a NUL character.
    name, qualname = (n.replace("\0", "") or "instrumented" for n in (target.name, target.qualname[1]))
    namespace: dict[str, object] = {"__slots__": (), "__call__": staticmethod(call), "__qualname__": qualname}
    if source is not None:
        namespace["_bizmetrics_source"] = source
    return type(name, (base,), namespace)


def wrap(wrapped: Any, make_site: Callable[[Target], Site]) -> Any:
    """Wrap ``wrapped`` (function, method, classmethod or staticmethod) with the body its kind needs.

    Decorating never raises because of bizmetrics: if building the wrapper
    fails, the failure is logged and ``wrapped`` is returned undecorated.
    """
    try:
        return _build(wrapped, make_site)
    except Exception:
        _log.internal_error("decorating")
        return wrapped


def _build(wrapped: Any, make_site: Callable[[Target], Site], in_class: bool = False) -> Any:
    if in_class and isinstance(wrapped, _Function):
        # Stacked bizmetrics decorators: the inner one is a method too.
        wrapped = _method_twin(wrapped)
    target = Target(wrapped, in_class)
    call = _body(make_site(target), target)

    # For wrapt's own binding (classmethod, staticmethod) and anything else
    # that calls the wrapper the wrapt way: the body wants ``cls`` in args.
    def adapter(bound: object, instance: object, args: Args, kwargs: Kwargs) -> object:
        return call(*args, **kwargs)

    def classmethod_adapter(bound: object, instance: object, args: Args, kwargs: Kwargs) -> object:
        return call(instance, *args, **kwargs)

    if isinstance(wrapped, classmethod):
        return _Wrapper(wrapped, classmethod_adapter)
    if isinstance(wrapped, staticmethod):
        return _Wrapper(wrapped, adapter)
    if inspect.ismethod(wrapped):
        return MethodType(_generated(_Function, target, call)(wrapped.__func__, adapter), wrapped.__self__)
    if inspect.isfunction(wrapped):
        if target.self_like:
            return _generated(_Function, target, call)(wrapped, adapter)
        return _generated(_Twinned, target, call, (wrapped, make_site))(wrapped, adapter)
    return _generated(_Callable, target, call)(wrapped, adapter)
