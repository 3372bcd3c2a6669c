"""A stalled or full sink never costs unbounded memory, and no record is lost silently (#21).

Real stalls only: a child process logs with ``queue=True`` to a stderr that is a pipe
this test does not read (a stuck log collector), and its memory is read from
``/proc/PID/status`` while it is stalled; a log file on a tmpfs that really fills up.
Every record logged is either in the output or counted in a ``log_records_dropped``
record.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from workerutil import parse_json_lines

from logkit.config import ConfigError, LogConfig
from logkit.formatters import JsonFormatter
from logkit.handlers import DROPPED_EVENT, Sink, SinkHandler, flush_queues

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc/PID/status"
)

#: The child: configure logkit, log ``n`` records, wait for "go" on stdin, log ``n2``
#: more, flush, exit. Progress and its own VmRSS go to stdout (stderr is the sink).
CHILD = r"""
import json, logging, os, sys, time
import logkit
from logkit.handlers import flush_queues

spec = json.loads(sys.argv[1])

def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

def say(*words):
    print(*words, flush=True)

logkit.configure("INFO", spec.get("logfile"), format="json", **spec["options"])
log = logging.getLogger("bp")
say("ready", rss_kb())
start = time.perf_counter()
for i in range(spec["n"]):
    log.info("record %d", i, extra={"user": "alice", "order": i, "amount": 12.5})
if spec.get("settle"):  # the writer thread has tried every queued record
    flush_queues(60)
say("logged", time.perf_counter() - start, rss_kb())
if sys.stdin.readline().strip() == "go":
    for i in range(spec["n"], spec["n"] + spec.get("n2", 0)):
        log.info("record %d", i, extra={"user": "alice", "order": i, "amount": 12.5})
