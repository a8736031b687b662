"""The tenant cardinality guard: at most N distinct ``tenant_id`` values across the catalogue.

Admission is first come: the first ``max_tenants`` distinct tenants keep
their label; any further tenant is recorded as ``__overflow__`` with every
other label kept, so totals and error ratios stay exact.  ``default_tenant``,
``__overflow__`` and pinned tenants are always admitted and not counted.

Only the creation of a label bundle asks for admission; a call whose tenant
is already admitted takes the cached path and pays nothing.  In
multiprocess mode the admitted tenants are shared by every worker through a
file (with an exclusive lock) in ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Gauge

from . import _log, _settings
from ._values import DEFAULT_TENANT, label
from .multiprocess import ENV as MULTIPROC_ENV
from .multiprocess import enabled as multiprocess_enabled

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: admission stays per process
    fcntl = None  # type: ignore[assignment]

#: The ``tenant_id`` of records whose tenant was not admitted.
OVERFLOW_TENANT = "__overflow__"

#: Name of the file in ``PROMETHEUS_MULTIPROC_DIR`` that lists the admitted tenants, one a line.
ADMISSION_FILE = "bizmetrics_tenants.txt"


class _Unrecorded:
    """Stands in for a self-metric that could not be created: records nothing."""

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass


def _self_metric(cls: type[Counter] | type[Gauge], name: str, documentation: str, **kwargs: Any) -> Any:
    try:
        return cls(name, documentation, **kwargs)
    except ValueError:  # a reload of bizmetrics: keep the one registered
        from prometheus_client import REGISTRY

        return REGISTRY._names_to_collectors[name]
    except Exception:
        # A labelless metric creates its value at once; in multiprocess mode
        # that is a file, and a missing directory must not stop the import.
        _log.internal_error(f"creating {name}")
        return _Unrecorded()


OVERFLOW_RECORDS = _self_metric(
    Counter,
    "bizmetrics_tenant_overflow_total",
    "Records whose tenant was over the tenant cap and was recorded as tenant_id=__overflow__",
)
TENANTS_ADMITTED = _self_metric(
    Gauge,
    "bizmetrics_tenants_admitted",
    "Distinct tenants admitted with their own tenant_id label (default_tenant and pinned tenants not counted)",
    multiprocess_mode="max",
)


class Admission:
    """Which tenants keep their own label."""

    def __init__(self, max_tenants: int | None, pinned: Iterable[object] = ()) -> None:
        self._lock = threading.Lock()
        self.configure(max_tenants, pinned)
        #: Tenants admitted (or, with no cap, seen): read without the lock on the hot path.
        self.admitted: set[str] = set()
        self._warned = False
        self._file_offset = 0

    def configure(self, max_tenants: int | None, pinned: Iterable[object]) -> None:
        """Change the cap and the pinned tenants; tenants admitted so far stay admitted."""
        with self._lock:
            self.max_tenants: int | None = max_tenants
            self.always = frozenset({DEFAULT_TENANT, OVERFLOW_TENANT, *(label(p, "tenant_id") for p in pinned)})
            self._full = False

    def admit(self, tenant: str) -> str:
        """Return ``tenant`` if it keeps its label, else ``OVERFLOW_TENANT`` (counting the folded record)."""
        if tenant in self.admitted or tenant in self.always:
            return tenant
        # Once full, a flood of new tenants (forged headers) folds without taking the lock.
        admitted = False if self._full else self._admit_with_lock(tenant)
        if admitted:
            return tenant
        try:
            OVERFLOW_RECORDS.inc()
        except Exception:
            _log.internal_error("counting a tenant overflow")
        return OVERFLOW_TENANT

    def _admit_with_lock(self, tenant: str) -> bool:
        with self._lock:
            return self._admit_locked(tenant)

    def _admit_locked(self, tenant: str) -> bool:
        if tenant in self.admitted:
            return True
        cap = self.max_tenants
        directory = os.environ.get(MULTIPROC_ENV) if multiprocess_enabled() else None
        if directory and fcntl is not None and cap is not None:
            admitted = self._admit_shared(tenant, cap, os.path.join(directory, ADMISSION_FILE))
        elif cap is None or len(self.admitted) < cap:
            self.admitted.add(tenant)
            admitted = True
        else:
            admitted = False
            self._full = True
        if admitted:
            try:
                TENANTS_ADMITTED.set(len(self.admitted))
            except Exception:
                _log.internal_error("counting admitted tenants")
        elif not self._warned:
            self._warned = True
            _log.warn(
                "tenant-cap",
                "bizmetrics: the tenant cap (%s, BIZMETRICS_MAX_TENANTS or limit_tenants) is reached; further "
                "tenants are recorded as tenant_id=%r, other labels kept",
                cap,
                OVERFLOW_TENANT,
            )
        return admitted

    def _admit_shared(self, tenant: str, cap: int, path: str) -> bool:
        try:
            with open(path, "a+", encoding="utf-8") as file:
                fcntl.flock(file, fcntl.LOCK_EX)
                try:
                    file.seek(self._file_offset)
                    added = file.read()
                    self._file_offset = file.tell()
                    # split("\n"), not splitlines(): a tenant may hold U+2028 and its kin.
                    self.admitted.update(name for name in added.split("\n") if name)
                    if tenant in self.admitted:
                        return True
                    if len(self.admitted) >= cap:
                        self._full = True
                        return False
                    file.write(tenant + "\n")
                    file.flush()
                    self._file_offset = file.tell()
                    self.admitted.add(tenant)
                    return True
                finally:
                    fcntl.flock(file, fcntl.LOCK_UN)
        except OSError:
            # No shared file (a missing directory): admit per process rather than lose the record.
            _log.internal_error("sharing tenant admission")
            if len(self.admitted) < cap:
                self.admitted.add(tenant)
                return True
            return False


ADMISSION = Admission(_settings.max_tenants())


def limit_tenants(max_tenants: int | None, *, pinned: Iterable[object] = ()) -> None:
    """Cap the distinct ``tenant_id`` values across the catalogue at ``max_tenants``.

    From then on, tenants beyond the first ``max_tenants`` (``default_tenant``
    and ``pinned`` ones are always admitted and not counted) are recorded as
    ``tenant_id="__overflow__"`` with all their other labels kept.  ``None``
    disables the cap.  The default is ``BIZMETRICS_MAX_TENANTS``, else 2000.

    .. versionadded:: 0.2.0
    """
    if max_tenants is not None and (not isinstance(max_tenants, int) or isinstance(max_tenants, bool)):
        raise TypeError(f"max_tenants must be None or an int, not {max_tenants!r}")
    if max_tenants is not None and max_tenants < 0:
        raise ValueError(f"max_tenants must be None or a count >= 0, not {max_tenants!r}")
    if isinstance(pinned, (str, bytes)):
        pinned = (pinned,)  # one tenant, not its letters
    ADMISSION.configure(max_tenants, pinned)
