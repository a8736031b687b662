"""Batch jobs: push a finished job's metrics to a Prometheus Pushgateway, adding up across runs.

Connector syncs often run as cron jobs that end before Prometheus' next
scrape; Prometheus recommends that such jobs push their metrics to a
Pushgateway when they finish.  Each run is a new process whose counters start
at zero, so pushing them as they are would replace the previous run's numbers
and ``increase()`` would see nothing.  :func:`push_job_metrics` therefore
adds what this process counted since its last push to what the Pushgateway
holds for the job, so the pushed counters really accumulate, run after run.
A push that fails is retried; one that still fails can keep its counts in a
spool directory, and the next run of the job adds them to its own push.
See :doc:`/guides/batch`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, pushadd_to_gateway
from prometheus_client.metrics_core import Metric

from . import _log
from .metrics import CATALOGUE

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs sharing a spool directory are not serialised
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_RETRIES",
    "LAST_DURATION",
    "LAST_RUN_SUCCESS",
    "LAST_SUCCESS",
    "BatchRun",
    "PushError",
    "batch_job",
    "push_job_metrics",
]

#: Unix time of the job's last successful run (pushed only by successful runs).
LAST_SUCCESS = "batch_job_last_success_timestamp_seconds"
#: Duration of the job's last run, in seconds.
LAST_DURATION = "batch_job_last_run_duration_seconds"
#: 1 if the job's last run succeeded, else 0.
LAST_RUN_SUCCESS = "batch_job_last_run_success"

#: Attempts after the first one when a push fails (gateway down, 5xx, timeout).
DEFAULT_RETRIES = 3
#: Seconds before the first retry; each further wait doubles (0.5, 1, 2 s), up to ``MAX_BACKOFF``.
DEFAULT_BACKOFF = 0.5
#: The longest wait between two attempts, in seconds.
MAX_BACKOFF = 30.0

# Sample suffixes that add up across runs; everything else (gauges) is replaced.
_CUMULATIVE = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
# Client errors that a later attempt can cure; any other 4xx refuses the push itself.
_TRANSIENT_4XX = {408, 425, 429}
_SPOOL_FORMAT = 1

_Labels = tuple[tuple[str, str], ...]
_Key = tuple[str, _Labels]
_Slot = _Labels

# What this process pushed last, per job and grouping key (as the spool): a process
# that pushes several times adds only what it counted since its previous push.
_pushed: dict[_Slot, dict[_Key, float]] = {}
_lock = threading.Lock()
# One push at a time per group within the process (the spool's file lock serialises processes).
_slot_locks: dict[_Slot, threading.Lock] = {}


class PushError(Exception):
    """A batch job's metrics could not be pushed (raised only when asked for).

    .. versionadded:: 0.2.0
    """


@dataclass
class BatchRun:
    """One run of a batch job, as :func:`batch_job` saw it; read it after the ``with`` block.

    .. versionadded:: 0.2.0
    """

    job: str
    #: Whether the block finished without an exception (``None`` while it runs).
    success: bool | None = None
    #: Whether the Pushgateway accepted the push (``None`` while the block runs).
    pushed: bool | None = None
    #: How long the block ran, in seconds.
    duration_seconds: float | None = None
    #: Whether the counts of a push that failed were kept in ``spool_dir`` for the next run.
    spooled: bool | None = None


def _le(bound: str) -> str:
    value = float(bound)
    return "+Inf" if value == math.inf else repr(value)


def _key(name: str, labels: Mapping[str, str]) -> _Key:
    # Bucket bounds come back from the Pushgateway as "10" where prometheus_client wrote "10.0".
    return name, tuple(sorted((k, _le(v) if k == "le" else v) for k, v in labels.items()))


def _group(job: str, grouping_key: Mapping[Any, Any] | None) -> dict[str, str]:
    """The labels of the job's group, as text: prometheus_client puts ``str()`` of each value in the URL."""
    return {"job": str(job), **{str(k): str(v) for k, v in (grouping_key or {}).items()}}


