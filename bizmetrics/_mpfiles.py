"""The files of multiprocess mode: each worker's, read and merged, and the archive of dead workers.

prometheus_client has every worker write ``{kind}_{pid}.db`` and every scrape
read every file any worker ever wrote: with gunicorn recycling its workers,
thousands of dead workers' files make each scrape slower while its output
stays the same.  bizmetrics names a worker's files by its *identity*, pid
and process start time (``counter_4242-987654.db``), and merges the files of
workers that are gone into one archive, ``bizmetrics-archive.json``:

- a file is dead when no process has its pid with its start time (a zombie is
  dead): a new process that reuses the pid has another start time, writes
  other files, and never has its data merged while it runs;
- a compaction holds an exclusive ``flock`` on ``bizmetrics.lock`` and every
  scrape a shared one, so no scrape sees half a compaction;
- the archive is written to a temporary file and renamed over the old one:
  the rename is the commit.  The archive lists the files it absorbed; they
  are deleted after the rename, skipped by every reader until then, and
  deleted by the next compaction if a ``kill -9`` came first.  A compaction
  killed before its rename leaves the old archive and every file in place.

What a dead worker's file holds is merged by its kind as the scrape merges
it: counters, histograms, summaries and ``sum`` gauges add up, ``min`` and
``max`` gauges keep their extreme, ``mostrecent`` the latest, ``all`` one
series per (old) pid; ``live*`` gauges of a dead worker are dropped, as
``mark_process_dead`` drops them.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

ARCHIVE = "bizmetrics-archive.json"
LOCK = "bizmetrics.lock"
#: A file named by a worker's identity: kind, pid, start time.
OWN_FILE = re.compile(r"(counter|histogram|summary|gauge_[a-z]+)_(\d+)-(\d+)\.db\Z")
#: A worker's exemplars (``_mpworker``).
EXEMPLAR_FILE = re.compile(r"(exemplars)_(\d+)-(\d+)\.json\Z")
_ADDED = frozenset(("counter", "histogram", "summary", "gauge_sum", "gauge_livesum"))
_PER_PID = frozenset(("gauge_all", "gauge_liveall"))

#: ``(metric_name, kind, sample_name, labels, pid)``, ``pid`` only for ``all`` gauges.
Key = tuple[str, str, str, tuple[tuple[str, str], ...], str | None]


def start_time(pid: int | str) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), or ``None`` if there is none alive.

    A zombie (killed, not yet reaped) counts as gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return None
    if not fields or fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()


def alive(pid: str, start: str) -> bool:
    """Whether the worker ``pid`` started at ``start`` may still run (when unsure: yes)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell (a restricted /proc): never merge what may be live
    if len(fields) < 20:
        return True
    return fields[0] not in (b"Z", b"X") and fields[19].decode() == start


