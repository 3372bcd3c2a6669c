"""A task's records below the worker's level, kept for when the task goes wrong.

The ``task_buffer`` option (an int, 0 = off). With ``-l INFO`` and ``task_buffer=50``
the calls a task makes below INFO (``logger.debug(...)`` on any logger, in that
task's context) are kept in memory, the last 50 of them; if the task fails or
retries, or logs ERROR, they are written in order, with their own timestamps and task
context, marked ``buffered: true`` and with ``buffer_dropped`` (how many did not fit).
A task that succeeds drops them unwritten. The same idea as Monolog's
``FingersCrossedHandler``, with the task as the unit of work.

How (see :func:`apply`, called once a process's logging is configured):

* Levels are not touched. The logger methods below the worker's level
  (``Logger.debug`` at ``-l INFO``, and ``Logger.log``) get a thin wrapper that
  composes with whatever was there: enabled, the call goes on as before; not enabled
  and inside a task, the call is *kept* as it was made (message, arguments, caller,
  time, exception, context) -- no ``LogRecord`` is made, which is what makes it cheap;
  not enabled outside a task, nothing happens, as before.
* A task's buffer is a :class:`Slot` in a ``ContextVar``, set by ``task_prerun`` and
  reset by ``task_postrun``: every thread, greenlet and process has its own, and the
  bounded deque is only made for the first call kept.
* The records are made when they are written: a record at ERROR or above, or a
  ``task_failed`` / ``task_retried`` event, reaching a handler that writes the records
  (logkit's on the root and ``celery.task``, the user's when theirs write: the
  configuration's ``output_handlers``) writes the buffer first (a :class:`Trigger`
  filter, so the order is kept); ``task_postrun`` writes what is left for a FAILURE or
  RETRY and drops it otherwise.
* structlog's level checks (logkit's :class:`~logkit._structlog.LevelCheckedLogger`
  and ``filter_by_level``) ask :func:`task_slot` before they drop a call, so a task's
  structlog calls below the level reach the wrapped ``Logger`` methods and are kept too.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any

from ._compat import LOGGING_START
from .context import current

__all__ = [
    "Installed", "Slot", "Trigger", "apply", "installed", "keeping", "off", "on_task_postrun",
    "on_task_prerun", "task_slot",
]

#: States of ``task_postrun`` that write the buffer.
_WRITE_STATES = frozenset({"FAILURE", "RETRY"})
#: Events (on ``logkit.events``) that write the buffer before they are written.
_TRIGGER_EVENTS = frozenset({"task_failed", "task_retried"})
#: The ``Logger`` methods of a level, wrapped when that level is below the worker's.
_METHODS = (("debug", logging.DEBUG), ("info", logging.INFO), ("warning", logging.WARNING))
_SRCFILE = logging.__file__

#: One kept call: logger, level, msg, args, exc_info, extra, stack_info text, the
#: caller's code object (``None``: unknown) and line, time, context.
Call = tuple[logging.Logger, int, object, tuple[Any, ...], Any, Any, Any, Any, int, float, Any]
_time = time.time
_getframe = sys._getframe


class Slot:
    """One task's buffer: made empty by ``task_prerun``, the deque on the first call."""

    __slots__ = ("calls", "dropped", "size", "task_id", "token")

    def __init__(self, task_id: Any, size: int) -> None:
        self.task_id = task_id
        self.size = size
        self.calls: deque[Call] | None = None
        self.dropped = 0
        self.token: Token[Slot | None] | None = None

    def keep(self, logger: logging.Logger, level: int, msg: object, args: tuple[Any, ...],
             kwargs: dict[str, Any], depth: int) -> None:
        """Keep one call; ``depth`` frames up from here is the wrapper's caller."""
        now = _time()
        stacklevel = kwargs.get("stacklevel", 1)
        code: Any = None
        line = 0
        try:
            frame = _getframe(depth + (stacklevel - 1 if type(stacklevel) is int else 0))
            while frame.f_code.co_filename == _SRCFILE and frame.f_back is not None:
                frame = frame.f_back  # called through logging itself (LoggerAdapter...)
            code, line = frame.f_code, frame.f_lineno
        except ValueError:  # a shallower stack than asked for
            pass
        exc_info = kwargs.get("exc_info")
        if exc_info:
            if isinstance(exc_info, BaseException):
                exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
            elif not isinstance(exc_info, tuple):
                exc_info = sys.exc_info()
        sinfo = None
        if kwargs.get("stack_info"):
            sinfo = logger.findCaller(True, depth + 1)[3]
        calls = self.calls
        if calls is None:
            calls = self.calls = deque(maxlen=self.size)
        elif len(calls) == self.size:
            self.dropped += 1
        calls.append((logger, level, msg, args, exc_info or None, kwargs.get("extra"), sinfo,
                      code, line, now, current()))

    def take(self) -> tuple[list[Call], int]:
        """The kept calls (oldest first) and the dropped count; the buffer is emptied."""
        calls, dropped = list(self.calls or ()), self.dropped
        self.calls = None
        self.dropped = 0
        return calls, dropped