@dataclass
class _Local:
    """The catalogue as this process holds it, restricted to one group."""

    families: dict[str, Metric] = field(default_factory=dict)
    #: The label names of each family's own series, by family and sample name.
    labelnames: dict[str, frozenset[str]] = field(default_factory=dict)
    samples: dict[_Key, float] = field(default_factory=dict)
    #: Series left out because a label of the grouping key has another value in them.
    foreign: int = 0


def _local(group: Mapping[str, str]) -> _Local:
    """The catalogue's families (without samples) and the samples that belong in ``group``, ``_created`` left out.

    A series whose label named in the grouping key (``tenant_id``) has another
    value cannot be pushed into this group: the Pushgateway would give it the
    group's value.
    """
    local = _Local()
    for metric in CATALOGUE:
        own = frozenset(getattr(metric, "_labelnames", ()))
        for family in metric.collect():
            local.families[family.name] = Metric(family.name, family.documentation, family.type)
            # Keyed as the Pushgateway's JSON names families: counters with ``_total``.
            for suffix in ("", *_CUMULATIVE.get(family.type, ())):
                local.labelnames[family.name + suffix] = own
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                if any(sample.labels.get(k, v) != v for k, v in group.items()):
                    local.foreign += 1
                    continue
                local.samples[_key(sample.name, sample.labels)] = sample.value
    return local


def _url(gateway: str) -> str:
    return gateway if "://" in gateway else f"http://{gateway}"


def _previous(gateway: str, group: Mapping[str, str], local: _Local, timeout: float) -> dict[_Key, float]:
    """The samples the Pushgateway holds for ``group`` (empty if it holds none), with the families' own labels."""
    with urllib.request.urlopen(f"{_url(gateway).rstrip('/')}/api/v1/metrics", timeout=timeout) as resp:
        body = json.load(resp)
    found: dict[_Key, float] = {}
    for entry in body.get("data", []):
        if {k: v for k, v in entry.get("labels", {}).items() if v} != {k: v for k, v in group.items() if v}:
            continue
        for name, family in entry.items():
            if not isinstance(family, dict) or "metrics" not in family:
                continue
            # The Pushgateway adds the group's labels (and instance) to every series; keep the family's own.
            own = local.labelnames.get(name, frozenset())
            for metric in family["metrics"]:
                labels = {k: v for k, v in metric.get("labels", {}).items() if k in own}
                if family.get("type") == "HISTOGRAM":
                    for le, value in metric.get("buckets", {}).items():
                        found[_key(f"{name}_bucket", {**labels, "le": le})] = float(value)
                    found[_key(f"{name}_count", labels)] = float(metric["count"])
                    found[_key(f"{name}_sum", labels)] = float(metric["sum"])
                elif "value" in metric:
                    found[_key(name, labels)] = float(metric["value"])
    return found


def _by_sample(families: Mapping[str, Metric]) -> dict[str, Metric]:
    """Each sample name a family exposes (``x_total``, ``x_bucket``...), mapped to its family."""
    return {
        family.name + suffix: family for family in families.values() for suffix in _CUMULATIVE.get(family.type, ("",))
    }


class _Snapshot:
    """A collector that yields fixed families: what one push sends."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def _delta(local: _Local, since: Mapping[_Key, float]) -> dict[_Key, float]:
    """What this process counted since its last push, per cumulative sample (a series that went back counts anew)."""
    by_sample = _by_sample(local.families)
    delta = {}
    for key, value in local.samples.items():
        family = by_sample.get(key[0])
        if family is not None and family.type in _CUMULATIVE:
            before = since.get(key, 0.0)
            delta[key] = value - before if value >= before else value
    return delta


def _add(*parts: Mapping[_Key, float]) -> dict[_Key, float]:
    total: dict[_Key, float] = {}
    for part in parts:
        for key, value in part.items():
            total[key] = total.get(key, 0.0) + value
    return total


def _merge(local: _Local, delta: Mapping[_Key, float], previous: Mapping[_Key, float]) -> dict[_Key, float]:
    """The samples to push: the Pushgateway's plus ``delta`` for counters and histograms, gauges as they are now."""
    by_sample = _by_sample(local.families)
    merged = {key: value for key, value in previous.items() if key[0] in by_sample}
    for key, value in local.samples.items():
        family = by_sample.get(key[0])
        if family is not None and family.type not in _CUMULATIVE:
            merged[key] = value
    for key, value in delta.items():  # every counter and histogram sample of this process, and the spool's
        if key[0] in by_sample:
            merged[key] = previous.get(key, 0.0) + value
    return merged


