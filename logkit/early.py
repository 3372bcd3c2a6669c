"""Before logkit configures logging: Python warnings are held, errors are still readable.

Celery warns before the ``setup_logging`` signal (the ``SecurityWarning`` of a
worker running as root, from ``check_privileges``; deprecation warnings), and
Python writes those warnings to stderr as several lines of text. From the
moment logkit knows a worker or beat is starting (``user_preload_options``,
``celeryd_init``) :func:`hold_warnings` keeps them in a bounded list instead;
:func:`capture_warnings`, run where logkit configures logging, puts
``warnings.showwarning`` back, turns on ``logging.captureWarnings`` and replays
them as records of the ``py.warnings`` logger, in the configured format.
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

from .config import FORMATS, LogConfig
from .formatters import JsonFormatter

__all__ = [
    "MAX_HELD",
    "capture_warnings",
    "hold_warnings",
    "intended_format",
    "release_warnings",
    "report_failure",
]

#: Most warnings held; later ones are counted, and the count is logged with the rest.
MAX_HELD = 100

#: ``(message, category, filename, lineno, file, line)``: ``warnings.showwarning``'s arguments.
Held = tuple[Any, Any, str, int, Any, Any]

_held: list[Held] = []
_dropped = [0]
#: ``warnings.showwarning`` as it was before :func:`hold_warnings` (``None``: not holding).
_original: list[Callable[..., Any] | None] = [None]
_exit_hook: list[bool] = [False]


def _hold(message: Any, category: Any, filename: str, lineno: int,
          file: Any = None, line: Any = None) -> None:
    original = _original[0]
    if original is None or file is not None:  # released, or shown to an explicit file
        (original or warnings._showwarning_orig)(  # type: ignore[attr-defined]
            message, category, filename, lineno, file, line
        )
        return
    if len(_held) < MAX_HELD:
        _held.append((message, category, filename, lineno, file, line))
    else:
        _dropped[0] += 1


def hold_warnings() -> None:
    """Hold Python warnings until :func:`capture_warnings` (idempotent)."""
    if _original[0] is not None:
        return
    _original[0] = warnings.showwarning
    warnings.showwarning = _hold
    if not _exit_hook[0]:
        _exit_hook[0] = True
        atexit.register(_show_at_exit)


def release_warnings() -> list[Held]:
    """Stop holding: put ``warnings.showwarning`` back; return the held warnings (emptied)."""
    original, _original[0] = _original[0], None
    if original is not None and warnings.showwarning is _hold:
        warnings.showwarning = original
    held = list(_held)
    _held.clear()
    return held


def _replay(held: list[Held]) -> None:
    for message, category, filename, lineno, file, line in held:
        warnings.showwarning(message, category, filename, lineno, file, line)
    dropped, _dropped[0] = _dropped[0], 0
    if dropped:
        logging.getLogger("py.warnings").warning(
            "logkit: %d more warning(s) before logging was configured were dropped", dropped
        )


def capture_warnings() -> None:
    """``logging.captureWarnings(True)``, then the held warnings as ``py.warnings`` records."""
    held = release_warnings()
    logging.captureWarnings(True)
    _replay(held)


def show_held_warnings() -> None:
    """Stop holding and show the held warnings however ``warnings`` shows them now."""
    _replay(release_warnings())


def _show_at_exit() -> None:
    with contextlib.suppress(Exception):
        show_held_warnings()


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
    candidates: list[Any] = [(cli or {}).get("format"), env.get("LOGKIT_FORMAT"),
                             (options or {}).get("format")]
    conf = getattr(app, "conf", None)
    for key in ("logkit_format", "LOGKIT_FORMAT"):
        with contextlib.suppress(Exception):
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


def stderr_is_json(fmt: str) -> bool:
    """Whether ``fmt`` means JSON on stderr (``auto``: JSON unless stderr is a terminal)."""
    if fmt == "auto":
        try:
            return not os.isatty(_stderr_fd())
        except OSError:
            return True
    return fmt == "json"


def json_line(logger: str, level: int, message: str, **extra: Any) -> str:
    """One record as logkit's default JSON line (no newline)."""
    record = logging.LogRecord(logger, level, __file__, 0, message, (), None)
    record.__dict__.update(extra)
    return JsonFormatter(LogConfig(format="json")).format(record)


def report_failure(message: str, fmt: str) -> None:
    """Write a fatal ``message`` to the real stderr: one JSON line when ``fmt`` means JSON.

    Held warnings go first, as JSON lines too (or as text), so none is lost.
    """
    as_json = stderr_is_json(fmt)
    lines: list[str] = []
    held = release_warnings()
    if as_json:
        for msg, category, filename, lineno, _file, line in held:
            text = warnings.formatwarning(msg, category, filename, lineno, line)
            lines.append(json_line("py.warnings", logging.WARNING, text))
        lines.append(json_line("logkit", logging.CRITICAL, message))
    else:
        _replay(held)
        lines.append(message)
    data = "".join(f"{line}\n" for line in lines).encode("utf-8", "backslashreplace")
    with contextlib.suppress(OSError):
        os.write(_stderr_fd(), data)
