"""#15: the ``schema`` option (ECS, Google Cloud, Datadog, OpenTelemetry) and trace ids.

* unit: each schema's line compared field by field with the backend's own library
  (``ecs_logging.StdlibFormatter``, Google Cloud's ``StructuredLogHandler``, the
  OpenTelemetry SDK's ``LoggingHandler``), ECS lines checked against ecs-logging's spec;
* an event's line equals an ordinary record's for every schema; every record shape's line
  is byte for byte what it was (``schema_shapes.json``); code is generated once per
  formatter, shows in tracebacks and fails loudly;
* the ids of the current OpenTelemetry span on every record, in each schema's format;
* a real prefork worker with ``CeleryInstrumentor`` (in ``worker_process_init``): every
  record of every task carries the ids of the task's span, as exported.
"""

from __future__ import annotations

import io
import json
import linecache
import logging
import re
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest
from test_hotpath import _emit_both, _no_timestamp, _setup, restore_logging  # noqa: F401
from workerutil import make_app, parse_json_lines, start_worker

import logkit
from logkit import context
from logkit.config import SCHEMAS, ConfigError, LogConfig
from logkit.events import base as events
from logkit.formatters import JsonFormatter
from logkit.receivers import order_after_tracing

otel_trace = pytest.importorskip("opentelemetry.trace")
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

_provider = TracerProvider()
tracer = _provider.get_tracer("logkit-tests")

MESSAGE, ARGS = "charged order %s", ("A-1",)


def _record(level: int = logging.WARNING, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad value")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("shop.tasks", level, __file__, 42, MESSAGE, ARGS, exc_info,
                               func="charge")
    record.user_id = 7
    return record


def _line(schema: str, record: logging.LogRecord, **options: Any) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(JsonFormatter(LogConfig(schema=schema, **options))
                                     .format(record))
    return out


# -- config ------------------------------------------------------------------------


def test_invalid_schema_lists_the_choices() -> None:
    with pytest.raises(ConfigError) as err:
        LogConfig(schema="elastic")
    for name in SCHEMAS:
        assert repr(name) in str(err.value)


def test_schema_from_env_and_app_conf() -> None:
    from celery import Celery

    app = Celery("s", set_as_current=False)
    app.conf.logkit_schema = "gcp"
    assert LogConfig.resolve(app, env={}).schema == "gcp"
    assert LogConfig.resolve(app, env={"LOGKIT_SCHEMA": "ECS"}).schema == "ecs"


def test_default_schema_is_logkits_own_keys() -> None:
    line = _line("logkit", _record())
    assert list(line)[:4] == ["timestamp", "level", "logger", "message"]
    assert "trace_id" not in line  # no span: not a byte more than before


# -- against the backends' libraries ------------------------------------------------


@pytest.mark.parametrize("exc", [False, True])
def test_ecs_matches_ecs_logging(exc: bool) -> None:
    ecs_logging = pytest.importorskip("ecs_logging")
    record = _record(logging.ERROR if exc else logging.INFO, exc)
    theirs = json.loads(ecs_logging.StdlibFormatter().format(record))
    record.exc_text = None
    ours = _line("ecs", record, fields={"service": "shop"})
    assert list(ours)[:4] == ["@timestamp", "log.level", "message", "ecs.version"]
    assert list(theirs)[:4] == list(ours)[:4]
    for path in ("log.level", "message", "ecs.version"):
        assert ours[path] == theirs[path]
    for path in ("log.logger", "log.origin.file.name", "log.origin.file.line",
                 "log.origin.function", "process.pid", "process.name"
                 ) + (("error.type", "error.message") if exc else ()):
        assert _get(ours, path) == _get(theirs, path), path
    # the main thread's id and name: left out (#37), written with always_fields
    assert "thread" not in ours["process"]
    always = _line("ecs", record, fields={"service": "shop"}, always_fields=["thread"])
    for path in ("process.thread.id", "process.thread.name"):
        assert _get(always, path) == _get(theirs, path), path
    if exc:
        assert "ValueError: bad value" in ours["error"]["stack_trace"]
    assert ours["user_id"] == theirs["user_id"] == 7
    assert ours["service"] == {"name": "shop"}
    _check_ecs(ours)


