"""µs per record: the stdlib floor, Celery, python-json-logger, structlog and logkit.

Every case formats the same record: a message with two args, three ``extra``
fields and six task-context fields. Peers that do not know about task context get
the six fields as ``extra`` (structlog: bound with ``bind_contextvars``); logkit
gets them from its context variable (``logkit.bind``), as in a worker.

Tables:

* ``format()`` of a prebuilt record;
* ``logger.info(...)`` through a handler writing to ``/dev/null`` (the whole path:
  record creation, handler lock, formatting, one write);
* the same two for ``logger.exception(...)`` (the traceback cache ``exc_text`` is
  reset before each ``format()`` so the traceback is formatted every time);
* disabled calls (``logger.debug`` with the level at INFO), stdlib and structlog.
"""

from __future__ import annotations

import io
import logging
import os
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from celery.app.log import TaskFormatter
from pythonjsonlogger.json import JsonFormatter as PjlJsonFormatter
from pythonjsonlogger.orjson import OrjsonFormatter as PjlOrjsonFormatter

import logkit
from logkit.config import SCHEMAS, LogConfig
from logkit.formatters import ConsoleFormatter, JsonFormatter, PlainFormatter
from logkit.handlers import QueueSinkHandler, Sink, SinkHandler, flush_queues
from logkit.setup import DEFAULT_TASK_LOG_FORMAT

from .timing import Case, Result, interleaved, table

FLOOR_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
MESSAGE = "charged order %s for %s"
ARGS = ("A-1001", "alice")
EXTRA: dict[str, Any] = {"user_id": 42, "amount": 12.5, "currency": "EUR"}
CONTEXT: dict[str, Any] = {
    "task_id": "8a6b0f5e-2b7c-4c44-9a53-4d6b3d0c8e11",
    "task_name": "shop.tasks.charge",
    "parent_id": "0f4e2a4c-53c3-4b1e-8a9e-8a1b2c3d4e5f",
    "root_id": "5d7c9e1a-9f8b-4a6d-b2c3-1e2f3a4b5c6d",
    "retries": 0,
    "worker": "celery@worker-1",
}
PEER_EXTRA = {**EXTRA, **CONTEXT}
#: The schemas compared with logkit's own JSON (logkit's own is "logkit json").
SCHEMA_NAMES = tuple(s for s in SCHEMAS if s != "logkit")

#: The stdlib's own ``Logger.makeRecord``: logkit.configure() replaces it process-wide with
#: one that renames clashing ``extra`` keys; peers keep the stdlib's, logkit's loggers get
#: logkit's (see :func:`run`).
STDLIB_MAKE_RECORD = logging.Logger.makeRecord
_logkit_make_record: Any = None


@dataclass
class Peer:
    """A formatter under test, how its records are made, and its full-path logger."""

    name: str
    formatter: logging.Formatter | None
    logger: Callable[..., Any]  # bound logger method taking (msg, *args, **kw), or None
    extra: dict[str, Any] | None
    exc_logger: Callable[..., Any] | None = None
    #: Untimed, after each timed run (the queue case drains its writer thread).
    after: Callable[[], object] | None = None


def _devnull_stream() -> io.TextIOWrapper:
    return open(os.open(os.devnull, os.O_WRONLY), "w", encoding="utf-8")


def _stdlib_logger(name: str, formatter: logging.Formatter) -> logging.Logger:
    """A non-propagating logger with a stdlib ``StreamHandler`` on ``/dev/null``."""
    log = logging.getLogger(f"bench.{name}")
    log.handlers.clear()
    handler = logging.StreamHandler(_devnull_stream())
    handler.setFormatter(formatter)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


def _logkit_logger(name: str, formatter: logging.Formatter, config: LogConfig,
                   queue: bool = False) -> logging.Logger:
    """A non-propagating logger with logkit's own handler and sink on ``/dev/null``.

    ``queue``: the non-blocking mode (records are written by logkit's writer thread).
    """
    log = logging.getLogger(f"bench.{name}")
    log.handlers.clear()
    handler: logging.Handler = SinkHandler(Sink(os.devnull, watch=config.watch_file), formatter)
    if queue:
        handler = QueueSinkHandler(handler)
    log.addHandler(handler)
    if _logkit_make_record is not None:  # what a logger does with logkit configured
        log.makeRecord = types.MethodType(_logkit_make_record, log)  # type: ignore[method-assign]
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


#: ecs-logging's own formatter, compared with ``schema="ecs"`` (when installed).
ECS_LOGGING = "ecs-logging StdlibFormatter"


def _ecs_logging_formatter() -> logging.Formatter | None:
    try:
        import ecs_logging
    except ImportError:  # an optional peer (the dev extra installs it)
        return None
    formatter: logging.Formatter = ecs_logging.StdlibFormatter()
    return formatter


def _structlog_processor_formatter() -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )


def _structlog_native() -> Any:
    """structlog's fastest documented setup: filtering bound logger, orjson, bytes out."""
    out = open(os.devnull, "wb")  # noqa: SIM115
    return structlog.wrap_logger(
        structlog.BytesLogger(out),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True,
    ).bind(logger="bench.structlog-native")


