"""A task's records below the worker's level, kept for when the task goes wrong.

The ``task_buffer`` option (an int, 0 = off). With ``-l INFO`` and ``task_buffer=50``
the records a task logs below INFO (any logger, in that task's context) are kept in
memory, the last 50 of them; if the task fails or retries, or logs ERROR, they are
written in order, with their own timestamps and task context, marked
``buffered: true`` and with ``buffer_dropped`` (how many did not fit). A task that
succeeds drops them unwritten. The same idea as Monolog's ``FingersCrossedHandler``,
with the task as the unit of work.

How (see :func:`apply`, called once a process's logging is configured):

* DEBUG records must exist before they can be kept: the root logger and
  ``celery.task`` are set to DEBUG, and the worker's level moves to the :class:`Gate`,
  a filter on their handlers. The gate passes what the level passes (and what a logger
  set to a lower level itself would have passed), keeps what a running task logs below
  it, and drops the rest (DEBUG outside a task is never written);
* a task's buffer is a :class:`Slot` in a ``ContextVar``, set by ``task_prerun`` and
  reset by ``task_postrun``: every thread, greenlet and process has its own, and the
  bounded deque is only made for the first record kept;
* a record at ERROR or above, or a ``task_failed`` / ``task_retried`` event, writes
  the buffer first (so the order is kept); ``task_postrun`` writes what is left for a
  FAILURE or RETRY and drops it otherwise.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from contextvars import ContextVar, Token
from typing import Any

from .context import current

__all__ = [
    "Gate",
    "Slot",
    "apply",
    "gate",
    "held_level",
    "hold_level",
    "on_task_postrun",
    "on_task_prerun",
]

#: States of ``task_postrun`` that write the buffer.
_WRITE_STATES = frozenset({"FAILURE", "RETRY"})
#: Events (on ``logkit.events``) that write the buffer before they are written.
_TRIGGER_EVENTS = frozenset({"task_failed", "task_retried"})
#: logkit's own loggers: held at the worker's level, so their DEBUG records (the
#: ``task_started`` event) are not even made while the root logger is at DEBUG.
_OWN_LOGGERS = ("logkit", "logkit.events")


class Slot:
    """One task's buffer: made empty by ``task_prerun``, the deque on the first record."""

    __slots__ = ("dropped", "records", "size", "task_id", "token")

    def __init__(self, task_id: Any, size: int) -> None:
        self.task_id = task_id
        self.size = size
        self.records: deque[logging.LogRecord] | None = None
        self.dropped = 0
        self.token: Token[Slot | None] | None = None

    def keep(self, record: logging.LogRecord) -> None:
        records = self.records
        if records is None:
            records = self.records = deque(maxlen=self.size)
        elif len(records) == self.size:
            self.dropped += 1
        records.append(record)

    def take(self) -> tuple[list[logging.LogRecord], int]:
        """The kept records (oldest first) and the dropped count; the buffer is emptied."""
        records, dropped = list(self.records or ()), self.dropped
        self.records = None
        self.dropped = 0
        return records, dropped


_SLOT: ContextVar[Slot | None] = ContextVar("logkit_task_buffer", default=None)


def _loggers() -> dict[str, Any]:
    return logging.Logger.manager.loggerDict


class Gate(logging.Filter):
    """The worker's level, on the handlers, while the loggers let DEBUG records through.

    ``held`` maps each logger whose level :func:`apply` lowered to DEBUG to the level it
    had (the worker's level): a record is judged against the level its logger would
    have without the buffer.
    """

    fast_path_safe = True  # events at or above the level pass unchanged (logkit.events.fast)

    def __init__(self, level: int, size: int) -> None:
        super().__init__()
        self.level = level
        self.size = size
        self.held: dict[logging.Logger, int] = {}
        #: The handlers it was added to (taken off by :func:`apply` when the buffer goes).
        self.handlers: list[logging.Handler] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.level:
            slot = _SLOT.get()
            if slot is not None and slot.records is not None and (
                record.levelno >= logging.ERROR
                or record.__dict__.get("event") in _TRIGGER_EVENTS
            ):
                self.write(slot)
            return True
        fields = record.__dict__
        if "buffered" in fields:  # written by write() below, or kept by another handler
            return fields["buffered"] is True
        if record.levelno >= self._level_of(record.name):
            return True  # a logger set to a lower level itself: written as before
        slot = _SLOT.get()
        if slot is None:  # outside a task: below the level, as without the buffer
            return False
        if "_logkit_ctx" not in fields:
            fields["_logkit_ctx"] = current()  # the task's context, as it is now
        fields["buffered"] = False  # the other handlers of this record skip it
        slot.keep(record)
        return False

    def _level_of(self, name: str) -> int:
        """The level the logger ``name`` has without the buffer (its effective level)."""
        node: Any = _loggers().get(name)
        if not isinstance(node, logging.Logger):
            node = logging.getLogger()
        held = self.held
        while node is not None:
            if node in held:
                return held[node]
            if node.level:
                return int(node.level)
            node = node.parent
        return self.level

    def write(self, slot: Slot) -> None:
        """Write the records kept in ``slot``, oldest first, through their loggers' handlers."""
        records, dropped = slot.take()
        loggers = _loggers()
        for record in records:
            fields = record.__dict__
            fields["buffered"] = True
            fields["buffer_dropped"] = dropped
            node = loggers.get(record.name)
            if not isinstance(node, logging.Logger):
                node = logging.getLogger()
            with contextlib.suppress(Exception):  # never break a task because of logging
                node.callHandlers(record)