def _get(obj: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        obj = obj[part]
    return obj


ECS_SPEC = Path(__file__).with_name("ecs_logging_spec.json")
#: ECS field types of what logkit writes (ECS 8.x reference): keyword/text -> str...
ECS_TYPES: dict[str, type | tuple[type, ...]] = {
    "log.logger": str, "log.origin.file.name": str, "log.origin.file.line": int,
    "log.origin.function": str, "process.pid": int, "process.name": str,
    "process.thread.id": int, "process.thread.name": str, "error.type": str,
    "error.message": str, "error.stack_trace": str, "trace.id": str, "span.id": str,
    "service.name": str, "event.action": str, "event.duration": int,
}


def _check_ecs(line: dict[str, Any]) -> None:
    """ecs-logging's spec (required keys, order, no nesting) and ECS field types."""
    spec = json.loads(ECS_SPEC.read_text())["fields"]
    keys = list(line)
    for name, field in spec.items():
        if field.get("required"):
            assert name in line, name
        if "index" in field:
            assert keys[field["index"]] == name
        if field.get("nesting_allowed") is False:
            assert name.partition(".")[0] not in line or name in line
        if name in line or (field.get("nesting_allowed") and _has(line, name)):
            value = line[name] if name in line else _get(line, name)
            expected = {"datetime": str, "string": str, "object": dict}[field["type"]]
            assert isinstance(value, expected), name
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["@timestamp"])
    for path, typ in ECS_TYPES.items():
        if _has(line, path):
            assert isinstance(_get(line, path), typ), path
    if _has(line, "event"):
        assert isinstance(line["event"], dict)  # ECS's event is an object, never a string
    for top in ("host", "user", "error", "process", "log", "service", "trace", "span"):
        if top in line:
            assert isinstance(line[top], dict), top


def _has(obj: Any, path: str) -> bool:
    for part in path.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return False
        obj = obj[part]
    return True