@contextmanager
def locked(directory: str, exclusive: bool, blocking: bool = True) -> Iterator[bool]:
    """Hold the directory's lock (shared for a scrape, exclusive for a compaction); yield whether it is held."""
    if fcntl is None:
        yield not exclusive
        return
    fd = os.open(os.path.join(directory, LOCK), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


class Merged:
    """Samples merged across files, by kind; what a scrape exposes and what the archive keeps."""

    __slots__ = ("help", "values")

    def __init__(self) -> None:
        #: metric name -> (type, help text), in the order first seen.
        self.help: dict[str, tuple[str, str]] = {}
        #: Key -> [value, timestamp].
        self.values: dict[Key, list[float]] = {}

    def add(self, key: Key, help_text: str, value: float, timestamp: float) -> None:
        """Merge one sample in, by the rule of its kind."""
        metric_name, kind = key[0], key[1]
        if metric_name not in self.help:
            self.help[metric_name] = (kind.partition("_")[0], help_text)
        found = self.values.get(key)
        if found is None:
            if kind.endswith("mostrecent") and not timestamp > 0:
                return  # prometheus_client exposes only a timestamped value
            self.values[key] = [value, timestamp]
        elif kind in _ADDED:
            found[0] += value
        elif kind.endswith("max"):
            if value > found[0]:
                found[0] = value
        elif kind.endswith("min"):
            if value < found[0]:
                found[0] = value
        elif kind.endswith("mostrecent"):
            if timestamp > found[1]:
                found[0], found[1] = value, timestamp
        else:  # all, liveall: one writer per pid, the later file wins
            found[0], found[1] = value, timestamp

    def read(self, path: str, kind: str, pid: str, cache: dict[str, Any]) -> None:
        """Merge the samples of one worker's file in; a file that vanished is skipped."""
        try:
            entries = MmapedDict.read_all_values_from_file(path)  # type: ignore[no-untyped-call]
        except FileNotFoundError:
            return
        except struct.error:
            return  # a file its new worker has created but not sized yet: nothing in it
        per_pid = pid if kind in _PER_PID else None
        for raw, value, timestamp, _ in entries:
            parsed = cache.get(raw)
            if parsed is None:
                metric_name, name, labels, help_text = json.loads(raw)
                parsed = cache[raw] = (metric_name, name, tuple(sorted(labels.items())), help_text)
            metric_name, name, labels, help_text = parsed
            self.add((metric_name, kind, name, labels, per_pid), help_text, value, timestamp)

    def metrics(self, exemplars: dict[tuple[str, tuple[tuple[str, str], ...]], Exemplar] | None = None) -> list[Metric]:
        """The merged samples as prometheus_client's multiprocess collector exposes them, with ``exemplars``."""
        exemplars = exemplars or {}
        out: dict[str, Metric] = {}
        buckets: dict[tuple[str, tuple[tuple[str, str], ...]], dict[float, float]] = {}
        for metric_name, (typ, help_text) in self.help.items():
            out[metric_name] = Metric(metric_name, help_text, typ)
        for (metric_name, kind, name, labels, pid), (value, _) in self.values.items():
            metric = out[metric_name]
            if pid is not None:
                metric.samples.append(Sample(name, dict((*labels, ("pid", pid))), value))
                continue
            if kind == "histogram":
                le = next((v for k, v in labels if k == "le"), None)
                if le is not None:
                    without = tuple(p for p in labels if p[0] != "le")
                    per = buckets.setdefault((metric_name, without), {})
                    bound = float(le)
                    per[bound] = per.get(bound, 0.0) + value
                    continue
            found = exemplars.get((name, labels)) if kind == "counter" and name.endswith("_total") else None
            metric.samples.append(Sample(name, dict(labels), value, None, found))
        for (metric_name, labels), per in buckets.items():
            metric = out[metric_name]
            acc = 0.0
            for bound in sorted(per):
                acc += per[bound]
                le = floatToGoString(bound)  # type: ignore[no-untyped-call]
                with_le = (*labels, ("le", le))
                found = exemplars.get((metric_name + "_bucket", tuple(sorted(with_le)))) if exemplars else None
                metric.samples.append(Sample(metric_name + "_bucket", dict(with_le), acc, None, found))
            metric.samples.append(Sample(metric_name + "_count", dict(labels), acc))
        return list(out.values())

    def dump(self) -> list[list[Any]]:
        return [
            [k[0], k[1], k[2], [list(p) for p in k[3]], k[4], self.help[k[0]][1], v[0], v[1]]
            for k, v in self.values.items()
        ]

    def load(self, rows: Iterable[list[Any]]) -> None:
        for metric_name, kind, name, labels, pid, help_text, value, timestamp in rows:
            key = (metric_name, kind, name, tuple((str(a), str(b)) for a, b in labels), pid)
            self.add(key, help_text, float(value), float(timestamp))


class Archive:
    """The committed archive: merged samples of dead workers, and the files it absorbed."""

    __slots__ = ("absorbed", "extra", "rows")

    def __init__(self, rows: list[list[Any]], absorbed: list[str], extra: dict[str, Any]) -> None:
        self.rows = rows
        self.absorbed = absorbed
        #: What other parts keep about dead workers (exemplars, CPU seconds).
        self.extra = extra

    @classmethod
    def read(cls, directory: str) -> Archive:
        try:
            with open(os.path.join(directory, ARCHIVE), "rb") as f:
                data = json.loads(f.read())
        except FileNotFoundError:
            return cls([], [], {})
        return cls(data["samples"], data["absorbed"], data.get("extra") or {})

    def write(self, directory: str) -> None:
        """Commit: write to a temporary file, then rename it over the archive."""
        data = json.dumps({"version": 1, "absorbed": self.absorbed, "samples": self.rows, "extra": self.extra})
        replace_file(directory, ARCHIVE, data, durable=True)


def replace_file(directory: str, name: str, data: str, durable: bool = False) -> None:
    """Replace ``directory/name`` by ``data`` at once: readers see the old file or the new one, never half.

    The temporary file is ``.{name}.*.tmp``: a compaction deletes what a killed writer left.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def kind_and_pid(name: str) -> tuple[str, str] | None:
    """The kind (``counter``, ``gauge_max``...) and pid label of a ``.db`` file, as prometheus_client reads it."""
    if not name.endswith(".db"):
        return None
    match = OWN_FILE.match(name)
    if match:
        return match.group(1), match.group(2)
    parts = name[:-3].split("_")
    if parts[0] == "gauge" and len(parts) >= 3:
        return "gauge_" + parts[1], parts[2]
    if len(parts) >= 2:
        return parts[0], parts[1]
    return None


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def compact(directory: str, blocking: bool = True, limit: int | None = None) -> list[str]:
    """Merge the files of dead workers into the archive; return the files absorbed.

    ``blocking=False`` gives up at once when a scrape or another compaction
    holds the lock; ``limit`` bounds the files absorbed in one go.
    """
    with locked(directory, exclusive=True, blocking=blocking) as held:
        if not held:
            return []
        archive = Archive.read(directory)
        names = os.listdir(directory)
        present = set(names)
        # Files a killed compaction committed but did not delete, and its temporary files.
        for name in archive.absorbed:
            if name in present:
                unlink(os.path.join(directory, name))
        if archive.absorbed:
            committed = set(archive.absorbed)
            names = [name for name in names if name not in committed]  # in the archive already: not absorbed again
        for name in names:
            if name.endswith(".tmp") and name.startswith("."):
                # What a killed writer left: the archive's (we hold the lock), or a dead worker's exemplars.
                writer = EXEMPLAR_FILE.match(name[1:].rpartition(".json.")[0] + ".json")
                if name.startswith(f".{ARCHIVE}.") or (writer and not alive(writer.group(2), writer.group(3))):
                    unlink(os.path.join(directory, name))
        dead: list[tuple[str, str, str]] = []
        verdict: dict[tuple[str, str], bool] = {}
        for name in names:
            match = OWN_FILE.match(name) or EXEMPLAR_FILE.match(name)
            if match is None:
                continue
            kind, pid, start = match.groups()
            owner = (pid, start)
            if owner not in verdict:
                verdict[owner] = alive(pid, start)
            if verdict[owner]:
                continue
            if kind.startswith("gauge_live"):
                unlink(os.path.join(directory, name))  # what mark_process_dead does
            else:
                dead.append((name, kind, pid))
        if not dead:
            return []
        dead.sort()
        if limit is not None:
            dead = dead[:limit]
        merged = Merged()
        merged.load(archive.rows)
        exemplars = Exemplars(archive.extra.get("exemplars"))
        cache: dict[str, Any] = {}
        for name, kind, pid in dead:
            if kind == "exemplars":
                exemplars.read(os.path.join(directory, name))
            else:
                merged.read(os.path.join(directory, name), kind, pid, cache)
        absorbed = [name for name, _, _ in dead]
        extra = {**archive.extra, "exemplars": exemplars.latest}
        Archive(merged.dump(), absorbed, extra).write(directory)
        for name in absorbed:
            unlink(os.path.join(directory, name))
        # Deleted: the list goes, or every scrape would read it (a kill -9 before this leaves it, harmless).
        Archive(merged.dump(), [], extra).write(directory)
        return absorbed


class Exemplars:
    """The latest exemplar of each series (keyed as in the value files) across workers."""

    __slots__ = ("latest",)

    def __init__(self, latest: dict[str, list[Any]] | None = None) -> None:
        #: Series key -> [exemplar labels, value, timestamp].
        self.latest: dict[str, list[Any]] = dict(latest or {})

    def add(self, found: dict[str, list[Any]]) -> None:
        latest = self.latest
        for key, entry in found.items():
            current = latest.get(key)
            if current is None or entry[2] > current[2]:
                latest[key] = entry

    def read(self, path: str) -> None:
        """Merge in a worker's exemplar file (written whole by a rename: never half)."""
        try:
            with open(path, "rb") as f:
                self.add(json.loads(f.read()))
        except (FileNotFoundError, ValueError):
            return

    def by_sample(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], Exemplar]:
        """The exemplars by exposed sample: name and sorted labels."""
        out = {}
        for key, (labels, value, timestamp) in self.latest.items():
            try:
                _, name, series, _ = json.loads(key)
                out[(name, tuple(sorted(series.items())))] = Exemplar(labels, value, timestamp)
            except (ValueError, TypeError, AttributeError):
                continue
        return out


def collect(directory: str) -> list[Metric]:
    """Every worker's samples, merged: the archive and the files it has not absorbed."""
    with locked(directory, exclusive=False):
        archive = Archive.read(directory)
        skip = set(archive.absorbed)
        merged = Merged()
        merged.load(archive.rows)
        exemplars = Exemplars(archive.extra.get("exemplars"))
        cache: dict[str, Any] = {}
        for name in sorted(os.listdir(directory)):
            if name in skip:
                continue
            found = kind_and_pid(name)
            if found is not None:
                merged.read(os.path.join(directory, name), found[0], found[1], cache)
            elif EXEMPLAR_FILE.match(name):
                exemplars.read(os.path.join(directory, name))
    return merged.metrics(exemplars.by_sample() if exemplars.latest else None)
