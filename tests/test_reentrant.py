"""Records logkit writes from inside the logging machinery -- while another record is being
handled -- are written, on every Python the matrix runs (``-m contract``: 3.11 to 3.15).

Python 3.13.4 briefly made ``Logger.isEnabledFor()`` false while a record of the same
logger was being handled (python/cpython#131812, undone in 3.13.5), so such a record was
lost. logkit writes five: a buffer flush (an ERROR writes the task's kept DEBUG lines,
through the same logger, from a filter of the ERROR's handler), a repeat count (the repeat
after the window writes the count from the fold's filter), a drop report (the first record
a sink writes again brings the report of those it dropped), ``log_level_changed``, and
what a task outside the sample kept (``task_sample``: its ``task_failed`` writes its held
``task_received`` on the same logger, and its lines, from a filter of its handler).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_sink import _swap
from workerutil import AppModule, Worker, parse_json_lines, wait_for

from logkit.config import LogConfig
from logkit.formatters import JsonFormatter
from logkit.handlers import WATCH_INTERVAL, Sink, SinkHandler

pytestmark = pytest.mark.contract

BODY = r"""
import time

from celery.utils.log import get_task_logger

import logkit

logkit.install(app, format="json")
log = get_task_logger("reentrant.tasks")  # through Celery's task logger and its handler


@app.task
def fails_after_debug():
    log.debug("kept 1")
    log.debug("kept 2")
    log.error("the error that writes them")  # the kept lines: same logger, mid-handling


@app.task
def fails_after_info():
    log.info("kept info")
    raise ValueError("boom")  # task_failed writes what the task kept, mid-handling


@app.task
def repeats():
    for _ in range(4):
        log.warning("again")
    time.sleep(0.6)  # the records' own times pass the 0.5 s window
    log.warning("again")  # closes the window: the count is written while it is handled
    log.info("after the repeats")
"""


@pytest.fixture
def worker(
    app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker]
) -> Iterator[tuple[Any, Worker]]:
    appmod = app_factory(BODY)
    worker = worker_factory(appmod, logfile="worker.log", concurrency=1, extra_args=[
        "--log-task-buffer", "5", "--log-dedupe-window", "0.5"])
    yield appmod.load(), worker


def _records(worker: Worker) -> list[dict[str, Any]]:
    return worker.json_lines()


def test_buffer_flush_repeat_count_and_level_change_are_written(
    worker: tuple[Any, Worker],
) -> None:
    mod, w = worker
    mod.fails_after_debug.delay().get(timeout=60)
    mod.repeats.delay().get(timeout=60)
    wait_for(lambda: any(r.get("message") == "after the repeats" for r in _records(w)),
             timeout=30, message=w.describe)
    records = [r for r in _records(w) if r.get("logger") == "reentrant.tasks"]
    messages = [(r["message"], r.get("buffered"), r.get("repeated")) for r in records]
    # the kept DEBUG lines, written by the ERROR's handling, before it
    assert messages[:3] == [("kept 1", True, None), ("kept 2", True, None),
                            ("the error that writes them", None, None)], messages
    # the first repeat, then its count (3 more), then the repeat that closed the window
    assert messages[3:] == [("again", None, None), ("again", None, 3), ("again", None, None),
                            ("after the repeats", None, None)], messages

    # log_level_changed: logged while the more verbose level is in force, both ways
    import logkit

    for level in ("DEBUG", "default"):
        replies = logkit.set_level(mod.app, level, destination=[w.hostname], timeout=60)
        assert w.hostname in replies[0], replies
    wait_for(lambda: len([r for r in _records(w) if r.get("event") == "log_level_changed"]) == 2,
             timeout=30, message=w.describe)
    changes = [(r["new_level"], r["previous"]) for r in _records(w)
               if r.get("event") == "log_level_changed"]
    assert changes == [("DEBUG", "INFO"), ("INFO", "DEBUG")]


def test_a_drop_report_is_written_with_the_first_record_after(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "app.log"
    sink = Sink(str(path), watch=True)
    log = logging.getLogger("reentrant.sink")
    log.handlers[:] = [SinkHandler(sink, JsonFormatter(LogConfig(format="json")))]
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        log.info("before")
        _swap(path, "/dev/full")  # like logrotate, but the new file is a full disk
        time.sleep(WATCH_INTERVAL * 1.5)  # the path is looked up again at the next write
        for i in range(3):
            log.info("lost %d", i)
        _swap(path, None)
        time.sleep(WATCH_INTERVAL * 1.5)
        log.info("after")  # written again: the report of the 3 comes with it
    finally:
        sink.close()
        log.handlers.clear()
    capfd.readouterr()
    records = parse_json_lines(path.read_text())
    assert [r["message"] for r in records][:1] == ["after"], records
    (report,) = [r for r in records if r.get("event") == "log_records_dropped"]
    assert report["count"] == 3 and report["reason"] == "No space left on device"


def test_what_a_task_outside_the_sample_kept_is_written(
    app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker]
) -> None:
    appmod = app_factory(BODY)
    w = worker_factory(appmod, logfile="worker.log", concurrency=1,
                       extra_args=["--log-task-sample", "0"])  # no workflow in the sample
    result = appmod.load().fails_after_info.delay()
    result.get(timeout=60, propagate=False)
    wait_for(lambda: any(r.get("event") == "task_failed" for r in _records(w)), timeout=30,
             message=w.describe)
    mine = [(r.get("event") or r["message"], r.get("sampled_out"))
            for r in _records(w) if r.get("task_id") == result.id]
    assert mine == [("task_received", True), ("kept info", True), ("task_failed", None)], mine
