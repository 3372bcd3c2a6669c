"""The three formatters: JSON, console (colour) and plain text.

Each is built once from a :class:`~logkit.config.LogConfig` and turns a
``LogRecord`` into one line through one field builder
(:mod:`logkit._fields`: the message, static fields, log context, ``extra``
fields, exception; :mod:`logkit._schema_fields` for a backend's schema).
A formatter never raises: a value that cannot be turned into text is replaced by
its guarded ``repr()`` (:mod:`logkit._safe`), and if building the record fails
anyway a minimal record that says so is returned instead, so no record is lost.

:class:`JsonFormatter` is a python-json-logger formatter: a subclass's overrides of
python-json-logger's ``add_fields`` and ``process_log_record`` hooks are called as
python-json-logger calls them (see docs/other-libraries.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson
from colorama import Fore, Style
from pythonjsonlogger.orjson import OrjsonFormatter

from ._clock import Clock
from ._fields import FORMATTER_OPTIONS as FORMATTER_OPTIONS
from ._fields import RESERVED as RESERVED
from ._fields import Fields, JsonFields, context_of, formatter_config
from ._fields import extra_names as extra_names
from ._safe import (
    JSON_LINE_OPTIONS,
    JSON_OPTIONS,
    clean,
    indent_continuation,
    json_default,
    safe_repr,
    safe_str,
    sanitize,
)
from ._safe import cap as cap
from ._safe import traceback_text as traceback_text
from ._schema_fields import SchemaFields
from .config import ConfigError, LogConfig
from .schemas import schema_for

__all__ = [
    "ConsoleFormatter",
    "JsonFormatter",
    "PlainFormatter",
    "safe_repr",
    "safe_str",
]

# ---------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------


class JsonFormatter(OrjsonFormatter):
    """One JSON object per line, built by one field builder chosen when it is built.

    Output keys without a schema: ``timestamp`` (ISO 8601, UTC, ms), ``level``,
    ``logger``, ``message``, the static fields, the log context, the record's ``extra``
    fields, ``process``, ``thread`` (off the process's main thread) and, when there is
    one, ``exception`` (``type``, ``message``, ``traceback``); with a ``schema``, the
    backend's keys and formats.

    A python-json-logger formatter: a subclass overriding ``add_fields(log_data,
    record, message_dict)`` or ``process_log_record(log_data)`` has them called for
    every record, as python-json-logger does (``add_fields`` of this class puts logkit's
    fields into ``log_data``); without such overrides neither is called.
    """

    def __init__(
        self,
        config: LogConfig | str | None = None,
        datefmt: str | None = None,
        style: str = "%",
        validate: bool = True,
        **options: Any,
    ) -> None:
        """``JsonFormatter(config)``, or ``JsonFormatter(fields={...}, field_names={...},
        max_field_length=...)``; ``logging.config``'s ``(format, datefmt, style)`` are
        accepted and ignored (the JSON keys are logkit's).

        Args:
            config: A :class:`~logkit.LogConfig` (what ``logkit.configure()`` passes), or
                what ``logging.config`` passes in this place (a format string: ignored).
            datefmt: Ignored: the timestamp is always ISO 8601 (a schema's own format).
            style: Ignored (``logging.config``'s format style).
            validate: Ignored (``logging.config``'s format check).
            **options: Formatter options, the same as :class:`~logkit.LogConfig`'s:
                ``fields``, ``field_names``, ``max_field_length``, ``schema``,
                ``service_name``, ``gcp_project``, ``always_fields`` (``thread``: the
                main thread's id too); a ``format`` key (``dictConfig`` with
                a ``"()"`` factory) is ignored.

        Raises:
            ConfigError: An option that is not a formatter option, or a bad value
                (the message lists the valid ones).
        """
        options.pop("format", None)  # dictConfig's "format" key, with the "()" factory
        config = formatter_config(config, options, "JsonFormatter")
        super().__init__(
            reserved_attrs=sorted(RESERVED),
            static_fields=dict(config.fields),
            rename_fields=dict(config.field_names),
            json_default=json_default,
        )
        self._f = Fields(config)
        #: The one field builder: logkit's own keys, or a backend's schema.
        self._fields = JsonFields(self._f, self.formatException)
        self._clock: Clock = self._fields.clock
        schema = schema_for(config)
        builder: Any = self._fields
        if schema.name != "logkit":
            builder = SchemaFields(config, schema, self._f, self.formatException,
                                   self._clock.__call__)
        self.build = builder.build  # type: ignore[method-assign]
        #: A longer line has an uncapped value (bytes, a string nested in a dict...):
        #: the slow path caps every string at any depth.
        self._long_line = 4 * self._f.limit + 4096
        #: python-json-logger's hooks, overridden by a subclass: decided once, here.
        cls = type(self)
        self._hooked = (cls.add_fields is not JsonFormatter.add_fields
                        or cls.process_log_record is not JsonFormatter.process_log_record)

    def build(self, record: logging.LogRecord) -> dict[Any, Any]:
        """The record as a dict of output fields (before serialisation): the field
        builder's (replaced by it on the instance)."""
        return self._fields.build(record)  # pragma: no cover - replaced in __init__

    def format(self, record: logging.LogRecord) -> str:
        """Return ``record`` as one line of JSON; never raises."""
        if self._hooked:
            return self._format_hooked(record)
        try:
            line = orjson.dumps(
                self.build(record), default=json_default, option=JSON_OPTIONS
            ).decode()
        except Exception:
            return self._format_slow(record)
        return line if len(line) <= self._long_line else self._format_slow(record)

    def format_line(self, record: logging.LogRecord) -> bytes:
        """:meth:`format` as UTF-8 bytes ending in a newline (what a sink writes); never raises."""
        if not self._hooked:
            try:
                line = orjson.dumps(
                    self.build(record), default=json_default, option=JSON_LINE_OPTIONS
                )
                if len(line) <= self._long_line:
                    return line
            except Exception:
                pass
            text = self._format_slow(record)
        else:
            text = self._format_hooked(record)
        return f"{text}\n".encode("utf-8", "backslashreplace")

    # -- python-json-logger's hooks ---------------------------------------------------

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        """python-json-logger's hook: put the record's fields into ``log_data`` (logkit's
        fields, as :meth:`build` makes them, then ``message_dict``'s). Called only when a
        subclass overrides this or :meth:`process_log_record`."""
        log_data.update(self.build(record))
        if message_dict:
            log_data.update(message_dict)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        """python-json-logger's hook: the fields to serialise, from ``log_data`` (here:
        unchanged). Called only when a subclass overrides this or :meth:`add_fields`."""
        return log_data

    def _format_hooked(self, record: logging.LogRecord) -> str:
        """:meth:`format` through a subclass's python-json-logger hooks, as
        python-json-logger's ``format()`` calls them (``message_dict`` is empty: logkit's
        fields, exception included, are in ``log_data`` already)."""
        try:
            log_data: dict[str, Any] = {}
            self.add_fields(log_data, record, {})
            data = self.process_log_record(log_data)
            line = orjson.dumps(data, default=json_default, option=JSON_OPTIONS).decode()
        except Exception:  # a hook or a value that does not serialise
            return self._format_slow(record)
        return line if len(line) <= self._long_line else self._format_slow(record)

    def _format_slow(self, record: logging.LogRecord) -> str:
        """Cycles, odd keys, surrogates, huge ints: sanitise everything, then serialise."""
        try:
            data = sanitize(self.build(record), self._f.limit)
        except Exception as exc:
            try:
                stamp = self._clock(record.created, record.msecs)
            except Exception:  # ``created`` overwritten by someone: use the time now
                stamp = self._clock(time.time(), 0)
            data = {
                self._f.timestamp: stamp,
                self._f.level: safe_str(getattr(record, "levelname", "ERROR")),
                self._f.logger: safe_str(getattr(record, "name", "?")),
                self._f.message: sanitize(safe_str(getattr(record, "msg", "")), self._f.limit),
                "logkit_error": f"record could not be formatted: {type(exc).__name__}",
            }
        return orjson.dumps(data, option=JSON_OPTIONS).decode()


# ---------------------------------------------------------------------------
# Console (colour) and plain text
# ---------------------------------------------------------------------------

LEVEL_COLORS: dict[int, str] = {
    logging.DEBUG: Fore.BLUE,
    logging.INFO: Fore.GREEN,
    logging.WARNING: Fore.YELLOW,
    logging.ERROR: Fore.RED,
    logging.CRITICAL: Style.BRIGHT + Fore.RED,
}


def _kv(key: Any, value: Any, limit: int) -> str:
    text = value if type(value) is str else safe_repr(value)
    if len(text) > limit:  # a repr of bytes or of a dict holding a huge string
        text = cap(text, limit)
    if not text or " " in text or "=" in text:
        text = safe_repr(text)
    return f"{clean(safe_str(key))}={clean(text)}"


class _TextFormatter(logging.Formatter):
    """What console and plain output share: never raising, ``key=value`` pairs, tracebacks."""

    _f: Fields

    def format(self, record: logging.LogRecord) -> str:
        """Return ``record`` as text (plus indented traceback lines); never raises."""
        try:
            return self._format(record)
        except Exception as exc:
            return (
                f"{safe_str(getattr(record, 'levelname', '?'))} "
                f"{clean(safe_repr(getattr(record, 'msg', '')))} "
                f"(logkit: record could not be formatted: {type(exc).__name__})"
            )

    def _format(self, record: logging.LogRecord) -> str:
        raise NotImplementedError

    def _pairs(
        self, record: logging.LogRecord, ctx: Mapping[str, Any], *, extras: bool, static: bool
    ) -> list[str]:
        """``key=value`` for user-bound context, then (optionally) extras and static fields."""
        f = self._f
        pairs = [_kv(k, v, f.limit) for k, v in ctx.items() if k not in f.task_keys]
        if extras:
            pairs.extend(_kv(k, v, f.limit) for k, v in f.extras(record).items() if v is not None)
        if static:
            pairs.extend(_kv(k, v, f.limit) for k, v in f.static.items())
        return pairs

    def _with_traceback(self, text: str, record: logging.LogRecord) -> str:
        """``text`` followed by the record's traceback and stack, indented."""
        exc = self._f.exception_of(self.formatException, record)
        if exc is not None:
            text = f"{text}\n    {indent_continuation(exc['traceback'])}"
        if record.stack_info:
            text = f"{text}\n    {indent_continuation(record.stack_info)}"
        return text


class ConsoleFormatter(_TextFormatter):
    """Human output: ``time LEVEL logger: [task_name task_id] message key=value ...``.

    Colours (via colorama codes) only when ``use_color`` is true; control characters in
    messages and values are escaped and every continuation line (tracebacks) is indented.
    """

    def __init__(
        self,
        config: LogConfig | str | None = None,
        datefmt: str | None = None,
        style: str = "%",
        validate: bool = True,
        *,
        use_color: bool = False,
        **options: Any,
    ) -> None:
        """``ConsoleFormatter(config, use_color=...)``, or with keyword options as
        :class:`JsonFormatter`; ``logging.config``'s ``(format, datefmt, style)`` are
        accepted and ignored.

        Args:
            config: A :class:`~logkit.LogConfig`, or what ``logging.config`` passes in this
                place (a format string: ignored).
            datefmt: Ignored: the time is always local ``YYYY-MM-DD HH:MM:SS.mmm``.
            style: Ignored (``logging.config``'s format style).
            validate: Ignored (``logging.config``'s format check).
            use_color: Colour the level and the task prefix (ANSI codes).
            **options: Formatter options, as :class:`JsonFormatter`'s.

        Raises:
            ConfigError: An option that is not a formatter option, or a bad value.
        """
        super().__init__()
        options.pop("format", None)
        self._f = Fields(formatter_config(config, options, "ConsoleFormatter"))
        self._clock = Clock(utc=False, sep=" ")
        self.use_color = use_color
        if use_color:
            self._dim, self._reset = Style.DIM, Style.RESET_ALL
            self._task, self._name = Style.BRIGHT + Fore.CYAN, Fore.MAGENTA
        else:
            self._dim = self._reset = self._task = self._name = ""

    def _format(self, record: logging.LogRecord) -> str:
        f = self._f
        reset = self._reset
        level = record.levelname
        if self.use_color:
            color = LEVEL_COLORS.get(record.levelno, "")
            level_text = f"{color}{level:<8}{reset}"
        else:
            level_text = f"{level:<8}"
        parts = [
            f"{self._dim}{self._clock(record.created, record.msecs)}{reset} {level_text} "
            f"{self._name}{clean(record.name)}{reset}:"
        ]
        ctx = context_of(record)
        task_id = ctx.get(f.task_id)
        if task_id is not None:
            name = ctx.get(f.task_name, "?")
            parts.append(f"{self._task}[{clean(safe_str(name))} {clean(safe_str(task_id))}]{reset}")
        parts.append(clean(f.message_of(record)))
        pairs = self._pairs(record, ctx, extras=True, static=True)
        if pairs:
            parts.append(f"{self._dim}{' '.join(pairs)}{reset}")
        return self._with_traceback(" ".join(parts), record)


#: Celery's default ``worker_log_format``: what a :class:`PlainFormatter` without one uses.
DEFAULT_PLAIN_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"


class PlainFormatter(_TextFormatter):
    """Celery's own text format (``worker_log_format`` / ``worker_task_log_format``).

    Inside a task, a format without ``%(task_id)s`` gets a ``[task_name task_id]``
    prefix on the message; a task format gets ``task_name``/``task_id`` filled in from
    the context (``???`` outside tasks, as Celery does). User-bound context keys and
    ``extra`` fields (e.g. an event's ``duration_ms``) follow the message as ``key=value``;
    records of Celery's own ``celery.*`` loggers show no extras (their text has it all).
    """

    def __init__(
        self,
        fmt: str | None = None,
        datefmt: str | None = None,
        config: LogConfig | str | None = None,
        validate: bool = True,
        **options: Any,
    ) -> None:
        """``PlainFormatter(fmt, datefmt, config)``; from ``logging.config`` (which passes
        ``(format, datefmt, style)``) or with keyword options as :class:`JsonFormatter`.
        Without ``fmt``, Celery's default worker format.

        Args:
            fmt: A ``%``-style format, as Celery's ``worker_log_format`` (default) or
                ``worker_task_log_format`` (with ``%(task_id)s``/``%(task_name)s``).
            datefmt: ``strftime`` format of ``%(asctime)s``.
            config: A :class:`~logkit.LogConfig`, or ``logging.config``'s style (only
                ``"%"`` is taken).
            validate: Check ``fmt`` as ``logging.Formatter`` does.
            **options: Formatter options, as :class:`JsonFormatter`'s.

        Raises:
            ConfigError: A style other than ``%``, an option that is not a formatter
                option, or a bad value.
        """
        style = config if isinstance(config, str) else "%"
        if style != "%":
            raise ConfigError(f"logkit: PlainFormatter takes '%' style formats; got {style!r}")
        fmt = options.pop("format", None) or fmt or DEFAULT_PLAIN_FORMAT
        super().__init__(
            fmt, datefmt, validate=validate, defaults={"task_id": "???", "task_name": "???"}
        )
        self._f = Fields(formatter_config(config, options, "PlainFormatter"))
        self._task_format = "%(task_id)" in fmt or "%(task_name)" in fmt

    def _format(self, record: logging.LogRecord) -> str:
        f = self._f
        ctx = context_of(record)
        message = clean(f.message_of(record))
        task_id = ctx.get(f.task_id)
        if self._task_format:
            if task_id is not None:
                record.task_id = clean(safe_str(task_id))
                record.task_name = clean(safe_str(ctx.get(f.task_name, "???")))
            else:  # set by ``extra`` or another library: never written raw either
                fields = record.__dict__
                for attr in ("task_id", "task_name"):
                    if attr in fields:
                        fields[attr] = clean(safe_str(fields[attr]))
        elif task_id is not None:
            name = clean(safe_str(ctx.get(f.task_name, "?")))
            message = f"[{name} {clean(safe_str(task_id))}] {message}"
        # Celery's own lines carry their data in their text already.
        pairs = self._pairs(record, ctx, extras=not record.name.startswith("celery."), static=False)
        if pairs:
            message = f"{message} {' '.join(pairs)}"
        record.message = message
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        return self._with_traceback(self.formatMessage(record), record)
