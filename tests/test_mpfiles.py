"""Multiprocess compaction: dead workers' files merged into one archive, exactly, whatever happens meanwhile."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from bizmetrics import _mpfiles

with open("/proc/sys/kernel/pid_max") as _f:
    #: Pids above this never belong to a process: workers that are surely gone.
    PID_MAX = int(_f.read())
MY_START = _mpfiles.start_time(os.getpid())
HELP = "Operations."
BUCKETS = (0.5, 5.0, float("inf"))


def write_worker(directory: Path, identity: str, seed: int, counters: int = 5, histograms: int = 2) -> None:
    """Write the counter and histogram files of one worker, as prometheus_client's value class does."""
    rnd = random.Random(seed)
    counter = MmapedDict(str(directory / f"counter_{identity}.db"))
    for i in range(counters):
        key = mmap_key("ops", "ops_total", ["tenant_id", "op"], [f"t{i % 3}", f"op{i}"], HELP)
        counter.write_value(key, float(rnd.randint(1, 100)), 0.0)
    counter.close()
    histogram = MmapedDict(str(directory / f"histogram_{identity}.db"))
    for i in range(histograms):
        labels = ["tenant_id"], [f"t{i}"]
        histogram.write_value(mmap_key("ms", "ms_sum", *labels, "Ms."), rnd.randint(0, 10**6) / 4, 0.0)
        for bound in BUCKETS:
            le = "+Inf" if bound == float("inf") else str(bound)
            key = mmap_key("ms", "ms_bucket", [*labels[0], "le"], [*labels[1], le], "Ms.")
            histogram.write_value(key, float(rnd.randint(0, 9)), 0.0)
    histogram.close()


def write_gauges(directory: Path, identity: str, value: float, timestamp: float) -> None:
    """A gauge in every multiprocess mode, as one worker writes them."""
    modes = ("all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum", "mostrecent", "livemostrecent")
    for mode in modes:
        f = MmapedDict(str(directory / f"gauge_{mode}_{identity}.db"))
        f.write_value(mmap_key(f"g_{mode}", f"g_{mode}", ["pool"], ["p"], "G."), value, timestamp)
        f.close()


def dead_identity(i: int) -> str:
    return f"{PID_MAX + 1 + i}-{1000 + i}"


