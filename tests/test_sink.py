"""Disk full / unwritable log file: tasks are unaffected and the error is reported once.

Real failures only: ``/dev/full`` fails every write with ENOSPC, a log path swapped for
a symlink to ``/dev/full`` mid-run makes the (watched) file unwritable, and -- when this
process may mount -- a 64 KiB tmpfs really fills up.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from workerutil import AppModule, Worker, parse_json_lines

from logkit.config import LogConfig
from logkit.formatters import JsonFormatter
from logkit.handlers import WATCH_INTERVAL, Sink, SinkHandler

FAIL_LINE = "logkit: cannot write log records to"
AGAIN_LINE = "logkit: writing to"


def _logger(sink: Sink, name: str) -> logging.Logger:
    log = logging.getLogger(f"test_sink.{name}")
    log.handlers[:] = [SinkHandler(sink, JsonFormatter(LogConfig(format="json")))]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def _swap(path: Path, target: str | None) -> None:
    """Atomically replace ``path`` by a symlink to ``target`` (or a fresh empty file)."""
    tmp = path.with_name(path.name + ".swap")
    if target is None:
        tmp.write_bytes(b"")
    else:
        tmp.symlink_to(target)
    os.replace(tmp, path)


def test_dev_full_reported_once_not_per_record(capfd: pytest.CaptureFixture[str]) -> None:
    sink = Sink("/dev/full", watch=False)
    log = _logger(sink, "devfull")
    try:
        for i in range(500):
            log.info("record %d", i)  # must not raise
    finally:
        sink.close()
    err = capfd.readouterr().err
    assert err.count(FAIL_LINE) == 1, err
    assert "No space left on device" in err
    assert sink._dropped == 500


def test_unwritable_mid_run_then_recovers(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "app.log"
    sink = Sink(str(path), watch=True)
    log = _logger(sink, "midrun")
    try:
        for i in range(10):
            log.info("before %d", i)
        first = path.read_text()
        _swap(path, "/dev/full")  # like logrotate, but the new "file" is a full disk
        for i in range(300):
            log.info("during %d", i)
        _swap(path, None)
        # a path swapped while the old fd is still a live file (here /dev/full) is noticed
        # at the next path look-up, at most WATCH_INTERVAL later
        time.sleep(WATCH_INTERVAL * 1.5)
        for i in range(7):
            log.info("after %d", i)
    finally:
        sink.close()
    err = capfd.readouterr().err
    assert err.count(FAIL_LINE) == 1, err
    assert err.count(AGAIN_LINE) == 1, err
    assert "300 record(s) were dropped" in err
    assert [r["message"] for r in parse_json_lines(first)] == [f"before {i}" for i in range(10)]
    after = parse_json_lines(path.read_text())
    # the first record written again is followed by one record reporting the loss
    assert [r["message"] for r in after[:1] + after[2:]] == [f"after {i}" for i in range(7)]
    report = after[1]
    assert report["event"] == "log_records_dropped"
    assert report["count"] == 300
    assert report["reason"] == "No space left on device"
    assert report["first_dropped_at"] <= report["last_dropped_at"] <= report["timestamp"]


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); /dev/full tests cover it")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_really_full_filesystem(tiny_tmpfs: Path, capfd: pytest.CaptureFixture[str]) -> None:
    path = tiny_tmpfs / "app.log"
    sink = Sink(str(path), watch=True)
    log = _logger(sink, "tmpfs")
    payload = "x" * 1000
    try:
        for i in range(200):  # ~200 KB into 64 KiB
            log.info("fill %d %s", i, payload)
        written = parse_json_lines(path.read_text())
        assert 0 < len(written) < 200
        assert [r["message"].split()[1] for r in written] == [str(i) for i in range(len(written))]
        path.unlink()  # frees the space; the watched sink reopens a new file
        log.info("room again")
    finally:
        sink.close()
    err = capfd.readouterr().err
    assert err.count(FAIL_LINE) == 1, err
    assert f"{200 - len(written)} record(s) were dropped" in err
    again = parse_json_lines(path.read_text())
    assert [r["message"] for r in again[:1]] == ["room again"]
    assert [(r["event"], r["count"]) for r in again[1:]] == [
        ("log_records_dropped", 200 - len(written))
    ]


# --------------------------------------------------------------------------
# real workers
# --------------------------------------------------------------------------

BODY = """
import logging
import logkit

logkit.install(app, format="json")
log = logging.getLogger("sinktest")


@app.task
def work(i):
    for n in range(5):
        log.info("line %d of task %d", n, i)
    return i
"""


def _run(appmod: AppModule, n: int, start: int = 0) -> None:
    mod = appmod.load()
    results = [mod.work.delay(i) for i in range(start, start + n)]
    assert [r.get(timeout=30) for r in results] == list(range(start, start + n))


def _fail_lines(worker: Worker) -> list[str]:
    return [line for line in worker.stderr().splitlines() if line.startswith(FAIL_LINE)]


def test_worker_logging_to_dev_full(
    app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker]
) -> None:
    appmod = app_factory(BODY)
    worker = worker_factory(appmod, logfile="/dev/full")
    _run(appmod, 20)
    assert worker.alive
    worker.stop()
    assert worker.returncode == 0
    assert len(_fail_lines(worker)) == 1, worker.stderr()


def test_worker_log_file_unwritable_mid_run(
    app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker]
) -> None:
    appmod = app_factory(BODY)
    worker = worker_factory(appmod, logfile="worker.log")
    path = worker.logfile
    assert path is not None
    _run(appmod, 4)
    before = parse_json_lines(path.read_text())
    assert sum(r["logger"] == "sinktest" for r in before) == 20
    _swap(path, "/dev/full")
    _run(appmod, 10, start=100)  # every process of the worker now fails to write
    assert worker.alive
    assert len(_fail_lines(worker)) == 1, worker.stderr()
    _swap(path, None)
    _run(appmod, 4, start=200)
    worker.stop()
    after = parse_json_lines(path.read_text())
    task_lines = [r for r in after if r["logger"] == "sinktest"]
    assert len(task_lines) == 20
    assert all(r["task_name"].endswith(".work") for r in task_lines)
    assert len(_fail_lines(worker)) == 1, worker.stderr()
    assert AGAIN_LINE in worker.stderr()
