"""Issue #19: logkit next to the other logging hooks of a process (ddtrace, OpenTelemetry,
Sentry).

Unit tests check how logkit's ``Logger.makeRecord`` wrapper composes with another
library's (before and after it, configured twice). The real-worker tests run the same app
twice -- once with Celery's own logging, once with ``logkit.install`` -- and compare
which fields (ddtrace's ``dd.*``, OpenTelemetry's ``otel*``) each task record carries,
and which events Sentry captures.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wrapt
from workerutil import make_app, parse_json_lines, start_worker

import logkit.setup as setup_mod
from logkit import events
from logkit.setup import STOCK_MAKE_RECORD, tolerate_clashing_extra

# ---------------------------------------------------------------------------
# makeRecord: one wrapper, composed with the others
# ---------------------------------------------------------------------------


@pytest.fixture
def stock_logging() -> Iterator[None]:
    """Start from the stdlib's makeRecord and record factory; put back what was there."""
    make_record = logging.Logger.__dict__["makeRecord"]
    factory = logging.getLogRecordFactory()
    logging.Logger.makeRecord = STOCK_MAKE_RECORD  # type: ignore[method-assign]
    try:
        yield
    finally:
        logging.Logger.makeRecord = make_record  # type: ignore[method-assign]
        logging.setLogRecordFactory(factory)