def samples(metrics: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples by name and labels, with a pid label cut to the pid (stock files name workers ``pid-start``)."""
    out = {}
    for metric in metrics:
        for s in metric.samples:
            labels = tuple(sorted((k, re.sub(r"-\d+\Z", "", v) if k == "pid" else v) for k, v in s.labels.items()))
            assert (s.name, labels) not in out
            out[(s.name, labels)] = s.value
    return out


def stock(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What prometheus_client's own collector reads from every file in the directory."""
    files = sorted(str(p) for p in directory.glob("*.db"))
    return samples(MultiProcessCollector.merge(files, accumulate=True))


def ours(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return samples(_mpfiles.collect(str(directory)))


def test_dead_workers_files_are_merged_with_totals_unchanged(tmp_path: Path) -> None:
    """Hundreds of dead workers become one archive; every sample is what prometheus_client read from the files."""
    for i in range(300):
        write_worker(tmp_path, dead_identity(i), seed=i)
    me = f"{os.getpid()}-{MY_START}"
    write_worker(tmp_path, me, seed=-1)
    before = stock(tmp_path)
    assert ours(tmp_path) == before
    absorbed = _mpfiles.compact(str(tmp_path))
    assert len(absorbed) == 600
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [f"counter_{me}.db", f"histogram_{me}.db"]
    assert ours(tmp_path) == before
    # More workers die later: merged into the same archive.
    write_worker(tmp_path, dead_identity(300), seed=300)
    before = samples(_mpfiles.collect(str(tmp_path)))
    assert len(_mpfiles.compact(str(tmp_path))) == 2
    assert ours(tmp_path) == before
    assert _mpfiles.compact(str(tmp_path)) == []


def test_a_reused_pid_never_merges_the_live_process(tmp_path: Path) -> None:
    """Files are keyed by pid and start time: the dead holder of a pid is merged, the live one never is."""
    me = f"{os.getpid()}-{MY_START}"
    predecessor = f"{os.getpid()}-{int(MY_START or 0) - 1}"  # same pid, started earlier: gone
    write_worker(tmp_path, me, seed=1)
    write_worker(tmp_path, predecessor, seed=2)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        running = f"{child.pid}-{_mpfiles.start_time(child.pid)}"
        write_worker(tmp_path, running, seed=3)
        before = stock(tmp_path)
        absorbed = _mpfiles.compact(str(tmp_path))
        assert sorted(absorbed) == [f"counter_{predecessor}.db", f"histogram_{predecessor}.db"]
        assert ours(tmp_path) == before
        child.kill()
        time.sleep(0.2)  # not reaped yet: a zombie, which is dead
        assert _mpfiles.start_time(child.pid) is None
        assert sorted(_mpfiles.compact(str(tmp_path))) == [f"counter_{running}.db", f"histogram_{running}.db"]
        assert ours(tmp_path) == before
        assert (tmp_path / f"counter_{me}.db").exists()
    finally:
        child.kill()
        child.wait()


def test_gauges_keep_their_multiprocess_modes(tmp_path: Path) -> None:
    """min, max, sum, mostrecent and all merge as prometheus_client merges them; live* gauges of the dead go."""
    me = f"{os.getpid()}-{MY_START}"
    write_gauges(tmp_path, dead_identity(0), value=7.0, timestamp=300.0)
    write_gauges(tmp_path, dead_identity(1), value=-2.0, timestamp=100.0)
    write_gauges(tmp_path, dead_identity(2), value=3.0, timestamp=200.0)
    write_gauges(tmp_path, me, value=1.0, timestamp=150.0)
    for path in tmp_path.glob("gauge_live*.db"):  # what mark_process_dead does for the dead
        if me not in path.name:
            path.unlink()
    expected = stock(tmp_path)
    write_gauges(tmp_path, dead_identity(3), value=100.0, timestamp=50.0)
    for path in tmp_path.glob(f"gauge_live*_{dead_identity(3)}.db"):
        path.unlink()
    expected = stock(tmp_path)
    for i in (0, 1, 2):  # dead workers' live gauges: dropped by the compaction itself
        write_gauges(tmp_path, dead_identity(10 + i), value=1e9, timestamp=1.0)
        for path in tmp_path.glob(f"gauge_[!l]*_{dead_identity(10 + i)}.db"):
            path.unlink()
    _mpfiles.compact(str(tmp_path))
    assert not [p for p in tmp_path.glob("*.db") if me not in p.name]
    assert ours(tmp_path) == expected
    got = ours(tmp_path)
    assert got[("g_max", (("pool", "p"),))] == 100.0
    assert got[("g_min", (("pool", "p"),))] == -2.0
    assert got[("g_sum", (("pool", "p"),))] == 7.0 - 2.0 + 3.0 + 1.0 + 100.0
    assert got[("g_mostrecent", (("pool", "p"),))] == 7.0
    assert got[("g_livesum", (("pool", "p"),))] == 1.0


def test_a_compaction_gives_up_at_once_while_a_scrape_reads(tmp_path: Path) -> None:
    """``blocking=False`` (what a scrape's own compaction asks): with the directory held, nothing is merged."""
    write_worker(tmp_path, dead_identity(0), seed=0)
    with _mpfiles.locked(str(tmp_path), exclusive=False):
        assert _mpfiles.compact(str(tmp_path), blocking=False) == []
        assert len(list(tmp_path.glob("*.db"))) == 2
    assert len(_mpfiles.compact(str(tmp_path), blocking=False)) == 2


def test_a_compaction_clears_what_killed_writers_left_and_keeps_live_ones(tmp_path: Path) -> None:
    """Files a killed compaction absorbed but did not delete, and dead writers' temporary files, go; totals stay."""
    write_worker(tmp_path, dead_identity(0), seed=0)
    expected = stock(tmp_path)
    _mpfiles.compact(str(tmp_path))
    # A compaction killed after its commit, before its deletes: the archive lists files that are back.
    archive = _mpfiles.Archive.read(str(tmp_path))
    write_worker(tmp_path, dead_identity(0), seed=0)
    _mpfiles.Archive(archive.rows, [f"counter_{dead_identity(0)}.db", f"histogram_{dead_identity(0)}.db"], {}).write(
        str(tmp_path)
    )
    assert ours(tmp_path) == expected  # listed as absorbed: never read twice
    me = f"{os.getpid()}-{MY_START}"
    left = [f".{_mpfiles.ARCHIVE}.x1.tmp", f".exemplars_{dead_identity(1)}.json.x2.tmp"]
    kept = [f".exemplars_{me}.json.x3.tmp"]  # a live worker writing its exemplars right now
    for name in left + kept:
        (tmp_path / name).write_text("{")
    assert _mpfiles.compact(str(tmp_path)) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([_mpfiles.ARCHIVE, _mpfiles.LOCK, *kept])
    assert ours(tmp_path) == expected


def test_dead_workers_exemplars_survive_their_compaction(tmp_path: Path) -> None:
    """A counter's latest exemplar of any worker, dead or alive, is exposed, before and after the merge."""
    key = mmap_key("ops", "ops_total", ["tenant_id"], ["t1"], HELP)
    for i, (trace, at) in enumerate([("old", 100.0), ("new", 200.0)]):
        counter = MmapedDict(str(tmp_path / f"counter_{dead_identity(i)}.db"))
        counter.write_value(key, 1.0, 0.0)
        counter.close()
        (tmp_path / f"exemplars_{dead_identity(i)}.json").write_text(json.dumps({key: [{"trace_id": trace}, 1.0, at]}))
    (tmp_path / f"exemplars_{dead_identity(2)}.json").write_text("{half")  # never written whole: skipped

    def exemplar() -> tuple[float, Any]:
        (metric,) = _mpfiles.collect(str(tmp_path))
        (sample,) = metric.samples
        return sample.value, sample.exemplar and (sample.exemplar.labels, sample.exemplar.timestamp)

    assert exemplar() == (2.0, ({"trace_id": "new"}, 200.0))
    assert len(_mpfiles.compact(str(tmp_path))) == 5
    assert exemplar() == (2.0, ({"trace_id": "new"}, 200.0))


def test_start_time_of_a_process_that_is_gone_is_none() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert _mpfiles.start_time(gone.pid) is None
    assert _mpfiles.start_time(os.getpid()) == MY_START is not None
    assert not _mpfiles.alive(str(gone.pid), "1")


@pytest.mark.slow  # threads contending for the GIL and the directory lock: from 20 s to minutes on a loaded machine
def test_scrapes_during_compactions_see_exact_totals(tmp_path: Path) -> None:
    """Scrapes that run while two compactions run never count a dead worker twice, nor miss one."""
    for i in range(400):
        write_worker(tmp_path, dead_identity(i), seed=i)
    expected = stock(tmp_path)
    seen: list[bool] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            seen.append(ours(tmp_path) == expected)

    scrapers = [threading.Thread(target=scrape) for _ in range(3)]
    for t in scrapers:
        t.start()
    compactors = [threading.Thread(target=_mpfiles.compact, args=(str(tmp_path), True, 37)) for _ in range(12)]
    for t in compactors:
        t.start()
    for t in compactors:
        t.join()
    _mpfiles.compact(str(tmp_path))
    stop.set()
    for t in scrapers:
        t.join()
    assert len(seen) > 3 and all(seen)
    assert not list(tmp_path.glob("*.db"))
    assert ours(tmp_path) == expected


KILLABLE = textwrap.dedent(
    """
    import sys
    from bizmetrics import _mpfiles
    print("start", flush=True)
    _mpfiles.compact(sys.argv[1])
    """
)


@pytest.mark.slow
def test_kill_9_in_the_middle_of_a_compaction_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """A compaction killed with SIGKILL at any moment leaves totals exact; the next one finishes its work."""
    rnd = random.Random(26)
    expected = stock(tmp_path)
    interrupted = 0
    for round_ in range(20):
        for i in range(150):
            write_worker(tmp_path, dead_identity(round_ * 1000 + i), seed=round_ * 1000 + i, counters=20)
        expected = ours(tmp_path)
        proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        with proc.stdout:
            proc.stdout.readline()
            time.sleep(rnd.uniform(0.0, 0.12))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        archive = _mpfiles.Archive.read(str(tmp_path))
        left = {p.name for p in tmp_path.glob("*.db")}
        # Killed half-way: files not yet merged, or merged but not yet deleted.
        interrupted += bool(left) or any(name in left for name in archive.absorbed)
        assert ours(tmp_path) == expected
    assert interrupted >= 3
    _mpfiles.compact(str(tmp_path))
    assert not list(tmp_path.glob("*.db")) and not list(tmp_path.glob("*.tmp"))
    assert ours(tmp_path) == expected


WORKERS = textwrap.dedent(
    """
    import os, random, signal, sys, time

    import bizmetrics
    from bizmetrics import multiprocess

    assert multiprocess.enabled() and multiprocess._IDENTITY
    restarts, per_worker = int(sys.argv[1]), int(sys.argv[2])
    rnd = random.Random(19)
    running = []
    for n in range(restarts):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # a worker: serve a few requests, then exit or get killed
            os.close(read)
            for _ in range(per_worker):
                bizmetrics.record_connector_operation("wp", "get", 12.0, True, "t1")
            bizmetrics.record_api_request("GET", "/x", 200, 3.0, tenant_id="t1")
            os.write(write, b"1")
            if n % 3 == 0:
                time.sleep(30)  # killed -9 by the parent
            os._exit(0)
        os.close(write)
        running.append((pid, read, n % 3 == 0))
        while len(running) >= 6:
            pid, read, kill = running.pop(0)
            assert os.read(read, 1) == b"1"
            os.close(read)
            if kill:
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    for pid, read, kill in running:
        assert os.read(read, 1) == b"1"
        if kill:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    print("done", flush=True)
    """
)

SCRAPER = textwrap.dedent(
    """
    import os, sys

    from prometheus_client import generate_latest
    from bizmetrics import multiprocess

    stop = sys.argv[1]
    registry = multiprocess.registry()

    def total():
        ops = requests = 0.0
        for line in generate_latest(registry).decode().splitlines():
            if line.startswith("connector_operations_total{") and 'status="success"' in line:
                ops += float(line.rsplit(" ", 1)[1])
            if line.startswith("api_requests_total{"):
                requests += float(line.rsplit(" ", 1)[1])
        return ops, requests

    seen = []
    while not os.path.exists(stop):
        seen.append(total())
    seen.append(total())
    print(len(seen), int(all(a <= b for a, b in zip(seen, seen[1:]))), *seen[-1], flush=True)
    """
)


@pytest.mark.slow
def test_thousands_of_worker_restarts_with_scrapes_throughout_add_up_exactly(tmp_path: Path) -> None:
    """2,000 workers start, record, exit or get killed with SIGKILL while two processes scrape: every total is exact."""
    restarts, per_worker = 2000, 7
    mp_dir = tmp_path / "mp"
    mp_dir.mkdir()
    stop = tmp_path / "stop"
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(mp_dir))
    scrapers = [
        subprocess.Popen([sys.executable, "-c", SCRAPER, str(stop)], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    workers = subprocess.run(
        [sys.executable, "-c", WORKERS, str(restarts), str(per_worker)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    stop.touch()
    results = [proc.communicate(timeout=120)[0].split() for proc in scrapers]
    assert workers.returncode == 0, workers.stderr
    for scrapes, monotonic, ops, requests in results:
        assert int(scrapes) > 10  # scrapes ran throughout
        assert monotonic == "1"  # no scrape ever saw a total go down (a double count undone, a file lost)
        assert float(ops) == restarts * per_worker
        assert float(requests) == restarts
    # Dead workers' files are gone: what is left is the archive (and the scrapers' own files).
    assert len(list(mp_dir.glob("*.db"))) < 20
