"""A record's fields: what every formatter takes from a ``LogRecord``, decided once.

The field pipeline every formatter shares, in the order a record's fields are written:

* the message (``record.getMessage()``, capped at ``max_field_length``, never raising);
* the static ``fields`` from the config;
* the log context (task context and user binds) from :mod:`logkit.context`;
* the record's ``extra`` fields (every attribute that is not a standard ``LogRecord``
  attribute);
* the exception, as a structured field.

:class:`JsonFields` is the one field builder of logkit's own JSON keys (a
``JsonFormatter`` without a schema); :mod:`logkit._schema_fields` is the one of a
backend's schema. Both take a ``LogRecord`` and return the dict that is serialised:
every line logkit writes is built by one of them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS

from ._clock import Clock
from ._safe import cap, safe_repr, safe_str
from .config import CONTEXT_FIELDS, ConfigError, LogConfig
from .context import current
from .trace import span_lookup

__all__ = [
    "FORMATTER_OPTIONS",
    "RESERVED",
    "Fields",
    "JsonFields",
    "MainThread",
    "context_of",
    "extra_names",
    "formatter_config",
]

#: LogRecord attributes that are never output as ``extra`` fields.
RESERVED: frozenset[str] = frozenset(RESERVED_ATTRS) | {
    "taskName",
    "message",
    "asctime",
    "_logkit_ctx",
    "_logkit_filled",  # names a logkit.ContextFilter put on the record (not extras)
    # added by Celery's TaskFormatter / our plain task formatter
    "task_id",
    "task_name",
    # added by colour formatters of other libraries
    "color_message",
}
#: The attributes of a fresh LogRecord, in order: more means the record has ``extra`` fields.
_BASE_KEYS: list[str] = list(logging.LogRecord("", 0, "", 0, "", None, None).__dict__)
BASE_LEN = len(_BASE_KEYS)

#: ``exception_of``'s way of formatting a traceback (a formatter's ``formatException``).
FormatException = Callable[[Any], Any]


def extra_names(rd: Mapping[str, Any]) -> list[str]:
    """The names in a record's ``__dict__`` after the standard ones (its ``extra`` fields
    and what filters added), or every name when the layout is not the usual one."""
    if len(rd) <= BASE_LEN:
        return []
    names = list(rd)
    if names[:BASE_LEN] == _BASE_KEYS:  # the usual layout: extras follow the standard keys
        return names[BASE_LEN:]
    return names


def context_of(record: logging.LogRecord) -> Mapping[str, Any]:
    """The log context of ``record``: the one captured with it (a queued record), or the
    current one."""
    ctx = record.__dict__.get("_logkit_ctx")
    return current() if ctx is None else ctx


class MainThread:
    """The id of the main thread of the process a record was made in, looked up once per
    process id: a record of that thread leaves its ``thread`` out (it would say the same
    on every line of a prefork child or a solo worker). A forked child's main thread is
    the thread that forked, so the id is looked up again for a new pid; a record of
    another process (its pid not ours) gets ``ident`` ``None``: its thread is written.

    Per formatter: ``if record.process != main.pid: main.refresh(record.process)``, then
    compare ``record.thread`` with ``main.ident``.
    """

    __slots__ = ("ident", "pid")

    def __init__(self) -> None:
        self.pid: Any = -1
        self.ident: int | None = None

    def refresh(self, pid: Any) -> None:
        """Look up the main thread's id for records of process ``pid``."""
        self.ident = threading.main_thread().ident if pid == os.getpid() else None
        self.pid = pid


