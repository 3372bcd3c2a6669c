"""The handlers that write records to a :class:`~logkit.sinks.Sink`: one line each.

* :class:`SinkHandler` formats a record and writes it at once, one ``write`` per line.
* :class:`QueueSinkHandler` is the optional non-blocking mode (``queue=True``): a
  bounded queue (``queue_size`` records per process) and a writer thread; when it is
  full a record is dropped or the log call waits (``queue_full``).
* No record is lost silently: every record a sink could not take (write error, full
  queue) is counted, and one ``log_records_dropped`` record reports the count and the
  time span as soon as the sink takes writes again (or at :func:`flush_queues`).

Importing this module registers nothing (no ``atexit``, no at-fork hook): the
installation does (:mod:`logkit.install`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import sys
import threading
import time
import weakref
from typing import Any

from ._safe import iso
from .context import current
from .formatters import JsonFormatter, safe_str
from .sinks import (
    _SINKS,
    DROPPED_EVENT,
    QUEUE_FULL,
    WATCH_INTERVAL,
    LogFileError,
    Sink,
    report,
)

__all__ = [
    "DROPPED_EVENT",
    "WATCH_INTERVAL",
    "LogFileError",
    "QueueSinkHandler",
    "Sink",
    "SinkHandler",
    "flush_at_exit",
    "flush_queues",
    "reset_after_fork",
    "unwritten",
]


class SinkHandler(logging.Handler):
    """Formats a record and appends it, as one line, to a :class:`Sink`."""

    def __init__(
        self, sink: Sink, formatter: logging.Formatter, level: int = logging.NOTSET
    ) -> None:
        super().__init__(level)
        self.sink = sink
        self.setFormatter(formatter)
        if sink.reporter is None:
            sink.reporter = self

    @property
    def stream(self) -> int:
        """The sink's fd: Celery keeps handlers' streams open in processes that close
        all other fds (the beat of ``celery worker -B``)."""
        return self.sink.fd

    def emit(self, record: logging.LogRecord) -> None:
        formatter = self.formatter
        try:
            if type(formatter) is JsonFormatter:  # exact type: a subclass may override format()
                data = formatter.format_line(record)  # bytes with the newline: no re-encoding
            else:
                data = f"{self.format(record)}\n".encode("utf-8", "backslashreplace")
        except Exception as exc:  # a formatter set by someone else may raise
            text = f"{record.levelname} {safe_str(record.msg)} (logkit: formatter failed: {exc!r})"
            data = f"{text}\n".encode("utf-8", "backslashreplace")
        sink = self.sink
        if sink.write(data) and sink._unreported:  # writing works (again): report the loss
            self.report_dropped()

    def report_dropped(self) -> bool:
        """Write one ``log_records_dropped`` record for the records the sink dropped.

        ``False`` if it could not be written (the drops stay counted for the next one).
        """
        taken = self.sink.take_dropped()
        if taken is None:
            return True
        record = dropped_record(*taken)
        try:
            if type(self.formatter) is JsonFormatter:
                data = self.formatter.format_line(record)
            else:
                data = f"{self.format(record)}\n".encode("utf-8", "backslashreplace")
        except Exception:
            data = f"WARNING {record.msg}\n".encode("utf-8", "backslashreplace")
        if not self.sink.write(data, counted=False):
            self.sink._untake_dropped(taken)
            return False
        return True

    def close(self) -> None:
        # The sink is shared with the other handler(s); setup closes it explicitly.
        super().close()

    def __repr__(self) -> str:
        return f"<SinkHandler {self.sink.name} ({logging.getLevelName(self.level)})>"




def dropped_record(
    count: int, first: float, last: float, reasons: tuple[str, ...]
) -> logging.LogRecord:
    """The ``log_records_dropped`` record (logger ``logkit``, WARNING) for ``count`` drops."""
    first_at, last_at, reason = iso(first), iso(last), ", ".join(reasons)
    record = logging.LogRecord(
        "logkit", logging.WARNING, __file__, 0,
        f"{count} log record(s) dropped between {first_at} and {last_at} ({reason})",
        None, None,
    )
    record.__dict__.update(
        event=DROPPED_EVENT,
        count=count,
        first_dropped_at=first_at,
        last_dropped_at=last_at,
        reason=reason,
        # not about the task that happens to be running; a plain dict: the record pickles
        _logkit_ctx={},
    )
    return record


# ---------------------------------------------------------------------------
# Non-blocking mode
# ---------------------------------------------------------------------------


class _Writer:
    """One background thread draining ``(handler, record)`` pairs, started at the first
    record and stopped by :meth:`stop` (the installation's undo).

    ``_pending`` counts the records put and not yet written (or dropped by the
    sink): the queue's size, checked against the handler's ``maxsize`` in
    :meth:`put`, under the lock that ``put`` takes anyway.
    """

    def __init__(self) -> None:
        self._reset()
        _WRITERS.add(self)

    def _reset(self) -> None:
        self.queue: queue.SimpleQueue[tuple[logging.Handler, logging.LogRecord] | None] = (
            queue.SimpleQueue()
        )
        self._pending = 0
        self._waiting = 0  # callers blocked in put() (queue_full="block")
        self._lock = threading.RLock()  # re-entrant: a signal handler may log inside put()
        self._cond = threading.Condition(self._lock)  # notified when _pending reaches 0
        self._not_full = threading.Condition(self._lock)  # notified when a record is done
        self._thread: threading.Thread | None = None
        self._ident: int | None = None

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="logkit-writer", daemon=True)
            self._thread.start()
            self._ident = self._thread.ident

    def put(self, handler: QueueSinkHandler, record: logging.LogRecord) -> None:
        if self._thread is None:  # the first record (in this process: see _after_fork)
            self.start()
        with self._lock:
            if self._pending >= handler.maxsize and not self._wait_for_room(handler):
                handler.sink.note_dropped(QUEUE_FULL)  # reported by the writer later
                return
            self._pending += 1
        self.queue.put((handler.target, record))

    def _wait_for_room(self, handler: QueueSinkHandler) -> bool:
        """``queue_full="block"``: wait until the queue has room; ``False``: drop the record."""
        if not handler.block or threading.get_ident() == self._ident:
            return False  # the writer itself never waits for itself
        self._waiting += 1
        try:
            while self._pending >= handler.maxsize:
                self._not_full.wait(0.1)  # a timeout: waiters with different sizes
        finally:
            self._waiting -= 1
        return True

    def _run(self) -> None:
        get = self.queue.get
        while True:
            item = get()
            if item is None:
                return
            handler, record = item
            with contextlib.suppress(Exception):  # never let the writer thread die
                # Not handler.handle(): it holds the handler's lock around the write, and a
                # write blocked on a sink nobody reads would then block logging.shutdown()
                # (which takes every handler's lock) at exit. This thread is the only
                # one writing through the target handler.
                rv = handler.filter(record)
                if rv:
                    handler.emit(record if isinstance(rv, bool) else rv)
            self._done(getattr(handler, "sink", None))

    def _done(self, sink: Sink | None) -> None:
        """One record less in the queue; at the end of the queue, report drops left over."""
        with self._lock:
            if self._waiting:
                self._not_full.notify()
            if self._pending > 1 or sink is None or not sink._unreported:
                self._pending -= 1
                if self._pending <= 0:
                    self._cond.notify_all()
                return
        # The last record: a record dropped while it was written is reported now, not
        # at the next log call; _pending stays 1 until then, so flush() waits for it.
        while True:
            reported = False
            with contextlib.suppress(Exception):
                reported = sink.report_dropped()
            with self._lock:
                if not reported or not sink._unreported or self._pending > 1:
                    self._pending -= 1
                    if self._pending <= 0:
                        self._cond.notify_all()
                    return

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued record is written; ``False`` on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending <= 0, timeout)

    @property
    def unwritten(self) -> int:
        """Records queued and not written yet."""
        return max(self._pending, 0)

    def stop(self, timeout: float = 10.0) -> bool:
        """Write out the queue (waiting at most ``timeout`` seconds), then end the thread.

        ``False`` if records were still waiting (a stalled sink): the thread, blocked in a
        write, ends after it (it is a daemon thread: it never keeps the process alive).
        """
        flushed = self.flush(timeout)
        thread = self._thread
        if thread is not None and thread.is_alive():
            self.queue.put(None)
            if flushed:
                thread.join(timeout)
        self._thread = None
        _WRITERS.discard(self)
        return flushed

    def _after_fork(self) -> None:
        """In a forked child: the thread did not survive; start afresh at the next record."""
        self._reset()


#: Every live queue writer (for :func:`flush_queues` and the at-fork reset).
_WRITERS: weakref.WeakSet[_Writer] = weakref.WeakSet()


def flush_queues(timeout: float = 10.0) -> bool:
    """Write out every record waiting in the non-blocking queues of this process.

    Waits at most ``timeout`` seconds in all; ``False`` if records are still waiting
    then (a stalled sink). Records counted as dropped and not yet reported are
    reported now.
    """
    deadline = time.monotonic() + timeout
    done = True
    for writer in list(_WRITERS):
        done = writer.flush(max(0.0, deadline - time.monotonic())) and done
    if done:  # else a writer is stuck in a write to a sink: do not get stuck too
        for sink in list(_SINKS):
            with contextlib.suppress(Exception):
                sink.report_dropped()
    return done


def unwritten() -> int:
    """Records waiting in this process's non-blocking queues."""
    return sum(writer.unwritten for writer in list(_WRITERS))


def flush_at_exit(timeout: float = 10.0) -> int:
    """:func:`flush_queues` at interpreter exit; return the records left unwritten.

    Those are reported in one line on the real stderr if it can take it without
    blocking (it may be the stalled sink itself); otherwise they are lost unreported.
    """
    if flush_queues(timeout):
        return 0
    lost = unwritten()
    if lost:
        report_if_writable(
            f"{lost} log record(s) not written at exit: the sink took no write for "
            f"{timeout:g} s (process {os.getpid()})"
        )
    return lost


def report_if_writable(message: str) -> bool:
    """:func:`report` ``message``, unless stderr would block (a full pipe); ``True`` if written."""
    stream = sys.__stderr__
    if stream is None:
        return False
    try:
        fd = stream.fileno()
        if not select.select([], [fd], [], 0)[1]:
            return False
    except (OSError, ValueError):
        return False
    report(message)
    return True


def reset_after_fork() -> None:
    """In a forked child: fresh locks for every sink, fresh (not started) queue writers.

    Run by the at-fork hook :func:`logkit.install` registers (importing this module
    registers nothing).
    """
    for sink in list(_SINKS):
        sink._after_fork()
    for writer in list(_WRITERS):
        writer._after_fork()


class QueueSinkHandler(logging.Handler):
    """Non-blocking: freezes the record (message and log context) and queues it.

    The record is formatted and written by a background thread by ``target``. The
    queue holds at most ``maxsize`` records per process; when it is full the record is
    dropped and counted (reported later in one ``log_records_dropped`` record), or,
    with ``block``, the log call waits for room.
    """

    def __init__(
        self,
        target: logging.Handler,
        maxsize: int = 10000,
        block: bool = False,
        writer: _Writer | None = None,
    ) -> None:
        super().__init__(target.level)
        self.target = target
        #: The background thread writing this handler's records (shared by the handlers
        #: one configuration makes).
        self.writer = writer if writer is not None else _Writer()
        #: Most records waiting in this process's queue (``queue_size``).
        self.maxsize = maxsize
        #: When the queue is full: wait for room (``True``) or drop the record.
        self.block = block

    @property
    def sink(self) -> Sink:
        return self.target.sink  # type: ignore[attr-defined, no-any-return]

    @property
    def stream(self) -> int:
        """The sink's fd (see :attr:`SinkHandler.stream`)."""
        return self.sink.fd

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        self.target.setFormatter(fmt)

    @property
    def formatter(self) -> logging.Formatter | None:
        return self.target.formatter

    @formatter.setter
    def formatter(self, fmt: Any) -> None:
        if hasattr(self, "target"):
            self.target.formatter = fmt

    def handle(self, record: logging.LogRecord) -> bool:
        rv = self.filter(record)
        if rv:
            self.emit(record if isinstance(rv, bool) else rv)
        return bool(rv)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.msg = record.getMessage()
            record.args = None
        except Exception:
            pass  # the formatter reports it
        # the context it was logged in: a record kept and written later (a repeat count,
        # logkit.dedupe) already carries its own
        record.__dict__.setdefault("_logkit_ctx", current())
        self.writer.put(self, record)