def _families(local: _Local, samples: Mapping[_Key, float]) -> list[Metric]:
    by_sample = _by_sample(local.families)
    out = {name: Metric(f.name, f.documentation, f.type) for name, f in local.families.items()}
    for (name, labels), value in sorted(samples.items()):
        if not math.isnan(value):
            out[by_sample[name].name].add_sample(name, dict(labels), value)
    return [family for family in out.values() if family.samples]


def _gauge(name: str, documentation: str, value: float) -> Metric:
    metric = Metric(name, documentation, "gauge")
    metric.add_sample(name, {}, value)
    return metric


def _registry(
    local: _Local,
    samples: Mapping[_Key, float],
    success: bool,
    duration_seconds: float | None,
    last_success: float | None,
) -> CollectorRegistry:
    """What one push sends: ``samples`` and the run gauges."""
    pushed = _families(local, samples)
    pushed.append(_gauge(LAST_RUN_SUCCESS, "1 if the job's last run succeeded, else 0", 1 if success else 0))
    if duration_seconds is not None:
        pushed.append(_gauge(LAST_DURATION, "Duration of the job's last run in seconds", duration_seconds))
    if last_success is not None:
        pushed.append(_gauge(LAST_SUCCESS, "Unix time of the job's last successful run", last_success))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(pushed))
    return registry


# --- The spool: counts of failed pushes, kept for the next run -------------------------------------


@dataclass
class _Spooled:
    """What a spool file holds for one job and grouping key."""

    #: Counts no push has carried yet: always added to the next push.
    unsent: dict[_Key, float] = field(default_factory=dict)
    #: Counts carried by a push whose answer never came: it may have landed.
    uncertain: dict[_Key, float] = field(default_factory=dict)
    #: The samples the Pushgateway holds if that push landed (then ``uncertain`` is there already).
    expect: dict[_Key, float] = field(default_factory=dict)
    #: Unix time of a successful run whose push failed.
    last_success: float | None = None

    def carried(self, previous: Mapping[_Key, float]) -> dict[_Key, float]:
        """The counts to add to what the Pushgateway holds now (``previous``)."""
        landed = bool(self.expect) and all(previous.get(k) == v for k, v in self.expect.items())
        if landed:
            _log.debug("bizmetrics: a push whose answer was lost had landed; its counts are not added again")
        return _add(self.unsent, {} if landed else self.uncertain)

    def empty(self) -> bool:
        return not any(_add(self.unsent, self.uncertain).values()) and self.last_success is None


def _encode(samples: Mapping[_Key, float]) -> list[Any]:
    return [[name, [list(pair) for pair in labels], value] for (name, labels), value in sorted(samples.items())]


def _decode(entries: object, counts: bool) -> dict[_Key, float]:
    """Samples read back from a spool file; ``ValueError`` for anything this module did not write."""
    if not isinstance(entries, list):
        raise ValueError("not a list of samples")
    out: dict[_Key, float] = {}
    for entry in entries:
        name, labels, value = entry
        pairs = tuple((k, v) for k, v in labels)
        ok = isinstance(name, str) and all(isinstance(x, str) for pair in pairs for x in pair)
        if not ok or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"bad sample {entry!r}")
        if counts and value < 0:
            raise ValueError(f"negative count {entry!r}")
        out[(name, tuple(sorted(pairs)))] = float(value)
    return out