def test_gcp_matches_structured_log_handler() -> None:
    handlers = pytest.importorskip("google.cloud.logging.handlers")
    stream = io.StringIO()
    handler = handlers.StructuredLogHandler(project_id="proj", stream=stream)
    log = logging.getLogger("gcp.compare")
    log.handlers, log.propagate = [handler], False
    log.setLevel(logging.DEBUG)
    ours_fmt = JsonFormatter(LogConfig(schema="gcp", gcp_project="proj"))
    ours: list[dict[str, Any]] = []

    class Ours(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            ours.append(json.loads(ours_fmt.format(record)))

    log.addHandler(Ours())
    try:
        with tracer.start_as_current_span("s"):
            for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR,
                          logging.CRITICAL):
                log.log(level, MESSAGE, *ARGS)
    finally:
        log.handlers = []
    theirs = [json.loads(line) for line in stream.getvalue().splitlines()]
    theirs = [t for t in theirs if "message" in t]  # not its diagnostic line
    assert len(theirs) == len(ours) == 5
    prefix = "logging.googleapis.com/"
    for t, o in zip(theirs, ours, strict=True):
        assert o["severity"] == t["severity"]
        assert o["message"] == t["message"]
        for key in ("trace", "spanId", "trace_sampled"):
            assert o[prefix + key] == t[prefix + key], key
        assert o[prefix + "labels"]["python_logger"] == t[prefix + "labels"]["python_logger"]
        assert o[prefix + "sourceLocation"] == t[prefix + "sourceLocation"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", o["time"])


def test_otel_matches_the_sdks_logging_handler() -> None:
    sdk_logs = pytest.importorskip("opentelemetry.sdk._logs")
    export = pytest.importorskip("opentelemetry.sdk._logs.export")
    from opentelemetry.sdk.resources import Resource

    exporter = export.InMemoryLogRecordExporter()
    provider = sdk_logs.LoggerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_log_record_processor(export.SimpleLogRecordProcessor(exporter))
    log = logging.getLogger("otel.compare")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    ours_fmt = JsonFormatter(LogConfig(schema="otel", service_name="shop"))
    ours: list[dict[str, Any]] = []

    class Ours(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            ours.append(json.loads(ours_fmt.format(record)))

    log.handlers = [sdk_logs.LoggingHandler(logger_provider=provider), Ours()]
    try:
        with tracer.start_as_current_span("s"):
            for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR,
                          logging.CRITICAL):
                log.log(level, MESSAGE, *ARGS, extra={"user_id": 7})
    finally:
        log.handlers = []
    theirs = [json.loads(r.to_json()) for r in exporter.get_finished_logs()]
    assert len(theirs) == len(ours) == 5
    for t, o in zip(theirs, ours, strict=True):
        for key in ("severity_text", "severity_number", "body", "trace_flags"):
            assert o[key] == t[key], key
        assert "0x" + o["trace_id"] == t["trace_id"] and "0x" + o["span_id"] == t["span_id"]
        for key in ("user_id", "code.file.path", "code.function.name", "code.line.number"):
            assert o["attributes"][key] == t["attributes"][key], key
        assert o["resource"]["attributes"]["service.name"] == "shop"
        assert o["instrumentation_scope"]["name"] == "otel.compare"


def test_datadog_reserved_attributes_and_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in {"DD_SERVICE": "shop", "DD_ENV": "prod", "DD_VERSION": "1.2"}.items():
        monkeypatch.setenv(var, value)
    with tracer.start_as_current_span("s") as span:
        line = _line("datadog", _record(logging.ERROR, exc=True))
        sc = span.get_span_context()
    assert (line["status"], line["service"], line["logger.name"]) == ("error", "shop",
                                                                     "shop.tasks")
    assert (line["dd.service"], line["dd.env"], line["dd.version"]) == ("shop", "prod", "1.2")
    assert (line["error.kind"], line["error.message"]) == ("ValueError", "bad value")
    assert "ValueError: bad value" in line["error.stack"]
    # what Datadog correlates OpenTelemetry ids with: the trace id's lower 64 bits, decimal
    assert line["dd.trace_id"] == str(sc.trace_id & 0xFFFFFFFFFFFFFFFF)
    assert line["dd.span_id"] == str(sc.span_id)
    monkeypatch.setenv("DD_TRACE_128_BIT_TRACEID_LOGGING_ENABLED", "true")
    with tracer.start_as_current_span("s") as span:
        line = _line("datadog", _record())
        assert line["dd.trace_id"] == f"{span.get_span_context().trace_id:032x}"


@pytest.mark.parametrize("schema", SCHEMAS)
def test_trace_ids_of_the_current_span(schema: str) -> None:
    with tracer.start_as_current_span("s") as span:
        line = json.dumps(_line(schema, _record(), gcp_project="p"))
        sc = span.get_span_context()
    trace_hex, span_hex = f"{sc.trace_id:032x}", f"{sc.span_id:016x}"
    if schema == "datadog":
        trace_hex, span_hex = str(sc.trace_id & (2**64 - 1)), str(sc.span_id)
    assert trace_hex in line and span_hex in line
    assert trace_hex not in json.dumps(_line(schema, _record()))  # the span ended


def test_logkit_schema_trace_ids_are_hex() -> None:
    with tracer.start_as_current_span("s") as span:
        line = _line("logkit", _record())
        sc = span.get_span_context()
    assert re.fullmatch(r"[0-9a-f]{32}", line["trace_id"])
    assert re.fullmatch(r"[0-9a-f]{16}", line["span_id"])
    assert (line["trace_id"], line["span_id"]) == (f"{sc.trace_id:032x}", f"{sc.span_id:016x}")
    assert list(line)[-1] == "process"  # and no thread: the main thread's (#37)


# -- events ---------------------------------------------------------------------------


@pytest.mark.parametrize("traced", [False, True])
@pytest.mark.parametrize("schema", SCHEMAS)
def test_event_line_equals_an_ordinary_records_per_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, schema: str, traced: bool
) -> None:
    _, logfile = _setup(tmp_path, "json", schema=schema, fields={"service": "shop"})
    fields = {"duration_ms": 1.5, "result": "'ok'"}
    with context.bound(task_id="t-1", task_name="shop.charge", worker="w1"):
        if traced:
            with tracer.start_as_current_span("s"):
                pair = _emit_both(logfile, "task_succeeded", fields, monkeypatch)
        else:
            pair = _emit_both(logfile, "task_succeeded", fields, monkeypatch)
    assert _no_timestamp(pair.fast) == _no_timestamp(pair.slow)
    line = json.loads(pair.fast)
    if schema == "ecs":
        assert line["event"] == {"action": "task_succeeded", "duration": 1_500_000}
        assert line["celery"]["task"]["id"] == "t-1"
        _check_ecs(line)
    assert ("trace" in pair.fast.decode() or "trace_id" in pair.fast.decode()) == traced


