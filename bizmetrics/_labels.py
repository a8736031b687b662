"""Where label values come from: one set of rules, one reader per decorator.

A label's value is the first of these that is not ``None``:

1. the value given to the decorator;
2. the call's argument of the label's name: by keyword, by position, else its
   default or ``functools.partial`` binding;
3. an attribute of ``self`` (or ``cls``): each of the label's paths in turn
   (``tenant_id``; ``config.id``, ``config[id]``, ``connector_type``);
4. a context variable (the tenant, the workflow, the agent);
5. the label's fallback.

``Label`` states the sources of one label; ``Label.read`` applies the rules
(the general reader, which never raises).  ``resolver`` builds, once per
decorated function, ``resolve(args, kwargs) -> bundle``: the same rules
compiled into one function for that function's signature, which falls back
to the general reader if anything in it raises (an attribute that raises, an
unhashable value).  ``tests/test_labels.py`` proves the two agree.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, Protocol, TypeVar

from . import _log

__all__ = ["Args", "Bundles", "Kwargs", "Label", "Signature", "attribute", "resolver"]

Args = tuple[Any, ...]
Kwargs = dict[str, Any]

B = TypeVar("B", covariant=True)


def attribute(obj: object, name: str) -> object:
    """``getattr`` that never raises (a property may): missing or broken is ``None``."""
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def _item(obj: object, key: str) -> object:
    """``obj[key]`` for a mapping, else ``None``; never raises."""
    if not isinstance(obj, Mapping):
        return None
    try:
        return obj.get(key)
    except Exception:
        return None


def _read_path(obj: object, path: str) -> object:
    """Read ``name``, ``name.attr`` or ``name[key]`` from ``obj``; never raises."""
    head, _, rest = path.partition(".")
    if "[" in head:
        head, key = head[:-1].split("[")
        return _item(attribute(obj, head), key)
    value = attribute(obj, head)
    return _read_path(value, rest) if rest and value is not None else value


class Signature:
    """How a call's arguments map to the wrapped function's parameters.

    ``args`` include ``self`` / ``cls`` first when ``self_like``.
    """

    __slots__ = ("fixed", "positions", "self_like")

    def __init__(self, func: Callable[..., object], self_like: bool) -> None:
        try:
            params = list(inspect.signature(func).parameters.values())
        except (TypeError, ValueError):
            params = []
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self.self_like = self_like
        self.positions = {p.name: i for i, p in enumerate(params) if p.kind in kinds}
        #: Arguments a call gets without passing them: parameter defaults and ``functools.partial`` bindings.
        self.fixed: dict[str, object] = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        if isinstance(func, functools.partial):
            try:
                bound = inspect.signature(func.func).bind_partial(*func.args, **func.keywords).arguments
            except (TypeError, ValueError):
                bound = {}
            for name, value in bound.items():
                self.fixed.setdefault(name, value)

    def argument(self, name: str, args: Args, kwargs: Kwargs) -> object:
        """Return the call's argument ``name``: by keyword, by position, else its default or binding."""
        if name in kwargs:
            return kwargs[name]
        pos = self.positions.get(name)
        if pos is not None and pos < len(args):
            return args[pos]
        return self.fixed.get(name)


class Label:
    """The sources of one label's value, in the order of the rules (see the module docstring)."""

    __slots__ = ("argument", "context", "fallback", "given", "name", "paths")

    def __init__(
        self,
        name: str,
        *,
        given: object = None,
        argument: bool = True,
        paths: Sequence[str] = (),
        context: ContextVar[object] | None = None,
        fallback: object = None,
    ) -> None:
        self.name = name
        self.given = given
        self.argument = argument
        self.paths = tuple(paths)
        self.context = context
        self.fallback = fallback

    def read(self, signature: Signature, args: Args, kwargs: Kwargs) -> object:
        """Return this label's value for a call: the general rule, which never raises."""
        value = self.own(signature, args, kwargs)
        if value is None and self.context is not None:
            value = self.context.get()
        return self.fallback if value is None else value

    def own(self, signature: Signature, args: Args, kwargs: Kwargs) -> object:
        """Return the value the call itself gives (rules 1 to 3), or ``None``; never raises."""
        value = self.given
        if value is None and self.argument:
            value = signature.argument(self.name, args, kwargs)
        if value is None and signature.self_like and args:
            for path in self.paths:
                value = _read_path(args[0], path)
                if value is not None:
                    break
        return value


