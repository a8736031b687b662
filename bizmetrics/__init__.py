"""Business metrics for multi-tenant SaaS services, on prometheus_client.

Import it and the whole catalogue is on prometheus_client's default registry;
record with the ``record_*`` helpers or the ``instrument_*`` decorators.
"""

from __future__ import annotations

import importlib

from . import _deferred  # noqa: F401  # first: its drain collector must precede every metric of bizmetrics
from ._pricing import load_prices, set_budget, set_prices
from ._server import start_http_server
from ._tenants import OVERFLOW_TENANT, limit_tenants
from ._trace import parse_traceparent, set_exemplar_provider, trace_context
from .context import current_tenant, current_workflow, tenant_context, workflow_context
from .decorators import (
    MISS,
    http_error_type,
    instrument_agent,
    instrument_cache_lookup,
    instrument_connector_operation,
    instrument_db_query,
    instrument_sync_operation,
    instrument_tool,
    instrument_workflow,
    instrument_workflow_step,
)
from .helpers import (
    dec_db_pool_size,
    inc_db_pool_size,
    record_agent_invocation,
    record_api_request,
    record_cache_hit,
    record_cache_miss,
    record_connector_operation,
    record_connector_sync,
    record_db_query,
    record_tool_call,
    record_workflow_execution,
    record_workflow_step,
    report_usage,
    set_db_pool_size,
    track_tenant_latency,
)


def _installed_version() -> str:
    # Built by setuptools-scm from git: e.g. 0.3.0.dev12+g1a2b3c4 between releases.
    try:
        return str(importlib.import_module("bizmetrics._version").version)
    except ImportError:
        pass
    from importlib import metadata  # only here: it is slow to import

    try:
        return metadata.version("bizmetrics")
    except metadata.PackageNotFoundError:
        # A checkout on sys.path, never built.
        return "0+unknown"


__version__ = _installed_version()

__all__ = [
    "MISS",
    "OVERFLOW_TENANT",
    "__version__",
    "current_tenant",
    "current_workflow",
    "dec_db_pool_size",
    "http_error_type",
    "inc_db_pool_size",
    "instrument_agent",
    "instrument_cache_lookup",
    "instrument_connector_operation",
    "instrument_db_query",
    "instrument_sync_operation",
    "instrument_tool",
    "instrument_workflow",
    "instrument_workflow_step",
    "limit_tenants",
    "load_prices",
    "parse_traceparent",
    "record_agent_invocation",
    "record_api_request",
    "record_cache_hit",
    "record_cache_miss",
    "record_connector_operation",
    "record_connector_sync",
    "record_db_query",
    "record_tool_call",
    "record_workflow_execution",
    "record_workflow_step",
    "report_usage",
    "set_budget",
    "set_db_pool_size",
    "set_exemplar_provider",
    "set_prices",
    "start_http_server",
    "tenant_context",
    "trace_context",
    "track_tenant_latency",
    "workflow_context",
]