# -- receivers -----------------------------------------------------------------------


def test_logkit_prerun_moves_after_opentelemetrys() -> None:
    from celery import signals
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    from logkit.receivers import on_task_prerun

    signals.task_prerun.connect(on_task_prerun, weak=False, dispatch_uid="logkit.prerun")
    instrumentor = CeleryInstrumentor()
    instrumentor.instrument(tracer_provider=_provider)
    try:
        def position() -> tuple[int, int]:
            targets = [r() if isinstance(r, __import__("weakref").ReferenceType) else r
                       for _, r in signals.task_prerun.receivers]
            ours = targets.index(on_task_prerun)
            theirs = next(i for i, t in enumerate(targets)
                          if getattr(t, "__module__", "").startswith("opentelemetry"))
            return ours, theirs

        ours, theirs = position()
        assert ours < theirs
        order_after_tracing()
        ours, theirs = position()
        assert ours > theirs
    finally:
        instrumentor.uninstrument()
        signals.task_prerun.disconnect(dispatch_uid="logkit.prerun")


# -- a real worker ---------------------------------------------------------------------

WORKER_APP = '''
import json, logging, os
from celery import signals
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
import logkit

log = logging.getLogger("shop.tasks")
SPANS = os.path.join(WORKDIR, "spans.jsonl")


class FileExporter(SpanExporter):
    def export(self, spans):
        with open(SPANS, "a") as fh:
            for s in spans:
                sc = s.context
                fh.write(json.dumps({
                    "name": s.name, "trace_id": f"{sc.trace_id:032x}",
                    "span_id": f"{sc.span_id:016x}",
                    "parent": f"{s.parent.span_id:016x}" if s.parent else None,
                    "attributes": {k: str(v) for k, v in (s.attributes or {}).items()},
                }) + "\\n")
        return SpanExportResult.SUCCESS


@signals.worker_process_init.connect(weak=False)
def init_tracing(**_):
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument()


@app.task(name="shop.charge")
def charge(n):
    log.info("charging %s", n, extra={"user_id": 7})
    return n


@app.task(name="shop.fail")
def fail():
    log.warning("about to fail")
    raise ValueError("declined")


logkit.install(app, schema=os.environ["LK_SCHEMA"], fields={"service": "shop"},
               event_levels={"task_started": "INFO"},  # checked below: DEBUG by default
               gcp_project="proj")
'''