say("flushed", flush_queues(60))
"""


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class Child:
    """The child process, its stderr (the sink) left unread until :meth:`drain`."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.err = bytearray()
        self._reader: threading.Thread | None = None

    def line(self, timeout: float = 120.0) -> list[str]:
        """The next stdout line, split (fails after ``timeout`` seconds)."""
        assert self.proc.stdout is not None
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(self.proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        assert got and got[0], f"child said nothing for {timeout}s (exit {self.proc.poll()})"
        return got[0].decode().split()

    def drain(self) -> None:
        """Start reading the sink (the stalled collector comes back)."""

        def read() -> None:
            assert self.proc.stderr is not None
            while chunk := self.proc.stderr.read1(1 << 16):
                self.err += chunk

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def finish(self) -> str:
        """Say "go", wait for the exit; return everything written to the sink."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()
        flushed = self.line()
        assert flushed == ["flushed", "True"], flushed
        self.proc.wait(60)
        if self._reader is not None:
            self._reader.join(60)
        return self.err.decode()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def child() -> Iterator[Any]:
    made: list[Child] = []

    def make(**spec: Any) -> Child:
        made.append(Child(spec))
        return made[-1]

    yield make
    for c in made:
        c.kill()


def _account(text: str) -> tuple[list[int], int, list[dict[str, Any]]]:
    """(record numbers written, records reported dropped, the reports) in ``text``."""
    records = parse_json_lines("\n".join(line for line in text.splitlines() if line[:1] == "{"))
    written = [r["order"] for r in records if r.get("logger") == "bp"]
    reports = [r for r in records if r.get("event") == DROPPED_EVENT]
    return written, sum(r["count"] for r in reports), reports


N = 300_000
#: What the bounded queue may add to a stalled child's memory (10,000 records are ~10 MB).
BOUND_MB = 40


def test_drop_stalled_pipe_memory_bounded_and_loss_reported(child: Any) -> None:
    c = child(n=N, options={"queue": True, "queue_size": 10_000, "queue_full": "drop"})
    ready = c.line()
    logged = c.line()  # the caller never waits: all N calls return while nothing is read
    assert logged[0] == "logged"
    stalled_kb = _rss_kb(c.proc.pid)
    grown_mb = (stalled_kb - int(ready[1])) / 1024
    print(f"drop: baseline {int(ready[1]) / 1024:.1f} MB, stalled {stalled_kb / 1024:.1f} MB, "
          f"{N} calls in {float(logged[1]):.2f} s")
    assert grown_mb < BOUND_MB, f"RSS grew by {grown_mb:.1f} MB while the sink was stalled"

    c.drain()
    text = c.finish()
    written, dropped, reports = _account(text)
    assert written == sorted(written) and len(set(written)) == len(written)
    assert dropped > 0 and reports, "records were dropped without a report"
    assert len(written) + dropped == N
    assert len(written) >= 10_000  # at least the queue's content was written out
    for report in reports:
        assert report["level"] == "WARNING" and report["logger"] == "logkit"
        assert report["reason"] == "queue full"
        assert report["first_dropped_at"] <= report["last_dropped_at"]
        assert f"{report['count']} log record(s) dropped" in report["message"]


def test_block_stalled_pipe_memory_bounded_and_nothing_lost(child: Any) -> None:
    n = 50_000
    c = child(n=n, options={"queue": True, "queue_size": 1_000, "queue_full": "block"})
    ready = c.line()
    time.sleep(2.0)  # the child is stuck in a log call: queue full, writer stuck on the pipe
    stalled_kb = _rss_kb(c.proc.pid)
    grown_mb = (stalled_kb - int(ready[1])) / 1024
    print(f"block: baseline {int(ready[1]) / 1024:.1f} MB, stalled {stalled_kb / 1024:.1f} MB")
    assert grown_mb < BOUND_MB, f"RSS grew by {grown_mb:.1f} MB while the sink was stalled"

    c.drain()  # the caller goes on
    assert c.line()[0] == "logged"
    written, dropped, reports = _account(c.finish())
    assert written == list(range(n))
    assert dropped == 0 and reports == []


def test_unbounded_queue_would_grow(child: Any) -> None:
    """The measurement above catches the bug: with a (practically) unbounded queue,
    the same stalled child's memory grows with every record."""
    c = child(n=N, options={"queue": True, "queue_size": 10**9})
    ready = c.line()
    logged = c.line()
    grown_mb = (_rss_kb(c.proc.pid) - int(ready[1])) / 1024
    print(f"unbounded: baseline {int(ready[1]) / 1024:.1f} MB, grew {grown_mb:.1f} MB")
    assert grown_mb > 4 * BOUND_MB, logged
    c.drain()
    written, dropped, _ = _account(c.finish())
    assert (len(written), dropped) == (N, 0)


# --------------------------------------------------------------------------
# a file on a filesystem that is full, then has room again
# --------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(directory: Path, leave: int) -> Path:
    """Fill ``directory``'s filesystem, then free ``leave`` bytes; return the filler."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, max(filler.stat().st_size - leave, 0))
    return filler


@pytest.mark.parametrize("queue", [False, True], ids=["direct", "queue"])
def test_full_filesystem_then_room_again(small_tmpfs: Path, child: Any, queue: bool) -> None:
    filler = _fill(small_tmpfs, leave=64 * 1024)
    logfile = small_tmpfs / "app.log"
    n, n2 = 2_000, 500  # ~200 bytes each: about 300 fit before the disk is full
    # settle: with the queue, free the room only once the writer met the full disk
    c = child(n=n, n2=n2, logfile=str(logfile), options={"queue": queue}, settle=True)
    c.drain()
    c.line()
    assert c.line()[0] == "logged"
    filler.unlink()  # room again
    errors = c.finish()
    written, dropped, reports = _account(logfile.read_text())
    assert written == sorted(written) and len(set(written)) == len(written)
    assert 0 < len(written) < n + n2
    assert written[-n2:] == list(range(n, n + n2))  # after the room came back: all of them
    assert len(written) + dropped == n + n2
    assert [r["reason"] for r in reports] == ["No space left on device"]
    assert errors.count("logkit: cannot write log records to") == 1, errors


# --------------------------------------------------------------------------
# the report, in process
# --------------------------------------------------------------------------


def _handler(path: Path, formatter: logging.Formatter) -> SinkHandler:
    return SinkHandler(Sink(str(path), watch=False), formatter)


def test_pending_drops_are_reported_at_flush(tmp_path: Path) -> None:
    """Drops with no record logged after them are reported by flush_queues()."""
    path = tmp_path / "app.log"
    handler = _handler(path, JsonFormatter(LogConfig(format="json")))
    try:
        handler.sink.note_dropped("queue full", count=3)
        handler.sink.note_dropped("No space left on device")
        assert flush_queues(5)
        assert flush_queues(5)  # reported once
    finally:
        handler.sink.close()
    [report] = parse_json_lines(path.read_text())
    assert (report["event"], report["count"]) == (DROPPED_EVENT, 4)
    assert report["reason"] == "queue full, No space left on device"


def test_report_in_a_text_format_says_how_many(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    handler = _handler(path, logging.Formatter("%(levelname)s %(name)s %(message)s"))
    try:
        handler.sink.note_dropped("queue full", count=7)
        handler.handle(logging.makeLogRecord({"msg": "hello", "levelno": 20}))
    finally:
        handler.sink.close()
    lines = path.read_text().splitlines()
    assert lines[0].endswith(" hello")
    assert lines[1].startswith("WARNING logkit 7 log record(s) dropped between ")
    assert lines[1].endswith("(queue full)")
    assert len(lines) == 2


def test_report_not_written_stays_counted() -> None:
    handler = SinkHandler(Sink("/dev/full", watch=False), logging.Formatter())
    try:
        handler.sink.note_dropped("queue full", count=5)
        assert handler.report_dropped() is False
        assert handler.sink._unreported == 5  # the report itself is not counted
    finally:
        handler.sink.close()


# --------------------------------------------------------------------------
# the options
# --------------------------------------------------------------------------


def test_defaults() -> None:
    config = LogConfig()
    assert (config.queue, config.queue_size, config.queue_full) == (False, 10_000, "drop")


@pytest.mark.parametrize("value", ["block", "DROP", " drop "])
def test_queue_full_valid(value: str) -> None:
    assert LogConfig.resolve(options={"queue_full": value}, env={}).queue_full == (
        value.strip().lower()
    )


def test_queue_full_invalid_names_value_and_choices() -> None:
    with pytest.raises(ConfigError) as info:
        LogConfig.resolve(env={"LOGKIT_QUEUE_FULL": "wait"})
    message = str(info.value)
    assert "'queue_full'" in message and "LOGKIT_QUEUE_FULL" in message
    assert "'drop', 'block'" in message and "'wait'" in message


@pytest.mark.parametrize("value", [0, -5, "many", True, 1.5j])
def test_queue_size_invalid(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"'queue_size'.*must be a positive integer"):
        LogConfig.resolve(options={"queue_size": value}, env={})


def test_queue_size_from_env_and_app_conf() -> None:
    class Conf(dict[str, Any]):
        pass

    class App:
        conf = Conf(logkit_queue_size=500, logkit_queue_full="block")

    config = LogConfig.resolve(App(), env={"LOGKIT_QUEUE_SIZE": "2000"})
    assert (config.queue_size, config.queue_full) == (2000, "block")
