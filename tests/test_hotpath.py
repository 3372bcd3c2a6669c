"""The per-task hot path: one road for event records, the quieted trace logger, the sink's
fstat/look-up split, structlog.contextvars around tasks.

* unit: an event record (``events.emit``) is written exactly as an ordinary record with the
  same ``extra`` fields on ``logkit.events`` (timestamp aside), for every format and the
  configs that change the line: one road, call -> ``LogRecord`` -> field builder -> sink;
  every user handler, filter, queue, record factory or ``makeRecord`` wrapper sees it;
* unit: ``quiet_trace_logger`` sets/unsets ``celery.app.trace`` to WARNING as documented;
* eager tasks: one task_started (set to INFO here: DEBUG by default) + one task_succeeded per
  task, Celery's "ignored" line once;
* a real prefork worker (json, ``-l INFO``, log file), then a second one with
  ``task_succeeded`` disabled (Celery's own "succeeded in" lines come back);
* the watched sink: deleted / replaced / renamed files;
* structlog.contextvars bound by a task end with it, earlier ones come back.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
from celery import Celery
from celery.exceptions import Ignore
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from workerutil import Worker, make_app, parse_json_lines, start_worker, wait_for

import logkit
from logkit import context, events, receivers, sinks
from logkit.handlers import WATCH_INTERVAL, Sink, flush_queues

INFO = logging.INFO
TRACE = "celery.app.trace"
LOGGER_NAMES = ("", "celery", "celery.task", "celery.redirected", "multiprocessing",
                "logkit", events.EVENTS_LOGGER, TRACE, "celery.worker.strategy")
# every timestamp logkit writes: JSON (UTC, "T", "Z"), console (local, " "), plain (",")
TIMESTAMP = re.compile(rb"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d[.,]\d{3}Z?")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _is_pytest(handler: logging.Handler) -> bool:
    return type(handler).__module__.startswith("_pytest")


def _trace_quieted() -> bool:
    """Does logkit hold celery.app.trace at WARNING (by its own decision)?"""
    inst = receivers.installation()
    return inst is not None and TRACE in inst.quieted


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """The contexts a test bound are cleared, and a record factory it set is put back
    (logkit's own changes are undone by ``logkit.uninstall()``, in conftest)."""
    factory = logging.getLogRecordFactory()
    try:
        yield
    finally:
        logkit.uninstall()
        context.clear()
        structlog.contextvars.clear_contextvars()
        logging.setLogRecordFactory(factory)


def _app(**conf: Any) -> Celery:
    app = Celery("hotpath", set_as_current=False)
    app.conf.update(task_always_eager=True, broker_url="memory://",
                    worker_redirect_stdouts=False, **conf)
    return app


#: task_started is DEBUG by default; these tests exercise its fast path too, at INFO.
STARTED_AT_INFO = {"task_started": "INFO"}


def _setup(tmp_path: Path, fmt: str = "json", app: Celery | None = None,
           **opts: Any) -> tuple[Celery, Path]:
    """install() + configure() into a fresh log file; returns the app and the file."""
    app = app or _app()
    logfile = tmp_path / f"{fmt}-{uuid.uuid4().hex[:6]}.log"
    opts.setdefault("event_levels", STARTED_AT_INFO)
    logkit.install(app, format=fmt, **opts)
    logkit.configure(loglevel="INFO", logfile=str(logfile), app=app)
    return app, logfile


def _written(path: Path, action: Callable[[], Any]) -> bytes:
    """What ``action`` appended to ``path``."""
    before = path.stat().st_size if path.exists() else 0
    action()
    flush_queues()
    with open(path, "rb") as fh:
        fh.seek(before)
        return fh.read()


def _no_timestamp(line: bytes) -> bytes:
    return TIMESTAMP.sub(b"<TS>", line, count=1)


@dataclass
class Pair:
    slow: bytes  # an ordinary record on logkit.events with the event's extra fields
    fast: bytes  # events.emit


def _emit_both(path: Path, event: str, fields: dict[str, Any],
               monkeypatch: pytest.MonkeyPatch) -> Pair:
    """The event's line, and the line of a record made and handled by ``logkit.events``
    as any other (its source location: the event module's, as events have)."""
    events_logger = logging.getLogger(events.EVENTS_LOGGER)

    written = {k: v for k, v in fields.items() if v is not None}  # an event writes no null

    def ordinary() -> None:
        events_logger.handle(events_logger.makeRecord(
            events_logger.name, INFO, events.base.SOURCE, 0, events.MESSAGES[event], (), None,
            extra={"event": event, **written}))

    slow = _written(path, ordinary)
    fast = _written(path, lambda: events.emit(event, INFO, fields))
    return Pair(slow, fast)


def _assert_same(pair: Pair, fmt: str) -> None:
    assert pair.slow.count(b"\n") == 1 and pair.fast.count(b"\n") == 1, pair
    assert _no_timestamp(pair.fast) == _no_timestamp(pair.slow)
    if fmt == "json":  # the same keys in the same order (and values)
        assert list(json.loads(pair.fast)) == list(json.loads(pair.slow))


class Opaque:
    """Something orjson cannot serialise (its repr is stable)."""

    def __repr__(self) -> str:
        return "<Opaque thing>"


def _cyclic() -> list[Any]:
    lst: list[Any] = [1, "two"]
    lst.append(lst)
    return lst


TASK_CTX = {"task_id": "9f1c0c1e-0000-4000-8000-000000000001", "task_name": "proj.charge",
            "retries": 0, "worker": "celery@host"}
SUCCEEDED = {"duration_ms": 12.345, "result": "{'slept': 0.3}"}

# name -> (install options, bound context, event fields)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "task_context": ({}, {**TASK_CTX, "request_id": "r-42"}, SUCCEEDED),
    "no_context": ({}, {}, SUCCEEDED),
    "started_no_fields": ({}, TASK_CTX, {}),
    "static_fields": ({"fields": {"service": "billing", "env": "prod"}},
                      {**TASK_CTX, "request_id": "r-1"}, SUCCEEDED),
    "static_field_rebound": ({"fields": {"service": "billing"}},
                             {"service": "from-context", **TASK_CTX}, SUCCEEDED),
    "field_names": ({"field_names": {"message": "msg", "level": "severity", "timestamp": "ts",
                                     "task_id": "tid", "process": "pid", "thread": "tid_os",
                                     "logger": "source"}},
                    {"tid": TASK_CTX["task_id"], "task_name": "proj.charge"}, SUCCEEDED),
    "ctx_level_message": ({}, {**TASK_CTX, "level": "ctx-level", "message": "ctx-msg"},
                          SUCCEEDED),
    "ctx_timestamp_logger": ({}, {"timestamp": "ctx-ts", "logger": "ctx-logger"}, SUCCEEDED),
    "ctx_event_result": ({}, {**TASK_CTX, "event": "ctx-event", "result": "ctx-result",
                              "duration_ms": -1}, SUCCEEDED),
    "ctx_process_thread": ({}, {**TASK_CTX, "process": "ctx-p", "thread": "ctx-t"}, SUCCEEDED),
    "renamed_process_in_ctx": ({"field_names": {"process": "pid"}}, {"pid": 1}, SUCCEEDED),
    "long_result": ({"max_field_length": 64}, TASK_CTX,
                    {"duration_ms": 1.0, "result": "y" * 500}),
    "tiny_max_length": ({"max_field_length": 5}, {"request_id": "abcdefghij"}, SUCCEEDED),
    "unserialisable_object": ({}, {**TASK_CTX, "thing": Opaque()}, SUCCEEDED),
    "cyclic_list": ({}, {**TASK_CTX, "loop": _cyclic()}, SUCCEEDED),
    "huge_int_and_bytes": ({}, {"big": 2**70, "raw": b"\xff\x00ok"}, SUCCEEDED),
    "secret_in_result": ({}, TASK_CTX, {"duration_ms": 2.0, "result": "{'password': 'x'}"}),
    "secret_kv_in_result": ({"redact_keys": ["api_key"]}, TASK_CTX,
                            {"duration_ms": 2.0, "result": "api_key=abc123 ok: yes"}),
    "no_redaction": ({"redact_keys": []}, TASK_CTX,
                     {"duration_ms": 2.0, "result": "{'password': 'x'}"}),
    "control_chars": ({}, {"note": "line1\nline2\x1b[31m"}, {"duration_ms": None,
                                                              "result": "a\nb"}),
}


