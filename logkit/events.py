"""Task, worker and beat lifecycle events as structured log records.

One small receiver per Celery signal turns the signal into one record on the
``logkit.events`` logger, with a stable ``event`` field and the event's fields
as ``extra`` (so it goes through the same formatter as every other record).
The task's identifying fields (``task_id``, ``task_name``, ``worker``...) come
from the log context: inside a task they are already bound; for events that
Celery fires outside the task's run (``task_received`` and ``task_revoked`` in
the prefork parent, ``task_unknown``...) they are bound for that one record.

Celery's own prose lines for the same events ("Task x[id] succeeded in 0.01s:
None", "Task x[id] received", ...) are dropped by a :class:`logging.Filter` on
Celery's loggers, but only while the event that replaces them is enabled.

Data flow: signal -> fields (+ task identity bound in the context) -> record
on ``logkit.events`` -> formatter -> sink. No receiver ever raises into Celery.
"""

from __future__ import annotations

import functools
import logging
import os
import signal as _signal
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from traceback import format_exception as _format_exception
from types import MappingProxyType, TracebackType
from typing import Any

from celery import signals
from celery.app.task import Context
from celery.exceptions import Reject
from celery.utils.saferepr import saferepr

from . import context, receivers
from .config import EVENT_NAMES
from .formatters import JsonFormatter, cap, safe_repr, safe_str
from .handlers import SinkHandler
from .receivers import HEADER, Installation, installation
from .redaction import RedactFilter
from .setup import CONFIGURED_HOOKS, STOCK_MAKE_RECORD, _make_record, stock_logger_method

__all__ = ["DEFAULT_LEVELS", "EVENTS_LOGGER", "MESSAGES", "connect", "emit"]

#: Name of the logger every lifecycle event is logged on.
EVENTS_LOGGER = "logkit.events"

logger = logging.getLogger(EVENTS_LOGGER)
_internal = logging.getLogger("logkit")

_D, _I, _W, _E = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR

#: Default level of each event (``event_levels`` overrides it).
DEFAULT_LEVELS: Mapping[str, int] = MappingProxyType(
    {
        "task_received": _I,
        "task_started": _I,
        "task_succeeded": _I,
        "task_failed": _E,
        "task_retried": _W,
        "task_revoked": _W,
        "task_unknown": _E,
        "task_rejected": _E,
        "task_internal_error": _E,
        "worker_ready": _I,
        "worker_shutting_down": _I,
        "worker_process_init": _D,
        "worker_process_shutdown": _D,
        "worker_shutdown": _I,
        "beat_started": _I,
        "beat_task_sent": _I,
    }
)

#: The (constant) message of each event's record.
MESSAGES: Mapping[str, str] = MappingProxyType(
    {
        "task_received": "Task received",
        "task_started": "Task started",
        "task_succeeded": "Task succeeded",
        "task_failed": "Task failed",
        "task_retried": "Task retried",
        "task_revoked": "Task revoked",
        "task_unknown": "Received unregistered task",
        "task_rejected": "Task message rejected",
        "task_internal_error": "Task internal error",
        "worker_ready": "Worker ready",
        "worker_shutting_down": "Worker shutting down",
        "worker_process_init": "Worker process started",
        "worker_process_shutdown": "Worker process shutting down",
        "worker_shutdown": "Worker shut down",
        "beat_started": "Beat started",
        "beat_task_sent": "Beat sent due task",
    }
)

assert set(DEFAULT_LEVELS) == set(EVENT_NAMES) == set(MESSAGES)

#: Longest repr kept for a rejected/unknown message's body (Celery's dump_body uses 1024 too).
BODY_MAX_LENGTH = 1024

#: Start time (``time.monotonic()``) of each running task, by task id, in this process.
_starts: dict[str, float] = {}


# ---------------------------------------------------------------------------
# Emitting
# ---------------------------------------------------------------------------


def level_of(event: str, default: int | None = None) -> int | None:
    """The level ``event`` is logged at now, or ``None`` if it is off (or filtered by level)."""
    inst = installation()
    if inst is None:
        return None
    level = inst.config.event_level(event, DEFAULT_LEVELS[event] if default is None else default)
    if level is None or not logger.isEnabledFor(level):
        return None
    return level


def emit(
    event: str,
    level: int,
    fields: Mapping[str, Any],
    *,
    bind: Mapping[str, Any] | None = None,
    exc_info: tuple[type[BaseException], BaseException, TracebackType | None] | None = None,
    exc_text: str | None = None,
) -> None:
    """Log one ``event`` record with ``fields``; ``bind`` is bound in the context for it.

    ``exc_text`` (an already formatted traceback) is used instead of formatting
    ``exc_info`` again.
    """
    record = logger.makeRecord(
        logger.name, level, __file__, 0, MESSAGES[event], (), exc_info,
        extra={"event": event, **fields},
    )
    if exc_text:
        record.exc_text = exc_text
    if bind:
        with context.bound(**bind):
            logger.handle(record)
    else:
        logger.handle(record)