class Fields:
    """Field names and limits decided once from a :class:`LogConfig`, and the steps every
    formatter takes from a record (message, ``extra`` fields, exception)."""

    def __init__(self, config: LogConfig) -> None:
        names = config.field_names
        self.config = config
        self.limit = config.max_field_length
        self.static: dict[str, Any] = dict(config.fields)
        self.timestamp = names.get("timestamp", "timestamp")
        self.level = names.get("level", "level")
        self.logger = names.get("logger", "logger")
        self.message = names.get("message", "message")
        self.exception = names.get("exception", "exception")
        self.base = frozenset({self.timestamp, self.level, self.logger, self.message})
        self.task_id = names.get("task_id", "task_id")
        self.task_name = names.get("task_name", "task_name")
        #: Context keys that the console/plain prefix shows, or hides as too noisy.
        self.task_keys = frozenset(names.get(n, n) for n in CONTEXT_FIELDS)
        #: Write the thread id of a process's main thread too (``always_fields``).
        self.always_thread = "thread" in config.always_fields

    def message_of(self, record: logging.LogRecord) -> str:
        """The record's message, never raising, capped."""
        msg = record.msg
        if type(msg) is str and type(record) is logging.LogRecord:  # getMessage(), inlined
            if record.args:
                try:
                    msg = msg % record.args
                except Exception:
                    msg = self._message_failed(record)
        else:  # a custom record class may override getMessage()
            try:
                msg = record.getMessage()
            except Exception:
                msg = self._message_failed(record)
        if len(msg) > self.limit:
            msg = cap(msg, self.limit)
        return msg

    @staticmethod
    def _message_failed(record: logging.LogRecord) -> str:
        try:
            return record.getMessage()
        except Exception as exc:
            return (
                f"{safe_str(record.msg)} % {safe_repr(record.args)} "
                f"(logkit: message formatting failed: {type(exc).__name__}: {safe_str(exc)})"
            )

    def extras(self, record: logging.LogRecord) -> dict[Any, Any]:
        """The record's ``extra`` fields; keys that collide with base fields get a ``_`` prefix."""
        out: dict[Any, Any] = {}
        if len(record.__dict__) > BASE_LEN:
            self.add_extras(record, out)
        return out

    def add_extras(self, record: logging.LogRecord, out: dict[Any, Any]) -> None:
        """Put the record's ``extra`` fields into ``out`` (see :meth:`extras`)."""
        rd = record.__dict__
        limit = self.limit
        base = self.base
        filled = rd.get("_logkit_filled")
        for key in extra_names(rd):
            if key in RESERVED or (filled and key in filled):
                continue
            value = rd[key]
            if key in base:
                key = f"_{key}"
            if type(value) is str and len(value) > limit:
                value = cap(value, limit)
            out[key] = value

    def exception_of(self, format_exception: FormatException,
                     record: logging.LogRecord) -> Any:
        """``{"type", "message", "traceback"}`` for ``record.exc_info``, or ``None``; the
        traceback text is ``format_exception(exc_info)``, kept in ``record.exc_text``."""
        exc_info = record.exc_info
        if exc_info and exc_info[0] is not None:
            if not record.exc_text:
                try:
                    record.exc_text = format_exception(exc_info)
                except Exception as exc:
                    record.exc_text = f"<traceback unavailable: {type(exc).__name__}>"
            etype, evalue = exc_info[0], exc_info[1]
            return {
                "type": etype.__qualname__
                if etype.__module__ in ("builtins", "__main__")
                else f"{etype.__module__}.{etype.__qualname__}",
                "message": cap(safe_str(evalue), self.limit),
                "traceback": cap(record.exc_text, self.limit),
            }
        if record.exc_text:
            return {"traceback": cap(record.exc_text, self.limit)}
        return None