# --------------------------------------------------------------------------
# an event's line == an ordinary record's line (one road)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "console", "plain"])
@pytest.mark.parametrize("case", list(CASES))
def test_event_line_equals_an_ordinary_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, case: str
) -> None:
    options, ctx, fields = CASES[case]
    _, logfile = _setup(tmp_path, fmt, **options)
    event = "task_succeeded" if fields else "task_started"
    with context.bound(**ctx):
        pair = _emit_both(logfile, event, dict(fields), monkeypatch)
    _assert_same(pair, fmt)
    text = pair.fast.decode()
    assert "hunter" not in text
    if case == "secret_in_result":
        assert "[REDACTED]" in text and "'x'" not in text
    if case == "secret_kv_in_result":
        assert "abc123" not in text and "[REDACTED]" in text
    if case == "no_redaction":
        assert "'password': 'x'" in text or "\\'password\\': \\'x\\'" in text
    if fmt == "json":
        line = json.loads(pair.fast)
        names = options.get("field_names", {})
        assert line[names.get("level", "level")] == "INFO"
        if case != "tiny_max_length":  # there message and event are capped, in both lines
            assert line[names.get("message", "message")] == events.MESSAGES[event]
            assert line["event"] == event
        if case not in ("ctx_process_thread", "renamed_process_in_ctx"):  # bound: kept in place
            # no thread: the main thread's id is left out (#37)
            assert list(line)[-1] == names.get("process", "process")
            assert names.get("thread", "thread") not in line
        if case == "static_fields":
            assert (line["service"], line["env"]) == ("billing", "prod")
        if case == "ctx_level_message":  # base fields win over bound keys
            assert (line["level"], line["message"]) == ("INFO", "Task succeeded")
        if case == "ctx_event_result":
            assert (line["event"], line["result"]) == ("task_succeeded", SUCCEEDED["result"])
        if case == "long_result":
            assert len(line["result"]) < 120 and "truncated" in line["result"]
        if case == "cyclic_list":
            assert line["loop"][:2] == [1, "two"]