# The hot path: task_started and task_succeeded, once per task.
#
# When the ``logkit.events`` records go where logkit configured them (the root's
# SinkHandler(s), no other handler or filter on the way, the stdlib record
# factory and no other library's ``makeRecord`` wrapper), a record is built from a
# per-process template and handed to those handlers directly: no ``makeRecord``, no
# walk through ``Logger.handle``, and the redaction filter applied only to what can
# hold a secret (the ``result`` text). The output is the same as :func:`emit`'s (tests
# compare them); anything else takes :func:`emit`.

_LogRecord = logging.LogRecord
_Logger = logging.Logger
# the stdlib's own, even when Sentry patched them before logkit was imported
_STD_HANDLE = stock_logger_method("handle")
_STD_CALL_HANDLERS = stock_logger_method("callHandlers")
#: ``makeRecord`` as the stdlib has it, or logkit's renaming wrapper over it (the same
#: record for the events' ``extra``); any other wrapper (ddtrace's) must see every record.
_STD_MAKE_RECORD = STOCK_MAKE_RECORD
_LOGKIT_MAKE_RECORD = _make_record
_new_record = _LogRecord.__new__
_templates: dict[tuple[str, int], dict[str, Any]] = {}
_template_pid = [0]


def _route() -> tuple[list[SinkHandler], list[RedactFilter]] | None:
    """logkit's handlers an events record reaches, and their redaction filters, or ``None``."""
    if (
        logging.getLogRecordFactory() is not _LogRecord
        or not (logging.logThreads and logging.logProcesses and logging.logMultiprocessing)
        # patched by someone (Sentry's logging integration wraps callHandlers): let them see it
        or _Logger.handle is not _STD_HANDLE
        or _Logger.callHandlers is not _STD_CALL_HANDLERS
        # wrapped by someone (ddtrace adds dd.trace_id...): let them add their fields
        or (_Logger.makeRecord is not _LOGKIT_MAKE_RECORD
            and _Logger.makeRecord is not _STD_MAKE_RECORD)  # identity: wrapt proxies are ==
    ):
        return None
    handlers: list[SinkHandler] = []
    redactors: list[RedactFilter] = []
    node: Any = logger
    while node is not None:
        if node.filters or node.disabled:
            return None
        for handler in node.handlers:
            if type(handler) is not SinkHandler:
                return None
            for flt in handler.filters:
                if type(flt) is not RedactFilter:
                    return None
                if flt.pattern is not None:
                    redactors.append(flt)
            handlers.append(handler)
        if not node.propagate:
            break
        node = node.parent
    return handlers, redactors


def _record(event: str, level: int, extras: Mapping[str, Any]) -> logging.LogRecord:
    """A ``LogRecord`` equal to ``emit``'s, from a template made once per process.

    ``extras`` are the ``extra`` fields, ``event`` first.
    """
    pid = os.getpid()
    if _template_pid[0] != pid:
        _templates.clear()
        _template_pid[0] = pid
    template = _templates.get((event, level))
    if template is None:
        made = _LogRecord(logger.name, level, __file__, 0, MESSAGES[event], (), None)
        template = _templates[(event, level)] = dict(made.__dict__)
    record = _new_record(_LogRecord)
    d = record.__dict__
    d.update(template)
    ct = time.time()
    d["created"] = ct
    d["msecs"] = int((ct - int(ct)) * 1000) + 0.0
    d["relativeCreated"] = (ct - _start_time) * 1000
    # looked up on the module each time, as LogRecord does: gevent/eventlet patch them
    d["thread"] = threading.get_ident()
    d["threadName"] = threading.current_thread().name
    d.update(extras)
    return record


_start_time: float = logging._startTime  # type: ignore[attr-defined]


def emit_fast(event: str, level: int, fields: Mapping[str, Any]) -> None:
    """:func:`emit` for a record with no exception (bind context around the call).

    JSON handlers get the line from :meth:`JsonFormatter.event_line` (no
    ``LogRecord`` at all); other formatters get a record made from a template.
    """
    route = _route()
    if route is None or not route[0]:
        emit(event, level, fields)
        return
    handlers, redactors = route
    extras: Mapping[str, Any]
    if fields:
        extras = {"event": event, **fields}
        for redactor in redactors:  # what their RedactFilter would do to the record's extras
            extras = redactor.redact_fields(extras)
    else:  # {"event": name}: read-only, redacted once per event and set of filters
        cached = _EVENT_ONLY.get(event)
        if cached is None or cached[0] != redactors:
            extras = {"event": event}
            for redactor in redactors:
                extras = redactor.redact_fields(extras)
            cached = _EVENT_ONLY[event] = (redactors, MappingProxyType(dict(extras)))
        extras = cached[1]
    record: logging.LogRecord | None = None
    line: bytes | None = None
    ct = time.time()
    for handler in handlers:
        if level < handler.level:
            continue
        formatter = handler.formatter
        if type(formatter) is JsonFormatter:
            line = formatter.event_line(
                ct, int((ct - int(ct)) * 1000) + 0.0,
                _LEVEL_NAMES.get(level) or logging.getLevelName(level), logger.name,
                MESSAGES[event], context.current(), extras, _getpid(), threading.get_ident(),
                _FIELD_KEYS.get(event) or frozenset(extras),
            )
        if line is not None:  # one O_APPEND write: no handler lock needed
            handler.sink.write(line)
            line = None
            continue
        if record is None:
            record = _record(event, level, extras)
        handler.acquire()
        try:
            handler.emit(record)
        except Exception:
            handler.handleError(record)
        finally:
            handler.release()


