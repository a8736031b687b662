"""The bizmetrics logger: a broken log handler never reaches the application."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from support.registry import unique

import bizmetrics
from bizmetrics import (
    _log,
    instrument_connector_operation,
    metrics,
)


class _BrokenSink(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise OSError("log sink is down")


@pytest.mark.usefixtures("http_status_classes")
def test_a_raising_log_handler_never_reaches_the_application(monkeypatch):
    """A logging handler that raises: decorators and helpers with bad input and broken recording still return."""
    logger = logging.getLogger("bizmetrics")
    handler = _BrokenSink()
    logger.addHandler(handler)
    try:
        _log.reset()
        t = unique()
        bizmetrics.record_connector_operation(None, "\n", float("nan"), True, t)
        bizmetrics.record_api_request("BREW", "/x", 999, -1, t)

        @instrument_connector_operation("op")
        def op(tenant_id: Any) -> str:
            return "ok"

        assert op(None) == "ok"
        assert op(["unhashable"]) == "ok"

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("broken")

        monkeypatch.setattr(metrics.CONNECTOR_OPERATIONS, "labels", broken)
        from bizmetrics import _cache

        _cache.invalidate_all()
        assert op(unique()) == "ok"
        bizmetrics.record_connector_operation("ct", "op", 1, True, unique())
    finally:
        logger.removeHandler(handler)