class Bundles(Protocol[B]):
    """What a resolver needs of a family: its cache of bundles, and ``get`` to make one."""

    @property
    def cache(self) -> Mapping[Any, Any]: ...
    def get(self, *raw: Any) -> B: ...


def _compile_label(label: Label, i: int, signature: Signature, env: dict[str, object], own: bool) -> list[str]:
    """Return the lines that set ``v<i>`` by ``label``'s rules, for ``signature`` (and ``own``, if ``own``)."""
    var = f"v{i}"
    if label.given is not None:
        env[f"given{i}"] = label.given
        return [f"{var} = given{i}"] + ([f"own = {var}"] if own else [])
    lines = [f"{var} = None"]
    if label.argument:
        name = label.name
        env[f"fixed{i}"] = signature.fixed.get(name)
        pos = signature.positions.get(name)
        if pos is None:
            lines = [f"{var} = kwargs.get({name!r}, fixed{i}) if kwargs else fixed{i}"]
        else:
            lines = [
                f"if kwargs and {name!r} in kwargs:",
                f"    {var} = kwargs[{name!r}]",
                "else:",
                f"    {var} = args[{pos}] if len(args) > {pos} else fixed{i}",
            ]
    if signature.self_like:
        for path in label.paths:
            head, _, rest = path.partition(".")
            if "[" in head:
                head, key = head[:-1].split("[")
                expr = f"item(getattr(source, {head!r}, None), {key!r})"
            elif rest:
                expr = f"getattr(getattr(source, {head!r}, None), {rest!r}, None)"
            else:
                expr = f"getattr(source, {head!r}, None)"
            lines += [f"if {var} is None:", f"    {var} = {expr}"]
    if own:
        lines.append(f"own = {var}")
    if label.context is not None:
        env[f"context{i}"] = label.context.get
        lines += [f"if {var} is None:", f"    {var} = context{i}()"]
    if label.fallback is not None:
        env[f"fallback{i}"] = label.fallback
        lines += [f"if {var} is None:", f"    {var} = fallback{i}"]
    return lines


def resolver(
    family: Bundles[B], labels: Sequence[Label], signature: Signature, name: str = "resolve", own: str | None = None
) -> Callable[[Args, Kwargs], tuple[B, object]]:
    """Return ``resolve(args, kwargs) -> (bundle, own)`` for ``labels`` of ``family``, compiled for ``signature``.

    ``own`` is the value the call itself gives the label named ``own`` (its
    argument or an attribute of ``self``: see ``Label.own``), else ``None``.
    What ``exec`` compiles is built only from this module's templates, label
    names and positions: never from user input.
    """
    get = family.get
    own_label = next((label for label in labels if label.name == own), None)

    def general(args: Args, kwargs: Kwargs) -> tuple[B, object]:
        bundle = get(*(label.read(signature, args, kwargs) for label in labels))
        return bundle, None if own_label is None else own_label.own(signature, args, kwargs)

    for path in (p for label in labels for p in label.paths):
        if path.count(".") > 1 or ("[" in path and "." in path):
            return general  # deeper paths than the compiler knows: the general reader alone
    env: dict[str, object] = {"cache_get": family.cache.get, "get": get, "general": general, "item": _item}
    body = ["source = args[0] if args else None"] if signature.self_like else []
    body.append("own = None")
    for i, label in enumerate(labels):
        body += _compile_label(label, i, signature, env, label is own_label)
    key = "(" + "".join(f"v{i}, " for i in range(len(labels))) + ")"
    source = "\n".join(
        [
            "def resolve(args, kwargs):",
            "    try:",
            *(f"        {line}" for line in body),
            f"        key = {key}",
            "        bundle = cache_get(key)",
            "    except Exception:",
            "        return general(args, kwargs)",
            "    return (bundle if bundle is not None else get(*key)), own",
        ]
    )
    try:
        exec(compile(source, "<bizmetrics resolver>", "exec"), env)
    except Exception:  # compiling refused (an audit hook, say): the general reader does the same work
        _log.internal_error("compiling a label resolver")
        return general
    resolve: Callable[[Args, Kwargs], tuple[B, object]] = env["resolve"]  # type: ignore[assignment]
    resolve.__qualname__ = resolve.__name__ = f"resolve_{name}" if name.isidentifier() else "resolve"
    return resolve