@contextmanager
def bound_context() -> Iterator[None]:
    """Bind the six context fields for logkit (its contextvar) and for structlog."""
    structlog.contextvars.bind_contextvars(**CONTEXT)
    with logkit.bound(**CONTEXT):
        try:
            yield
        finally:
            structlog.contextvars.clear_contextvars()


def peers(config: LogConfig | None = None) -> list[Peer]:
    """Every formatter under test, floor first."""
    config = config or LogConfig(format="json")
    floor = logging.Formatter(FLOOR_FORMAT)
    celery_fmt = TaskFormatter(DEFAULT_TASK_LOG_FORMAT, use_color=False)
    pjl = PjlJsonFormatter(FLOOR_FORMAT)
    pjl_orjson = PjlOrjsonFormatter(FLOOR_FORMAT)
    sl_pf = _structlog_processor_formatter()
    lk_json = JsonFormatter(config)
    lk_console = ConsoleFormatter(config, use_color=False)
    lk_plain = PlainFormatter(DEFAULT_TASK_LOG_FORMAT, None, config)
    native = _structlog_native()
    out = [
        Peer("stdlib Formatter (floor)", floor, _stdlib_logger("floor", floor).info, PEER_EXTRA),
        Peer("celery TaskFormatter", celery_fmt, _stdlib_logger("celery", celery_fmt).info,
             PEER_EXTRA),
        Peer("python-json-logger JsonFormatter", pjl, _stdlib_logger("pjl", pjl).info, PEER_EXTRA),
        Peer("python-json-logger OrjsonFormatter", pjl_orjson,
             _stdlib_logger("pjl-orjson", pjl_orjson).info, PEER_EXTRA),
        Peer("structlog ProcessorFormatter+JSONRenderer", sl_pf,
             _stdlib_logger("structlog-pf", sl_pf).info, EXTRA),
        Peer("structlog native (orjson, BytesLogger)", None, native.info, None,
             exc_logger=native.exception),
        Peer("logkit json", lk_json, _logkit_logger("lk-json", lk_json, config).info, EXTRA),
        Peer("logkit json, queue=True (caller's cost; writer drained untimed)", None,
             _logkit_logger("lk-json-queue", lk_json, config, queue=True).info, EXTRA,
             after=flush_queues),
        Peer("logkit console", lk_console,
             _logkit_logger("lk-console", lk_console, config).info, EXTRA),
        Peer("logkit plain", lk_plain, _logkit_logger("lk-plain", lk_plain, config).info, EXTRA),
    ]
    # #15: each schema side by side with logkit's own JSON (the 1.1x budget)
    for schema in SCHEMA_NAMES:
        schema_config = config.replace(schema=schema, fields={"service": "shop"})
        fmt = JsonFormatter(schema_config)
        out.append(Peer(f"logkit json, schema={schema}", fmt,
                        _logkit_logger(f"lk-schema-{schema}", fmt, schema_config).info, EXTRA))
    # #27: the backend's own formatter, next to schema="ecs" (at least 5x slower)
    ecs = _ecs_logging_formatter()
    if ecs is not None:
        out.append(Peer(ECS_LOGGING, ecs, _stdlib_logger("ecs-logging", ecs).info, PEER_EXTRA))
    for peer in out:
        if peer.exc_logger is None:
            peer.exc_logger = peer.logger.__self__.exception  # type: ignore[attr-defined]
    return out


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def make_record(extra: dict[str, Any] | None, *, exception: bool = False) -> logging.LogRecord:
    """The benchmark record, made by a real ``logger.info`` / ``logger.exception`` call."""
    log = logging.getLogger("bench.capture")
    log.propagate = False
    log.setLevel(logging.INFO)
    capture = _Capture()
    log.handlers = [capture]
    if exception:
        try:
            {}["missing"]
        except KeyError:
            log.exception(MESSAGE, *ARGS, extra=extra)
    else:
        log.info(MESSAGE, *ARGS, extra=extra)
    return capture.records[0]


def _format_runner(formatter: logging.Formatter, record: logging.LogRecord,
                   reset_exc: bool) -> Callable[[int], None]:
    fmt = formatter.format
    if reset_exc:
        def run(n: int) -> None:
            for _ in range(n):
                record.exc_text = None
                fmt(record)
    else:
        def run(n: int) -> None:
            for _ in range(n):
                fmt(record)
    return run


def _call_runner(method: Callable[..., Any], extra: dict[str, Any] | None,
                 exception: bool) -> Callable[[int], None]:
    kwargs: dict[str, Any] = {}
    if extra is not None:
        kwargs = {"extra": extra}
    elif exception:  # structlog native: extras are keyword arguments
        kwargs = dict(EXTRA)
    else:
        kwargs = dict(EXTRA)
    if exception:
        def run(n: int) -> None:
            for _ in range(n):
                try:
                    {}["missing"]
                except KeyError:
                    method(MESSAGE, *ARGS, **kwargs)
    else:
        def run(n: int) -> None:
            for _ in range(n):
                method(MESSAGE, *ARGS, **kwargs)
    return run


