"""Before logkit configures logging: Python warnings are held, errors are still readable.

Celery warns before the ``setup_logging`` signal (the ``SecurityWarning`` of a
worker running as root, from ``check_privileges``; deprecation warnings), and
Python writes those warnings to stderr as several lines of text. From the
moment logkit knows a worker or beat is starting (``user_preload_options``,
``celeryd_init``) :meth:`WarningHold.hold` keeps them in a bounded list instead (the hold
belongs to the installation);
where logkit configures logging, :meth:`WarningHold.capture` puts
``warnings.showwarning`` back, and with ``logging.captureWarnings`` on
(:func:`capture_warnings`) replays them as records of the ``py.warnings`` logger,
in the configured format.
Anything still held when the process exits is shown the ordinary way.

A crash before logging is configured (a bad option, an unwritable log file) is
reported by :func:`report_failure`: one JSON line on stderr when the intended
format is JSON, the plain message otherwise.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from ._changes import Changes
from .config import FORMATS, OPTIONS, LogConfig, decide_format
from .formatters import JsonFormatter

__all__ = [
    "MAX_HELD",
    "WarningHold",
    "capture_warnings",
    "intended_format",
    "report_failure",
    "stderr_is_json",
    "stderr_isatty",
]

#: Most warnings held; later ones are counted, and the count is logged with the rest.
MAX_HELD = 100

#: ``(message, category, filename, lineno, file, line)``: ``warnings.showwarning``'s arguments.
Held = tuple[Any, Any, str, int, Any, Any]

class WarningHold:
    """Python warnings held until logging is configured (one per installation).

    :meth:`hold` replaces ``warnings.showwarning`` and registers an ``atexit`` callback
    showing what is still held; both are recorded in the installation's
    :class:`~logkit._changes.Changes` with their undo.
    """

    def __init__(self) -> None:
        self.held: list[Held] = []
        self.dropped = 0
        #: ``warnings.showwarning`` as it was before :meth:`hold` (``None``: not holding).
        self.original: Callable[..., Any] | None = None

    def _hold(self, message: Any, category: Any, filename: str, lineno: int,
              file: Any = None, line: Any = None) -> None:
        original = self.original
        if original is None or file is not None:  # released, or shown to an explicit file
            (original or warnings._showwarning_orig)(  # type: ignore[attr-defined]
                message, category, filename, lineno, file, line
            )
            return
        if len(self.held) < MAX_HELD:
            self.held.append((message, category, filename, lineno, file, line))
        else:
            self.dropped += 1

    def holding(self) -> bool:
        """Whether warnings are held now."""
        return self.original is not None

    def hold(self, changes: Changes) -> None:
        """Hold Python warnings until :meth:`capture` (idempotent)."""
        if self.original is not None:
            return
        self.original = warnings.showwarning
        warnings.showwarning = self._hold
        # undone by showing what is still held (the ordinary way): none is lost
        if changes.add("warnings.showwarning holds warnings", self.show_held, key="hold"):
            atexit.register(self._show_at_exit)
            changes.add("atexit: show held warnings",
                        lambda: atexit.unregister(self._show_at_exit))

    def release(self) -> list[Held]:
        """Stop holding: put ``warnings.showwarning`` back; return the held warnings."""
        original, self.original = self.original, None
        if original is not None and warnings.showwarning == self._hold:
            warnings.showwarning = original
        held = list(self.held)
        self.held.clear()
        return held

    def replay(self, held: list[Held]) -> None:
        for message, category, filename, lineno, file, line in held:
            warnings.showwarning(message, category, filename, lineno, file, line)
        dropped, self.dropped = self.dropped, 0
        if dropped:
            logging.getLogger("py.warnings").warning(
                "logkit: %d more warning(s) before logging was configured were dropped", dropped
            )

    def capture(self, changes: Changes) -> None:
        """Stop holding, turn on ``logging.captureWarnings`` (:func:`capture_warnings`),
        then replay the held warnings as ``py.warnings`` records."""
        held = self.release()
        capture_warnings(changes)
        self.replay(held)

    def show_held(self) -> None:
        """Stop holding and show the held warnings however ``warnings`` shows them now."""
        self.replay(self.release())

    def _show_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.show_held()


def capture_warnings(changes: Changes) -> None:
    """``logging.captureWarnings(True)``, recorded with its undo (only when logkit turned
    it on, and only while ``warnings.showwarning`` is still logging's: a hook another
    library put over it afterwards is left alone)."""
    if logging._warnings_showwarning is not None:  # type: ignore[attr-defined]
        return  # on already (by logkit before, or by the app): nothing to undo
    logging.captureWarnings(True)
    showwarning = warnings.showwarning

    def undo() -> None:
        if warnings.showwarning is showwarning:
            logging.captureWarnings(False)

    changes.add("logging.captureWarnings(True)", undo, key="captureWarnings")


# ---------------------------------------------------------------------------
# Failing before logging is configured
# ---------------------------------------------------------------------------


def intended_format(
    app: Any = None,
    options: Mapping[str, Any] | None = None,
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """The ``format`` option as the sources give it, even when another option is invalid.

    The first valid value by precedence (CLI, env, keyword, ``app.conf``), else ``auto``.
    """
    env = os.environ if env is None else env
    row = OPTIONS["format"]
    candidates: list[Any] = [(cli or {}).get(row.name), env.get(row.env),
                             (options or {}).get(row.name)]
    conf = getattr(app, "conf", None)
    for key in row.settings:
        with contextlib.suppress(Exception):  # reporting a failure: never a second one
            candidates.append(conf.get(key) if conf is not None else None)
    for value in candidates:
        if isinstance(value, str) and value.strip().lower() in FORMATS:
            return value.strip().lower()
    return "auto"


def _stderr_fd() -> int:
    stream = sys.__stderr__
    try:
        return stream.fileno() if stream is not None else 2
    except (OSError, ValueError):
        return 2


def stderr_isatty() -> bool:
    """Whether the process's real stderr is a terminal."""
    try:
        return os.isatty(_stderr_fd())
    except OSError:
        return False


def stderr_is_json(fmt: str) -> bool:
    """Whether ``fmt`` means JSON on stderr (``auto``: JSON unless stderr is a terminal)."""
    return decide_format(fmt, None, stderr_isatty) == "json"


def json_line(logger: str, level: int, message: str, **extra: Any) -> str:
    """One record as logkit's default JSON line (no newline)."""
    record = logging.LogRecord(logger, level, __file__, 0, message, (), None)
    record.__dict__.update(extra)
    return JsonFormatter(LogConfig(format="json")).format(record)


def report_failure(message: str, fmt: str, hold: WarningHold | None = None) -> None:
    """Write a fatal ``message`` to the real stderr: one JSON line when ``fmt`` means JSON.

    Held warnings go first, as JSON lines too (or as text), so none is lost.
    """
    as_json = stderr_is_json(fmt)
    lines: list[str] = []
    held = hold.release() if hold is not None else []
    if as_json:
        for msg, category, filename, lineno, _file, line in held:
            text = warnings.formatwarning(msg, category, filename, lineno, line)
            lines.append(json_line("py.warnings", logging.WARNING, text))
        lines.append(json_line("logkit", logging.CRITICAL, message))
    else:
        if hold is not None:
            hold.replay(held)
        lines.append(message)
    data = "".join(f"{line}\n" for line in lines).encode("utf-8", "backslashreplace")
    with contextlib.suppress(OSError):
        os.write(_stderr_fd(), data)
