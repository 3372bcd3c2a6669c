"""Where a line is written: a :class:`Sink`, a file or stderr, one ``write`` per line.

* One ``os.write`` per record on a file opened with ``O_APPEND``: the prefork
  children of a worker share the file descriptor and their lines never interleave.
* ``watch=True`` reopens the file when it was renamed or removed (logrotate), like
  :class:`logging.handlers.WatchedFileHandler`: a removed (or replaced) file is
  noticed on the next write (``fstat``: no line goes to a deleted file), a renamed
  one within :data:`WATCH_INTERVAL` (the path is looked up at most that often;
  lines written in between land in the renamed file, none is lost).
* A write error (disk full, file gone read-only) is reported once on the real
  stderr, not once per record; the task logging it is never affected.
* Every record a sink could not take is counted (:meth:`Sink.note_dropped`), for the
  ``log_records_dropped`` record the handlers write (:mod:`logkit.handlers`).

Imports nothing from logkit. Importing it registers nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import threading
import time
import weakref
from typing import Any, Protocol

__all__ = ["DROPPED_EVENT", "QUEUE_FULL", "WATCH_INTERVAL", "LogFileError", "Sink", "report"]

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


class DropReporter(Protocol):
    """What writes the ``log_records_dropped`` record of a sink (a
    :class:`~logkit.handlers.SinkHandler`)."""

    def report_dropped(self) -> bool: ...


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
        self.reporter: DropReporter | None = None
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

