"""The ``bizmetrics`` logger and its rate limit.

Bad input and internal failures are logged, never raised into application
code.  A hot path that keeps passing the same bad value would otherwise flood
the log, so each kind of message is written at most once per interval, with
the number of repeats it swallowed.
"""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger("bizmetrics")

#: Seconds between two log lines of the same kind.
LOG_INTERVAL = 60.0

# Re-entrant: a log line from a finaliser may interrupt this thread while it holds the lock.
_lock = threading.RLock()
_last: dict[str, tuple[float, int]] = {}


def _limited(level: int, key: str, msg: str, *args: object, exc_info: bool = False) -> None:
    now = time.monotonic()
    with _lock:
        last, suppressed = _last.get(key, (-LOG_INTERVAL * 2, 0))
        if now - last < LOG_INTERVAL:
            _last[key] = (last, suppressed + 1)
            return
        _last[key] = (now, 0)
    if suppressed:
        msg += " (%d similar messages suppressed)"
        args += (suppressed,)
    _emit(level, msg, *args, exc_info=exc_info)


def _emit(level: int, msg: str, *args: object, exc_info: bool = False) -> None:
    # A handler or filter that raises (a broken log sink) must not turn a
    # log line into an exception in the application.
    try:
        logger.log(level, msg, *args, exc_info=exc_info)
    except Exception:
        pass


def warn(key: str, msg: str, *args: object) -> None:
    """Log a rate-limited warning about bad input."""
    _limited(logging.WARNING, key, msg, *args)


def warning(msg: str, *args: object) -> None:
    """Log a warning now (no rate limit): for configuration problems, said once."""
    _emit(logging.WARNING, msg, *args)


def internal_error(where: str) -> None:
    """Log, rate-limited and with the traceback, a failure inside bizmetrics."""
    _limited(
        logging.ERROR,
        "internal:" + where,
        "bizmetrics: recording failed in %s; the application is unaffected",
        where,
        exc_info=True,
    )


def info(msg: str, *args: object) -> None:
    """Log an informational line now (no rate limit): for things said once, that need no action."""
    _emit(logging.INFO, msg, *args)


def debug(msg: str, *args: object) -> None:
    """Log a debug line (cheap when debug logging is off)."""
    if logger.isEnabledFor(logging.DEBUG):
        _emit(logging.DEBUG, msg, *args)


def reset() -> None:
    """Forget the rate-limit state (for tests)."""
    with _lock:
        _last.clear()
