"""logkit.testing: the Records selectors and capture() (state, loggers, threads, events)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

import logkit
from logkit import context, receivers
from logkit.config import LogConfig
from logkit.testing import Records, capture

STD_CALL_HANDLERS = logging.Logger.callHandlers
NAMES = ("", "celery", "celery.task", "celery.app.trace", "celery.worker.strategy",
         "logkit", "logkit.events", "tests.testing")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """The context a test bound is cleared (logging is put back by ``logkit.uninstall()``,
    in conftest)."""
    try:
        yield
    finally:
        context.clear()


def _state() -> tuple[Any, ...]:
    root, task = logging.getLogger(), logging.getLogger("celery.task")
    return (logging.Logger.callHandlers, root.level, list(root.handlers), task.level,
            list(task.handlers), task.propagate)


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------

SAMPLE = [
    {"level": "INFO", "logger": "logkit.events", "message": "Task started",
     "event": "task_started", "task_id": "t1"},
    {"level": "INFO", "logger": "shop", "message": "charging", "task_id": "t1", "amount": 5},
    {"level": "ERROR", "logger": "logkit.events", "message": "Task failed", "event": "task_failed",
     "task_id": "t1", "exception": {"type": "ValueError", "message": "bad"}},
    {"level": "INFO", "logger": "logkit.events", "message": "Task started",
     "event": "task_started", "task_id": "t2"},
]


def test_filter_by_fields_nested_and_predicates() -> None:
    records = Records(SAMPLE)
    assert records.filter(task_id="t1", logger="shop") == [SAMPLE[1]]
    assert records.filter(level=logging.ERROR) == [SAMPLE[2]]
    assert records.filter(level="error") == [SAMPLE[2]]
    assert records.filter(exception__type="ValueError") == [SAMPLE[2]]
    assert records.filter(amount=lambda v: v > 1) == [SAMPLE[1]]
    assert records.filter(nope=None) == []  # a missing field never matches
    assert isinstance(records.filter(task_id="t1"), Records)


def test_events_messages_and_slices() -> None:
    records = Records(SAMPLE)
    assert [r["event"] for r in records.events()] == ["task_started", "task_failed",
                                                       "task_started"]
    assert records.events("task_failed") == [SAMPLE[2]]
    assert records.messages() == ["Task started", "charging", "Task failed", "Task started"]
    assert isinstance(records[1:], Records)
    assert records[1:].filter(event="task_started") == [SAMPLE[3]]
    assert [json.loads(line) for line in records.text().splitlines()] == SAMPLE


def test_renamed_fields_are_queried_by_their_logkit_name() -> None:
    renamed = [{"severity": "INFO", "msg": "hello", "logger": "x"}]
    records = Records(renamed, names={"level": "severity", "message": "msg"})
    assert records.filter(level="INFO") == renamed
    assert records.messages() == ["hello"]


def test_assert_logged_returns_the_record_or_explains() -> None:
    records = Records(SAMPLE)
    assert records.assert_logged(event="task_failed") is SAMPLE[2]
    with pytest.raises(AssertionError) as info:
        records.assert_logged(event="task_failed", exception__type="KeyError")
    text = str(info.value)
    assert text.startswith(
        "no record with event='task_failed', exception__type='KeyError' among 4 captured"
    )
    assert "ERROR logkit.events event='task_failed' task_id=t1… 'Task failed'" in text
    assert "[differs: exception__type='ValueError']" in text
    assert "[differs: event=<missing>, exception__type=<missing>]" in text


def test_assert_not_logged_and_wait_for() -> None:
    records = Records(SAMPLE)
    records.assert_not_logged(event="task_succeeded")
    with pytest.raises(AssertionError, match=r"expected no record with event='task_failed'"):
        records.assert_not_logged(event="task_failed")
    later = {"level": "INFO", "logger": "x", "message": "late", "event": "task_succeeded"}
    threading.Timer(0.05, records.append, (later,)).start()
    assert records.wait_for(event="task_succeeded", timeout=5) is later
    with pytest.raises(AssertionError, match=r"waited 0.05s"):
        records.wait_for(event="task_revoked", timeout=0.05)


# ---------------------------------------------------------------------------
# capture()
# ---------------------------------------------------------------------------


def test_capture_every_logger_as_json_dicts_and_restore_state() -> None:
    before = _state()
    quiet = logging.getLogger("tests.testing")
    own = logging.NullHandler()
    quiet.addHandler(own)
    quiet.propagate = False
    with capture() as records:
        assert logging.Logger.callHandlers is not STD_CALL_HANDLERS
        assert logging.getLogger().level == logging.DEBUG
        logging.getLogger("tests.testing.child").debug("debug %s", 1, extra={"n": (1, 2)})
        quiet.info("not propagated")
        logging.getLogger("celery.task").warning("task logger")
    assert _state() == before
    assert records.messages() == ["debug 1", "not propagated", "task logger"]
    first = records[0]
    assert first["level"] == "DEBUG" and first["logger"] == "tests.testing.child"
    assert first["n"] == [1, 2]  # what the JSON line holds, not the Python value
    assert {"timestamp", "process"} <= set(first)
    assert "thread" not in first  # the main thread's id is left out (#37)


def test_capture_level_and_bad_level() -> None:
    with capture(level="WARNING") as records:
        logging.getLogger("tests.testing").info("no")
        logging.getLogger("tests.testing").warning("yes")
    assert records.messages() == ["yes"]
    with pytest.raises(ValueError, match=r"level must be one of .*; got 'LOUD'"), \
            capture(level="LOUD"):
        pass


def test_nested_captures_and_threads() -> None:
    before = _state()
    log = logging.getLogger("tests.testing")
    with capture(level="INFO") as outer:
        log.info("one")
        with capture() as inner:
            log.debug("two")
            thread = threading.Thread(target=log.info, args=("three",))
            thread.start()
            thread.join()
        assert logging.getLogger().level == logging.INFO
        log.debug("four (below outer's level)")
    assert _state() == before
    assert outer.messages() == ["one", "three"]
    assert inner.messages() == ["two", "three"]


def test_level_set_by_a_worker_setup_during_the_capture() -> None:
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    with capture() as records:
        # what a worker's setup does: set the level, then fire the signals
        logkit.configure(loglevel="ERROR", format="json", logfile=None)
        assert root.level == logging.DEBUG
        logging.getLogger("tests.testing").info("still captured")
    assert root.level == logging.ERROR  # the worker's choice, not the level before
    assert "still captured" in records.messages()


def test_context_redaction_and_config_of_the_installation() -> None:
    app = Celery("testing_unit", set_as_current=False)
    logkit.install(app, fields={"service": "shop"}, field_names={"level": "severity"})
    with capture() as records, logkit.bound(request_id="r1"):
        logging.getLogger("celery.worker").info("got password='hunter2' token=abc")
    record = records.assert_logged(level="INFO", request_id="r1", service="shop")
    assert record["severity"] == "INFO"
    assert "hunter2" not in records.text()
    assert "[REDACTED]" in record["message"]


def test_default_config_without_installation() -> None:
    logkit.uninstall()
    assert receivers.installation() is None
    with capture() as records, logkit.bound(k="v"):
        logging.getLogger("tests.testing").info("plain")
    assert records.assert_logged(message="plain", k="v")["level"] == "INFO"
    assert capture(config=LogConfig(format="json", field_names={"message": "msg"}))


def _eager_app() -> tuple[Celery, Any, Any]:
    app = Celery("testing_eager", set_as_current=False)
    app.conf.task_always_eager = True

    @app.task(name="testing.add")
    def add(x: int, y: int, password: str | None = None) -> int:
        logging.getLogger("tests.testing").info("adding")
        return x + y

    @app.task(name="testing.boom")
    def boom() -> None:
        raise ValueError("bad")

    return app, add, boom


def test_eager_tasks_events_and_context() -> None:
    app, add, boom = _eager_app()
    logkit.install(app, log_args=True, event_levels={"task_started": "INFO"})
    with capture() as records, logkit.bound(request_id="r2"):
        result = add.delay(1, 2, password="hunter2")
        boom.apply()
    mine = records.filter(task_id=result.id)
    assert [r["event"] for r in mine.events()] == ["task_started", "task_succeeded"]
    assert {r["request_id"] for r in mine} == {"r2"}
    assert "'password': '[REDACTED]'" in mine.assert_logged(message="adding")["kwargs"]
    records.assert_logged(event="task_failed", exception__type="ValueError", request_id="r2")
    assert "hunter2" not in records.text()


def test_events_reach_the_capture_and_the_sink(tmp_path: Path) -> None:
    app, add, _ = _eager_app()
    logkit.install(app)
    log = tmp_path / "worker.log"
    logkit.configure(loglevel="INFO", logfile=str(log), format="json", app=app)
    with capture() as records:
        result = add.delay(2, 3)
    logkit.uninstall()  # the sink is closed: every line is in the file
    written = [json.loads(line) for line in log.read_text().splitlines()]
    succeeded = [r for r in written if r.get("event") == "task_succeeded"]
    captured = records.assert_logged(event="task_succeeded", task_id=result.id)
    assert len(succeeded) == 1
    assert {k: v for k, v in captured.items() if k not in ("timestamp", "duration_ms")} == {
        k: v for k, v in succeeded[0].items() if k not in ("timestamp", "duration_ms")
    }