#: ``{"event": name}``, read-only, per event: the formatter reuses its bytes.
_EVENT_ONLY: dict[str, tuple[list[RedactFilter], Mapping[str, Any]]] = {}


#: Every key the fast-path events can have (their ``extra`` fields), as one constant set.
_FIELD_KEYS: dict[str, frozenset[str]] = {
    "task_started": frozenset({"event"}),
    "task_succeeded": frozenset({"event", "duration_ms", "result"}),
    "task_received": frozenset({"event", "queue", "eta", "expires"}),
}

_LEVEL_NAMES: dict[int, str] = logging._levelToName  # getLevelName(), inlined
_getpid = os.getpid


def _guarded(fn: Callable[..., None]) -> Callable[..., None]:
    """Never let a receiver raise into Celery; report the first failure of each."""
    reported = False

    @functools.wraps(fn)
    def receiver(*args: Any, **kwargs: Any) -> None:
        nonlocal reported
        try:
            fn(*args, **kwargs)
        except Exception:
            if not reported:
                reported = True
                _internal.warning(
                    "logkit: lifecycle event receiver %s failed", fn.__name__, exc_info=True
                )

    return receiver


# ---------------------------------------------------------------------------
# Field helpers
# ---------------------------------------------------------------------------


class _Named:
    """Stands in for a task where only its name is known (the getters read ``.name``)."""

    __slots__ = ("name",)

    def __init__(self, name: Any) -> None:
        self.name = name


def _as_context(request: Any) -> Any:
    """A ``Context``-like view (``.id``, ``.retries``...) of a request, a Request or a dict."""
    if request is None or isinstance(request, Context):
        return request
    request_dict = getattr(request, "request_dict", None)  # celery.worker.request.Request
    if isinstance(request_dict, Mapping):
        return Context(dict(request_dict))
    if isinstance(request, Mapping):
        return Context(dict(request))
    return request


def _names(inst: Installation) -> Mapping[str, str]:
    return inst.config.field_names


def task_identity(name: Any, request: Any) -> dict[str, Any]:
    """The task context fields (as configured) for a task ``name`` and its ``request``."""
    inst = installation()
    if inst is None or request is None:
        return {}
    view = _as_context(request)
    values: dict[str, Any] = {}
    inherited = getattr(view, HEADER, None)
    if isinstance(inherited, Mapping):
        values.update(inherited)
    inst.task_context.fill(_Named(name), view, values)
    return values


def _bind_for(task_id: Any, name: Any, request: Any) -> dict[str, Any] | None:
    """What to bind for a task event: nothing if the task's context is already bound."""
    inst = installation()
    if inst is None:
        return None
    key = _names(inst).get("task_id", "task_id")
    if task_id is not None and context.current().get(key) == task_id:
        return None
    values = task_identity(name, request)
    if task_id is not None:  # the request may be another one (e.g. the parent's empty one)
        values[key] = task_id
    return values


def _worker_bind(hostname: Any) -> dict[str, Any]:
    inst = installation()
    if inst is None or hostname is None:
        return {}
    return {_names(inst).get("worker", "worker"): safe_str(hostname)}


#: Task ids whose ``task_failed`` was emitted in this process (bounded, oldest dropped).
_failed: dict[Any, None] = {}


def _duration_ms(task_id: Any) -> float | None:
    start = _starts.get(task_id) if task_id is not None else None
    if start is None:
        return None
    return round((time.monotonic() - start) * 1000.0, 3)


