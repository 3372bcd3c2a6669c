"""Never-raising conversions: any value to text or to JSON-safe data.

A log call must never raise inside a task. Everything a formatter writes that
came from user code (a message's args, an ``extra`` value, a bound context value,
an exception) goes through one of these; a value that cannot be turned into text
becomes its guarded ``repr()``, and a ``__repr__`` that raises becomes a
placeholder naming the type.

Lowest layer of the record path: imports nothing from logkit.
"""

from __future__ import annotations

import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = [
    "JSON_LINE_OPTIONS",
    "JSON_OPTIONS",
    "cap",
    "clean",
    "indent_continuation",
    "iso",
    "json_default",
    "log_exception",
    "safe_repr",
    "safe_str",
    "sanitize",
    "traceback_text",
]

#: orjson options of a JSON record (a sink's line adds the newline).
JSON_OPTIONS = orjson.OPT_NON_STR_KEYS
JSON_LINE_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE
_TRUNCATED_MARK = "…[truncated {} chars]"


def safe_repr(value: Any) -> str:
    """``repr(value)``, or a placeholder naming the type if ``__repr__`` raises."""
    try:
        return repr(value)
    except Exception as exc:  # a broken __repr__ must not break a log call
        return f"<unrepresentable {type(value).__qualname__} object: {type(exc).__name__}>"


def safe_str(value: Any) -> str:
    """``str(value)``, falling back to :func:`safe_repr` if ``__str__`` raises."""
    if type(value) is str:
        return value
    try:
        return str(value)
    except Exception:
        return safe_repr(value)


def iso(when: Any) -> str | None:
    """A time as ISO 8601 text: a Unix time (seconds) in UTC with milliseconds and a
    ``Z``, a ``datetime`` by its ``isoformat()``; ``None`` stays ``None``; anything else
    (Celery's ``eta`` header is text already) its :func:`safe_str`."""
    if when is None:
        return None
    if isinstance(when, datetime):
        return when.isoformat()
    if isinstance(when, (int, float)) and not isinstance(when, bool):
        try:
            stamp = datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
        except (OverflowError, OSError, ValueError):  # out of datetime's range, or NaN
            return safe_str(when)
        return stamp.replace("+00:00", "Z")
    return safe_str(when)


def cap(text: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` characters and say how much was cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + _TRUNCATED_MARK.format(len(text) - limit)


def json_default(value: Any) -> Any:
    """orjson ``default``: turn anything unknown into JSON-safe data, never raise."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (set, frozenset)):
        return [safe_repr(v) for v in value]
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {safe_str(value)}"
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return safe_repr(value)


def sanitize(value: Any, limit: int, seen: set[int] | None = None, depth: int = 0) -> Any:
    """Slow path: rebuild ``value`` as plain JSON data (cycles, bad keys, surrogates...)."""
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, str):
        return cap(value.encode("utf-8", "backslashreplace").decode("utf-8"), limit)
    if depth > 64:
        return "<too deep>"
    seen = set() if seen is None else seen
    if isinstance(value, (dict, list, tuple)):
        if id(value) in seen:
            return "<cycle>"
        seen.add(id(value))
        try:
            if isinstance(value, dict):
                return {
                    sanitize_key(k, limit): sanitize(v, limit, seen, depth + 1)
                    for k, v in list(value.items())
                }
            return [sanitize(v, limit, seen, depth + 1) for v in list(value)]
        finally:
            seen.discard(id(value))
    try:
        converted = json_default(value)
    except Exception:
        converted = f"<unrepresentable {type(value).__qualname__} object>"
    return sanitize(converted, limit, seen, depth + 1) if converted is not value else "<?>"


def sanitize_key(key: Any, limit: int) -> str:
    return cap(safe_str(key), limit).encode("utf-8", "backslashreplace").decode("utf-8")


# Console/plain: control characters in user-controlled text are shown escaped, so a value
# with "\n" or an ANSI escape cannot forge a log line or recolour the terminal.
_CONTROL_ESCAPES = {
    **{c: f"\\x{c:02x}" for c in range(0x20)},
    0x7F: "\\x7f",
    **{c: f"\\x{c:02x}" for c in range(0x80, 0xA0)},
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
    0x85: "\\x85",
}


def clean(text: str) -> str:
    """Escape control characters (newlines, ANSI escapes...) in ``text``."""
    if text.isprintable():
        return text
    return text.translate(_CONTROL_ESCAPES)


def indent_continuation(text: str) -> str:
    """Indent every line after the first, so no line of a record looks like a new record."""
    text = text.replace("\x1b", "\\x1b")
    lines = text.splitlines()
    return "\n    ".join(lines)




def traceback_text(exc: BaseException) -> str:
    """The formatted traceback of ``exc`` (used by lifecycle events)."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def log_exception(logger: logging.Logger, level: int, msg: str, *args: Any) -> None:
    """``logger.log(level, msg, *args, exc_info=True)``, with the exception being handled
    as text only: its traceback in ``exc_text``, nothing live (no traceback, no exception
    object) on the record, so the record pickles as it is (a ``QueueHandler`` that keeps
    it whole, Celery's test worker). For logkit's own reports of its failures."""
    try:
        if not logger.isEnabledFor(level):
            return
        etype, value, tb = sys.exc_info()
        fn, lno, func, _ = logger.findCaller(False, 2)
        record = logger.makeRecord(logger.name, level, fn, lno, msg, args, None, func)
        if etype is not None:
            text = "".join(traceback.format_exception(etype, value, tb))
            record.exc_text = text[:-1] if text.endswith("\n") else text
        del tb
        logger.handle(record)
    except Exception:  # a report of a failure never fails itself
        pass
