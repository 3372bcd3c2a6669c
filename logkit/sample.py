"""Keep every failure, a sample of the rest: log sampling per workflow (``task_sample``).

The ``task_sample`` option (a fraction from 0 to 1; 1 = every task written, the
default). A task whose **workflow** is not in the sample writes none of its lines below
WARNING -- its own, its libraries', its lifecycle events -- unless it goes wrong: a
failure, a retry, a WARNING or ERROR line (or a task that keeps more lines than
:data:`MAX_HELD`) writes the lines it kept first, in order, with their own timestamps
and task context, marked ``sampled_out: true``, then the line that went wrong and the
rest of the task as usual. A task that succeeds drops them, counted: each process
writes what it left out in a ``tasks_sampled_out`` event (tasks and lines per task
name, every :data:`REPORT_INTERVAL` seconds at most and at shutdown).

**The decision** is head sampling by trace id, with the workflow's ``root_id`` for
the trace id (a root task's own id): :func:`in_sample` maps the id to a number in
[0, 1) with a stable hash (the first 8 bytes of its BLAKE2b digest, big-endian, over
2**64) and keeps the workflow when that number is below the rate. Every task of a
chain, group or chord, on every worker, pool and process, decides the same without
coordination; so can a publisher or a web request (``logkit.sampled(root_id)``).

How (see :func:`apply`, called once a process's logging is configured):

* A :class:`Hold` filter on each of logkit's handlers (after the task buffer's
  :class:`~logkit.buffer.Trigger`, before redaction and the folds): inside a task
  outside the sample it keeps the records below WARNING that reach the handler,
  already made, with their context captured and their arguments rendered, and
  passes the rest. No logger method is wrapped and no level is changed.
* A task's held records are a :class:`Slot` in a ``ContextVar``, set by logkit's own
  ``task_prerun`` receiver for a task outside the sample only (a task in the sample
  costs the decision, one hash) and reset by its ``task_postrun`` receiver.
* ``task_received`` is written by the worker's main process before the task runs:
  for a task outside the sample it is not written there but noted in the request
  (:data:`HELD_RECEIVED`), and the process that runs the task writes it first if the
  task goes wrong (:mod:`logkit.events.task`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from typing import Any

from .buffer import Trigger
from .context import current

__all__ = [
    "HELD_RECEIVED",
    "MAX_HELD",
    "REPORT_INTERVAL",
    "SAMPLED_OUT",
    "Hold",
    "Sampler",
    "Slot",
    "apply",
    "in_sample",
]

#: The field on the lines a task outside the sample kept and wrote because it went wrong.
SAMPLED_OUT = "sampled_out"
#: Request key: the worker's main process did not write this task's ``task_received``
#: (``[time.time(), pid, the task's logkit_received stamp]``).
HELD_RECEIVED = "logkit_held_received"
#: Most records one task keeps; one more, and the task's lines are written (overflow).
MAX_HELD = 1000
#: Seconds between two ``tasks_sampled_out`` events of a process, at least.
REPORT_INTERVAL = 60.0
#: Events that write what a task kept, whatever their level.
TRIGGER_EVENTS = frozenset({"task_failed", "task_retried"})
#: States of ``task_postrun`` that write what a task kept.
WRITE_STATES = frozenset({"FAILURE", "RETRY"})

_WARNING = logging.WARNING
_SPAN = 18446744073709551616.0  # 2**64
_blake2b = hashlib.blake2b
_from_bytes = int.from_bytes


def _position(root_id: Any) -> int:
    """``root_id``'s place in [0, 2**64): the first 8 bytes of BLAKE2b, big-endian."""
    text = root_id if type(root_id) is str else str(root_id)
    return _from_bytes(_blake2b(text.encode(), digest_size=8).digest(), "big")


def in_sample(root_id: Any, rate: float) -> bool:
    """Whether the workflow ``root_id`` is in a sample of ``rate`` (from 0 to 1).

    The same answer in every process for the same id and rate: the first 8 bytes of the
    BLAKE2b digest of the id (UTF-8), read big-endian and divided by 2**64, are below
    ``rate``. A missing id (``None``) is in the sample.
    """
    if rate >= 1.0 or root_id is None:
        return True
    if rate <= 0.0:
        return False
    return _position(root_id) < rate * _SPAN


class Slot:
    """One task's held records, from ``task_prerun`` to ``task_postrun``."""

    __slots__ = ("held", "released", "task", "task_id", "token")

    def __init__(self, task_id: Any, task: Any) -> None:
        self.task_id = task_id
        self.task = task
        #: ``(handler, record)`` in the order they reached the handlers.
        self.held: list[tuple[logging.Handler, logging.LogRecord]] = []
        #: The task went wrong (or overflowed): its records are written from now on.
        self.released = False
        self.token: Token[Slot | None] | None = None