def _contexts() -> st.SearchStrategy[dict[str, Any]]:
    scalars = (
        st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=20) | st.binary(max_size=8) | st.just(Opaque())
    )
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=6,
    )
    keys = st.sampled_from(
        ["timestamp", "level", "logger", "message", "event", "result", "duration_ms",
         "process", "thread", "task_id", "task_name", "service", "args", "msg", "name",
         "exception", "stack", "request_id"]
    ) | st.text(min_size=1, max_size=8)
    return st.dictionaries(keys, values, max_size=6)


@pytest.mark.parametrize("fmt", ["json", "console", "plain"])
def test_event_line_equals_an_ordinary_records_random_contexts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    _, logfile = _setup(tmp_path, fmt, fields={"service": "svc"}, max_field_length=40)

    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(ctx=_contexts(), result=st.text(max_size=60))
    def check(ctx: dict[str, Any], result: str) -> None:
        with context.bound(**ctx):
            pair = _emit_both(logfile, "task_succeeded",
                              {"duration_ms": 1.25, "result": result}, monkeypatch)
        _assert_same(pair, fmt)
        if fmt == "json":
            line = json.loads(pair.fast)
            assert (line["level"], line["message"]) == ("INFO", "Task succeeded")

    check()


@pytest.mark.parametrize("fmt", ["json", "plain"])
def test_event_redacted_by_key_like_an_ordinary_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    _, logfile = _setup(tmp_path, fmt, redact_keys=["password", "result"])
    with context.bound(**TASK_CTX):
        pair = _emit_both(logfile, "task_succeeded",
                          {"duration_ms": 1.0, "result": "'card 4111'"}, monkeypatch)
    assert b"[REDACTED]" in pair.slow  # emit: the whole value, by key
    _assert_same(pair, fmt)


def test_event_sees_a_mutated_context_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, logfile = _setup(tmp_path, "json")
    steps: list[str] = ["a"]
    with context.bound(steps=steps, **TASK_CTX):
        first = _emit_both(logfile, "task_started", {}, monkeypatch)
        _assert_same(first, "json")
        steps.append("b")
        second = _emit_both(logfile, "task_started", {}, monkeypatch)
    assert json.loads(second.slow)["steps"] == ["a", "b"]
    _assert_same(second, "json")


def test_eager_task_result_redacted_by_key(tmp_path: Path) -> None:
    app, logfile = _setup(tmp_path, "json", redact_keys=["password", "result"])

    @app.task(name="hot.card")
    def card() -> str:
        return "4111 1111 1111 1111"

    task_id = card.apply().id
    (succeeded,) = [r for r in parse_json_lines(logfile.read_text())
                    if r.get("event") == "task_succeeded" and r["task_id"] == task_id]
    assert succeeded["result"] == "[REDACTED]"


def test_eager_task_succeeded_shows_the_current_context_values(tmp_path: Path) -> None:
    app, logfile = _setup(tmp_path, "json")
    stats = {"processed": 0}
    log = logging.getLogger("hot.count")

    @app.task(name="hot.count")
    def count() -> None:
        stats["processed"] += 1
        log.info("counted")

    with logkit.bound(stats=stats):
        task_id = count.apply().id
    records = [r for r in parse_json_lines(logfile.read_text()) if r.get("task_id") == task_id]
    by_message = {r["message"]: r for r in records}
    assert by_message["counted"]["stats"] == {"processed": 1}  # an ordinary record: current
    assert by_message["Task started"]["stats"] == {"processed": 0}
    assert by_message["Task succeeded"]["stats"] == {"processed": 1}