class JsonFields:
    """The field builder of logkit's own JSON keys: :meth:`build` turns a record into the
    dict a :class:`~logkit.formatters.JsonFormatter` serialises.

    Keys, in order: ``timestamp`` (ISO 8601, UTC, ms), ``level``, ``logger``, ``message``,
    the static fields, the log context, the record's ``extra`` fields, the current span's
    ``trace_id``/``span_id``, ``process``, ``thread`` (but not the process's main
    thread, unless ``always_fields`` names it), and when there is one ``exception``
    (``type``, ``message``, ``traceback``) and ``stack``. A context key named like a base
    field (``level``...) never replaces it.
    """

    def __init__(self, fields: Fields, format_exception: FormatException) -> None:
        f = self.fields = fields
        names = f.config.field_names
        self.clock = Clock(utc=True)
        self._stamp = self.clock.__call__
        self._format_exception = format_exception
        self._keys = (f.timestamp, f.level, f.logger, f.message)
        self._static = dict(f.static)
        self._message_of = f.message_of
        self._add_extras = f.add_extras
        self._process = names.get("process", "process")
        self._thread = names.get("thread", "thread")
        self._always_thread = f.always_thread
        self._main = MainThread()
        #: The last context dict seen and whether it has a key named like a base field;
        #: context dicts are never mutated, so identity is enough to reuse the answer.
        self._last_ctx: tuple[Mapping[str, Any] | None, bool] = (None, False)
        #: The current OpenTelemetry span's ids, or ``None`` without ``opentelemetry-api``.
        self._trace = span_lookup()
        self._trace_keys = (names.get("trace_id", "trace_id"), names.get("span_id", "span_id"))

    def build(self, record: logging.LogRecord) -> dict[Any, Any]:
        """The record as a dict of output fields (before serialisation)."""
        rd = record.__dict__
        ctx = rd.get("_logkit_ctx")
        if ctx is None:
            ctx = current()
        ts, level, name, message = self._keys
        msg = record.msg
        if (type(msg) is not str or record.args or type(record) is not logging.LogRecord
                or len(msg) > self.fields.limit):
            msg = self._message_of(record)  # else: getMessage() is msg itself
        out: dict[Any, Any] = {
            ts: self._stamp(record.created, record.msecs),
            level: record.levelname,
            name: record.name,
            message: msg,
        }
        if self._static:
            out.update(self._static)
        if ctx:
            out.update(ctx)
        if len(rd) > BASE_LEN:
            self._add_extras(record, out)
        if self._trace is not None:
            ids = self._trace()
            if ids is not None:
                out[self._trace_keys[0]] = ids[0]
                out[self._trace_keys[1]] = ids[1]
        pid = out[self._process] = record.process
        thread = record.thread
        main = self._main
        if pid != main.pid:
            main.refresh(pid)
        if (thread != main.ident and thread is not None) or self._always_thread:
            out[self._thread] = thread
        if record.exc_info or record.exc_text:
            exc = self.fields.exception_of(self._format_exception, record)
            if exc is not None:
                out[self.fields.exception] = exc
        if record.stack_info:
            out["stack"] = cap(record.stack_info, self.fields.limit)
        if ctx:
            last = self._last_ctx
            if last[0] is ctx:
                collides = last[1]
            else:
                collides = not self.fields.base.isdisjoint(ctx)
                self._last_ctx = (ctx, collides)
            if collides:  # a bound key named like a base field: base wins
                out[level] = record.levelname
                out[name] = record.name
                out[message] = msg
                out[ts] = self._stamp(record.created, record.msecs)
        return out


#: The :class:`LogConfig` options a formatter takes as keyword arguments (from
#: ``logging.config.dictConfig``'s ``()`` key, Django's ``LOGGING``, or code).
FORMATTER_OPTIONS: tuple[str, ...] = (
    "fields", "field_names", "max_field_length", "schema", "service_name", "gcp_project",
    "always_fields",
)


def formatter_config(config: Any, options: Mapping[str, Any], cls: str) -> LogConfig:
    """The config a formatter is built from: a :class:`LogConfig` (the internal use),
    or the defaults with the keyword ``options``. Anything else in the config slot is
    what ``logging.config`` passes there (a format string, a style) and is ignored.

    Raises :class:`ConfigError` for an option a formatter does not take.
    """
    unknown = sorted(set(options) - set(FORMATTER_OPTIONS))
    if unknown:
        raise ConfigError(
            f"logkit: {cls} got unknown option(s) {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(FORMATTER_OPTIONS)}"
        )
    base = config if isinstance(config, LogConfig) else LogConfig()
    return base.replace(**options) if options else base
