"""Where records go: a :class:`Sink` (a file or stderr) and the handlers that write to it.

* One ``os.write`` per record on a file opened with ``O_APPEND``: the prefork
  children of a worker share the file descriptor and their lines never interleave.
* ``watch=True`` reopens the file when it was renamed or removed (logrotate), like
  :class:`logging.handlers.WatchedFileHandler`: a removed (or replaced) file is
  noticed on the next write (``fstat``: no line goes to a deleted file), a renamed
  one within :data:`WATCH_INTERVAL` (the path is looked up at most that often;
  lines written in between land in the renamed file, none is lost).
* A write error (disk full, file gone read-only) is reported once on the real
  stderr, not once per record; the task logging it is never affected.
* :class:`QueueSinkHandler` is the optional non-blocking mode (``queue=True``): a
  bounded queue (``queue_size`` records per process); when it is full a record is
  dropped or the log call waits (``queue_full``).
* No record is lost silently: every record a sink could not take (write error, full
  queue) is counted, and one ``log_records_dropped`` record reports the count and the
  time span as soon as the sink takes writes again (or at :func:`flush_queues`).

Importing this module registers nothing (no ``atexit``, no at-fork hook): the
installation does (:mod:`logkit.install`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import select
import sys
import threading
import time
import weakref
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from .context import current
from .formatters import JsonFormatter, safe_str

__all__ = [
    "DROPPED_EVENT",
    "LogFileError",
    "QueueSinkHandler",
    "Sink",
    "SinkHandler",
    "flush_at_exit",
    "flush_queues",
    "reset_after_fork",
    "unwritten",
]

#: The ``event`` of the record that reports records a sink could not take.
DROPPED_EVENT = "log_records_dropped"

#: ``reason`` of a record dropped because the ``queue=True`` queue was full.
QUEUE_FULL = "queue full"

#: Seconds between two look-ups of a watched file's path (rename detection).
WATCH_INTERVAL = 0.1

_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


_monotonic = time.monotonic
_fstat = os.fstat


def _unpatched_write() -> Any:
    """``os.write``, but eventlet's original when eventlet has patched ``os``.

    eventlet's green ``os.write`` refuses to run from its hub ("do not call blocking
    functions from the mainloop"), which is where signal handlers log at shutdown.
    """
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is not None:
        with contextlib.suppress(Exception):
            return patcher.original("os").write
    return os.write


class LogFileError(OSError):
    """The log file cannot be opened for writing (message names the path and the reason)."""


def report(message: str) -> None:
    """Write a logkit diagnostic to the process's real stderr (never to a redirected one)."""
    stream = sys.__stderr__
    if stream is None:
        return
    with contextlib.suppress(OSError, ValueError):
        os.write(stream.fileno(), f"logkit: {message}\n".encode("utf-8", "backslashreplace"))