# --------------------------------------------------------------------------
# every event is a LogRecord on logkit.events: whatever is on the way sees it
# --------------------------------------------------------------------------


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Marker(logging.Filter):
    """Counts the event records it sees and tags them (the tag must reach the file)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        event = getattr(record, "event", None)
        if event is not None:
            self.seen.append(event)
            record.marked = "by-filter"
        return True


def _events_in(logfile: Path, task_id: str) -> list[dict[str, Any]]:
    flush_queues()
    return [r for r in parse_json_lines(logfile.read_text())
            if r.get("event") and r.get("task_id") == task_id]


@pytest.mark.parametrize(
    "scenario",
    ["events_handler", "events_logger_filter", "root_handler_filter", "root_logger_filter",
     "queue", "record_factory", "events_not_propagating_to_root", "patched_call_handlers",
     "wrapped_make_record"],
)
def test_fallback_keeps_every_event_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scenario: str
) -> None:
    app, logfile = _setup(tmp_path, "json", queue=scenario == "queue")
    events_logger = logging.getLogger(events.EVENTS_LOGGER)
    root = logging.getLogger()
    recorder, marker = Recorder(), Marker()
    if scenario == "events_handler":
        events_logger.addHandler(recorder)
    elif scenario == "events_logger_filter":
        events_logger.addFilter(marker)
    elif scenario == "root_handler_filter":
        root.handlers[0].addFilter(marker)
    elif scenario == "root_logger_filter":
        root.addFilter(marker)
    elif scenario == "record_factory":
        base = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = base(*args, **kwargs)
            record.factory_mark = "custom"
            return record

        logging.setLogRecordFactory(factory)
    elif scenario == "events_not_propagating_to_root":
        events_logger.addHandler(recorder)
        events_logger.propagate = False
    elif scenario == "patched_call_handlers":  # what Sentry's logging integration does
        original = logging.Logger.callHandlers
        seen: list[str] = []

        def call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
            seen.append(getattr(record, "event", ""))
            original(self, record)

        monkeypatch.setattr(logging.Logger, "callHandlers", call_handlers)
    elif scenario == "wrapped_make_record":  # what ddtrace's log injection does
        make_record = logging.Logger.makeRecord

        def wrapped(self: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make_record(self, *args, **kwargs)
            record.__dict__["dd.trace_id"] = "123"
            return record

        monkeypatch.setattr(logging.Logger, "makeRecord", wrapped)

    @app.task(name="hot.add")
    def add(x: int, y: int) -> int:
        return x + y

    result = add.apply((2, 3))
    assert result.get() == 5
    found = _events_in(logfile, result.id)
    if scenario == "events_not_propagating_to_root":
        assert found == []  # as with emit(): the record never reaches the root's handler
    else:
        assert [r["event"] for r in found] == ["task_started", "task_succeeded"], found
        assert found[1]["result"] == "5" and found[1]["duration_ms"] >= 0
        assert found[1]["task_name"] == "hot.add"
    if scenario in ("events_handler", "events_not_propagating_to_root"):
        assert [r.event for r in recorder.records] == [  # type: ignore[attr-defined]
            "task_started", "task_succeeded"]
        assert recorder.records[1].result == "5"  # type: ignore[attr-defined]
    if scenario in ("events_logger_filter", "root_handler_filter"):
        assert marker.seen == ["task_started", "task_succeeded"]
        assert all(r["marked"] == "by-filter" for r in found)
    if scenario == "root_logger_filter":
        # stdlib: a logger's filters see only records logged on it, not propagated ones
        assert marker.seen == []
        assert all("marked" not in r for r in found)
    if scenario == "record_factory":
        assert all(r["factory_mark"] == "custom" for r in found)
    if scenario == "patched_call_handlers":
        assert [e for e in seen if e] == ["task_started", "task_succeeded"]
    if scenario == "wrapped_make_record":
        assert all(r["dd.trace_id"] == "123" for r in found)


# --------------------------------------------------------------------------
# quiet_trace_logger
# --------------------------------------------------------------------------


def _trace_level() -> int:
    return logging.getLogger(TRACE).level


def test_trace_logger_quieted_while_events_replace_its_lines(tmp_path: Path) -> None:
    app, logfile = _setup(tmp_path, "json")
    assert _trace_level() == logging.WARNING and _trace_quieted()
    logkit.configure(loglevel="INFO", logfile=str(logfile), app=app,
                     disabled_events=["task_retried"])
    assert _trace_level() == logging.NOTSET and not _trace_quieted()
    logkit.configure(loglevel="INFO", logfile=str(logfile), app=app, disabled_events=[])
    assert _trace_level() == logging.WARNING
    logkit.configure(loglevel="INFO", logfile=str(logfile), app=app, events=False)
    assert _trace_level() == logging.NOTSET


@pytest.mark.parametrize("disabled", ["task_succeeded", "task_retried", "task_failed"])
def test_trace_logger_not_quieted_when_an_event_is_off(tmp_path: Path, disabled: str) -> None:
    _setup(tmp_path, "json", disabled_events=[disabled])
    assert _trace_level() == logging.NOTSET


@pytest.mark.parametrize("user_level", [logging.DEBUG, logging.INFO, logging.ERROR])
def test_trace_logger_level_set_by_the_user_is_left_alone(
    tmp_path: Path, user_level: int
) -> None:
    logging.getLogger(TRACE).setLevel(user_level)
    app, logfile = _setup(tmp_path, "json")
    assert _trace_level() == user_level and not _trace_quieted()
    logkit.configure(loglevel="INFO", logfile=str(logfile), app=app,
                     disabled_events=["task_retried"])
    assert _trace_level() == user_level
    logkit.configure(loglevel="INFO", logfile=str(logfile), app=app, disabled_events=[])
    assert _trace_level() == user_level


def test_trace_logger_not_quieted_with_deduplicate_successful_tasks(tmp_path: Path) -> None:
    _setup(tmp_path, "json", app=_app(worker_deduplicate_successful_tasks=True))
    assert _trace_level() == logging.NOTSET


# --------------------------------------------------------------------------
# eager tasks
# --------------------------------------------------------------------------


def _eager_tasks(app: Celery) -> tuple[Any, Any]:
    @app.task(name="hot.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="hot.skip")
    def skip() -> None:
        raise Ignore()

    return mul, skip


def _ignored_lines(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["message"].endswith("] ignored")]


@pytest.mark.parametrize("fmt", ["json", "plain"])
def test_eager_one_started_one_succeeded_per_task(tmp_path: Path, fmt: str) -> None:
    app, logfile = _setup(tmp_path, fmt)
    mul, _ = _eager_tasks(app)
    ids = [mul.apply((i, 3)).id for i in range(4)]
    text = logfile.read_text()
    if fmt == "plain":
        for task_id in ids:
            lines = [ln for ln in text.splitlines() if task_id in ln]
            assert len([ln for ln in lines if "Task started" in ln]) == 1, lines
            assert len([ln for ln in lines if "Task succeeded" in ln]) == 1, lines
        assert "succeeded in" not in text
        return
    records = parse_json_lines(text)
    for i, task_id in enumerate(ids):
        mine = [r for r in records if r.get("task_id") == task_id]
        assert [r.get("event") for r in mine] == ["task_started", "task_succeeded"], mine
        succeeded = mine[1]
        assert succeeded["task_name"] == "hot.mul" and succeeded["logger"] == "logkit.events"
        assert succeeded["result"] == repr(i * 3)
        assert isinstance(succeeded["duration_ms"], float) and succeeded["duration_ms"] >= 0
        assert list(succeeded)[-1] == "process" and "thread" not in succeeded
    assert not [r for r in records if "succeeded in" in r["message"]]


@pytest.mark.parametrize("quiet", [True, False])
def test_eager_ignored_line_exactly_once(tmp_path: Path, quiet: bool) -> None:
    options = {} if quiet else {"disabled_events": ["task_succeeded"]}
    app, logfile = _setup(tmp_path, "json", **options)
    assert _trace_level() == (logging.WARNING if quiet else logging.NOTSET)
    mul, skip = _eager_tasks(app)
    skipped = skip.apply()
    assert skipped.state == "IGNORED"
    done = mul.apply((2, 2))
    records = parse_json_lines(logfile.read_text())
    ignored = _ignored_lines(records)
    assert len(ignored) == 1, records
    line = ignored[0]
    assert line["logger"] == TRACE and line["level"] == "INFO"
    assert line["message"] == f"Task hot.skip[{skipped.id}] ignored"
    assert line["task_id"] == skipped.id  # logged with the task's context
    assert line["data"]["id"] == skipped.id and line["data"]["description"] == "ignored"
    assert not [r for r in records if r.get("event") == "task_succeeded"
                and r.get("task_id") == skipped.id]
    prose = [r for r in records if "succeeded in" in r["message"]]
    if quiet:
        assert prose == []
    else:  # task_succeeded off: Celery's own line, once
        assert [r["task_id"] for r in prose] == [done.id]


def _ignored_record(tmp_path: Path, **options: Any) -> dict[str, Any]:
    app, logfile = _setup(tmp_path, "json", **options)

    @app.task(name="hot.skip_args")
    def skip_args(x: int, password: str | None = None) -> None:
        raise Ignore()

    task_id = skip_args.apply((1,), {"password": "pw"}).id
    (line,) = _ignored_lines(parse_json_lines(logfile.read_text()))
    assert line["task_id"] == task_id
    return line


def _comparable(line: dict[str, Any]) -> dict[str, Any]:
    """The line without what differs by time, task id and (Celery's) traceback text."""
    task_id = line["task_id"]
    out = {k: v for k, v in line.items() if k not in ("timestamp", "process", "thread")}
    out = json.loads(json.dumps(out).replace(task_id, "<id>"))
    out["data"].pop("traceback")
    out["data"].pop("internal")
    return out


def test_reemitted_ignored_line_matches_celerys(tmp_path: Path) -> None:
    ours = _ignored_record(tmp_path)  # celery.app.trace quieted: re-emitted by logkit
    celerys = _ignored_record(tmp_path, disabled_events=["task_succeeded"])
    assert _trace_level() == logging.NOTSET
    assert list(ours) == list(celerys)  # same keys, same order
    assert _comparable(ours) == _comparable(celerys)
    assert ours["data"]["kwargs"] == "{'password': '[REDACTED]'}"


def test_reemitted_ignored_line_internal_flag_matches_celerys(tmp_path: Path) -> None:
    ours = _ignored_record(tmp_path)
    celerys = _ignored_record(tmp_path, disabled_events=["task_succeeded"])
    assert ours["data"]["internal"] == celerys["data"]["internal"]


# --------------------------------------------------------------------------
# the generated task-context filler
# --------------------------------------------------------------------------


def _queue_of(request: Any) -> Any:
    info = request.delivery_info or {}
    return info.get("routing_key") or info.get("queue")


#: The task fields read straight from the task and its request (the generated filler's oracle).
REFERENCE_FIELDS: dict[str, Callable[[Any, Any], Any]] = {
    "task_id": lambda task, req: req.id,
    "task_name": lambda task, req: task.name,
    "parent_id": lambda task, req: req.parent_id,
    "root_id": lambda task, req: req.root_id,
    "retries": lambda task, req: req.retries,
    "worker": lambda task, req: req.hostname,
    "queue": lambda task, req: _queue_of(req),
    "correlation_id": lambda task, req: req.correlation_id,
}


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        (None, {}),
        (None, {"task_id": "tid", "task_name": "job", "worker": "host", "queue": "q"}),
        (["retries", "task_id", "queue"], {"retries": "attempt"}),
        (["task_name", "root_id"], {"root_id": "trace_id"}),
    ],
)
def test_task_context_fields_and_names(
    tmp_path: Path, fields: list[str] | None, names: dict[str, str]
) -> None:
    options: dict[str, Any] = {"field_names": names}
    if fields is not None:
        options["context_fields"] = fields
    app, logfile = _setup(tmp_path, "json", **options)
    chosen = fields if fields is not None else list(REFERENCE_FIELDS)
    seen: dict[str, Any] = {}

    @app.task(name="hot.ctx", bind=True)
    def ctx_task(self: Any) -> None:
        seen["ctx"] = list(logkit.get_context().items())
        expected = []
        for name in chosen:  # what an independent reading of the request gives
            value = REFERENCE_FIELDS[name](self, self.request)
            # left out (#37): what repeats the task id (when it is written), a 0 retries
            same_as_id = (name in ("root_id", "correlation_id") and "task_id" in chosen
                          and value == self.request.id)
            if value is not None and not same_as_id and not (name == "retries" and value == 0):
                expected.append((names.get(name, name), value))
        seen["expected"] = expected
        logging.getLogger("hot.ctx").info("inside")

    with logkit.bound(request_id="r-9"):
        task_id = ctx_task.apply().id
    assert seen["ctx"] == [("request_id", "r-9"), *seen["expected"]]
    keys = {key for key, _ in seen["expected"]}
    id_key = names.get("task_id", "task_id")
    if "task_id" in chosen:
        assert dict(seen["ctx"])[id_key] == task_id
    (inside,) = [r for r in parse_json_lines(logfile.read_text()) if r["message"] == "inside"]
    hidden = {names.get(n, n) for n in REFERENCE_FIELDS} - keys
    assert keys <= set(inside) and not hidden & set(inside)
    assert inside["request_id"] == "r-9"