def _dd_like(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> logging.LogRecord:
    """What ddtrace's ``_w_makeRecord`` does (with wrapt, as ddtrace installs it)."""
    record: logging.LogRecord = wrapped(*args, **kwargs)
    record.__dict__.update({"dd.trace_id": "123", "dd.span_id": "456"})
    return record


def _record(extra: dict[str, Any] | None = None) -> logging.LogRecord:
    log = logging.getLogger("other.libs")
    return log.makeRecord(log.name, logging.INFO, __file__, 1, "m", (), None, extra=extra)


def test_wraps_a_wrapper_installed_before(stock_logging: None) -> None:
    wrapt.wrap_function_wrapper(logging.Logger, "makeRecord", _dd_like)
    theirs = logging.Logger.__dict__["makeRecord"]
    tolerate_clashing_extra()
    ours = logging.Logger.__dict__["makeRecord"]
    assert ours is not theirs and ours.__wrapped__ is theirs
    record = _record({"msg": "renamed", "name": "too", "user": 7})
    assert record.__dict__["dd.trace_id"] == "123"  # their fields: kept
    assert (record.msg, record.msg_, record.name_, record.user) == (  # type: ignore[attr-defined]
        "m", "renamed", "too", 7)


def test_a_wrapper_installed_after_wraps_logkits(stock_logging: None) -> None:
    tolerate_clashing_extra()
    wrapt.wrap_function_wrapper(logging.Logger, "makeRecord", _dd_like)
    theirs = logging.Logger.__dict__["makeRecord"]
    tolerate_clashing_extra()  # configuring again: theirs (wrapping ours) stays
    assert logging.Logger.__dict__["makeRecord"] is theirs
    record = _record({"args": 1})
    assert record.__dict__["dd.span_id"] == "456" and record.args_ == 1  # type: ignore[attr-defined]


def test_configuring_twice_does_not_stack(stock_logging: None) -> None:
    calls: list[str] = []
    previous = logging.Logger.makeRecord

    def counting(self: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
        calls.append("theirs")
        return previous(self, *args, **kwargs)

    logging.Logger.makeRecord = counting  # type: ignore[method-assign]
    for _ in range(3):
        tolerate_clashing_extra()
    ours = logging.Logger.__dict__["makeRecord"]
    assert ours.__wrapped__ is counting and not hasattr(counting, "__wrapped__")
    _record({"levelname": "x"})
    assert calls == ["theirs"]


def test_stdlib_make_record_gets_logkits_own_function(stock_logging: None) -> None:
    tolerate_clashing_extra()
    tolerate_clashing_extra()
    assert logging.Logger.__dict__["makeRecord"] is setup_mod._make_record
    assert setup_mod._make_record.__wrapped__ is STOCK_MAKE_RECORD  # type: ignore[attr-defined]


def test_replaced_later_is_not_clobbered(stock_logging: None) -> None:
    tolerate_clashing_extra()

    def replacement(self: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = STOCK_MAKE_RECORD(self, *args, **kwargs)
        record.replaced = True
        return record

    logging.Logger.makeRecord = replacement  # type: ignore[method-assign]
    tolerate_clashing_extra()  # composes with the replacement: it still runs
    assert logging.Logger.__dict__["makeRecord"].__wrapped__ is replacement
    record = _record({"msg": 1})
    assert record.replaced and record.msg_ == 1  # type: ignore[attr-defined]


def test_record_factory_untouched_and_its_attributes_renamed(stock_logging: None) -> None:
    base = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        record.otelSpanID = "abc"  # what OpenTelemetry's record factory adds
        return record

    logging.setLogRecordFactory(factory)
    wrapt.wrap_function_wrapper(logging.Logger, "makeRecord", _dd_like)
    tolerate_clashing_extra()
    assert logging.getLogRecordFactory() is factory
    record = _record({"otelSpanID": "mine", "msg": 2})  # theirs raises KeyError: logkit's way
    assert record.otelSpanID == "abc" and record.otelSpanID_ == "mine"  # type: ignore[attr-defined]
    assert record.msg_ == 2 and record.__dict__["dd.trace_id"] == "123"  # type: ignore[attr-defined]


def test_events_go_through_a_foreign_make_record(stock_logging: None) -> None:
    """An event record is made by ``Logger.makeRecord``, so a wrapper (ddtrace's, here
    by wrapt) adds its fields to events as to every other record."""
    tolerate_clashing_extra()
    assert logging.Logger.makeRecord is setup_mod._make_record
    wrapt.wrap_function_wrapper(logging.Logger, "makeRecord", _dd_like)
    events_logger = logging.getLogger(events.EVENTS_LOGGER)
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    events_logger.addHandler(handler)
    try:
        events.emit("worker_ready", logging.INFO, {"hostname": "w@h"})
    finally:
        events_logger.removeHandler(handler)
    (record,) = seen
    assert record.__dict__["dd.trace_id"] == "123" and record.event == "worker_ready"  # type: ignore[attr-defined]


def test_stock_methods_found_under_a_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    """logkit imported after Sentry patched callHandlers still knows it is patched."""
    stock = logging.Logger.callHandlers
    assert setup_mod.stock_logger_method("callHandlers") is stock
    wrapt.wrap_function_wrapper(logging.Logger, "callHandlers", lambda w, i, a, k: w(*a, **k))
    assert setup_mod.stock_logger_method("callHandlers") is stock  # found via __wrapped__

    def sentry_like(self: logging.Logger, record: logging.LogRecord) -> None:
        stock(self, record)

    monkeypatch.setattr(logging.Logger, "callHandlers", sentry_like)
    assert setup_mod.stock_logger_method("callHandlers") is None  # unknown: never "stock"
    monkeypatch.undo()
    logging.Logger.callHandlers = stock  # type: ignore[method-assign]


# ---------------------------------------------------------------------------
# Real workers: the same app with Celery's logging and with logkit's
# ---------------------------------------------------------------------------

#: The app: env ``LK_LIB`` picks the library, ``LK_FORMAT`` logkit's format ("" = no logkit).
#: Without logkit a probe handler (on the loggers Celery's setup gives handlers) writes the
#: library fields of every record it sees; with logkit, logkit's own output is read.
APP_BODY = r'''
import json
import logging
import os

from celery.signals import after_setup_logger, after_setup_task_logger
from celery.utils.log import get_task_logger

LIB = os.environ.get("LK_LIB", "")  # empty in the test process, which only sends tasks
FORMAT = os.environ.get("LK_FORMAT", "")
PREFIXES = ("dd.", "otel")


class Probe(logging.Handler):
    def emit(self, record):
        row = {"logger": record.name, "message": record.getMessage()}
        row.update({k: str(v) for k, v in vars(record).items() if k.startswith(PREFIXES)})
        with open(os.path.join(WORKDIR, "probe.jsonl"), "a") as fh:
            fh.write(json.dumps(row) + "\n")


if LIB and not FORMAT:
    @after_setup_logger.connect(weak=False)
    @after_setup_task_logger.connect(weak=False)
    def _probe(logger=None, **kwargs):
        logger.addHandler(Probe())

tracer = None
if LIB == "otel":
    from opentelemetry import trace
    from opentelemetry.instrumentation.logging import LoggingInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider(resource=Resource.create({"service.name": "lk"})))
    # this instrumentation's record factory adds otel* only with inject_trace_context=True
    # (set_logging_format=True would also call logging.basicConfig)
    LoggingInstrumentor().instrument(set_logging_format=False, inject_trace_context=True)
    tracer = trace.get_tracer("lk")

if LIB == "sentry":
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration
    from sentry_sdk.transport import Transport

    def _sentry_rows(item):
        """What Sentry shows of one envelope item, the same on sentry-sdk 2 and 3: errors,
        the spans of each trace (2: a transaction with its spans; 3: spans streamed, the
        task's the segment), logs (Sentry Logs: 3's default)."""
        payload = item.payload.json or {}
        if item.type == "event":
            crumbs = (payload.get("breadcrumbs") or {}).get("values", [])
            exc = (payload.get("exception") or {}).get("values", [])
            yield {
                "kind": "error",
                "level": payload.get("level"),
                "logger": payload.get("logger"),
                "message": (payload.get("logentry") or {}).get("message")
                or payload.get("message"),
                "exception": [e.get("type") for e in exc],
                "transaction": payload.get("transaction"),
                "task_tags": sorted(k for k in (payload.get("tags") or {})),
                "breadcrumbs": [[c.get("category"), c.get("message")] for c in crumbs],
                "contexts": sorted(payload.get("contexts") or {}),
            }
        elif item.type == "transaction":
            trace = (payload.get("contexts") or {}).get("trace") or {}
            yield {"kind": "span", "segment": True, "name": payload.get("transaction"),
                   "op": trace.get("op"), "status": trace.get("status")}
            for span in payload.get("spans") or []:
                yield {"kind": "span", "segment": False, "name": span.get("description"),
                       "op": span.get("op"), "status": span.get("status")}
        elif item.type == "span":
            for span in payload.get("items") or []:
                op = ((span.get("attributes") or {}).get("sentry.op") or {}).get("value")
                yield {"kind": "span", "segment": bool(span.get("is_segment")),
                       "name": span.get("name"), "op": op, "status": span.get("status")}
        elif item.type == "log":
            for entry in payload.get("items") or []:
                attributes = entry.get("attributes") or {}
                yield {
                    "kind": "log",
                    "level": entry.get("level"),
                    "logger": (attributes.get("logger.name") or {}).get("value"),
                    "message": str(entry.get("body")).replace(__name__, "APP"),
                    # the record's own fields (extra=...), not Sentry's
                    "fields": sorted(k for k in attributes if not k.startswith(
                        ("sentry.", "code.", "thread.", "process.", "server.", "logger.",
                         "asctime"))),
                }
        else:
            yield {"kind": item.type}

    class FileTransport(Transport):
        """Every envelope item, summarised, to sentry.jsonl (nothing leaves the process)."""

        def capture_envelope(self, envelope):
            for item in envelope.items:
                with open(os.path.join(WORKDIR, "sentry.jsonl"), "a") as fh:
                    for row in _sentry_rows(item):
                        fh.write(json.dumps(row) + "\n")

        def flush(self, timeout, callback=None):
            pass

    sentry_sdk.init(
        dsn="http://public@127.0.0.1:9/1",
        transport=FileTransport,
        integrations=[CeleryIntegration(), LoggingIntegration(level=logging.INFO)],
        traces_sample_rate=1.0,
    )

log = get_task_logger("lk.tasks")


@app.task(name="lk.hello")
def hello(n):
    log.info("hello %s", n, extra={"user_id": 7})
    if tracer is not None:
        with tracer.start_as_current_span("work"):
            log.info("inside span %s", n, extra={"user_id": 7})
    return n


@app.task(name="lk.handled")
def handled():
    log.error("handled problem")
    return "ok"


@app.task(name="lk.boom")
def boom():
    log.info("about to fail")
    raise ValueError("boom")


if FORMAT:
    import logkit

    # task_started is DEBUG by default: at INFO here, its fields are compared too
    logkit.install(app, format=FORMAT, event_levels={"task_started": "INFO"})
'''

DD_ENV = {
    "DD_LOGS_INJECTION": "true",
    "DD_TRACE_ENABLED": "true",
    "DD_TRACE_AGENT_URL": "http://127.0.0.1:9",
    "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
    "DD_REMOTE_CONFIGURATION_ENABLED": "false",
    "DD_SERVICE": "lk-worker",
    "DD_ENV": "test",
    "DD_VERSION": "1.0",
    "DD_TRACE_STARTUP_LOGS": "false",
}

LIB_FIELD = re.compile(r"(?<![\w.])((?:dd\.[a-z_]+)|(?:otel[A-Za-z]+))=")


def _run(tmp_path: Path, lib: str, fmt: str) -> Path:
    """Run the app on a real prefork worker, call its tasks, stop it; return its work dir."""
    appmod = make_app(tmp_path / (fmt or "celery"), APP_BODY)
    env = {"LK_LIB": lib, "LK_FORMAT": fmt}
    launcher: list[str] = []
    if lib == "ddtrace":
        env.update(DD_ENV)
        launcher = [str(Path(sys.executable).parent / "ddtrace-run")]
        assert Path(launcher[0]).exists() or shutil.which("ddtrace-run")
    worker = start_worker(
        appmod, concurrency=1, logfile="worker.log", env=env, launcher=launcher,
        ready_timeout=120,
    )
    try:
        app = appmod.load()
        assert app.hello.delay(1).get(timeout=60) == 1
        assert app.handled.delay().get(timeout=60) == "ok"
        with pytest.raises(Exception, match="boom"):
            app.boom.delay().get(timeout=60)
    finally:
        worker.stop()
        appmod.unload()
    return appmod.workdir


def _fields_by_message(workdir: Path, fmt: str) -> dict[str, set[str]]:
    """``{message: library field names}`` of every record, from the probe or logkit's file."""
    out: dict[str, set[str]] = {}
    if not fmt:
        for row in parse_json_lines((workdir / "probe.jsonl").read_text()):
            key = row["event"] if "event" in row else row["message"]
            out[key] = {k for k in row if k.startswith(("dd.", "otel"))}
        return out
    text = (workdir / "worker.log").read_text()
    if fmt == "json":
        for row in parse_json_lines(text):
            key = row.get("event") or row["message"]
            out[key] = {k for k in row if k.startswith(("dd.", "otel"))}
        return out
    for line in text.splitlines():
        if line.startswith(" "):
            continue  # a traceback line
        found = set(LIB_FIELD.findall(line))
        for message in ("hello 1", "inside span 1", "handled problem", "about to fail"):
            if message in line:
                out[message] = found
        event = re.search(r"event=(\w+)", line)
        if event:
            out[event.group(1)] = found
    return out


#: ddtrace has no build for Python 3.15 (no wheel; its sdist does not build): ``.[dev]``
#: leaves it out there (an environment marker in pyproject.toml), and its tests skip.
NO_DDTRACE = sys.version_info >= (3, 15) and importlib.util.find_spec("ddtrace") is None
LIBS = [
    pytest.param("ddtrace", marks=pytest.mark.skipif(
        NO_DDTRACE, reason="ddtrace: no build for Python 3.15 (pyproject.toml's marker)")),
    "otel",
]

TASK_RECORDS = ("hello 1", "handled problem", "about to fail")
TASK_EVENTS = ("task_received", "task_started", "task_succeeded", "task_failed")
LIBRARY_FIELDS = {
    "ddtrace": {"dd.trace_id", "dd.span_id", "dd.service", "dd.env", "dd.version"},
    "otel": {"otelTraceID", "otelSpanID", "otelServiceName", "otelTraceSampled"},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``run(lib, fmt)``: the work dir of that worker run, each made once per module."""
    done: dict[tuple[str, str], Path] = {}

    def get(lib: str, fmt: str) -> Path:
        if (lib, fmt) not in done:
            done[lib, fmt] = _run(tmp_path_factory.mktemp(f"{lib}-{fmt or 'celery'}"), lib, fmt)
        return done[lib, fmt]

    return get


@pytest.mark.parametrize("fmt", ["json", "console", "plain"])
@pytest.mark.parametrize("lib", LIBS)
def test_library_fields_same_with_logkit(run: Any, lib: str, fmt: str) -> None:
    """Each task record carries the library's fields with logkit as without it; so do the
    lifecycle events (the fast path steps aside for ddtrace's makeRecord and OTel's
    record factory)."""
    without = _fields_by_message(run(lib, ""), "")
    with_logkit = _fields_by_message(run(lib, fmt), fmt)
    expected = LIBRARY_FIELDS[lib]
    for message in (*TASK_RECORDS, "inside span 1") if lib == "otel" else TASK_RECORDS:
        assert without[message] == expected, (message, without)
        assert with_logkit[message] == without[message], (message, with_logkit)
    for event in TASK_EVENTS:
        assert with_logkit[event] == expected, (event, with_logkit)


@pytest.mark.parametrize("lib", LIBS)
def test_library_trace_ids_are_the_tasks(run: Any, lib: str) -> None:
    """The ids are real: the task's record and its task_started event share a trace."""
    trace_key = "dd.trace_id" if lib == "ddtrace" else "otelTraceID"
    message = "hello 1" if lib == "ddtrace" else "inside span 1"
    probe = parse_json_lines((run(lib, "") / "probe.jsonl").read_text())
    without = {r["message"]: r for r in probe}
    assert without[message][trace_key].strip("0")  # not the "no trace" zero
    rows = parse_json_lines((run(lib, "json") / "worker.log").read_text())
    record = next(r for r in rows if r["message"] == message)
    assert record[trace_key].strip("0") and record["user_id"] == 7
    if lib == "ddtrace":  # ddtrace's task span is open while task_prerun receivers run
        started = next(r for r in rows if r.get("event") == "task_started"
                       and r["task_id"] == record["task_id"])
        assert started[trace_key] == record[trace_key]


def test_sentry_captures_the_same_with_logkit(run: Any) -> None:
    """Sentry (logging and Celery integrations, its patched callHandlers) captures the same
    with logkit as without: the same errors, the same traces, the same records of the app
    and its libraries; logkit's event records come on top, as breadcrumbs (and, with
    Sentry Logs, as logs in place of the Celery lines they replace). Whatever the wire
    format of the sentry-sdk major (2: transactions; 3: spans and logs): the matrix runs
    both (nox -s sentry2)."""
    import sentry_sdk

    def rows(workdir: Path, kind: str) -> list[dict[str, Any]]:
        found = parse_json_lines((workdir / "sentry.jsonl").read_text())
        return [r for r in found if r["kind"] == kind]

    def not_logkits(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            row = {**row, "breadcrumbs": [c for c in row["breadcrumbs"]
                                          if not c[0].startswith("logkit")]}
            out.append(row)
        return out

    def app_logs(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        """The app's and its libraries' records sent as logs. Not: logkit's events, the
        Celery lines they replace, warnings (logkit captures them into logging, Celery
        prints them), and the task_id/task_name Celery's task formatter sets on the
        records it formats (logkit gives the task context in its output)."""
        return sorted(
            (r["level"], r["logger"], r["message"],
             tuple(f for f in r["fields"] if f not in ("task_id", "task_name")))
            for r in rows
            if not r["logger"].startswith(("celery", "logkit")) and r["logger"] != "py.warnings"
        )

    without, with_logkit = run("sentry", ""), run("sentry", "json")
    # the same traces: one per task, its status, its spans
    spans = rows(without, "span")
    assert {r["name"] for r in spans if r["segment"]} == {"lk.hello", "lk.handled", "lk.boom"}
    assert sorted(map(json.dumps, rows(with_logkit, "span"))) == sorted(map(json.dumps, spans))
    # the same errors, with the task's records as breadcrumbs
    errors = rows(without, "error")
    (boom,) = [e for e in errors if e["exception"] == ["ValueError"]]
    assert boom["transaction"] == "lk.boom" and ["lk.tasks", "about to fail"] in boom["breadcrumbs"]
    assert not_logkits(rows(with_logkit, "error")) == errors
    # the same records of the app and its libraries
    logs = rows(without, "log")
    assert app_logs(rows(with_logkit, "log")) == app_logs(logs)
    if logs:  # Sentry Logs (sentry-sdk 3's default)
        assert ("info", "lk.tasks", "hello 1", ("user_id",)) in app_logs(logs)
    # nothing else (an item type Sentry did not send without logkit)
    kinds = {r["kind"] for r in parse_json_lines((without / "sentry.jsonl").read_text())}
    assert {r["kind"] for r in parse_json_lines((with_logkit / "sentry.jsonl").read_text())} \
        == kinds
    # logkit's event records reach Sentry's callHandlers patch too
    added = [c for e in rows(with_logkit, "error") for c in e["breadcrumbs"]
             if c[0].startswith("logkit")]
    added += [r for r in rows(with_logkit, "log") if r["logger"].startswith("logkit")]
    assert added, sentry_sdk.VERSION