class Sink:
    """An append-only destination shared by several handlers: a file path or stderr."""

    def __init__(self, path: str | None = None, *, watch: bool = True) -> None:
        self.path = os.path.abspath(path) if path else None
        self.watch = bool(path) and watch
        self._lock = threading.Lock()
        self._failing = False
        self._dropped = 0
        self._torn = False  # a partial line was left behind by a failed write
        # Records not written and not yet reported in a log_records_dropped record:
        # count, time.time() of the first and the last, reasons (a few, in order).
        self._drop_lock = threading.Lock()
        self._unreported = 0
        self._first_drop = self._last_drop = 0.0
        self._drop_reasons: dict[str, None] = {}
        #: The handler that writes the ``log_records_dropped`` record when no record
        #: is being written (at the end of a queue, at flush): the first one made.
        self.reporter: SinkHandler | None = None
        # One token shared by every process forked from here (prefork children): the
        # process that takes it reports a failure, so a worker reports it once, not per child.
        self._token = _token_pipe()
        self._stat: tuple[int, int] | None = None
        self._next_lookup = 0.0  # time.monotonic() of the next path look-up
        self._owns_fd = False
        self.fd = -1
        self._write = _unpatched_write()
        self._open()
        _SINKS.add(self)

    @property
    def name(self) -> str:
        return self.path or "<stderr>"

    def isatty(self) -> bool:
        try:
            return os.isatty(self.fd)
        except OSError:
            return False

    def _open(self) -> None:
        if self.path is None:
            stream = sys.__stderr__
            self.fd = stream.fileno() if stream is not None else 2
            return
        try:
            fd = os.open(self.path, _OPEN_FLAGS, 0o644)
        except OSError as exc:
            raise LogFileError(
                exc.errno or errno.EIO,
                f"cannot open log file {self.path!r}: {exc.strerror or exc}",
            ) from exc
        st = os.fstat(fd)
        self.fd, self._owns_fd, self._stat = fd, True, (st.st_dev, st.st_ino)

    def _reopen_if_moved(self) -> None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
            moved = (st.st_dev, st.st_ino) != self._stat
        except FileNotFoundError:
            moved = True
        if moved:
            with self._lock:
                old = self.fd
                self._open()
                if old != self.fd:
                    os.close(old)

    def write(self, data: bytes, counted: bool = True) -> bool:
        """Append ``data`` with one ``write`` call; ``True`` if it was written.

        A failure is reported once on stderr, never raised; the record is counted as
        dropped (unless not ``counted``: the drop report itself).
        """
        written = 0
        try:
            if self.watch:
                now = _monotonic()
                if now >= self._next_lookup or _fstat(self.fd).st_nlink == 0:
                    self._next_lookup = now + WATCH_INTERVAL
                    self._reopen_if_moved()
            if self._torn:  # end the partial line first, so this record starts a line
                data = b"\n" + data
            written = self._write(self.fd, data)
            while written < len(data):  # a full disk writes short, then fails
                written += self._write(self.fd, data[written:])
            self._torn = False
        except OSError as exc:
            if written:
                self._drop_partial(written)
            if counted:
                self._dropped += 1
                self.note_dropped(exc.strerror or type(exc).__name__)
            if not self._failing:
                self._failing = True
                if _take(self._token):
                    report(
                        f"cannot write log records to {self.name}: {exc.strerror or exc}; "
                        "records are dropped until writing works again"
                    )
            return False
        if self._failing:
            self._failing = False
            episode_over = _take(self._token)  # someone else already reported the recovery
            _give(self._token)
            if not episode_over:
                report(
                    f"writing to {self.name} again; {self._dropped} record(s) were dropped "
                    f"(by process {os.getpid()})"
                )
            self._dropped = 0
        return True

    # -- records not written ---------------------------------------------------------

    def note_dropped(self, reason: str, count: int = 1) -> None:
        """Count ``count`` record(s) that were not written, for the next drop report."""
        now = time.time()
        with self._drop_lock:
            if not self._unreported:
                self._first_drop = now
            self._unreported += count
            self._last_drop = now
            if reason not in self._drop_reasons and len(self._drop_reasons) < 4:
                self._drop_reasons[reason] = None

    def take_dropped(self) -> tuple[int, float, float, tuple[str, ...]] | None:
        """The unreported drops (count, first, last, reasons), now counted as reported."""
        with self._drop_lock:
            if not self._unreported:
                return None
            taken = (
                self._unreported, self._first_drop, self._last_drop, tuple(self._drop_reasons)
            )
            self._unreported = 0
            self._drop_reasons = {}
        return taken

    def _untake_dropped(self, taken: tuple[int, float, float, tuple[str, ...]]) -> None:
        """Put back drops whose report could not be written."""
        count, first, last, reasons = taken
        with self._drop_lock:
            self._first_drop = min(first, self._first_drop) if self._unreported else first
            self._last_drop = max(last, self._last_drop)
            self._unreported += count
            for reason in reasons:
                if len(self._drop_reasons) < 4:
                    self._drop_reasons.setdefault(reason, None)

    def report_dropped(self) -> bool:
        """Write the ``log_records_dropped`` record now, if records were dropped.

        ``False`` if it could not be written (the drops stay counted).
        """
        if self._unreported and self.reporter is not None and self.fd >= 0:
            return self.reporter.report_dropped()
        return True

    def _drop_partial(self, written: int) -> None:
        """Cut the partial record a failed write left at the end of the file (else mark it)."""
        try:
            end = os.lseek(self.fd, 0, os.SEEK_CUR)
            if os.fstat(self.fd).st_size == end:  # nobody appended after it
                os.ftruncate(self.fd, end - written)
                return
        except OSError:
            pass
        self._torn = True

    def close(self) -> None:
        if self._owns_fd and self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        self.fd = -1
        self._owns_fd = False
        for fd in self._token:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._token = (-1, -1)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        # The parent reports its own drops; a lock held by another thread at the fork
        # would never be released in the child.
        self._drop_lock = threading.Lock()
        self._unreported = 0
        self._drop_reasons = {}


_SINKS: weakref.WeakSet[Sink] = weakref.WeakSet()


def _token_pipe() -> tuple[int, int]:
    """A non-blocking pipe holding one byte: the right to report a write failure."""
    try:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        os.write(w, b"t")
    except (OSError, AttributeError):
        return (-1, -1)
    return (r, w)


def _take(token: tuple[int, int]) -> bool:
    """Take the token (atomic across processes); ``True`` if this process got it."""
    try:
        return os.read(token[0], 1) == b"t"
    except BlockingIOError:
        return False
    except OSError:  # no pipe: every process reports for itself
        return True


def _give(token: tuple[int, int]) -> None:
    with contextlib.suppress(OSError):
        os.write(token[1], b"t")


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


def _iso(seconds: float) -> str:
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


_NO_CONTEXT: Any = MappingProxyType({})


def dropped_record(
    count: int, first: float, last: float, reasons: tuple[str, ...]
) -> logging.LogRecord:
    """The ``log_records_dropped`` record (logger ``logkit``, WARNING) for ``count`` drops."""
    first_at, last_at, reason = _iso(first), _iso(last), ", ".join(reasons)
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
        _logkit_ctx=_NO_CONTEXT,  # not about the task that happens to be running
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