# --------------------------------------------------------------------------
# real workers
# --------------------------------------------------------------------------

WORKER_BODY = """
import logging

from celery.exceptions import Ignore

import logkit
from logkit.events import prose

logkit.install(app, format="json", event_levels={"task_started": "INFO"})


@app.task
def double(i):
    return i * 2


@app.task
def skip(flag):
    with open(flag, "w"):
        pass
    raise Ignore()


@app.task
def secret():
    return {"password": "hunter2", "user": "bob"}


@app.task
def trace_state():
    inst = logkit.receivers.installation()
    on = "celery.app.trace" in inst.quieted
    return [logging.getLogger("celery.app.trace").level, on]
"""


@dataclass
class WorkerRun:
    worker: Worker
    text: str
    records: list[dict[str, Any]]
    ids: dict[str, list[str]] = field(default_factory=dict)
    trace_state: Any = None


def _run_worker(appmod: Any, nodename: str, logfile: str, env: dict[str, str]) -> WorkerRun:
    worker = start_worker(appmod, logfile=logfile, nodename=nodename, env=env)
    try:
        mod = appmod.load()
        flag = appmod.workdir / f"skipped-{logfile}"
        doubles = [mod.double.delay(i) for i in range(3)]
        skip = mod.skip.delay(str(flag))
        secret = mod.secret.delay()
        state = mod.trace_state.delay()
        assert [r.get(timeout=30) for r in doubles] == [0, 2, 4]
        assert secret.get(timeout=30) == {"password": "hunter2", "user": "bob"}
        trace_state = state.get(timeout=30)
        wait_for(flag.exists, timeout=30, message="the Ignore task never ran")
        assert worker.stop(timeout=20) == 0  # warm: the running Ignore task completes
        text = worker.read_log()
        ids = {"double": [r.id for r in doubles], "skip": [skip.id], "secret": [secret.id],
               "trace_state": [state.id]}
        return WorkerRun(worker, text, parse_json_lines(text, logfile), ids, trace_state)
    finally:
        worker.stop(timeout=15)


