"""Repeats folded: a burst of the same line written once, then once more with a count.

The ``dedupe_window`` option (seconds, 0 = off). Within the window that a written
record opens, a record with the same logger, level and message template
(``record.msg``, before its arguments are put in) -- and, for a record with an
exception, the same exception type -- is counted, not written. When the window
has closed, the last of the counted records is written with ``repeated: N`` (N: how
many were counted, that one included), so the first line and the summary account
for every record.

No timer thread: a :class:`Fold` (one filter per handler) closes windows when a
record arrives -- the next record of the same key, or any record once the oldest
window's time is up -- and :func:`flush` writes every pending count when a task
ends and when the process shuts down (``worker_shutting_down``,
``worker_process_shutdown``, ``worker_shutdown``, ``atexit``: connected by
:func:`logkit.install.install`), so a count is never lost.

Lifecycle events (``logkit.events``) and Celery's per-task lines are never folded:
each names another task. Each process folds its own records: a forked child starts
with no window (:func:`reset_after_fork`), and the folds go on every handler that
writes the records, again each time logging is configured (:func:`apply`, given them
by the installation's ``configured`` step).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from typing import Any

from .context import current

__all__ = ["Fold", "apply", "flush", "folds", "off", "reset_after_fork"]

#: Loggers whose records are never folded: one line per task, each about another task.
NEVER_FOLDED: frozenset[str] = frozenset(
    {"logkit.events", "celery.app.trace", "celery.worker.strategy", "celery.worker.request"}
)
#: Most keys one handler keeps a window for; past it the oldest window is closed early.
MAX_KEYS = 10000


#: A window: ``[start, count, last counted record]`` (a list: made once per written record).
_Window = list[Any]
_START, _COUNT, _LAST = 0, 1, 2
_NEVER = float("inf")


class Fold(logging.Filter):
    """Count repeats of written records on one handler; write the counts when due."""

    def __init__(self, handler: logging.Handler, window: float) -> None:
        super().__init__()
        self.handler = handler
        self.window = window
        # oldest window first; an OrderedDict, whose oldest entry is found and removed in
        # constant time (a dict's first entry is found past every one removed before it)
        self._windows: OrderedDict[tuple[Any, ...], _Window] = OrderedDict()
        self._deadline = _NEVER  # when the oldest window closes
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        if (record.name in NEVER_FOLDED or "repeated" in fields or "buffered" in fields
                or "sampled_out" in fields):  # what a task kept, written as it was logged
            return True
        exc = record.exc_info
        key = (record.name, record.levelno, record.msg, exc[0] if exc else None)
        now = record.created
        due: list[logging.LogRecord] | None = None
        opens = True  # whether this record opens a window when it has none
        with self._lock:
            windows = self._windows
            try:
                window = windows.get(key)
            except TypeError:  # an unhashable message: never folded
                window = None
                opens = False
            if window is not None and len(windows) == 1 and now - window[_START] >= self.window:
                # The only window, and its time is up (a line logged less often than the
                # window): its count goes out, and this record opens it again.
                if window[_COUNT]:
                    due = [_summary(window)]
                window[_START], window[_COUNT], window[_LAST] = now, 0, None
                self._deadline = now + self.window
                window = None
                opens = False
            elif now >= self._deadline:  # the oldest window's time is up
                due = self._close_due(now)
                if window is not None and key not in windows:  # closed just now
                    window = None
            if window is None:  # a new key: this record opens its window
                if opens:
                    if len(windows) >= MAX_KEYS:  # the oldest window closes early; its
                        _, window = windows.popitem(last=False)  # list serves the new one
                        if window[_COUNT]:
                            due = [*(due or ()), _summary(window)]
                        window[_START], window[_COUNT], window[_LAST] = now, 0, None
                        windows[key] = window
                    else:
                        windows[key] = [now, 0, None]
                    if len(windows) == 1:
                        self._deadline = now + self.window
            elif now - window[_START] < self.window:  # a repeat: counted, not written
                window[_COUNT] += 1
                window[_LAST] = record
                if "_logkit_ctx" not in fields:  # the summary may be written after the task
                    fields["_logkit_ctx"] = current()
                return False  # (nothing is due: a due window was closed above)
            else:  # its time is up (not closed yet): the count first, then a new window
                if window[_COUNT]:
                    due = [*(due or ()), _summary(window)]
                window[_START], window[_COUNT], window[_LAST] = now, 0, None
                windows.move_to_end(key)
        if due:  # the summaries due, written outside the lock; the record is written too
            for summary in due:
                self._write(summary)
        return True

    def _close_due(self, now: float) -> list[logging.LogRecord] | None:
        """Close the windows whose time is up (the oldest first); return their summaries."""
        due: list[logging.LogRecord] | None = None
        windows = self._windows
        span = self.window
        while windows:
            key = next(iter(windows))
            window = windows[key]
            if now - window[_START] < span:
                self._deadline = window[_START] + span
                return due
            del windows[key]
            if window[_COUNT]:
                if due is None:
                    due = []
                due.append(_summary(window))
        self._deadline = _NEVER
        return due

    def flush(self, now: float | None = None) -> int:
        """Write the pending counts: every one (``now=None``) or those whose time is up."""
        due: list[logging.LogRecord] | None = None
        with self._lock:
            if now is None:
                due = [_summary(w) for w in self._windows.values() if w[_COUNT]]
                self._windows.clear()
                self._deadline = _NEVER
            elif now >= self._deadline:
                due = self._close_due(now)
        for summary in due or ():
            self._write(summary)
        return len(due or ())

    def forget(self) -> None:
        """In a forked child: drop the windows (and their counts) and take a fresh lock.

        The windows were opened, and their first records written, by the parent process,
        which writes their counts too: written from the child as well, every count would
        be written once more per child (each process folds its own records).
        """
        self._lock = threading.Lock()
        self._windows = OrderedDict()
        self._deadline = _NEVER

    def _write(self, summary: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # never break a log call because of a summary
            self.handler.handle(summary)


def _summary(window: _Window) -> logging.LogRecord:
    """The last counted record, with ``repeated`` (how many were counted)."""
    record: logging.LogRecord = window[_LAST]
    record.__dict__["repeated"] = window[_COUNT]
    return record


_folds: list[Fold] = []


def folds() -> list[Fold]:
    """The folds of this process (one per handler; empty while folding is off)."""
    return list(_folds)


def apply(config: Any, handlers: list[logging.Handler]) -> bool:
    """Put a :class:`Fold` on each of ``handlers`` for ``config.dedupe_window`` (or take
    the folds away when it is 0; their pending counts are written first).

    Returns whether folding is on.
    """
    off()
    if not config.dedupe_window:
        return False
    for handler in handlers:
        fold = Fold(handler, config.dedupe_window)
        handler.addFilter(fold)
        _folds.append(fold)
    return True


def off() -> None:
    """Take the folds away, their pending counts written first (``logkit.uninstall()``)."""
    flush()
    for fold in _folds:
        fold.handler.removeFilter(fold)
    _folds.clear()


def flush(now: float | None = None) -> int:
    """Write the pending counts of every fold (``now``: only those whose time is up).

    Returns how many summary records were written.
    """
    return sum(fold.flush(now) for fold in list(_folds))


def reset_after_fork() -> None:
    """In a forked child: every fold starts with no window (see :meth:`Fold.forget`).

    Run by the installation's at-fork hook (:mod:`logkit.install`).
    """
    for fold in list(_folds):
        fold.forget()
