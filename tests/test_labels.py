"""Label rules: each decorator's compiled resolver agrees with the general rule, for every input.

A tenant from a parameter default or a partial, and a connector type from a mapping config, are the call's.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any, ClassVar

from hypothesis import given
from hypothesis import strategies as st
from support.registry import unique, value

from bizmetrics import (
    instrument_connector_operation,
    instrument_sync_operation,
    instrument_workflow,
)
from bizmetrics._labels import Label, Signature, resolver
from bizmetrics.context import AGENT, TENANT, WORKFLOW


class Keys:
    """A family whose bundles are their label tuples, never cached: ``resolve`` returns the key it read."""

    cache: ClassVar[dict[Any, Any]] = {}

    def get(self, *raw: Any) -> tuple[Any, ...]:
        return raw


class Raising:
    """``self`` whose every attribute raises, as a broken property would."""

    def __getattr__(self, name: str) -> Any:
        # Protocol look-ups (hypothesis asks for ``_repr_pretty_`` when it prints an example) are not label
        # reads: they must get AttributeError, or hypothesis fails the test as flaky.
        if name.startswith("_"):
            raise AttributeError(name)
        raise RuntimeError(name)


def f_positional(self, tenant_id, workflow_id=None, model="m0"): ...
def f_keyword_only(self, *, tenant_id="fixed", agent_id=None): ...
def f_kwargs(self, **kwargs): ...
def f_no_self(tenant_id=None, model=None): ...
def f_varargs(*args, **kwargs): ...


FUNCTIONS = [
    f_positional,
    f_keyword_only,
    f_kwargs,
    f_no_self,
    f_varargs,
    functools.partial(f_positional, tenant_id="bound"),
    functools.partial(f_no_self, model="gpt"),
]

NAMES = ["tenant_id", "workflow_id", "agent_id", "model", "connector_type"]
values = st.one_of(st.none(), st.sampled_from(["a", "", "b"]), st.integers(-2, 2), st.just([1]))
configs = st.one_of(
    st.none(),
    st.builds(SimpleNamespace, id=values),
    st.fixed_dictionaries({}, optional={"id": values}),
    st.just(Raising()),
)
selves = st.one_of(
    st.none(),
    st.just(Raising()),
    st.builds(
        lambda attrs: SimpleNamespace(**attrs),
        st.fixed_dictionaries({}, optional={n: values for n in NAMES} | {"config": configs}),
    ),
)
labels = st.builds(
    Label,
    st.sampled_from(NAMES),
    given=st.one_of(st.none(), st.sampled_from(["g", "h"])),
    argument=st.booleans(),
    paths=st.sampled_from([(), ("tenant_id",), ("config.id", "config[id]", "connector_type"), ("model",)]),
    context=st.sampled_from([None, TENANT, WORKFLOW, AGENT]),
    fallback=st.sampled_from([None, "unknown", "", "fn"]),
)


@given(
    rules=st.lists(labels, min_size=1, max_size=4),
    source=selves,
    rest=st.lists(values, max_size=4),
    kwargs=st.dictionaries(st.sampled_from(NAMES), values, max_size=3),
    current=st.tuples(values, values, values),
    own=st.sampled_from([None, *NAMES]),
)
def test_compiled_resolver_agrees_with_the_general_rule(rules, source, rest, kwargs, current, own):
    """Any signature, labels, ``self``, arguments and context: the compiled reader reads what the rules say.

    It also returns the value the call itself gives the ``own`` label (rules 1 to 3, never the context).
    Each example is tried on every signature, as a method and not, with every number of positional arguments.
    """
    own_label = next((label for label in rules if label.name == own), None)
    raising = isinstance(source, Raising) or isinstance(getattr(source, "config", None), Raising)
    tokens = [var.set(v) for var, v in zip((TENANT, WORKFLOW, AGENT), current, strict=True)]
    try:
        for func in FUNCTIONS:
            for self_like in (True, False):
                signature = Signature(func, self_like)
                resolve = resolver(Keys(), rules, signature, "f", own=own)
                general = resolve.__globals__["general"]
                fell_back = []
                resolve.__globals__["general"] = lambda *a, general=general, fell_back=fell_back: (
                    fell_back.append(1) or general(*a)
                )
                for n in range(len(rest) + 1):
                    fell_back.clear()
                    args = (source, *rest[:n]) if self_like else tuple(rest[:n])
                    expected = tuple(label.read(signature, args, kwargs) for label in rules)
                    given = None if own_label is None else own_label.own(signature, args, kwargs)
                    assert resolve(args, dict(kwargs)) == (expected, given)
                    try:
                        hash(expected)
                        unhashable = False
                    except TypeError:
                        unhashable = True
                    # The general rule is only the way out of a raising attribute or an unhashable value.
                    assert not fell_back or raising or unhashable
    finally:
        for var, token in zip((TENANT, WORKFLOW, AGENT), tokens, strict=True):
            var.reset(token)


def test_the_rules_in_order():
    """Given, then argument, then ``self``, then context, then fallback."""
    label = Label("tenant_id", paths=("tenant_id",), context=TENANT, fallback="default")
    signature = Signature(f_positional, True)
    source = SimpleNamespace(tenant_id="from_self")
    assert label.read(signature, (source, "from_arg"), {}) == "from_arg"
    assert label.read(signature, (source, None), {"tenant_id": "from_kw"}) == "from_kw"
    assert label.read(signature, (source, None), {}) == "from_self"
    token = TENANT.set("from_context")
    try:
        assert label.read(signature, (None, None), {}) == "from_context"
    finally:
        TENANT.reset(token)
    assert label.read(signature, (None, None), {}) == "default"
    assert Label("tenant_id", given="given", paths=("tenant_id",)).read(signature, (source, "x"), {}) == "given"


def test_own_is_what_the_call_gives_never_the_context_or_the_fallback():
    """The own tenant comes from the argument or ``self``; from the context or the fallback it is ``None``."""
    label = Label("tenant_id", paths=("tenant_id",), context=TENANT, fallback="default")
    signature = Signature(f_positional, True)
    for resolve in (resolver(Keys(), [label], signature, own="tenant_id"),):
        token = TENANT.set("from_context")
        try:
            assert resolve((SimpleNamespace(tenant_id="from_self"), None), {}) == (("from_self",), "from_self")
            assert resolve((None, "from_arg"), {}) == (("from_arg",), "from_arg")
            assert resolve((None, None), {}) == (("from_context",), None)
        finally:
            TENANT.reset(token)
        assert resolve((None, None), {}) == (("default",), None)


def test_connector_type_paths():
    """``self.config.id``, else ``self.config["id"]``, else ``self.connector_type``."""
    label = Label("connector_type", argument=False, paths=("config.id", "config[id]", "connector_type"))
    signature = Signature(f_kwargs, True)
    resolve = resolver(Keys(), [label], signature)
    for source, expected in [
        (SimpleNamespace(config=SimpleNamespace(id="wp")), "wp"),
        (SimpleNamespace(config={"id": "hubspot"}), "hubspot"),
        (SimpleNamespace(config=None, connector_type="slack"), "slack"),
        (Raising(), None),
    ]:
        assert label.read(signature, (source,), {}) == expected
        assert resolve((source,), {}) == ((expected,), None)


def test_a_tenant_from_a_parameter_default_or_a_partial_is_the_calls_tenant():
    """def f(tenant_id="acme") and functools.partial(f, tenant_id=...) give the call's tenant."""
    t = unique()

    def sync(tenant_id: str = f"{t}_default") -> None:
        pass

    def positional(tenant_id: str, page: int) -> None:
        pass

    instrument_connector_operation("default", connector_type=t)(sync)()
    instrument_connector_operation("kw", connector_type=t)(functools.partial(sync, tenant_id=f"{t}_kw"))()
    instrument_connector_operation("pos", connector_type=t)(functools.partial(positional, f"{t}_pos"))(1)
    instrument_workflow(f"{t}_wf")(sync)()
    for op, tenant in (("default", "default"), ("kw", "kw"), ("pos", "pos")):
        assert (
            value(
                "connector_operations_total",
                connector_type=t,
                operation=op,
                status="success",
                tenant_id=f"{t}_{tenant}",
            )
            == 1
        ), op
    assert value("workflow_executions_total", workflow_id=f"{t}_wf", status="success", tenant_id=f"{t}_default") == 1


def test_a_mapping_config_gives_the_connector_type():
    """self.config may be a mapping: self.config["id"] is the connector type."""
    t = unique()

    class Connector:
        def __init__(self) -> None:
            self.config = {"id": t}
            self.tenant_id = "acme"

        @instrument_connector_operation
        def fetch(self) -> int:
            return 1

        @instrument_sync_operation("rows")
        def rows(self) -> list[int]:
            return [1, 2, 3]

    Connector().fetch()
    Connector().rows()
    assert (
        value("connector_operations_total", connector_type=t, operation="fetch", status="success", tenant_id="acme")
        == 1
    )
    assert value("connector_sync_records_total", connector_type=t, resource_type="rows", tenant_id="acme") == 3