@dataclass
class Runs:
    quiet: WorkerRun  # default: events on, celery.app.trace quieted
    loud: WorkerRun  # LOGKIT_DISABLED_EVENTS=task_succeeded


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    appmod = make_app(tmp_path_factory.mktemp("hotpath"), WORKER_BODY)
    try:
        quiet = _run_worker(appmod, "quiet@%h", "quiet.log", {})
        loud = _run_worker(appmod, "loud@%h", "loud.log",
                           {"LOGKIT_DISABLED_EVENTS": "task_succeeded"})
        yield Runs(quiet, loud)
    finally:
        appmod.unload()


def _task_events(run: WorkerRun, kind: str, task_id: str) -> list[dict[str, Any]]:
    return [r for r in run.records if r.get("event") == kind and r.get("task_id") == task_id]


@pytest.mark.worker
def test_worker_one_started_one_succeeded_per_task(runs: Runs) -> None:
    run = runs.quiet
    assert run.trace_state == [logging.WARNING, True]  # quieted in the pool child too
    for name in ("double", "secret", "trace_state"):
        for task_id in run.ids[name]:
            for kind in ("task_started", "task_succeeded"):
                found = _task_events(run, kind, task_id)
                assert len(found) == 1, (kind, task_id, found)
                record = found[0]
                assert record["task_name"].endswith(f".{name}")
                assert record["worker"] == run.worker.hostname
                assert record["process"] != run.worker.pid  # from a pool child
            succeeded = _task_events(run, "task_succeeded", task_id)[0]
            assert succeeded["duration_ms"] >= 0
    results = [_task_events(run, "task_succeeded", i)[0]["result"] for i in run.ids["double"]]
    assert results == ["0", "2", "4"]
    assert not [r for r in run.records if "succeeded in" in r["message"]]
    assert "succeeded in" not in run.text