def _ids(schema: str, line: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(task id, trace id, span id) of a line, in logkit's hex (Datadog: decimal)."""
    if schema == "ecs":
        task = line.get("celery", {}).get("task", {}).get("id")
        return task, line.get("trace", {}).get("id"), line.get("span", {}).get("id")
    if schema == "gcp":
        trace = line.get("logging.googleapis.com/trace")
        return (line.get("task_id"), trace and trace.rpartition("/")[2],
                line.get("logging.googleapis.com/spanId"))
    if schema == "datadog":
        return line.get("task_id"), line.get("dd.trace_id"), line.get("dd.span_id")
    if schema == "otel":
        return line["attributes"].get("task_id"), line.get("trace_id"), line.get("span_id")
    return line.get("task_id"), line.get("trace_id"), line.get("span_id")


def _event(schema: str, line: dict[str, Any]) -> Any:
    if schema == "ecs":
        return line.get("event", {}).get("action")
    if schema == "otel":
        return line["attributes"].get("event")
    return line.get("event")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("schema", SCHEMAS)
def test_worker_records_carry_the_tasks_span(tmp_path: Path, schema: str) -> None:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    appmod = make_app(tmp_path, "import os\nWORKDIR = os.path.dirname(__file__)\n" + WORKER_APP)
    worker = start_worker(appmod, concurrency=1, logfile="worker.log",
                          env={"LK_SCHEMA": schema}, ready_timeout=120)
    publisher_spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(publisher_spans))
    instrumentor = CeleryInstrumentor()
    try:
        import os

        os.environ["LK_SCHEMA"] = schema
        app = appmod.load()
        instrumentor.instrument(tracer_provider=provider)
        with provider.get_tracer("publisher").start_as_current_span("publish"):
            results = [app.charge.delay(1), app.fail.delay()]
        assert results[0].get(timeout=60) == 1
        with pytest.raises(Exception, match="declined"):
            results[1].get(timeout=60)
    finally:
        instrumentor.uninstrument()
        worker.stop()
        appmod.unload()
        os.environ.pop("LK_SCHEMA", None)
    spans = {row["attributes"]["messaging.message.id"]: row for row in parse_json_lines(
        (appmod.workdir / "spans.jsonl").read_text()) if row["name"].startswith("run/")}
    lines = parse_json_lines((appmod.workdir / "worker.log").read_text())
    seen: dict[str, set[Any]] = {}
    for line in lines:
        task_id, trace_id, span_id = _ids(schema, line)
        if task_id is None:
            continue
        span = spans[task_id]
        expected_trace, expected_span = span["trace_id"], span["span_id"]
        event = _event(schema, line)
        if event == "task_received":  # the parent: the publisher's span, from traceparent
            expected_span = span["parent"]
        if schema == "datadog":
            expected_trace = str(int(expected_trace, 16) & (2**64 - 1))
            expected_span = str(int(expected_span, 16))
        assert (trace_id, span_id) == (expected_trace, expected_span), line
        seen.setdefault(task_id, set()).add(event)
        if schema == "ecs":
            _check_ecs(line)
    assert len(seen) == 2
    for events_seen in seen.values():
        assert {"task_received", "task_started", None} <= events_seen
        assert events_seen & {"task_succeeded", "task_failed"}
    assert {s["trace_id"] for s in spans.values()} == {
        f"{s.context.trace_id:032x}" for s in publisher_spans.get_finished_spans()
        if s.name == "publish"}


def test_events_module_names_unchanged() -> None:
    assert events.EVENTS_LOGGER == "logkit.events"