_SLOT: ContextVar[Slot | None] = ContextVar("logkit_task_sample", default=None)
_FORMATTER = logging.Formatter()


def _created(entry: tuple[logging.Handler, logging.LogRecord]) -> float:
    return entry[1].created


class Hold(logging.Filter):
    """On one of logkit's handlers: a record below WARNING of a task outside the sample
    is kept (not written); a WARNING or above, or a failure or retry event, writes what
    the task kept first."""

    def __init__(self, sampler: Sampler, handler: logging.Handler) -> None:
        super().__init__()
        self.sampler = sampler
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        slot = _SLOT.get()
        if slot is None or slot.released:
            return True
        fields = record.__dict__
        if record.levelno >= _WARNING or fields.get("event") in TRIGGER_EVENTS:
            self.sampler.release(slot)
            return True
        held = slot.held
        if len(held) >= self.sampler.limit:
            self.sampler.release(slot, overflow=True)
            return True
        # Safe to hold: the message as it reads now (an argument changed later does not
        # change it), an exception as text, the context it was logged in.
        if record.args:
            try:
                record.msg = record.getMessage()
                record.args = None
            except Exception:
                pass  # the formatter reports it when it is written
        exc_info = record.exc_info
        if exc_info and not record.exc_text:
            try:
                record.exc_text = _FORMATTER.formatException(exc_info)
                record.exc_info = (exc_info[0], exc_info[1], None)  # type: ignore[assignment]
            except Exception:
                pass
        if "_logkit_ctx" not in fields:
            fields["_logkit_ctx"] = current()
        held.append((self.handler, record))
        return False


#: ``report(fields, hostname)``: write one ``tasks_sampled_out`` event (the composition
#: root's).
Report = Callable[[Mapping[str, Any], Any], None]
#: ``held_received(task)``: the :data:`HELD_RECEIVED` note of the task's request, or
#: ``None`` when the main process wrote its ``task_received`` (or wrote none).
HeldReceived = Callable[[Any], Any]
#: ``write_received(task_id, task, note)``: write the task's held ``task_received``.
WriteReceived = Callable[[Any, Any, Any], None]


