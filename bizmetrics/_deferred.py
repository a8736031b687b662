"""Records deferred by garbage-collector finalisers (a placeholder the reliability work replaces)."""

from __future__ import annotations


def drain() -> None:
    """Drain records deferred by finalisers (filled by the reliability work)."""