def test_view_trace_filter_matches_every_schema(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from logkit.cli import main

    trace_hex = "4bf92f3577b34da6a3ce929d0e0e4736"
    lines = [
        {"timestamp": "2024-05-01T12:00:00.001Z", "level": "INFO", "message": "a",
         "trace_id": trace_hex},
        {"@timestamp": "2024-05-01T12:00:00.002Z", "log.level": "info", "message": "b",
         "trace": {"id": trace_hex}},
        {"timestamp": "2024-05-01T12:00:00.003Z", "status": "info", "message": "c",
         "dd.trace_id": str(int(trace_hex, 16) & (2**64 - 1))},
        {"time": "2024-05-01T12:00:00.004Z", "severity": "INFO", "message": "d",
         "logging.googleapis.com/trace": f"projects/p/traces/{trace_hex}"},
        {"timestamp": "2024-05-01T12:00:00.005Z", "level": "INFO", "message": "other",
         "trace_id": "0" * 32},
    ]
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = CliRunner().invoke(main, ["view", "--no-color", "--trace", trace_hex, str(path)])
    assert result.exit_code == 0, result.output
    for message in "abcd":
        assert f" {message}" in result.output
    assert "other" not in result.output


def test_celery_log_schema_flag() -> None:
    from logkit.celery_options import preload_values

    assert preload_values({"log_schema": "ecs"}) == {"schema": "ecs"}


# -- a schema's build: every record shape; the fields compiled once per formatter ------

#: context keys and ``extra`` names of odd shapes: dotted under and over the fixed
#: fields' objects, a value then a dotted key under it, quotes, escapes, non-ASCII,
#: names of base and reserved fields, a bound trace id.
SHAPES = [
    ({}, {}),
    ({"task_id": "t-1", "task_name": "shop.charge", "retries": 0, "worker": "w@h"},
     {"user_id": 7, "amount": 12.5}),
    ({"a.b": 1, "a": 2, "c": 3}, {"x.y.z": 4, "x.y": 5, "x.y.w": 6}),
    ({"log": "L", "process.name.x": "p"}, {"service": "s", "message": "m", "level": "l"}),
    ({"it's": 1, 'quote".key': 2}, {"back\\slash.n": 3, "new\nline.x": 4,
                                     "\u00e9t\u00e9.\U0001f600": 5}),
    ({"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
      "duration_ms": 1.5}, {"host": "h", "event": "task_started", "trace_id": "0" * 32}),
    ({"nested": {"k": [1, 2]}}, {"long": "x" * 20_000, "obj": {"a": 1}}),
]

#: Each schema's line for each of :data:`SHAPES`, as logkit 0.1's per-shape record plans
#: wrote them (made by that code; the build that replaced them must write the same bytes).
GOLDEN = json.loads((Path(__file__).parent / "schema_shapes.json").read_text("utf-8"))


def _shape_record(extra: dict[str, Any]) -> logging.LogRecord:
    """:func:`_record` with fixed time, process, thread and path, and ``extra``."""
    record = logging.LogRecord("shop.tasks", logging.WARNING, "/src/shop/tasks.py", 42,
                               MESSAGE, ARGS, None, func="charge")
    record.created, record.msecs = 1714564800.123, 123.0
    record.process, record.processName, record.thread = 4242, "MainProcess", 77
    record.threadName = "MainThread"
    record.user_id = 7  # type: ignore[attr-defined]
    record.__dict__.update(extra)
    return record


def _shape_formatter(schema: str) -> JsonFormatter:
    return JsonFormatter(LogConfig(schema=schema, fields={"service": "shop"},
                                   max_field_length=1000))


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_schema_line_of_every_record_shape(schema: str, shape: int,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Each schema's line, byte for byte and key order included, for contexts and
    ``extra`` fields of every shape; the same again from the same formatter."""
    for var in ("OTEL_SERVICE_NAME", "ELASTIC_APM_SERVICE_NAME", "DD_SERVICE", "DD_ENV",
                "DD_VERSION", "DD_TRACE_128_BIT_TRACEID_LOGGING_ENABLED"):
        monkeypatch.delenv(var, raising=False)
    ctx, extra = SHAPES[shape]
    fmt = _shape_formatter(schema)
    with logkit.bound(**ctx):
        first = fmt.format(_shape_record(extra))
        again = fmt.format(_shape_record(extra))
    assert first == again == GOLDEN[schema][shape]
    assert len(first) < 12_000  # the long extra was capped


@pytest.mark.parametrize("schema", [s for s in SCHEMAS if s != "logkit"])
def test_schema_line_within_a_span(schema: str) -> None:
    """With a recording span: its ids, in the schema's format."""
    provider = TracerProvider().get_tracer("t")
    fmt = _shape_formatter(schema)
    with provider.start_as_current_span("s") as span, logkit.bound(task_id="t-1"):
        line = fmt.format(_shape_record({}))
    span_id = span.get_span_context().span_id
    assert f"{span_id:016x}" in line or str(span_id) in line


def _generated_sources() -> dict[str, Any]:
    return {name: entry for name, entry in linecache.cache.items()
            if name.startswith("<logkit generated")}


def test_nothing_is_compiled_per_record() -> None:
    """Code is generated once per formatter (a schema's fixed fields), never per record
    shape: a thousand call sites with their own ``extra`` names add no source."""
    fmt = _shape_formatter("ecs")
    before = _generated_sources()
    assert before, "the fixed fields' function is registered with linecache"
    for i in range(1000):
        record = _shape_record({f"site{i}.x": i})
        assert json.loads(fmt.format(record))[f"site{i}"] == {"x": i}
    assert _generated_sources() == before
    _shape_formatter("ecs")  # the same source again: the same linecache entry
    assert _generated_sources() == before


@pytest.mark.parametrize("schema", [s for s in SCHEMAS if s != "logkit"])
def test_generated_code_shows_in_tracebacks(schema: str) -> None:
    """A failure inside the generated fixed fields (here ``created`` overwritten with
    ``None``) has a traceback that shows the generated source, as attrs' generated
    ``__init__`` does; the formatter still writes a line that says so."""
    fmt = _shape_formatter(schema)
    record = _shape_record({})
    record.created = None  # type: ignore[assignment]
    with pytest.raises(TypeError) as err:
        fmt.build(record)
    frames = [f for f in traceback.extract_tb(err.value.__traceback__)
              if f.filename.startswith("<logkit generated")]
    assert frames and "stamp(record.created, record.msecs)" in (frames[0].line or "")
    line = json.loads(fmt.format(record))
    assert line["logkit_error"] == "record could not be formatted: TypeError"


def test_generated_code_fails_loudly() -> None:
    """Source that does not compile raises when the formatter is built, never silently."""
    from logkit._schema_fields import compile_function

    with pytest.raises(SyntaxError):
        compile_function("start", "record", "    return {\n", {}, "a test")


def test_schema_line_of_a_context_filter_record() -> None:
    """Names a ``logkit.ContextFilter`` put on the record are not ``extra`` fields."""
    record = _record()
    record.__dict__.update({"request_id": "stale", "_logkit_filled": {"request_id"}})
    fmt = JsonFormatter(LogConfig(schema="otel", fields={"service": "shop"}))
    with logkit.bound(request_id="r-1"):
        line = fmt.build(record)
    assert line["attributes"]["request_id"] == "r-1"
    assert line["attributes"]["user_id"] == 7


@pytest.mark.parametrize("schema", [s for s in SCHEMAS if s != "logkit"])
def test_record_without_function_and_extras_named_like_fields(schema: str) -> None:
    """A record made by hand (no function name), extras named like a base field, a
    reserved ECS name, a trace id: each schema's fixed fields and translations."""
    record = logging.LogRecord("shop", logging.INFO, "/src/shop.py", 3, "hi", None, None)
    assert record.funcName is None
    record.__dict__.update({"message_id": 1, "level": "x", "host": "h", "user_id": 7})
    line = _line(schema, record, fields={"service": "shop"})
    flat = json.dumps(line)
    assert "null" not in flat, line  # no function key with no function
    assert '"h"' in flat and "user_id" in flat and '"x"' in flat
    if schema == "ecs":
        assert line["logkit"]["host"] == "h"  # ECS's host is an object: moved aside
        assert "function" not in line["log"]["origin"]
        _check_ecs(line)
    if schema == "gcp":
        assert "function" not in line["logging.googleapis.com/sourceLocation"]
    static_line = _line(schema, record, fields={"service": "shop", "code.function.name": "f",
                                                "logger.method_name": "f", "function": "f"})
    assert '"f"' in json.dumps(static_line)  # a static field of that name is kept


# -- #37: fields that would say nothing are left out ------------------------------------

#: Each schema's keys of the record's thread (id, name), as dotted paths.
THREAD_KEYS = {
    "logkit": ("thread",),
    "ecs": ("process.thread.id", "process.thread.name"),
    "gcp": ("thread",),
    "datadog": ("logger.thread_id", "logger.thread_name"),
    "otel": ("attributes.thread.id", "attributes.thread.name"),
}
#: Each schema's keys of the record's source location (file, line, function).
SOURCE_KEYS = {
    "ecs": ("log.origin.file.name", "log.origin.file.line", "log.origin.function"),
    "gcp": ("logging.googleapis.com/sourceLocation.file",
            "logging.googleapis.com/sourceLocation.line",
            "logging.googleapis.com/sourceLocation.function"),
    "datadog": ("logger.file", "logger.line", "logger.method_name"),
    "otel": ("attributes.code.file.path", "attributes.code.line.number",
             "attributes.code.function.name"),
}


def _find(line: dict[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` of a line, whatever mix of nested objects and dotted
    keys holds it; a KeyError when it is not there."""
    if path in line:
        return line[path]
    for key, value in line.items():
        if path.startswith(f"{key}.") and isinstance(value, dict):
            try:
                return _find(value, path[len(key) + 1:])
            except KeyError:
                continue
    raise KeyError(path)


def _has(line: dict[str, Any], path: str) -> bool:
    try:
        _find(line, path)
    except KeyError:
        return False
    return True


def _in_thread(fn: Any) -> Any:
    import threading

    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), name="worker-thread")
    thread.start()
    thread.join()
    return out[0]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_thread_only_when_not_the_main_thread(schema: str) -> None:
    """The main thread's id (and name) is left out: constant in a prefork child or a solo
    worker, it says nothing a line's absence does not; another thread's is written, as is
    the main thread's with ``always_fields=["thread"]`` or with a record of another
    process (its main thread is not known here)."""
    fmt = JsonFormatter(LogConfig(schema=schema))
    main_line = json.loads(fmt.format(_record()))
    assert not any(_has(main_line, k) for k in THREAD_KEYS[schema]), main_line
    record = _in_thread(_record)
    line = json.loads(fmt.format(record))
    assert _find(line, THREAD_KEYS[schema][0]) == record.thread
    if len(THREAD_KEYS[schema]) > 1:
        assert _find(line, THREAD_KEYS[schema][1]) == "worker-thread"
    always = json.loads(JsonFormatter(LogConfig(schema=schema, always_fields=["thread"]))
                        .format(_record()))
    assert _find(always, THREAD_KEYS[schema][0]) == threading_main_ident()
    other = _record()
    other.process = 1  # a record of another process (init's)
    assert _find(json.loads(fmt.format(other)), THREAD_KEYS[schema][0]) == other.thread
    star = LogConfig(schema=schema, always_fields="*")
    assert star.always_fields == ("root_id", "correlation_id", "retries", "thread", "nulls")
    assert _has(json.loads(JsonFormatter(star).format(_record())), THREAD_KEYS[schema][0])


def threading_main_ident() -> int | None:
    import threading

    return threading.main_thread().ident


@pytest.mark.parametrize("schema", [s for s in SCHEMAS if s != "logkit"])
def test_source_location_only_when_the_record_has_one(schema: str) -> None:
    """A record without a line and a function (a lifecycle event, a record made by hand)
    has no source location (its file would be logkit's own or nothing); one with a line
    keeps its file and line, one with a function all three."""
    file_key, line_key, function_key = SOURCE_KEYS[schema]
    fmt = JsonFormatter(LogConfig(schema=schema))
    full = json.loads(fmt.format(_record()))
    assert (_find(full, line_key), _find(full, function_key)) == (42, "charge")
    no_function = logging.LogRecord("shop", logging.INFO, "/src/shop.py", 3, "hi", None, None)
    line = json.loads(fmt.format(no_function))
    assert _find(line, line_key) == 3 and _has(line, file_key)
    assert not _has(line, function_key)
    nowhere = logging.LogRecord("shop", logging.INFO, "/src/logkit/events/base.py", 0, "hi",
                                None, None)
    line = json.loads(fmt.format(nowhere))
    assert not any(_has(line, k) for k in SOURCE_KEYS[schema]), line
    assert "base.py" not in json.dumps(line) and "null" not in json.dumps(line)
    if schema == "ecs":
        assert line["log"] == {"logger": "shop"}  # no empty log.origin object
        _check_ecs(line)
    if schema == "gcp":
        assert "logging.googleapis.com/sourceLocation" not in line
    # a static field named like a source key is the user's: it stays
    static = {"ecs": "log.origin.file.name", "gcp": "logging.googleapis.com/sourceLocation",
              "datadog": "logger.file", "otel": "code.file.path"}[schema]
    kept = json.loads(JsonFormatter(LogConfig(schema=schema, fields={static: "mine"}))
                      .format(nowhere))
    assert '"mine"' in json.dumps(kept)