_SLOT: ContextVar[Slot | None] = ContextVar("logkit_task_buffer", default=None)


#: ``task_slot()``: the running task's buffer, ``None`` when no call below the level would
#: be kept now (the buffer is off, or no task runs). structlog's level checks ask it (a C
#: call, no Python frame: it is on the path of every disabled structlog call).
task_slot: Callable[[], Slot | None] = _SLOT.get


def keeping() -> bool:
    """Whether a call below the level made now is kept: the buffer is on and a task runs."""
    return _SLOT.get() is not None


def write(slot: Slot) -> None:
    """Make the records of the calls kept in ``slot`` and write them, oldest first, through
    their loggers' handlers, marked ``buffered`` with the ``buffer_dropped`` count."""
    calls, dropped = slot.take()
    for logger, level, msg, args, exc_info, extra, sinfo, code, line, ct, ctx in calls:
        try:
            fn, func = ("(unknown file)", "(unknown function)") if code is None \
                else (code.co_filename, code.co_name)
            record = logger.makeRecord(logger.name, level, fn, line, msg, args, exc_info, func,
                                       extra, sinfo)
            fields = record.__dict__
            fields["created"] = ct
            fields["msecs"] = int((ct - int(ct)) * 1000) + 0.0
            fields["relativeCreated"] = (ct - LOGGING_START) * 1000
            fields["_logkit_ctx"] = ctx
            fields["buffered"] = True
            fields["buffer_dropped"] = dropped
            logger.handle(record)
        except Exception:  # never break a task because of logging
            continue


