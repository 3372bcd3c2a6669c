"""Field names and formats per backend: logkit's own, ECS, Google Cloud, Datadog, OpenTelemetry.

A :class:`Schema` is data: where each of logkit's fields goes in a backend's
records and in what format. :class:`logkit.formatters.JsonFormatter` picks one when
it is built (the ``schema`` option) and applies it with one pipeline; nothing in
``format()`` asks which backend it writes for.

* ``logkit`` -- logkit's own keys (``timestamp``, ``level``, ``logger``, ``message``...).
* ``ecs`` -- Elastic Common Schema as ecs-logging writes it: ``@timestamp``,
  ``log.level``, ``message`` and ``ecs.version`` first, every other dotted name nested
  (``{"log": {"logger": ...}}``). Task fields go under ``celery.*``, the lifecycle event
  name is ``event.action`` and its duration ``event.duration`` (nanoseconds); a field
  named like an ECS field set (``host``, ``user``...) moves under ``logkit.*``.
* ``gcp`` -- Google Cloud structured logging: ``severity``, ``message``, ``time``, the
  ``logging.googleapis.com/*`` keys (trace, span, labels, source location).
* ``datadog`` -- Datadog's reserved attributes: ``status``, ``service``, ``logger.name``,
  ``error.kind``/``message``/``stack``, ``dd.trace_id``/``dd.span_id`` (decimal, the trace
  id's lower 64 bits, as Datadog correlates OpenTelemetry ids), ``dd.service/env/version``.
* ``otel`` -- the OpenTelemetry log data model: ``timestamp``, ``severity_text``,
  ``severity_number``, ``body``, ``attributes``, ``trace_id``, ``span_id``,
  ``trace_flags``, ``resource``, ``instrumentation_scope``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .config import LogConfig

__all__ = ["SCHEMAS", "Schema", "schema_for"]

_M64 = (1 << 64) - 1


def _ro(**items: Any) -> Mapping[str, Any]:
    return MappingProxyType(dict(items))


@dataclass(frozen=True)
class Schema:
    """One backend's names and formats for logkit's fields.

    Every ``str`` names an output key (``None``: the field is left out); dotted keys
    become nested objects when ``nest`` is true.
    """

    name: str
    timestamp: str = "timestamp"
    #: ``iso`` (``2024-05-01T12:00:00.123Z``)
    clock: str = "iso"
    level: str = "level"
    #: Python level name -> output value (a level not listed keeps its name).
    levels: Mapping[str, Any] = field(default_factory=dict)
    #: OpenTelemetry's ``severity_number`` (Python level name -> number).
    severity_number: str | None = None
    severity_numbers: Mapping[str, int] = field(default_factory=dict)
    message: str = "message"
    logger: str | None = "logger"
    process: str | None = "process"
    process_name: str | None = None
    thread: str | None = "thread"
    thread_name: str | None = None
    #: ``(file, line, function)`` keys of the record's source location.
    source: tuple[str, str, str] | None = None
    #: Put the file's base name (not its path) in ``source[0]``.
    source_basename: bool = False
    #: Key of an object holding the ``source`` keys (``None``: they are keys of the record).
    source_key: str | None = None
    #: ``(type, message, traceback)`` keys of an exception.
    exception: tuple[str, str, str] = ("exception.type", "exception.message",
                                       "exception.traceback")
    trace_id: str = "trace_id"
    span_id: str = "span_id"
    trace_sampled: str | None = None
    #: Trace id (32 hex digits) -> output value; ``{project}`` from the config is known.
    trace_format: Callable[[str, Mapping[str, Any]], Any] = lambda h, _: h
    span_format: Callable[[str], Any] = lambda h: h
    #: W3C trace flags -> the ``trace_sampled`` value (default: the sampled bit, a bool).
    sampled_format: Callable[[int], Any] = lambda flags: bool(flags & 1)
    #: Key of the object holding the record's own fields (static fields, context, ``extra``
    #: fields, source, thread, exception); ``None``: at the top level.
    attributes: str | None = None
    #: logkit field name -> output key (task context fields, event fields, ``service``).
    renames: Mapping[str, str] = field(default_factory=dict)
    #: Output key -> conversion of its value (e.g. milliseconds to nanoseconds).
    convert: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    #: Names a record's own field must not take (first dotted part): such a field gets
    #: ``clash_prefix`` in front of its name.
    reserved: frozenset[str] = frozenset()
    clash_prefix: str = "_"
    #: Expand dotted keys into nested objects (as ecs-logging does).
    nest: bool = False
    #: Dotted keys written as they are even when ``nest`` (ecs-logging's first keys).
    keep_dotted: frozenset[str] = frozenset()
    #: Constant fields right after the first three (``ecs.version``); values computed
    #: once from the config by :func:`constants`.
    constants: Callable[[LogConfig], Mapping[str, Any]] = lambda _: {}
    #: Per-process fields (``resource``), computed once per pid.
    per_process: Callable[[LogConfig, int], Mapping[str, Any]] | None = None
    #: Key of an object holding the logger name (Google Cloud's labels, OpenTelemetry's
    #: instrumentation scope), and the logger name's key in it.
    labels: str | None = None
    labels_name: str = "python_logger"


def service_name(config: LogConfig, *env_vars: str) -> str | None:
    """``service_name``, else the ``service`` static field, else the first set env var."""
    if config.service_name:
        return config.service_name
    service = config.fields.get("service")
    if isinstance(service, str) and service:
        return service
    for var in env_vars:
        if os.environ.get(var):
            return os.environ[var]
    return None


def gcp_project(config: LogConfig) -> str | None:
    """``gcp_project``, else ``GOOGLE_CLOUD_PROJECT``, ``GCP_PROJECT``, ``GCLOUD_PROJECT``."""
    if config.gcp_project:
        return config.gcp_project
    for var in ("GOOGLE_CLOUD_PROJECT", "GCP_PROJECT", "GCLOUD_PROJECT"):
        if os.environ.get(var):
            return os.environ[var]
    return None


# -- ECS ---------------------------------------------------------------------------

#: ECS field sets and top-level fields (ECS 8.x): a record's own field may not take these.
ECS_TOP_LEVEL: frozenset[str] = frozenset({
    "@timestamp", "agent", "as", "client", "cloud", "code_signature", "container",
    "data_stream", "destination", "device", "dll", "dns", "ecs", "elf", "email", "error",
    "event", "faas", "file", "geo", "group", "hash", "host", "http", "interface", "labels",
    "log", "macho", "message", "network", "observer", "orchestrator", "organization", "os",
    "package", "pe", "process", "registry", "related", "risk", "rule", "server", "service",
    "source", "span", "tags", "threat", "tls", "trace", "transaction", "url", "user",
    "user_agent", "vlan", "volume", "vulnerability", "x509",
})
#: The ECS version ecs-logging's formatters write.
ECS_VERSION = "1.6.0"


def _ecs_constants(config: LogConfig) -> Mapping[str, Any]:
    out: dict[str, Any] = {"ecs.version": ECS_VERSION}
    service = service_name(config, "ELASTIC_APM_SERVICE_NAME", "OTEL_SERVICE_NAME")
    if service:
        out["service.name"] = service
    return out


def _ms_to_ns(value: Any) -> Any:
    return int(value * 1_000_000) if isinstance(value, (int, float)) else value


ECS = Schema(
    name="ecs",
    timestamp="@timestamp",
    level="log.level",
    levels=_ro(DEBUG="debug", INFO="info", WARNING="warning", ERROR="error",
               CRITICAL="critical"),
    message="message",
    logger="log.logger",
    process="process.pid",
    process_name="process.name",
    thread="process.thread.id",
    thread_name="process.thread.name",
    source=("log.origin.file.name", "log.origin.file.line", "log.origin.function"),
    source_basename=True,
    exception=("error.type", "error.message", "error.stack_trace"),
    trace_id="trace.id",
    span_id="span.id",
    renames=_ro(
        task_id="celery.task.id", task_name="celery.task.name",
        parent_id="celery.task.parent_id", root_id="celery.task.root_id",
        retries="celery.task.retries", correlation_id="celery.task.correlation_id",
        args="celery.task.args", kwargs="celery.task.kwargs", result="celery.task.result",
        eta="celery.task.eta", expires="celery.task.expires", state="celery.task.state",
        worker="celery.worker", queue="celery.queue",
        event="event.action", duration_ms="event.duration",
        service="service.name", trace_id="trace.id", span_id="span.id",
    ),
    convert=_ro(**{"event.duration": _ms_to_ns}),
    reserved=ECS_TOP_LEVEL,
    clash_prefix="logkit.",
    nest=True,
    keep_dotted=frozenset({"log.level", "ecs.version"}),
    constants=_ecs_constants,
)

# -- Google Cloud ------------------------------------------------------------------

_GCP = "logging.googleapis.com/"


def _gcp_trace(hex_id: str, constants: Mapping[str, Any]) -> str:
    project = constants.get("_project")
    return f"projects/{project}/traces/{hex_id}" if project else hex_id


GCP = Schema(
    name="gcp",
    timestamp="time",
    level="severity",
    levels=_ro(DEBUG="DEBUG", INFO="INFO", WARNING="WARNING", ERROR="ERROR",
               CRITICAL="CRITICAL"),
    message="message",
    logger=None,
    labels=f"{_GCP}labels",
    source=("file", "line", "function"),
    source_key=f"{_GCP}sourceLocation",
    exception=("exception_type", "exception_message", "stack_trace"),
    trace_id=f"{_GCP}trace",
    span_id=f"{_GCP}spanId",
    trace_sampled=f"{_GCP}trace_sampled",
    trace_format=_gcp_trace,
    renames=_ro(trace_id=f"{_GCP}trace", span_id=f"{_GCP}spanId"),
    reserved=frozenset({"severity", "message", "time", "timestamp", "timestampSeconds",
                        "timestampNanos", "httpRequest", "logging.googleapis.com/labels",
                        "logging.googleapis.com/sourceLocation"}),
    constants=lambda config: {"_project": gcp_project(config)},
)

# -- Datadog -----------------------------------------------------------------------


def _dd_trace_id(hex_id: str, constants: Mapping[str, Any]) -> str:
    if constants.get("_128bit"):
        return hex_id
    return str(int(hex_id, 16) & _M64)


def _dd_constants(config: LogConfig) -> Mapping[str, Any]:
    out: dict[str, Any] = {}
    service = service_name(config, "DD_SERVICE", "OTEL_SERVICE_NAME")
    if service:
        out["service"] = service
    for key, var in (("dd.service", "DD_SERVICE"), ("dd.env", "DD_ENV"),
                     ("dd.version", "DD_VERSION")):
        value = os.environ.get(var) or (service if key == "dd.service" else None)
        if value:
            out[key] = value
    flag = os.environ.get("DD_TRACE_128_BIT_TRACEID_LOGGING_ENABLED", "").strip().lower()
    out["_128bit"] = flag in ("1", "true", "yes", "on")
    return out


DATADOG = Schema(
    name="datadog",
    timestamp="timestamp",
    level="status",
    levels=_ro(DEBUG="debug", INFO="info", WARNING="warning", ERROR="error",
               CRITICAL="critical"),
    message="message",
    logger="logger.name",
    process="process.pid",
    thread="logger.thread_id",
    thread_name="logger.thread_name",
    source=("logger.file", "logger.line", "logger.method_name"),
    exception=("error.kind", "error.message", "error.stack"),
    trace_id="dd.trace_id",
    span_id="dd.span_id",
    trace_format=_dd_trace_id,
    span_format=lambda h: str(int(h, 16)),
    renames=_ro(trace_id="dd.trace_id", span_id="dd.span_id", service="service"),
    reserved=frozenset({"status", "service", "message", "timestamp", "host", "source",
                        "ddsource", "ddtags", "dd", "logger", "error", "trace_id",
                        "span_id"}),
    constants=_dd_constants,
)

# -- OpenTelemetry -----------------------------------------------------------------


def _otel_resource(config: LogConfig, pid: int) -> Mapping[str, Any]:
    attributes: dict[str, Any] = {}
    service = service_name(config, "OTEL_SERVICE_NAME")
    if service:
        attributes["service.name"] = service
    attributes["process.pid"] = pid
    return {"resource": {"attributes": attributes}}


OTEL = Schema(
    name="otel",
    timestamp="timestamp",
    level="severity_text",
    levels=_ro(DEBUG="DEBUG", INFO="INFO", WARNING="WARN", ERROR="ERROR", CRITICAL="FATAL"),
    severity_number="severity_number",
    severity_numbers=_ro(DEBUG=5, INFO=9, WARNING=13, ERROR=17, CRITICAL=21),
    message="body",
    logger=None,
    labels="instrumentation_scope",
    labels_name="name",
    process=None,
    thread="thread.id",
    thread_name="thread.name",
    source=("code.file.path", "code.line.number", "code.function.name"),
    exception=("exception.type", "exception.message", "exception.stacktrace"),
    trace_id="trace_id",
    span_id="span_id",
    trace_sampled="trace_flags",
    sampled_format=int,  # the flags byte, as the SDK's LogRecord.to_json() writes it
    attributes="attributes",
    renames=_ro(service="service.name"),
    # attributes keep their dotted names (the data model's attribute keys)
    per_process=_otel_resource,
)

LOGKIT = Schema(name="logkit")

#: Every schema by name (the ``schema`` option's choices).
SCHEMAS: Mapping[str, Schema] = MappingProxyType(
    {s.name: s for s in (LOGKIT, ECS, GCP, DATADOG, OTEL)}
)


def schema_for(config: LogConfig) -> Schema:
    """The :class:`Schema` the config's ``schema`` option names."""
    return SCHEMAS[config.schema]
