"""The event table and the ordinary way of logging one event.

Each lifecycle event is one record on the ``logkit.events`` logger, with a
stable ``event`` field and the event's fields as ``extra`` (so it goes through
the same formatter as every other record). The task's identifying fields
(``task_id``, ``task_name``, ``worker``...) come from the log context: inside a
task they are already bound; for events that Celery fires outside the task's
run (``task_received`` and ``task_revoked`` in the prefork parent,
``task_unknown``...) they are bound for that one record (:func:`_bind_for`).

Data flow: signal -> fields (+ task identity bound in the context) -> record
on ``logkit.events`` -> formatter -> sink. No receiver ever raises into Celery.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any

from celery.app.task import Context

from .. import context
from .._compat import PY312, PY313
from .._safe import log_exception, safe_str
from ..config import EVENT_NAMES
from ..receivers import HEADER, Installation, installation
from ..setup import STOCK_MAKE_RECORD
from ..setup import _make_record as _LOGKIT_MAKE_RECORD

__all__ = ["DEFAULT_LEVELS", "EVENTS_LOGGER", "MESSAGES", "emit", "level_of", "task_identity"]

#: Name of the logger every lifecycle event is logged on.
EVENTS_LOGGER = "logkit.events"

logger = logging.getLogger(EVENTS_LOGGER)
_internal = logging.getLogger("logkit")

#: ``pathname`` of every event record (made by ``makeRecord`` or from a template alike).
SOURCE = __file__

_D, _I, _W, _E = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR

#: Default level of each event (``event_levels`` overrides it).
DEFAULT_LEVELS: Mapping[str, int] = MappingProxyType(
    {
        "task_received": _I,
        # DEBUG: at ``-l INFO`` a level check only; task_received + task_succeeded are the
        # like-for-like of Celery's own two INFO lines ("received", "succeeded").
        "task_started": _D,
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
        # WARNING: seen at -l WARNING too, where an operator's change is most surprising
        "log_level_changed": _W,
        # WARNING, as log_level_changed: an operator's change of what is written
        "task_sample_changed": _W,
        # INFO: what a process did not write, for volumes and error rates (task_sample)
        "tasks_sampled_out": _I,
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
        "log_level_changed": "Log level changed",
        "task_sample_changed": "Task sampling changed",
        "tasks_sampled_out": "Tasks sampled out",
    }
)

assert set(DEFAULT_LEVELS) == set(EVENT_NAMES) == set(MESSAGES)


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
    created: float | None = None,
    process: int | None = None,
) -> None:
    """Log one ``event`` record with ``fields``; ``bind`` is bound in the context for it.

    A field whose value is ``None`` is left out (it says nothing), unless the
    ``always_fields`` option names ``nulls``.

    The record is an ordinary ``LogRecord`` on ``logkit.events``, handled by
    ``Logger.handle`` as any other: every handler and filter on the way sees it, and
    the formatter's one field builder makes its line. ``exc_text`` (an already
    formatted traceback) is used instead of formatting ``exc_info`` again. ``created``
    and ``process``: the time and process of an event written later than it happened,
    elsewhere (a held ``task_received``, :mod:`logkit.sample`).

    Nothing live is left on the record: it keeps ``exc_info``'s exception without its
    traceback, which is text (``exc_text``), so the record pickles as it is (a
    ``QueueHandler`` that sends records whole, Celery's test worker) and holds no frames.
    """
    if exc_info is not None and exc_info[2] is not None:
        if not exc_text:
            exc_text = _format_exception(exc_info)
        exc_info = (exc_info[0], exc_info[1], None)
    inst = installation()
    if None in fields.values() and (inst is None or not inst.event_nulls):
        fields = {key: value for key, value in fields.items() if value is not None}
    extra: Mapping[str, Any] = {"event": event, **fields}
    if exc_info is None and created is None and _stock_records():
        # Born redacted: the fields are redacted here, once, and the record is marked so
        # that the handlers' RedactFilter (same keys) passes it without a second look.
        redactor = inst.redactor if inst is not None else None
        if redactor is not None:
            extra = redactor.redact_fields(extra)
            if exc_text:
                exc_text = redactor.redact_text(exc_text)
        record = _templates.record(event, level, extra)
        if redactor is not None:
            record.args = redactor.clean_args
    else:
        record = logger.makeRecord(logger.name, level, SOURCE, 0, MESSAGES[event], (), exc_info,
                                   extra=extra)
    if exc_text:
        record.exc_text = exc_text
    if created is not None:
        _written_later(record, created, process)
    if bind:
        context.call_bound(bind, logger.handle, record)
    else:
        logger.handle(record)


def _format_exception(exc_info: Any) -> str:
    """The traceback text ``logging.Formatter.formatException`` gives (no final newline)."""
    text = "".join(traceback.format_exception(*exc_info))
    return text[:-1] if text.endswith("\n") else text


def _written_later(record: logging.LogRecord, created: float, process: int | None) -> None:
    """Give ``record`` the time (and the process) of an event that happened earlier."""
    d = record.__dict__
    d["created"] = created
    d["msecs"] = int((created - int(created)) * 1000) + 0.0
    start = logging._startTime  # type: ignore[attr-defined]
    d["relativeCreated"] = (created - (start / 1e9 if type(start) is int else start)) * 1000
    if process is not None and process != d.get("process"):
        d["process"] = process
        d["processName"] = "MainProcess"


_LogRecord = logging.LogRecord
_Logger = logging.Logger


def _stock_records() -> bool:
    """Is the record ``logger.makeRecord`` makes the stdlib's own (the stock record
    factory, ``makeRecord`` the stdlib's or logkit's renaming one, which leaves the
    events' ``extra`` as it is)? Then :class:`_Templates` makes the same record."""
    make = _Logger.makeRecord
    return (
        logging.getLogRecordFactory() is _LogRecord
        and (make is _LOGKIT_MAKE_RECORD or make is STOCK_MAKE_RECORD)  # identity: wrapt
        and logging.logThreads and logging.logProcesses and logging.logMultiprocessing
    )


class _Templates:
    """The record ``makeRecord`` makes for an event, made from a copy of the attributes
    it has in common with every record of its event and level in this process (its
    name, message, level, source, process), plus the time, thread and ``extra`` of
    this one: the one shortcut of the events' road, about half of ``LogRecord()``'s
    cost per task (benchmarks/RESULTS.md, per-task instructions). A cache of
    values, per process; it changes nothing in the process."""

    def __init__(self) -> None:
        self._pid = -1
        self._made: dict[tuple[str, int], dict[str, Any]] = {}

    def record(self, event: str, level: int, extra: Mapping[str, Any]) -> logging.LogRecord:
        pid = os.getpid()
        if self._pid != pid:  # a forked child: its own process fields
            self._made.clear()
            self._pid = pid
        template = self._made.get((event, level))
        if template is None:
            made = _LogRecord(logger.name, level, SOURCE, 0, MESSAGES[event], (), None)
            template = self._made[(event, level)] = dict(made.__dict__)
        record: logging.LogRecord = _new_record(_LogRecord)
        d = record.__dict__
        d.update(template)
        start = logging._startTime  # type: ignore[attr-defined]
        if PY313:  # nanoseconds, as LogRecord computes them
            ns = time.time_ns()
            d["created"] = ns / 1e9
            d["msecs"] = (ns % 1_000_000_000) // 1_000_000 + 0.0
            d["relativeCreated"] = (ns - start) / 1e6
        else:
            ct = time.time()
            d["created"] = ct
            d["msecs"] = int((ct - int(ct)) * 1000) + 0.0
            d["relativeCreated"] = (ct - start) * 1000
        # looked up on the module each time, as LogRecord does: gevent/eventlet patch them
        d["thread"] = threading.get_ident()
        d["threadName"] = threading.current_thread().name
        if PY312 and logging.logAsyncioTasks:  # type: ignore[attr-defined,unused-ignore]
            asyncio = sys.modules.get("asyncio")
            if asyncio is not None:
                with contextlib.suppress(Exception):  # no running loop: None, as LogRecord
                    d["taskName"] = asyncio.current_task().get_name()
        d.update(extra)
        return record


_new_record = _LogRecord.__new__
_templates = _Templates()


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
                log_exception(_internal, _W, "logkit: lifecycle event receiver %s failed",
                              fn.__name__)

    return receiver


# ---------------------------------------------------------------------------
# Field helpers
# ---------------------------------------------------------------------------


class _Named:
    """Stands in for a task where only its name is known (the getters read ``.name``)."""

    __slots__ = ("name",)

    def __init__(self, name: Any) -> None:
        self.name = name


class _ContextView:
    """Reads a request dict as a ``Context`` would (``.id``, ``.retries``...; a missing
    field is ``Context``'s class default), without copying it into a new ``Context``:
    that copy (Celery's ``Context.__init__`` sorts out the custom headers) was most of
    ``task_received``'s cost in the worker's main process, once per task."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self._fields = fields

    def __getattr__(self, name: str) -> Any:
        try:
            return self._fields[name]
        except KeyError:
            if name.startswith("__"):
                raise AttributeError(name) from None
            return getattr(Context, name, None)


def _as_context(request: Any) -> Any:
    """A ``Context``-like view (``.id``, ``.retries``...) of a request, a Request or a dict."""
    if request is None or isinstance(request, Context):
        return request
    request_dict = getattr(request, "request_dict", None)  # celery.worker.request.Request
    if isinstance(request_dict, Mapping):
        return _ContextView(request_dict)
    if isinstance(request, Mapping):
        return _ContextView(request)
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
