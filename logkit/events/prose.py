"""Celery's own prose lines for the events logkit emits.

Celery's lines for the same events ("Task x[id] succeeded in 0.01s: None",
"Task x[id] received", ...) are dropped by a :class:`ProseFilter` on Celery's
loggers, but only while the event that replaces them is enabled; and Celery's
task loggers are set to WARNING while events replace all their INFO lines
(:func:`quiet_celery_loggers`), with the one INFO line no event replaces
re-emitted (:func:`_reemit_ignored`). With ``celery_lines`` on, none of that: Celery's
lines are logged as without logkit, beside the events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from traceback import format_exception as _format_exception
from types import MappingProxyType
from typing import Any

from .._changes import Changes
from .._safe import safe_repr
from ..receivers import Installation, installation
from .base import _I, DEFAULT_LEVELS

__all__ = [
    "QUIETED_LOGGERS",
    "ProseFilter",
    "install_filters",
    "quiet_celery_loggers",
    "unquiet_celery_loggers",
]

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
    """Drops Celery's record for an event while that event is enabled (and
    ``celery_lines`` is off).

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
            config = inst.config
            return config.celery_lines or config.event_level(event, DEFAULT_LEVELS[event]) is None
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


def quiet_celery_loggers(inst: Installation, config: Any, app: Any) -> None:
    """Set Celery's task loggers to WARNING while events replace their INFO lines (or undo).

    The loggers quieted are ``inst``'s (``quieted``), each recorded in its changes with
    the undo (back to NOTSET, if still at the WARNING logkit set).
    """
    # worker_deduplicate_successful_tasks logs another INFO line no event replaces
    dedupe = bool(app is not None and getattr(app.conf, "worker_deduplicate_successful_tasks",
                                              False))
    for name, replaced_by in QUIETED_LOGGERS.items():
        target = logging.getLogger(name)
        replaced = not config.celery_lines and all(
            config.event_level(e, DEFAULT_LEVELS[e]) is not None for e in replaced_by)
        if replaced and not (dedupe and name == TRACE_LOGGER):
            if target.level == logging.NOTSET:
                target.setLevel(logging.WARNING)
                inst.quieted.add(name)
                inst.changes.add(f"logger {name!r} at WARNING", _unquieter(inst),
                                 key=("quieted", name))
        elif name in inst.quieted:
            if target.level == logging.WARNING:
                target.setLevel(logging.NOTSET)
            inst.quieted.discard(name)


def _unquieter(inst: Installation) -> Callable[[], None]:
    return lambda: unquiet_celery_loggers(inst)


def unquiet_celery_loggers(inst: Installation | None = None) -> None:
    """Give the loggers :func:`quiet_celery_loggers` set to WARNING (for ``inst``, else the
    current installation) their level back."""
    inst = inst if inst is not None else installation()
    if inst is None:
        return
    for name in list(inst.quieted):
        target = logging.getLogger(name)
        if target.level == logging.WARNING:
            target.setLevel(logging.NOTSET)
        inst.quieted.discard(name)


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


def install_filters(changes: Changes) -> None:
    """Put a :class:`ProseFilter` on each Celery logger with a line an event replaces
    (once per installation; recorded in ``changes`` with their removal)."""
    if "prose filters" in changes:
        return
    try:
        prose = _prose()
    except Exception:  # pragma: no cover - a Celery without these constants
        prose = {}
    added: list[tuple[logging.Logger, ProseFilter]] = []
    for name, messages in prose.items():
        flt = ProseFilter(name, messages, _PREFIXES.get(name, ()))
        target = logging.getLogger(name)
        target.addFilter(flt)
        added.append((target, flt))

    def undo() -> None:
        for target, flt in added:
            target.removeFilter(flt)

    changes.add("filters on Celery's loggers", undo, key="prose filters")