class _Spool:
    """The spool file of one job and grouping key in ``directory``, and the lock that serialises its runs."""

    def __init__(self, directory: str | os.PathLike[str], group: Mapping[str, str]) -> None:
        self.directory = Path(directory)
        self.group = dict(group)
        identity = json.dumps(sorted(group.items()), ensure_ascii=False).encode()
        readable = re.sub(r"[^A-Za-z0-9_.-]", "_", group["job"])[:40]
        self.path = self.directory / f"{readable}-{hashlib.sha256(identity).hexdigest()[:24]}.json"
        self.usable = True

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the group's lock file, so runs of one job sharing the directory push one at a time."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            lock = open(self.path.with_suffix(".lock"), "a+b")
        except OSError as exc:
            _log.warning("bizmetrics: spool directory %s is not usable (%s); pushing without it", self.directory, exc)
            self.usable = False
            yield
            return
        with lock:
            if fcntl is not None:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            yield  # closing the file releases the lock

    def read(self) -> _Spooled:
        """What the spool holds; a file that cannot be read is set aside with a warning."""
        if not self.usable:
            return _Spooled()
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return _Spooled()
        except (OSError, ValueError) as exc:
            return self._set_aside(exc)
        try:
            data = json.loads(text)
            if data.get("format") != _SPOOL_FORMAT or data.get("group") != self.group:
                raise ValueError("not this job's spool")
            last = data.get("last_success")
            if last is not None and (isinstance(last, bool) or not isinstance(last, (int, float))):
                raise ValueError(f"bad last_success {last!r}")
            return _Spooled(
                _decode(data["unsent"], True),
                _decode(data["uncertain"], True),
                _decode(data["expect"], False),
                None if last is None else float(last),
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return self._set_aside(exc)

    def _set_aside(self, problem: Exception) -> _Spooled:
        aside = self.path.with_name(f"{self.path.name}.unreadable-{time.time_ns()}")
        try:
            os.replace(self.path, aside)
        except OSError:
            aside = self.path
        _log.warning(
            "bizmetrics: spool file %s cannot be read (%s); set aside as %s, its counts are not pushed",
            self.path,
            problem,
            aside.name,
        )
        return _Spooled()

    def write(self, spooled: _Spooled) -> bool:
        """Replace the spool file at once (a run killed while writing leaves the previous file whole)."""
        if not self.usable:
            return False
        if spooled.empty():
            return self.remove()
        data = {
            "format": _SPOOL_FORMAT,
            "group": self.group,
            "unsent": _encode(spooled.unsent),
            "uncertain": _encode(spooled.uncertain),
            "expect": _encode(spooled.expect),
            "last_success": spooled.last_success,
        }
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(temporary, "w", encoding="utf-8") as out:
                json.dump(data, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            _log.warning("bizmetrics: cannot write the spool file %s (%s)", self.path, exc)
            try:
                temporary.unlink()
            except OSError:
                pass
            return False
        return True

    def remove(self) -> bool:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            _log.warning("bizmetrics: cannot remove the spool file %s (%s)", self.path, exc)
            return False
        return True


# --- Pushing ---------------------------------------------------------------------------------------


def _transient(exc: BaseException) -> bool:
    """Whether another attempt may succeed: not when the Pushgateway refused the push itself (a 4xx)."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in _TRANSIENT_4XX
    return True


def _setting(name: str, value: object, default: float, integer: bool) -> float:
    """``retries`` or ``backoff`` as given, or the default (with a warning) when it is not a number >= 0."""
    if isinstance(value, int if integer else (int, float)) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number) and number >= 0:
            return number
    _log.warn("batch:" + name, "bizmetrics: %s=%r is not a number >= 0; using %r", name, value, default)
    return default


@dataclass
class _Outcome:
    pushed: bool = False
    spooled: bool = False


def _slot_lock(slot: _Slot) -> threading.Lock:
    with _lock:
        return _slot_locks.setdefault(slot, threading.Lock())


def _push(
    gateway: str,
    job: str,
    success: bool,
    duration_seconds: float | None,
    grouping_key: Mapping[Any, Any] | None,
    timeout: float,
    retries: object,
    backoff: object,
    spool_dir: str | os.PathLike[str] | None,
) -> _Outcome:
    outcome = _Outcome()
    try:
        attempts = 1 + int(_setting("retries", retries, DEFAULT_RETRIES, True))
        wait = _setting("backoff", backoff, DEFAULT_BACKOFF, False)
        group = _group(job, grouping_key)
        slot = tuple(sorted(group.items()))
        spool = None if spool_dir is None else _Spool(spool_dir, group)
        locked: AbstractContextManager[None] = nullcontext() if spool is None else spool.locked()
        with _slot_lock(slot), locked:
            _push_locked(outcome, gateway, group, slot, spool, success, duration_seconds, timeout, attempts, wait)
    except Exception:
        _log.logger.error("bizmetrics: pushing job %r to %s failed", job, gateway, exc_info=True)
    return outcome


def _push_locked(
    outcome: _Outcome,
    gateway: str,
    group: dict[str, str],
    slot: _Slot,
    spool: _Spool | None,
    success: bool,
    duration_seconds: float | None,
    timeout: float,
    attempts: int,
    wait: float,
) -> None:
    """Read, add up and push, with retries; on failure keep the counts in the spool. Holds the group's locks."""
    spooled = spool.read() if spool is not None else _Spooled()
    local = _local(group)
    if local.foreign:
        _log.warn(
            "batch:foreign",
            "bizmetrics: %d series of job %r have another value for a label of the grouping key %r; "
            "they are not pushed into this group",
            local.foreign,
            group["job"],
            {k: v for k, v in group.items() if k != "job"},
        )
    delta = _delta(local, _pushed.get(slot, {}))
    now = time.time()
    last_success = now if success else spooled.last_success
    carried: dict[_Key, float] | None = None  # known once the Pushgateway's samples were read
    expect: dict[_Key, float] = {}
    registry: CollectorRegistry | None = None
    error: BaseException | None = None
    for attempt in range(attempts):
        if attempt:
            pause = min(wait * 2 ** (attempt - 1), MAX_BACKOFF)
            _log.warning(
                "bizmetrics: pushing job %r to %s failed (%s); attempt %d of %d in %.1f s",
                group["job"],
                gateway,
                error,
                attempt + 1,
                attempts,
                pause,
            )
            time.sleep(pause)
        try:
            if registry is None:
                previous = _previous(gateway, group, local, timeout)
                carried = spooled.carried(previous)
                total = _add(delta, carried)
                samples = _merge(local, total, previous)
                expect = {key: samples[key] for key, value in total.items() if value and key in samples}
                # Should this run die after the push lands, the next one must find the spool's counts in it.
                if spool is not None and not spooled.empty():
                    if not spool.write(_Spooled(uncertain=carried, expect=expect, last_success=last_success)):
                        raise OSError(f"the spool file {spool.path} cannot be updated before the push")
                registry = _registry(local, samples, success, duration_seconds, last_success)
            # The same absolute values on every attempt: a push that landed unseen is not added twice.
            job_key = {k: v for k, v in group.items() if k != "job"}
            pushadd_to_gateway(gateway, job=group["job"], registry=registry, grouping_key=job_key, timeout=timeout)
        except Exception as exc:
            error = exc
            if isinstance(exc, urllib.error.HTTPError):
                exc.close()
            if not _transient(exc):
                break
            continue
        _pushed[slot] = local.samples
        outcome.pushed = True
        if spool is not None:
            spool.remove()
        return
    kept = ""
    if spool is not None:
        if carried is None:  # the Pushgateway was never read: nothing of this run was sent
            keep = _Spooled(_add(spooled.unsent, delta), spooled.uncertain, spooled.expect, last_success)
        else:  # a push was sent and may have landed
            keep = _Spooled(uncertain=_add(delta, carried), expect=expect, last_success=last_success)
        if spool.write(keep):
            _pushed[slot] = local.samples
            outcome.spooled = True
            kept = f"; its counts are kept in {spool.path} for the next push"
    _log.logger.error("bizmetrics: pushing job %r to %s failed%s", group["job"], gateway, kept, exc_info=error)


def push_job_metrics(
    gateway: str,
    job: str,
    *,
    success: bool = True,
    duration_seconds: float | None = None,
    grouping_key: Mapping[str, object] | None = None,
    timeout: float = 10.0,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    spool_dir: str | os.PathLike[str] | None = None,
) -> bool:
    """Push the catalogue and the job's run gauges to ``gateway`` under ``job`` and ``grouping_key``.

    Counters and histograms are added to what the Pushgateway already holds
    for this group (what this process counted since its last push, plus the
    previous runs'), so they accumulate across runs and ``increase()`` over
    several runs is what they counted.  ``batch_job_last_run_success`` and
    ``batch_job_last_run_duration_seconds`` describe this run;
    ``batch_job_last_success_timestamp_seconds`` is pushed only on success,
    so a failed run keeps the previous good run's.  A failed push is tried
    again ``retries`` times, after ``backoff`` seconds, then twice as long each
    time; if it still fails and ``spool_dir`` is given, its counts are kept
    there and added to the next push of the same job and grouping key.

    :param gateway: the Pushgateway, ``host:port`` or a URL.
    :param job: the ``job`` label: the batch job's name.
    :param success: whether the run succeeded.
    :param duration_seconds: how long the run took.
    :param grouping_key: more labels that tell this job's groups apart, such as ``instance``; values become text.
    :param timeout: seconds to wait for each HTTP request.
    :param retries: attempts after the first when the push fails (gateway down, 5xx, timeout).
    :param backoff: seconds before the first retry; each next wait doubles (at most ``MAX_BACKOFF``).
    :param spool_dir: a directory where the counts of a push that failed are kept for the next run.
    :returns: whether the push succeeded; a failure is logged, never raised.

    .. versionadded:: 0.2.0
    .. versionchanged:: 0.3.0 ``retries``, ``backoff`` and ``spool_dir``.
    """
    return _push(gateway, job, success, duration_seconds, grouping_key, timeout, retries, backoff, spool_dir).pushed


@contextmanager
def batch_job(
    gateway: str,
    job: str,
    *,
    grouping_key: Mapping[str, object] | None = None,
    timeout: float = 10.0,
    raise_on_push_failure: bool = False,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    spool_dir: str | os.PathLike[str] | None = None,
) -> Iterator[BatchRun]:
    """Time the block as one run of batch job ``job`` and push its metrics when it ends.

    The run succeeds if the block finishes without an exception; the
    exception, if any, propagates unchanged after the push.  The yielded
    :class:`BatchRun` tells, after the block, whether the push worked, and
    whether the counts of a failed one were kept in ``spool_dir``.

    :param gateway: the Pushgateway, ``host:port`` or a URL.
    :param job: the ``job`` label: the batch job's name.
    :param grouping_key: more labels that tell this job's groups apart, such as ``instance``; values become text.
    :param timeout: seconds to wait for each HTTP request.
    :param raise_on_push_failure: raise :class:`PushError` when the push fails after a block that succeeded.
    :param retries: attempts after the first when the push fails (gateway down, 5xx, timeout).
    :param backoff: seconds before the first retry; each next wait doubles (at most ``MAX_BACKOFF``).
    :param spool_dir: a directory where the counts of a push that failed are kept for the next run.

    .. versionadded:: 0.2.0
    .. versionchanged:: 0.3.0 ``retries``, ``backoff``, ``spool_dir`` and ``BatchRun.spooled``.
    """
    run = BatchRun(job)
    start = time.perf_counter()
    success = False
    try:
        yield run
        success = True
    finally:
        run.success = success
        run.duration_seconds = time.perf_counter() - start
        outcome = _push(gateway, job, success, run.duration_seconds, grouping_key, timeout, retries, backoff, spool_dir)
        run.pushed, run.spooled = outcome.pushed, outcome.spooled
    if raise_on_push_failure and not run.pushed:
        raise PushError(f"pushing batch job {job!r} to {gateway} failed; see the bizmetrics logger")