@pytest.mark.worker
def test_worker_ignored_line_once_and_secret_redacted(runs: Runs) -> None:
    run = runs.quiet
    (skip_id,) = run.ids["skip"]
    ignored = _ignored_lines(run.records)
    assert len(ignored) == 1, ignored
    assert ignored[0]["logger"] == TRACE and ignored[0]["level"] == "INFO"
    assert ignored[0]["task_id"] == skip_id and skip_id in ignored[0]["message"]
    assert len(_task_events(run, "task_started", skip_id)) == 1
    assert _task_events(run, "task_succeeded", skip_id) == []
    (secret_id,) = run.ids["secret"]
    result = _task_events(run, "task_succeeded", secret_id)[0]["result"]
    assert result == "{'password': '[REDACTED]', 'user': 'bob'}"
    assert "hunter2" not in run.text


@pytest.mark.worker
def test_worker_with_task_succeeded_off_keeps_celery_lines(runs: Runs) -> None:
    run = runs.loud
    assert run.trace_state == [logging.NOTSET, False]
    assert not [r for r in run.records if r.get("event") == "task_succeeded"]
    prose = [r for r in run.records if "succeeded in" in r["message"]]
    expected = [i for name in ("double", "secret", "trace_state") for i in run.ids[name]]
    assert sorted(r["task_id"] for r in prose) == sorted(expected)
    assert all(r["logger"] == TRACE and r["level"] == "INFO" for r in prose)
    for task_id in expected:
        assert len(_task_events(run, "task_started", task_id)) == 1
    (skip_id,) = run.ids["skip"]
    ignored = _ignored_lines(run.records)
    assert [r["task_id"] for r in ignored] == [skip_id]  # Celery's own, once
    assert "hunter2" not in run.text  # Celery's line is redacted too