def format_cases(all_peers: list[Peer], *, exception: bool) -> list[Case]:
    cases = []
    for peer in all_peers:
        if peer.formatter is None:
            continue
        record = make_record(peer.extra, exception=exception)
        cases.append(Case(peer.name, _format_runner(peer.formatter, record, exception)))
    return cases


def call_cases(all_peers: list[Peer], *, exception: bool) -> list[Case]:
    cases = []
    for peer in all_peers:
        method = peer.exc_logger if exception else peer.logger
        assert method is not None
        cases.append(Case(peer.name, _call_runner(method, peer.extra, exception),
                          after=peer.after))
    return cases


def disabled_cases() -> list[Case]:
    """``debug`` calls with the level at INFO: stdlib with/without logkit, structlog setups."""
    plain = logging.getLogger("bench.disabled.plain")
    plain.propagate = False
    plain.setLevel(logging.INFO)
    plain.handlers = [logging.StreamHandler(_devnull_stream())]
    # Under logkit: a logger propagating to the root logger logkit configured (level INFO).
    under_logkit = logging.getLogger("bench.disabled.logkit")
    # structlog through stdlib, as structlog documents it (filter_by_level first).
    sl_stdlib = structlog.wrap_logger(
        logging.getLogger("bench.disabled.structlog"),
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.render_to_log_kwargs,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    logging.getLogger("bench.disabled.structlog").setLevel(logging.INFO)
    native = _structlog_native()
    # structlog routed by logkit (logkit.configure() set the global structlog config).
    sl_logkit = structlog.get_logger("bench.disabled.structlog-logkit")

    def stdlib_runner(log: logging.Logger) -> Callable[[int], None]:
        debug = log.debug

        def run(n: int) -> None:
            for _ in range(n):
                debug(MESSAGE, *ARGS, extra=EXTRA)
        return run

    def structlog_runner(log: Any) -> Callable[[int], None]:
        def run(n: int) -> None:
            debug = log.debug
            for _ in range(n):
                debug(MESSAGE, *ARGS, **EXTRA)
        return run

    return [
        Case("stdlib logger.debug, plain stdlib (floor)", stdlib_runner(plain)),
        Case("stdlib logger.debug, logkit installed", stdlib_runner(under_logkit)),
        Case("structlog stdlib BoundLogger + filter_by_level", structlog_runner(sl_stdlib)),
        Case("structlog native filtering bound logger", structlog_runner(native)),
        Case("structlog via logkit", structlog_runner(sl_logkit)),
    ]


def trace_cases() -> list[Case]:
    """The current span's ids as a formatter looks them up: none current, one current."""
    from logkit.trace import span_lookup

    lookup = span_lookup()
    if lookup is None:
        return []

    def runner(n: int) -> None:
        for _ in range(n):
            lookup()

    def in_span(n: int) -> None:
        from opentelemetry.sdk.trace import TracerProvider

        with TracerProvider().get_tracer("bench").start_as_current_span("s"):
            runner(n)

    return [Case("trace lookup, no span current", runner),
            Case("trace lookup, a recording span current", in_span)]


def run(rounds: int = 40, loops: int = 2000) -> dict[str, list[Result]]:
    """Run every formatter table; return ``{title: results}`` (floor first)."""
    global _logkit_make_record
    logkit.configure(format="json", logfile=os.devnull, loglevel="INFO")
    if logging.Logger.makeRecord is not STDLIB_MAKE_RECORD:
        _logkit_make_record = logging.Logger.makeRecord
        logging.Logger.makeRecord = STDLIB_MAKE_RECORD  # type: ignore[method-assign]
    all_peers = peers()
    out: dict[str, list[Result]] = {}
    exc_loops = max(1, loops // 4)
    with bound_context():
        out["format() of a prebuilt record"] = interleaved(
            format_cases(all_peers, exception=False), rounds=rounds, loops=loops)
        out["logger.info() to /dev/null"] = interleaved(
            call_cases(all_peers, exception=False), rounds=rounds, loops=loops)
        flush_queues()
        out["format() of a prebuilt logger.exception record"] = interleaved(
            format_cases(all_peers, exception=True), rounds=rounds, loops=exc_loops)
        out["logger.exception() to /dev/null"] = interleaved(
            call_cases(all_peers, exception=True), rounds=rounds, loops=exc_loops)
        flush_queues()
        out["trace lookup (opentelemetry-api installed)"] = interleaved(
            trace_cases(), rounds=rounds, loops=loops * 5)
        out["disabled call (logger.debug at level INFO)"] = interleaved(
            disabled_cases(), rounds=rounds, loops=loops * 5)
    return out


def render(results: dict[str, list[Result]]) -> str:
    """Markdown tables for :func:`run`'s results."""
    return "\n".join(table(title, rows) for title, rows in results.items())


def samples() -> dict[str, str]:
    """One output line of every formatter (to check that all output the same fields)."""
    out = {}
    with bound_context():
        for peer in peers():
            if peer.formatter is not None:
                out[peer.name] = peer.formatter.format(make_record(peer.extra))
    return out