_gate: Gate | None = None


def gate() -> Gate | None:
    """The gate of this process (``None`` while the buffer is off)."""
    return _gate


def held_level(target: logging.Logger) -> int | None:
    """The worker's level of ``target`` while the buffer holds it at DEBUG, else ``None``.

    For remote level changes: with the buffer on, the root logger's (and
    ``celery.task``'s) level is the gate's, not the logger's.
    """
    g = _gate
    return None if g is None else g.held.get(target)


def hold_level(target: logging.Logger, level: int) -> bool:
    """Change the worker's level of a logger the buffer holds at DEBUG.

    Returns ``False`` (nothing changed) if the buffer does not hold ``target``: set
    its level as usual then.
    """
    g = _gate
    if g is None or target not in g.held:
        return False
    g.held[target] = level
    if target is logging.getLogger():
        g.level = level
        for name in _OWN_LOGGERS:
            logging.getLogger(name).setLevel(level)
    return True


def _all_handlers() -> list[logging.Handler]:
    """Every handler of every logger (the root first): those the root's level no longer
    keeps DEBUG records from."""
    loggers: list[Any] = [logging.getLogger(), *_loggers().values()]
    seen: dict[int, logging.Handler] = {}
    for target in loggers:
        for handler in getattr(target, "handlers", ()):
            seen.setdefault(id(handler), handler)
    return list(seen.values())


def apply(config: Any, root_level: int | None = None) -> bool:
    """Put the gate in place for ``config.task_buffer`` (or take it away when it is 0).

    Called once a process's logging is configured (the root logger and ``celery.task``
    at the worker's level). Returns whether the buffer is on. At a worker level of
    DEBUG there is nothing below it to keep: off.
    """
    global _gate
    root = logging.getLogger()
    task_logger = logging.getLogger("celery.task")
    level = root.level if root_level is None else root_level
    previous = _gate
    if previous is not None:
        _remove(previous)
        _gate = None
    if not config.task_buffer or level <= logging.DEBUG:
        return False
    g = Gate(level, config.task_buffer)
    for target in (root, task_logger):
        # a logger set lower than DEBUG-and-up keeps its own level
        if target.level == logging.NOTSET or target.level > logging.DEBUG:
            g.held[target] = target.level or level
            target.setLevel(logging.DEBUG)
    for handler in _all_handlers():
        if g not in handler.filters:
            handler.addFilter(g)
            g.handlers.append(handler)
    for name in _OWN_LOGGERS:
        own = logging.getLogger(name)
        if own.level == logging.NOTSET:
            own.setLevel(level)
    _gate = g
    return True


def _remove(g: Gate) -> None:
    """Take ``g`` off every handler and give the loggers it held their levels back."""
    for target, level in g.held.items():
        if target.level == logging.DEBUG:
            target.setLevel(level)
    for handler in g.handlers:
        handler.removeFilter(g)
    for name in _OWN_LOGGERS:
        own = logging.getLogger(name)
        if own.level == g.level:
            own.setLevel(logging.NOTSET)


def on_task_prerun(task_id: Any = None, **_: Any) -> None:
    """``task_prerun``: an empty buffer for the task (the deque comes with its first record)."""
    g = _gate
    if g is None:
        return
    slot = Slot(task_id, g.size)
    slot.token = _SLOT.set(slot)


def on_task_postrun(task_id: Any = None, state: Any = None, **_: Any) -> None:
    """``task_postrun``: write what is kept if the task failed or retries; else drop it."""
    slot = _SLOT.get()
    if slot is None or slot.task_id != task_id:
        return
    try:
        if slot.records is not None and state in _WRITE_STATES and _gate is not None:
            _gate.write(slot)
    finally:
        token = slot.token
        try:
            if token is not None:
                _SLOT.reset(token)
            else:
                _SLOT.set(None)
        except ValueError:  # reset from another context
            _SLOT.set(None)