def _iso(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return safe_str(value)


def _queue(request: Any) -> Any:
    info = getattr(request, "delivery_info", None) or {}
    return info.get("routing_key") or info.get("queue")


def _exc_info(
    exception: Any, tb: Any
) -> tuple[type[BaseException], BaseException, TracebackType | None] | None:
    if not isinstance(exception, BaseException):
        return None
    return (type(exception), exception, tb if isinstance(tb, TracebackType) else None)


def _traceback_text(einfo: Any, tb: Any) -> str | None:
    """Celery's already formatted traceback (``ExceptionInfo.traceback`` or a string)."""
    text = getattr(einfo, "traceback", None)
    if isinstance(text, str) and text:
        return text
    return tb if isinstance(tb, str) and tb else None


def _unpickled(exception: Any) -> Any:
    try:
        from celery.utils.serialization import get_pickled_exception

        return get_pickled_exception(exception)
    except Exception:
        return exception


def _signum(value: Any) -> tuple[Any, str | None]:
    if value is None:
        return None, None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return safe_str(value), None
    try:
        return number, _signal.Signals(number).name
    except ValueError:
        return number, None


def _message_fields(message: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    try:
        fields["content_type"] = message.content_type
        fields["content_encoding"] = message.content_encoding
        fields["delivery_info"] = dict(message.delivery_info or {})
        fields["body"] = cap(safe_repr(message.body), BODY_MAX_LENGTH)
    except Exception:
        pass
    return fields


def _message_request(message: Any, hostname: Any) -> Any:
    headers = getattr(message, "headers", None)
    request: dict[str, Any] = dict(headers) if isinstance(headers, Mapping) else {}
    try:
        payload = message.payload
        if "id" not in request and isinstance(payload, Mapping):  # task protocol 1
            request.update({k: payload[k] for k in ("id", "task") if k in payload})
    except Exception:
        pass
    request["hostname"] = hostname
    try:
        request["delivery_info"] = dict(message.delivery_info or {})
        request["correlation_id"] = (message.properties or {}).get("correlation_id")
    except Exception:
        pass
    return request


# ---------------------------------------------------------------------------
# Task receivers
# ---------------------------------------------------------------------------


@_guarded
def on_task_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    """``task_received`` (consumer process): the worker got a task message."""
    level = level_of("task_received")
    if level is None or request is None:
        return
    fields = {
        "queue": _queue(request),
        "eta": _iso(getattr(request, "eta", None)),
        "expires": _iso(getattr(request, "expires", None)),
    }
    bind = _bind_for(request.id, getattr(request, "name", None), request)
    if bind:  # the worker's main process: no task context is bound there
        with context.bound(**bind):
            emit_fast("task_received", level, fields)
    else:
        emit_fast("task_received", level, fields)


def task_started(inst: Installation, task_id: Any, task: Any) -> None:
    """Called by the ``task_prerun`` receiver once the task's context is bound.

    Remembers the start time and emits ``task_started``.
    """
    try:
        if task_id is not None:
            _starts[task_id] = time.monotonic()
        level = _task_level(inst, "task_started")
        if level is None or task is None:
            return
        _emit_for_task(inst, "task_started", level, _NO_FIELDS, task_id, task)
    except Exception:
        _report_failure("task_started")


def task_finished(inst: Installation, task_id: Any, task: Any, retval: Any, state: Any) -> None:
    """Called by the ``task_postrun`` receiver before the task's context is restored.

    Emits ``task_succeeded`` (with ``duration_ms`` and, optionally, a capped
    ``result`` repr) when the task succeeded, and forgets the start time. Using
    ``task_postrun`` rather than ``task_success`` spares Celery a third signal
    dispatch per task.
    """
    try:
        start = _starts.pop(task_id, None) if task_id is not None else None
        if state != _SUCCESS or task is None:
            if state == _IGNORED and task is not None and TRACE_LOGGER in _quieted:
                _reemit_ignored(task, retval)
            return
        level = _task_level(inst, "task_succeeded")
        if level is None:
            return
        config = inst.config
        fields: dict[str, Any] = {
            "duration_ms": None if start is None
            else round((time.monotonic() - start) * 1000.0, 3),
        }
        if config.result_repr:
            fields["result"] = _result_repr(task, retval, config.max_field_length)
        _emit_for_task(inst, "task_succeeded", level, fields, task_id, task)
    except Exception:
        _report_failure("task_succeeded")


_levels: tuple[Any, dict[str, int | None]] = (None, {})


def _task_level(inst: Installation, event: str) -> int | None:
    """:func:`level_of` with the config's event levels looked up once per config."""
    global _levels
    config = inst.config
    cached = _levels
    if cached[0] is not config:
        cached = _levels = (
            config, {e: config.event_level(e, level) for e, level in DEFAULT_LEVELS.items()}
        )
    level = cached[1][event]
    if level is None or not logger.isEnabledFor(level):
        return None
    return level


def _emit_for_task(
    inst: Installation, event: str, level: int, fields: Mapping[str, Any], task_id: Any, task: Any
) -> None:
    """The fast path while the task's own context is bound (the usual case); else the
    ordinary one, with the task's identity bound for the record (the task cleared it)."""
    if task_id is None or context.current().get(inst.task_context.task_id_key) == task_id:
        emit_fast(event, level, fields)
    else:
        emit(event, level, fields, bind=_bind_for(task_id, task.name, task.request))


_SUCCESS = "SUCCESS"
_IGNORED = "IGNORED"
_NO_FIELDS: Mapping[str, Any] = MappingProxyType({})
_reported: set[str] = set()


def _report_failure(what: str) -> None:
    """Report the first failure of each task hook (never raise into Celery)."""
    if what not in _reported:
        _reported.add(what)
        _internal.warning("logkit: lifecycle event %s failed", what, exc_info=True)


def _result_repr(task: Any, result: Any, max_length: int) -> str:
    """The ``result`` field: Celery's ``saferepr``, capped; plain ``repr`` for small scalars."""
    limit = min(getattr(task, "resultrepr_maxsize", 1024) or 1024, max_length)
    kind = type(result)
    if result is None or kind is bool or kind is int or kind is float:
        text = repr(result)  # what saferepr gives, without its machinery
        if len(text) <= limit:
            return text
    try:
        return cap(saferepr(result, limit), limit)
    except Exception:
        return cap(safe_repr(result), limit)


def _expected(task: Any, exception: Any) -> bool:
    throws: Any = getattr(task, "throws", None)
    if not throws:
        return False
    try:
        return isinstance(exception, throws)
    except TypeError:
        return False


@_guarded
def on_task_failure(
    sender: Any = None,
    task_id: Any = None,
    exception: Any = None,
    traceback: Any = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    """``task_failure``: the exception (type, message, traceback) and ``duration_ms``.

    An exception listed in the task's ``throws`` is *expected*: like Celery, it is
    logged at INFO and without its traceback.
    """
    exception = _unpickled(exception)
    if isinstance(exception, Reject):  # the task rejected its message: not a failure
        _task_rejected(sender, task_id, exception)
        return
    expected = _expected(sender, exception)
    level = level_of("task_failed", _I if expected else None)
    if level is None or sender is None:
        return
    request = sender.request
    task_id = task_id if task_id is not None else getattr(request, "id", None)
    if task_id is not None:
        # Celery signals a hard time limit twice (timeout, then the lost worker): log once.
        if task_id in _failed:
            return
        _failed[task_id] = None
        if len(_failed) > 1024:
            del _failed[next(iter(_failed))]
    fields = {"duration_ms": _duration_ms(task_id), "expected": expected}
    emit(
        "task_failed", level, fields,
        bind=_bind_for(task_id, sender.name, request),
        exc_info=_exc_info(exception, None if expected else traceback),
        exc_text=None if expected else _traceback_text(einfo, traceback),
    )


def _task_rejected(task: Any, task_id: Any, exc: Any) -> None:
    """``task_rejected`` for a task that raised ``Reject``: why, and whether it is requeued."""
    level = level_of("task_rejected")
    if level is None or task is None:
        return
    request = task.request
    task_id = task_id if task_id is not None else getattr(request, "id", None)
    reason = getattr(exc, "reason", None)
    fields = {
        "reason": reason if isinstance(reason, str) else safe_repr(reason),
        "requeue": bool(getattr(exc, "requeue", False)),
        "duration_ms": _duration_ms(task_id),
    }
    emit("task_rejected", level, fields, bind=_bind_for(task_id, task.name, request))


@_guarded
def on_task_retry(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    """``task_retry``: why (``reason``, ``error``), when (``countdown``/``eta``), ``retries``."""
    level = level_of("task_retried")
    if level is None or sender is None:
        return
    request = request if request is not None else sender.request
    task_id = getattr(request, "id", None)
    when = getattr(reason, "when", None)
    exc = getattr(reason, "exc", None)
    fields = {
        "reason": safe_str(reason) if reason is not None else "cancelled",
        "error": safe_repr(exc) if exc is not None else None,
        "countdown": when if isinstance(when, (int, float)) else None,
        "eta": _iso(when) if when is not None and not isinstance(when, (int, float)) else None,
        "retries": getattr(request, "retries", None),
        "max_retries": getattr(sender, "max_retries", None),
        "duration_ms": _duration_ms(task_id),
    }
    emit("task_retried", level, fields, bind=_bind_for(task_id, sender.name, request))


@_guarded
def on_task_revoked(
    sender: Any = None,
    request: Any = None,
    terminated: Any = None,
    signum: Any = None,
    expired: Any = None,
    **_: Any,
) -> None:
    """``task_revoked`` (consumer process): ``terminated``, ``signum``, ``expired``."""
    level = level_of("task_revoked")
    if level is None or request is None:
        return
    number, name = _signum(signum)
    fields = {
        "reason": "terminated" if terminated else "expired" if expired else "revoked",
        "terminated": bool(terminated),
        "signum": number,
        "signame": name,
        "expired": bool(expired),
    }
    task_name = getattr(sender, "name", None) or getattr(request, "task", None)
    emit("task_revoked", level, fields,
         bind=_bind_for(getattr(request, "id", None), task_name, request))


@_guarded
def on_task_unknown(
    sender: Any = None, message: Any = None, exc: Any = None, name: Any = None,
    id: Any = None,  # Celery's name
    **_: Any,
) -> None:
    """``task_unknown`` (consumer process): a message for a task that is not registered."""
    level = level_of("task_unknown")
    if level is None:
        return
    request = _message_request(message, getattr(sender, "hostname", None))
    request.setdefault("id", id)
    fields = {"error": safe_repr(exc) if exc is not None else None, **_message_fields(message)}
    emit("task_unknown", level, fields, bind=task_identity(name, request))


@_guarded
def on_task_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    """``task_rejected`` (consumer process): an invalid or unknown message was dropped."""
    level = level_of("task_rejected")
    if level is None:
        return
    request = _message_request(message, getattr(sender, "hostname", None))
    fields = {
        "reason": "invalid task message" if exc is not None else "unknown message format",
        "error": safe_repr(exc) if exc is not None else None,
        **_message_fields(message),
    }
    emit("task_rejected", level, fields, bind=task_identity(request.get("task"), request))


@_guarded
def on_task_internal_error(
    sender: Any = None,
    task_id: Any = None,
    request: Any = None,
    exception: Any = None,
    traceback: Any = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    """``task_internal_error``: Celery failed outside the task's body."""
    level = level_of("task_internal_error")
    if level is None:
        return
    request = request if request else {"id": task_id}
    emit(
        "task_internal_error", level, {"duration_ms": _duration_ms(task_id)},
        bind=_bind_for(task_id, getattr(sender, "name", None), request),
        exc_info=_exc_info(exception, traceback),
        exc_text=_traceback_text(einfo, traceback),
    )


# ---------------------------------------------------------------------------
# Worker receivers
# ---------------------------------------------------------------------------


def _pool_name(consumer: Any) -> str | None:
    pool = getattr(consumer, "pool", None)
    if pool is None:
        return None
    return type(pool).__module__.rsplit(".", 1)[-1]


@_guarded
def on_worker_ready(sender: Any = None, **_: Any) -> None:
    """``worker_ready``: the worker consumes (``pid``, ``pool``, ``concurrency``)."""
    level = level_of("worker_ready")
    if level is None:
        return
    controller = getattr(sender, "controller", None)
    fields = {
        "pid": os.getpid(),
        "pool": _pool_name(sender),
        "concurrency": getattr(controller, "concurrency", None),
    }
    emit("worker_ready", level, fields, bind=_worker_bind(getattr(sender, "hostname", None)))


@_guarded
def on_worker_shutting_down(
    sender: Any = None, sig: Any = None, how: Any = None, exitcode: Any = None, **_: Any
) -> None:
    """``worker_shutting_down`` (in the signal handler): ``sig``, ``how``, ``exitcode``."""
    level = level_of("worker_shutting_down")
    if level is None:
        return
    fields = {"sig": safe_str(sig) if sig is not None else None, "how": how,
              "exitcode": exitcode, "pid": os.getpid()}
    emit("worker_shutting_down", level, fields, bind=_worker_bind(sender))


@_guarded
def on_worker_process_init(sender: Any = None, **_: Any) -> None:
    """``worker_process_init`` (pool child): the child's ``pid``."""
    level = level_of("worker_process_init")
    if level is None:
        return
    emit("worker_process_init", level, {"pid": os.getpid()}, bind=_worker_bind(sender))


@_guarded
def on_worker_process_shutdown(
    sender: Any = None, pid: Any = None, exitcode: Any = None, **_: Any
) -> None:
    """``worker_process_shutdown`` (pool child): ``pid`` and ``exitcode``."""
    level = level_of("worker_process_shutdown")
    if level is None:
        return
    fields = {"pid": pid if pid is not None else os.getpid(), "exitcode": exitcode}
    emit("worker_process_shutdown", level, fields, bind=_worker_bind(sender))


@_guarded
def on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    """``worker_shutdown``: the worker has stopped."""
    level = level_of("worker_shutdown")
    if level is None:
        return
    emit("worker_shutdown", level, {"pid": os.getpid()},
         bind=_worker_bind(getattr(sender, "hostname", None)))


# ---------------------------------------------------------------------------
# Beat
# ---------------------------------------------------------------------------


@_guarded
def on_beat_init(sender: Any = None, **_: Any) -> None:
    """``beat_init``: emit ``beat_started``; watch the scheduler for each due task it sends."""
    scheduler = getattr(sender, "scheduler", None)
    if scheduler is not None:
        watch_scheduler(scheduler)
    level = level_of("beat_started")
    if level is None:
        return
    fields = {
        "scheduler": f"{type(scheduler).__module__}.{type(scheduler).__qualname__}"
        if scheduler is not None
        else None,
        "max_interval": getattr(scheduler, "max_interval", None),
        "schedule_file": getattr(sender, "schedule_filename", None),
        "pid": os.getpid(),
    }
    emit("beat_started", level, fields)


def watch_scheduler(scheduler: Any) -> None:
    """Emit ``beat_task_sent`` after each ``scheduler.apply_async`` (this instance only)."""
    if getattr(scheduler, "_logkit_watched", False):
        return
    original = scheduler.apply_async

    def apply_async(entry: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(entry, *args, **kwargs)
        _beat_task_sent(entry, result)
        return result

    scheduler.apply_async = apply_async
    scheduler._logkit_watched = True


@_guarded
def _beat_task_sent(entry: Any, result: Any) -> None:
    level = level_of("beat_task_sent")
    inst = installation()
    if level is None or inst is None:
        return
    names = _names(inst)
    bind = {names.get("task_name", "task_name"): getattr(entry, "task", None)}
    task_id = getattr(result, "id", None)
    if task_id is not None:
        bind[names.get("task_id", "task_id")] = task_id
    fields = {"entry": getattr(entry, "name", None),
              "schedule": safe_str(getattr(entry, "schedule", None))}
    emit("beat_task_sent", level, fields, bind=bind)


# ---------------------------------------------------------------------------
# Suppressing Celery's prose lines for the same events
# ---------------------------------------------------------------------------

# Celery's format strings, by logger; imported lazily so a Celery without one
# of them only loses that suppression.


def _prose() -> dict[str, dict[str, str]]:
    from celery.app import trace
    from celery.worker.consumer import consumer

    return {
        "celery.app.trace": {
            trace.LOG_SUCCESS: "task_succeeded",
            trace.LOG_FAILURE.strip(): "task_failed",  # == LOG_INTERNAL_ERROR, see filter
            trace.LOG_RETRY: "task_retried",
        },
        "celery.worker.strategy": {trace.LOG_RECEIVED: "task_received"},
        "celery.worker.request": {
            "Discarding revoked task: %s[%s]": "task_revoked",
            "Task %s[%s] retry: %s": "task_retried",  # retry after a lost worker
        },
        "celery.worker.control": {"Terminating %s (%s)": "task_revoked"},
        "celery.worker.consumer.consumer": {
            consumer.UNKNOWN_TASK_ERROR: "task_unknown",
            consumer.INVALID_TASK_ERROR: "task_rejected",
            consumer.UNKNOWN_FORMAT: "task_rejected",
        },
        "celery.apps.worker": {"%s ready.": "worker_ready"},
        "celery.beat": {
            "beat: Starting...": "beat_started",
            "Scheduler: Sending due task %s (%s)": "beat_task_sent",
        },
    }


#: Prefixes matched with ``startswith`` (Celery appends details to these messages).
_PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    "celery.worker.request": (("Discarding revoked task: %s[%s] (", "task_revoked"),),
}


class ProseFilter(logging.Filter):
    """Drops Celery's record for an event while that event is enabled.

    Matching is a dict lookup of ``record.msg`` (Celery's format constant), so the
    cost for every other record is one hash lookup.
    """

    def __init__(self, logger_name: str, messages: Mapping[str, str],
                 prefixes: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__()
        self.logger_name = logger_name
        self.messages = dict(messages)
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        """Return ``False`` to drop ``record`` (an enabled event replaces it)."""
        msg = record.msg
        try:
            event = self.messages.get(msg)
        except TypeError:  # unhashable msg
            return True
        if event is None:
            if not self.prefixes or type(msg) is not str:
                return True
            event = next((ev for prefix, ev in self.prefixes if msg.startswith(prefix)), None)
            if event is None:
                return True
        try:
            if event == "task_failed":
                args = record.args
                if isinstance(args, Mapping) and args.get("description") == "INTERNAL ERROR":
                    event = "task_internal_error"
            inst = installation()
            if inst is None:
                return True
            return inst.config.event_level(event, DEFAULT_LEVELS[event]) is None
        except Exception:  # never lose a record because of the filter
            return True


# Celery builds its "Task x[id] succeeded in 0.01s: None" line (saferepr of the
# result, a LogRecord) whenever ``celery.app.trace`` is enabled for INFO, before
# the ProseFilter drops it: that was half of logkit's cost per task; the consumer
# does the same for "Received task" on ``celery.worker.strategy``. While every
# event that replaces an INFO line of such a logger is enabled, logkit sets the
# logger to WARNING so the line is never built, and re-emits the one INFO line no
# event replaces ("Task x[id] ignored", for a task raising ``Ignore``). A level the
# user set on those loggers is left alone.

TRACE_LOGGER = "celery.app.trace"

#: Celery logger -> the events that replace every INFO line it logs.
QUIETED_LOGGERS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    TRACE_LOGGER: ("task_succeeded", "task_retried", "task_failed"),
    "celery.worker.strategy": ("task_received",),
})
#: The loggers logkit set to WARNING (and may set back to NOTSET).
_quieted: set[str] = set()


def quiet_celery_loggers(config: Any, app: Any) -> None:
    """Set Celery's task loggers to WARNING while events replace their INFO lines (or undo)."""
    # worker_deduplicate_successful_tasks logs another INFO line no event replaces
    dedupe = bool(app is not None and getattr(app.conf, "worker_deduplicate_successful_tasks",
                                              False))
    for name, replaced_by in QUIETED_LOGGERS.items():
        target = logging.getLogger(name)
        replaced = all(config.event_level(e, DEFAULT_LEVELS[e]) is not None for e in replaced_by)
        if replaced and not (dedupe and name == TRACE_LOGGER):
            if target.level == logging.NOTSET:
                target.setLevel(logging.WARNING)
                _quieted.add(name)
        elif name in _quieted:
            if target.level == logging.WARNING:
                target.setLevel(logging.NOTSET)
            _quieted.discard(name)


def unquiet_celery_loggers() -> None:
    """Give the loggers :func:`quiet_celery_loggers` set to WARNING their level back."""
    for name in list(_quieted):
        target = logging.getLogger(name)
        if target.level == logging.WARNING:
            target.setLevel(logging.NOTSET)
        _quieted.discard(name)


def _traceback_of(exc: Any) -> str:
    """The formatted traceback of ``exc`` (what Celery's ``ExceptionInfo`` gives), or ``""``."""
    if not isinstance(exc, BaseException):
        return ""
    try:
        return "".join(_format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        return ""


def _reemit_ignored(task: Any, retval: Any) -> None:
    """Celery's "Task x[id] ignored" INFO line, which the WARNING level above dropped."""
    trace_logger = logging.getLogger(TRACE_LOGGER)
    parent = trace_logger.parent
    if parent is None or not parent.isEnabledFor(_I) or trace_logger.level != logging.WARNING:
        return
    from celery.app.trace import LOG_IGNORED

    request = task.request
    data = {
        "hostname": getattr(request, "hostname", None),
        "id": getattr(request, "id", None),
        "name": getattr(task, "name", None),
        "exc": safe_repr(retval),
        "traceback": _traceback_of(retval),
        "args": getattr(request, "argsrepr", None) or safe_repr(getattr(request, "args", None)),
        "kwargs": getattr(request, "kwargsrepr", None)
        or safe_repr(getattr(request, "kwargs", None)),
        "description": "ignored",
        "internal": False,
    }
    record = trace_logger.makeRecord(
        TRACE_LOGGER, _I, __file__, 0, LOG_IGNORED.strip(), (data,), None, extra={"data": data}
    )
    trace_logger.handle(record)


_filters: dict[str, ProseFilter] = {}


def _install_filters() -> None:
    if not _filters:
        try:
            prose = _prose()
        except Exception:  # pragma: no cover - a Celery without these constants
            prose = {}
        for name, messages in prose.items():
            _filters[name] = ProseFilter(name, messages, _PREFIXES.get(name, ()))
    for name, flt in _filters.items():
        target = logging.getLogger(name)
        if flt not in target.filters:
            target.addFilter(flt)


# ---------------------------------------------------------------------------
# Connecting
# ---------------------------------------------------------------------------

_RECEIVERS: tuple[tuple[Any, Callable[..., None], str], ...] = (
    (signals.task_received, on_task_received, "logkit.events.received"),
    (signals.task_failure, on_task_failure, "logkit.events.failure"),
    (signals.task_retry, on_task_retry, "logkit.events.retry"),
    (signals.task_revoked, on_task_revoked, "logkit.events.revoked"),
    (signals.task_unknown, on_task_unknown, "logkit.events.unknown"),
    (signals.task_rejected, on_task_rejected, "logkit.events.rejected"),
    (signals.task_internal_error, on_task_internal_error, "logkit.events.internal_error"),
    (signals.worker_ready, on_worker_ready, "logkit.events.worker_ready"),
    (signals.worker_shutting_down, on_worker_shutting_down, "logkit.events.shutting_down"),
    (signals.worker_process_init, on_worker_process_init, "logkit.events.process_init"),
    (signals.worker_process_shutdown, on_worker_process_shutdown,
     "logkit.events.process_shutdown"),
    (signals.worker_shutdown, on_worker_shutdown, "logkit.events.worker_shutdown"),
    (signals.beat_init, on_beat_init, "logkit.events.beat_init"),
)


def connect(inst: Installation | None = None) -> None:
    """Connect the event receivers and the prose filters (idempotent).

    Called by :func:`logkit.install`; whether each event is emitted is decided
    per record from the installation's config (``events``, ``disabled_events``,
    ``event_levels``), so nothing here reads the config.
    """
    for sig, receiver, uid in _RECEIVERS:
        sig.connect(receiver, weak=False, dispatch_uid=uid)
    # A new installation's events may differ: Celery's loggers get their level back
    # until the next configuration decides again (so no line is lost meanwhile).
    unquiet_celery_loggers()
    # task_started / task_succeeded ride on the context receivers (one dispatch each)
    receivers.set_task_hooks(task_started, task_finished)
    if quiet_celery_loggers not in CONFIGURED_HOOKS:
        CONFIGURED_HOOKS.append(quiet_celery_loggers)
    _install_filters()