class Trigger(logging.Filter):
    """On logkit's handlers: an ERROR (or a failure/retry event) writes the buffer first."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or record.__dict__.get("event") in _TRIGGER_EVENTS:
            slot = _SLOT.get()
            if slot is not None and slot.calls is not None:
                write(slot)
        return True


def _wrapper(level: int, previous: Any) -> Callable[..., None]:
    """``Logger.<method>`` for ``level``: as ``previous`` when enabled, kept in a task."""

    def method(self: logging.Logger, msg: object, *args: Any, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1  # this frame
            previous(self, msg, *args, **kwargs)
            return
        slot = _SLOT.get()
        if slot is None or self.disabled:
            return
        if kwargs:  # exc_info, extra, stacklevel...: the general way
            slot.keep(self, level, msg, args, kwargs, 2)
            return
        # the common call, logger.debug("...", args): kept in as few steps as it takes
        frame = _getframe(1)
        calls = slot.calls
        if calls is None:
            calls = slot.calls = deque(maxlen=slot.size)
        elif len(calls) == slot.size:
            slot.dropped += 1
        calls.append((self, level, msg, args, None, None, None, frame.f_code, frame.f_lineno,
                      _time(), current()))

    method.__wrapped__ = previous  # type: ignore[attr-defined]
    method._logkit_buffer = True  # type: ignore[attr-defined]
    return method


def _log_wrapper(below: int, previous: Any) -> Callable[..., None]:
    """``Logger.log``: kept in a task when ``level`` is below the worker's and not enabled."""

    def log(self: logging.Logger, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if type(level) is int and level < below and not self.isEnabledFor(level):
            slot = _SLOT.get()
            if slot is not None and not self.disabled:
                slot.keep(self, level, msg, args, kwargs, 2)
            return
        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
        previous(self, level, msg, *args, **kwargs)

    log.__wrapped__ = previous  # type: ignore[attr-defined]
    log._logkit_buffer = True  # type: ignore[attr-defined]
    return log


class Installed:
    """The buffer's size in this process (0: off), and what :func:`apply` changed, to
    undo it."""

    def __init__(self) -> None:
        self.size = 0
        #: method name -> (our wrapper, what it wraps)
        self.wrapped: dict[str, tuple[Any, Any]] = {}
        self.triggers: list[tuple[logging.Handler, Trigger]] = []


#: What the buffer installed in this process (``installed.size``: read where a check must
#: cost little).
installed = Installed()


def size() -> int:
    """The buffer's size in this process (0: off)."""
    return installed.size


def apply(config: Any, handlers: list[logging.Handler], level: int) -> bool:
    """Turn the buffer on for ``config.task_buffer`` at worker level ``level`` (or off
    when it is 0, or when ``level`` is DEBUG: nothing is below it). ``handlers`` get the
    :class:`Trigger`. Returns whether the buffer is on.
    """
    _undo()
    if not config.task_buffer or level <= logging.DEBUG:
        return False
    installed.size = config.task_buffer
    for name, method_level in (*_METHODS, ("log", logging.NOTSET)):
        if method_level >= level:  # enabled at the worker's level: left as it is
            continue
        previous = vars(logging.Logger)[name]
        wrapper = (_log_wrapper(level, previous) if name == "log"
                   else _wrapper(method_level, previous))
        setattr(logging.Logger, name, wrapper)
        installed.wrapped[name] = (wrapper, previous)
    for handler in handlers:
        trigger = Trigger()
        handler.filters.insert(0, trigger)
        installed.triggers.append((handler, trigger))
    return True


def off() -> None:
    """Turn the buffer off: put back what :func:`apply` changed (``logkit.uninstall()``)."""
    _undo()


def _undo() -> None:
    """Put back what :func:`apply` changed; a wrapper another library put on top of ours
    stays, and ours below it passes every call on (the buffer is off)."""
    installed.size = 0
    for name, (wrapper, previous) in installed.wrapped.items():
        if vars(logging.Logger).get(name) is wrapper:
            setattr(logging.Logger, name, previous)
    installed.wrapped.clear()
    for handler, trigger in installed.triggers:
        handler.removeFilter(trigger)
    installed.triggers.clear()


def on_task_prerun(task_id: Any = None, **_: Any) -> None:
    """``task_prerun``: an empty buffer for the task (the deque comes with its first call)."""
    size = installed.size
    if size:
        slot = Slot(task_id, size)
        slot.token = _SLOT.set(slot)


def on_task_postrun(task_id: Any = None, state: Any = None, **_: Any) -> None:
    """``task_postrun``: write what is kept if the task failed or retries; else drop it."""
    slot = _SLOT.get()
    if slot is None or slot.task_id != task_id:
        return
    try:
        if slot.calls is not None and state in _WRITE_STATES:
            write(slot)
    finally:
        token = slot.token
        try:
            if token is not None:
                _SLOT.reset(token)
            else:
                _SLOT.set(None)
        except ValueError:  # reset from another context
            _SLOT.set(None)