# --------------------------------------------------------------------------
# the watched sink
# --------------------------------------------------------------------------


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_sink_deleted_file_noticed_on_next_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no path look-up for a minute: only the per-write fstat can notice the deletion
    monkeypatch.setattr(sinks, "WATCH_INTERVAL", 60.0)
    path = tmp_path / "app.log"
    sink = Sink(str(path), watch=True)
    try:
        sink.write(b"first\n")
        path.unlink()
        sink.write(b"second\n")
        assert _lines(path) == ["second"]
        replacement = tmp_path / "app.log.new"
        replacement.write_text("rotated\n")
        os.replace(replacement, path)  # replaced by a rename over it: old inode unlinked
        sink.write(b"third\n")
        assert _lines(path) == ["rotated", "third"]
    finally:
        sink.close()


def test_sink_renamed_file_lines_kept_then_new_file(tmp_path: Path) -> None:
    path, moved = tmp_path / "app.log", tmp_path / "app.log.1"
    sink = Sink(str(path), watch=True)
    n, m = 20, 7
    try:
        sink.write(b"before\n")  # a look-up now: the next is WATCH_INTERVAL away
        os.rename(path, moved)
        started = time.monotonic()
        for i in range(n):
            sink.write(f"early {i}\n".encode())
        within = time.monotonic() - started < WATCH_INTERVAL
        time.sleep(WATCH_INTERVAL * 1.5)
        for i in range(m):
            sink.write(f"late {i}\n".encode())
    finally:
        sink.close()
    old, new = _lines(moved), _lines(path)
    expected = [f"early {i}" for i in range(n)] + [f"late {i}" for i in range(m)]
    assert old[0] == "before"
    assert sorted(old[1:] + new) == sorted(expected)  # nothing lost, nothing twice
    assert old[1:] + new == expected  # in order: the renamed file first
    assert new[-m:] == [f"late {i}" for i in range(m)]
    assert not [ln for ln in old if ln.startswith("late")]
    if within:  # the usual case: written before the next look-up, into the renamed file
        assert old[1:] == [f"early {i}" for i in range(n)] and new == expected[n:]


# --------------------------------------------------------------------------
# structlog.contextvars around tasks
# --------------------------------------------------------------------------


def test_structlog_contextvars_restored_after_each_task(tmp_path: Path) -> None:
    app, logfile = _setup(tmp_path, "json")
    cv = structlog.contextvars
    fresh = f"fresh_{uuid.uuid4().hex[:8]}"  # a ContextVar first created inside the task
    seen: dict[str, dict[str, Any]] = {}
    log = structlog.get_logger("hot.sl")

    @app.task(name="hot.binder")
    def binder() -> None:
        seen["start"] = cv.get_contextvars()
        cv.bind_contextvars(inner="task-only", rebound="changed", **{fresh: 1})
        cv.unbind_contextvars("unbound")
        log.info("in task")

    @app.task(name="hot.outer")
    def outer() -> None:
        cv.bind_contextvars(outer_key="outer-task")
        binder.apply()
        seen["outer_after_inner"] = cv.get_contextvars()

    @app.task(name="hot.raiser")
    def raiser() -> None:
        cv.bind_contextvars(from_failure="x", rebound="failed")
        raise RuntimeError("boom")

    cv.clear_contextvars()
    cv.bind_contextvars(kept="yes", rebound="orig", unbound="orig2")
    before = {"kept": "yes", "rebound": "orig", "unbound": "orig2"}
    binder.apply()
    assert seen["start"] == before
    assert cv.get_contextvars() == before
    outer.apply()
    assert seen["outer_after_inner"] == {**before, "outer_key": "outer-task"}
    assert cv.get_contextvars() == before
    assert raiser.apply().state == "FAILURE"
    assert cv.get_contextvars() == before
    log.info("after tasks")
    records = parse_json_lines(logfile.read_text())
    in_task = [r for r in records if r["message"] == "in task"]
    assert len(in_task) == 2
    assert in_task[0]["inner"] == "task-only" and in_task[0]["rebound"] == "changed"
    assert in_task[0][fresh] == 1 and "unbound" not in in_task[0]
    (after,) = [r for r in records if r["message"] == "after tasks"]
    assert (after["kept"], after["rebound"], after["unbound"]) == ("yes", "orig", "orig2")
    assert not {"inner", fresh, "outer_key", "from_failure"} & set(after)
