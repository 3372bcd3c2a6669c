"""The hot path: ``task_started`` and ``task_succeeded``, once per task.

When the ``logkit.events`` records go where logkit configured them (the root's
SinkHandler(s), no other handler or filter on the way, the stdlib record
factory and no other library's ``makeRecord`` wrapper), a record is built from a
per-process template and handed to those handlers directly: no ``makeRecord``, no
walk through ``Logger.handle``, and the redaction filter applied only to what can hold
a secret (the ``result`` text).
The output is the same as :func:`~logkit.events.base.emit`'s (tests compare
them); anything else takes ``emit``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .. import context
from ..formatters import JsonFormatter
from ..handlers import SinkHandler
from ..redaction import RedactFilter
from ..setup import STOCK_MAKE_RECORD, _make_record, stock_logger_method
from .base import MESSAGES, SOURCE, emit, logger

__all__ = ["emit_fast"]

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
                    if getattr(type(flt), "fast_path_safe", False) is True:
                        continue  # passes events unchanged (logkit.buffer, logkit.dedupe)
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
        made = _LogRecord(logger.name, level, SOURCE, 0, MESSAGES[event], (), None)
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
