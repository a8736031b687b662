"""Per-request context: the current tenant and the current workflow.

Both live in ``contextvars``, so each thread and each asyncio task sees its
own value, and tasks inherit the value that was current when they were
created.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from ._values import DEFAULT_TENANT, UNKNOWN

_TENANT: ContextVar[object] = ContextVar("bizmetrics_tenant", default=None)
_WORKFLOW: ContextVar[object] = ContextVar("bizmetrics_workflow", default=None)


@contextmanager
def tenant_context(tenant_id: object) -> Iterator[None]:
    """Make ``tenant_id`` the tenant of every metric recorded inside the block.

    An explicit ``tenant_id`` argument or ``self.tenant_id`` still wins.

    .. versionadded:: 0.1.0
    """
    token = _TENANT.set(tenant_id)
    try:
        yield
    finally:
        _TENANT.reset(token)


@contextmanager
def workflow_context(workflow_id: object) -> Iterator[None]:
    """Make ``workflow_id`` the workflow of every step recorded inside the block.

    ``instrument_workflow`` sets it for the body of the workflow it wraps.

    .. versionadded:: 0.1.0
    """
    token = _WORKFLOW.set(workflow_id)
    try:
        yield
    finally:
        _WORKFLOW.reset(token)


def current_tenant() -> object:
    """Return the tenant set by the innermost ``tenant_context``, or ``None``."""
    return _TENANT.get()


def current_workflow() -> object:
    """Return the workflow set by the innermost ``workflow_context``, or ``None``."""
    return _WORKFLOW.get()


def tenant_or_current(tenant_id: object) -> object:
    """Return ``tenant_id``, else the ``tenant_context`` tenant, else ``default_tenant``."""
    if tenant_id is None:
        tenant_id = _TENANT.get()
        if tenant_id is None:
            return DEFAULT_TENANT
    return tenant_id


def workflow_or_current(workflow_id: object) -> object:
    """Return ``workflow_id``, else the ``workflow_context`` workflow, else ``unknown``."""
    if workflow_id is None:
        workflow_id = _WORKFLOW.get()
        if workflow_id is None:
            return UNKNOWN
    return workflow_id