class Sampler:
    """``task_sample`` in one process: the rate, the :class:`Hold` filters, the per-task
    steps and the counts of what was left out. Owned by the installation
    (``Installation.sampler``); :func:`apply` makes it.

    ``report``, ``held_received``, ``write_received`` and ``on_attach`` are plugged in by
    the composition root (:func:`logkit.install.install`): the events and the per-task
    steps live above this module.
    """

    def __init__(self, rate: float, handlers: list[logging.Handler], *,
                 limit: int = MAX_HELD, interval: float = REPORT_INTERVAL) -> None:
        #: The rate the process was configured with (``default`` of the control command).
        self.default = rate
        self.rate = rate
        self._bound = rate * _SPAN
        self.handlers = list(handlers)
        self.filters: list[tuple[logging.Handler, Hold]] = []
        self.limit = limit
        self.interval = interval
        self.report: Report | None = None
        self.held_received: HeldReceived | None = None
        self.write_received: WriteReceived | None = None
        #: Called when the filters are put on at run time (a ``logkit_sample`` command):
        #: sets the per-task steps and the shutdown report.
        self.on_attach: Callable[[], None] | None = None
        #: The worker's node name (from the tasks' requests), for the report.
        self.hostname: Any = None
        self._lock = threading.Lock()
        self._reset_counts()

    # -- the rate ------------------------------------------------------------

    @property
    def attached(self) -> bool:
        """Whether the filters are on the handlers (and the per-task steps run)."""
        return bool(self.filters)

    def set_rate(self, rate: float) -> None:
        """Sample at ``rate`` from now on; the first rate below 1 puts the filters on
        (they stay until the installation is undone: 1 then decides every task in)."""
        self.rate = rate
        self._bound = rate * _SPAN
        if rate < 1.0 and not self.attached:
            self.attach()
            if self.on_attach is not None:
                self.on_attach()

    def decide(self, root_id: Any) -> bool:
        """:func:`in_sample` at this process's rate."""
        if root_id is None or self.rate >= 1.0:
            return True
        return _position(root_id) < self._bound

    def attach(self) -> None:
        """Put a :class:`Hold` on each handler, after the task buffer's trigger."""
        for handler in self.handlers:
            if any(f[0] is handler for f in self.filters):
                continue
            hold = Hold(self, handler)
            filters = list(handler.filters)
            at = 0
            while at < len(filters) and isinstance(filters[at], Trigger):
                at += 1
            filters.insert(at, hold)
            handler.filters = filters  # one assignment: a thread logging meanwhile sees either
            self.filters.append((handler, hold))

    def detach(self) -> None:
        """Take the filters away (``logkit.uninstall()``, a new configuration)."""
        for handler, hold in self.filters:
            handler.removeFilter(hold)
        self.filters.clear()

    # -- per task --------------------------------------------------------------

    def prerun(self, task_id: Any = None, task: Any = None, **_: Any) -> None:
        """``task_prerun``: a slot for a task outside the sample; nothing for one in it
        (nor for a task run inside another's, such as ``apply()``: it is part of it)."""
        if self.rate >= 1.0 or task is None or _SLOT.get() is not None:
            return
        request = task.request
        root = getattr(request, "root_id", None) or task_id
        if root is None or _position(root) < self._bound:
            return
        slot = Slot(task_id, task)
        slot.token = _SLOT.set(slot)

    def postrun(self, task_id: Any = None, state: Any = None, **_: Any) -> None:
        """``task_postrun``: write what a failed or retried task kept; else drop it,
        counted. The report goes out when it is due."""
        slot = _SLOT.get()
        if slot is None or slot.task_id != task_id:
            return
        dropped = False
        try:
            if not slot.released:
                if state in WRITE_STATES:
                    self.release(slot)
                else:
                    self._count(slot)
                    dropped = True
        finally:
            token = slot.token
            try:
                if token is not None:
                    _SLOT.reset(token)
                else:
                    _SLOT.set(None)
            except ValueError:  # reset from another context
                _SLOT.set(None)
            slot.held = []
            slot.task = None
        if dropped and time.monotonic() >= self._due:
            self.flush_report()

    def release(self, slot: Slot, overflow: bool = False) -> None:
        """Write what ``slot``'s task kept, oldest first (its held ``task_received``
        before everything), marked ``sampled_out``; its later records are written as usual."""
        slot.released = True
        held, slot.held = slot.held, []
        if overflow:
            with self._lock:
                self.overflowed += 1
        note = self._note(slot)
        if note is not None and self.write_received is not None:
            with contextlib.suppress(Exception):  # never break a task because of logging
                self.write_received(slot.task_id, slot.task, note)
        held.sort(key=_created)  # stable: records held later with older times (the buffer's)
        for handler, record in held:
            record.__dict__[SAMPLED_OUT] = True
            try:
                handler.handle(record)
            except Exception:
                continue

    def _note(self, slot: Slot) -> Any:
        held_received = self.held_received
        if held_received is None or slot.task is None:
            return None
        try:
            return held_received(slot.task)
        except Exception:
            return None

    # -- accounting -----------------------------------------------------------

    def _reset_counts(self) -> None:
        self.tasks = 0
        self.lines = 0
        self.overflowed = 0
        #: task name -> [tasks, lines] left out since the last report.
        self.counts: dict[str, list[int]] = {}
        self.since = time.time()
        self._due = time.monotonic() + self.interval

    def _count(self, slot: Slot) -> None:
        lines = len(slot.held) + (self._note(slot) is not None)
        task = slot.task
        name = getattr(task, "name", None)
        key = name if isinstance(name, str) else str(name)
        if self.hostname is None:
            self.hostname = getattr(getattr(task, "request", None), "hostname", None)
        with self._lock:
            self.tasks += 1
            self.lines += lines
            entry = self.counts.get(key)
            if entry is None:
                self.counts[key] = [1, lines]
            else:
                entry[0] += 1
                entry[1] += lines

    def take_report(self) -> dict[str, Any] | None:
        """The fields of a ``tasks_sampled_out`` event for what was left out since the
        last one (``None``: nothing was); the counts start again from zero."""
        with self._lock:
            if not self.tasks and not self.overflowed:
                self._due = time.monotonic() + self.interval
                return None
            fields = {
                "tasks": self.tasks,
                "lines": self.lines,
                "by_task": {name: {"tasks": c[0], "lines": c[1]}
                            for name, c in sorted(self.counts.items())},
                "overflowed": self.overflowed,
                "task_sample": self.rate,
                "since": self.since,
            }
            self._reset_counts()
        return fields

    def flush_report(self) -> bool:
        """Write the ``tasks_sampled_out`` event now if anything was left out."""
        fields = self.take_report()
        if fields is None or self.report is None:
            return False
        try:
            self.report(fields, self.hostname)
        except Exception:  # never break a task because of logging
            return False
        return True


def current_slot() -> Slot | None:
    """The slot of the task running in this context (``None``: in the sample, or none)."""
    return _SLOT.get()


def apply(config: Any, handlers: list[logging.Handler], previous: Sampler | None) -> Sampler:
    """The sampler of a process configured with ``config`` and logkit's ``handlers``:
    ``previous`` (the last configuration's) taken off its handlers first; the new one's
    filters on when ``config.task_sample`` is below 1 (and nothing at all when it is 1).
    """
    if previous is not None:
        previous.flush_report()  # what it left out, before its counts go
        previous.detach()
    sampler = Sampler(config.task_sample, handlers)
    if sampler.rate < 1.0:
        sampler.attach()
    return sampler
