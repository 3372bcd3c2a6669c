"""JSON, console and plain formatters.

All three share one field pipeline, decided once when the formatter is built:

* the message (``record.getMessage()``, capped at ``max_field_length``);
* the static ``fields`` from the config;
* the log context (task context and user binds) from :mod:`logkit.context`;
* the record's ``extra`` fields (every attribute that is not a standard
  ``LogRecord`` attribute);
* the exception, as a structured field.

A formatter never raises: a value that cannot be turned into text is replaced by
its guarded ``repr()``, and if building the record fails anyway a minimal record
that says so is returned instead, so no record is lost.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from colorama import Fore, Style
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

from .config import CONTEXT_FIELDS, ConfigError, LogConfig
from .context import current
from .schemas import Schema, schema_for
from .trace import span_lookup

__all__ = [
    "ConsoleFormatter",
    "JsonFormatter",
    "PlainFormatter",
    "safe_repr",
    "safe_str",
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
#: Number of attributes of a fresh LogRecord: more means the record has ``extra`` fields.
_BASE_KEYS: list[str] = list(logging.LogRecord("", 0, "", 0, "", None, None).__dict__)
_BASE_LEN = len(_BASE_KEYS)


def extra_names(rd: Mapping[str, Any]) -> list[str]:
    """The names in a record's ``__dict__`` after the standard ones (its ``extra`` fields
    and what filters added), or every name when the layout is not the usual one."""
    if len(rd) <= _BASE_LEN:
        return []
    names = list(rd)
    if names[:_BASE_LEN] == _BASE_KEYS:  # the usual layout: extras follow the standard keys
        return names[_BASE_LEN:]
    return names

_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS
_JSON_LINE_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE
_TRUNCATED_MARK = "…[truncated {} chars]"


# ---------------------------------------------------------------------------
# Never-raising conversions
# ---------------------------------------------------------------------------


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


def cap(text: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` characters and say how much was cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + _TRUNCATED_MARK.format(len(text) - limit)


def _json_default(value: Any) -> Any:
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


def _sanitize(value: Any, limit: int, seen: set[int] | None = None, depth: int = 0) -> Any:
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
                    _sanitize_key(k, limit): _sanitize(v, limit, seen, depth + 1)
                    for k, v in list(value.items())
                }
            return [_sanitize(v, limit, seen, depth + 1) for v in list(value)]
        finally:
            seen.discard(id(value))
    try:
        converted = _json_default(value)
    except Exception:
        converted = f"<unrepresentable {type(value).__qualname__} object>"
    return _sanitize(converted, limit, seen, depth + 1) if converted is not value else "<?>"


def _sanitize_key(key: Any, limit: int) -> str:
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


class _Clock:
    """Formats ``record.created`` as ISO 8601 with milliseconds, one ``strftime`` per second.

    The milliseconds come from a table of the 1000 possible suffixes, so a record in an
    already seen second costs one ``int()``, one lookup and one concatenation.
    """

    __slots__ = ("_cache", "_convert", "_ms", "_sep", "_suffix")

    def __init__(self, *, utc: bool = True, sep: str = "T") -> None:
        self._convert = time.gmtime if utc else time.localtime
        self._suffix = "Z" if utc else ""
        self._sep = sep
        self._cache: tuple[int, str] = (-1, "")
        self._ms: tuple[str, ...] = tuple(f".{ms:03d}{self._suffix}" for ms in range(1000))

    def __call__(self, created: float, msecs: float) -> str:
        sec = int(created)
        cached = self._cache
        if cached[0] != sec:
            cached = (sec, time.strftime(f"%Y-%m-%d{self._sep}%H:%M:%S", self._convert(sec)))
            self._cache = cached
        ms = int(msecs)
        if 0 <= ms < 1000:
            return cached[1] + self._ms[ms]
        return f"{cached[1]}.{ms:03d}{self._suffix}"


# ---------------------------------------------------------------------------
# The shared field pipeline
# ---------------------------------------------------------------------------


class _Fields:
    """Field names and limits decided once from a :class:`LogConfig`."""

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

    def message_of(self, record: logging.LogRecord) -> str:
        """The record's message, never raising, capped."""
        try:
            msg = record.getMessage()
        except Exception as exc:
            msg = (
                f"{safe_str(record.msg)} % {safe_repr(record.args)} "
                f"(logkit: message formatting failed: {type(exc).__name__}: {safe_str(exc)})"
            )
        if len(msg) > self.limit:
            msg = cap(msg, self.limit)
        return msg

    def extras(self, record: logging.LogRecord) -> dict[Any, Any]:
        """The record's ``extra`` fields; keys that collide with base fields get a ``_`` prefix."""
        out: dict[Any, Any] = {}
        if len(record.__dict__) > _BASE_LEN:
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

    def exception_of(self, formatter: logging.Formatter, record: logging.LogRecord) -> Any:
        """``{"type", "message", "traceback"}`` for ``record.exc_info``, or ``None``."""
        exc_info = record.exc_info
        if exc_info and exc_info[0] is not None:
            if not record.exc_text:
                try:
                    record.exc_text = formatter.formatException(exc_info)
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


def _context_of(record: logging.LogRecord) -> Mapping[str, Any]:
    ctx = record.__dict__.get("_logkit_ctx")
    return current() if ctx is None else ctx


#: The :class:`LogConfig` options a formatter takes as keyword arguments (from
#: ``logging.config.dictConfig``'s ``()`` key, Django's ``LOGGING``, or code).
FORMATTER_OPTIONS: tuple[str, ...] = (
    "fields", "field_names", "max_field_length", "schema", "service_name", "gcp_project",
)


def _formatter_config(config: Any, options: Mapping[str, Any], cls: str) -> LogConfig:
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


class _SchemaFields:
    """A :class:`~logkit.schemas.Schema` applied to a config: its key translation (with a
    cache), its constant and per-process fields, decided once."""

    def __init__(self, config: LogConfig, schema: Schema) -> None:
        self.schema = s = schema
        constants = dict(s.constants(config))
        #: values the formats need (a project id...), not output
        self.private = {k: v for k, v in constants.items() if k.startswith("_")}
        self.head = {k: v for k, v in constants.items() if not k.startswith("_")}
        self.config = config
        private = self.private
        trace_format, span_format = s.trace_format, s.span_format
        self.convert: dict[str, Any] = dict(s.convert)
        # a trace id bound in the context (32 hex digits) gets the schema's format too
        self.convert[s.trace_id] = (
            lambda v: trace_format(v, private) if type(v) is str else v
        )
        self.convert[s.span_id] = lambda v: span_format(v) if type(v) is str else v
        self.top = frozenset({s.trace_id, s.span_id})
        self._keys: dict[Any, str] = {}
        self.static: dict[str, Any] = {}
        self.static_top: dict[str, Any] = {}
        self.translate(config.fields.items(), self.static, self.static_top)
        self._ctx: tuple[Any, dict[str, Any], dict[str, Any]] = (None, {}, {})
        #: the last context dict and its keys (a record plan's key)
        self.ctx_keys: tuple[Any, tuple[Any, ...]] = (None, ())
        #: ``(pid, per-process fields, their keys)``
        self.process: tuple[int, Mapping[str, Any], tuple[str, ...]] = (-1, {}, ())
        self._paths: dict[str, list[str]] = {}
        self._extra_plans: dict[Any, Any] = {}
        self.limit = config.max_field_length
        #: logkit's base keys: an ``extra`` field named like one gets a ``_`` prefix
        self.base = _Fields(config).base
        #: ``start(record, msg, stamp) -> (out, fields)``: the fields every record has, under
        #: this schema's keys, in one literal (see :func:`_start_plan`).
        self._fixed_names: dict[str, Any] = {}
        top, own = _fixed_fields(s, self.head, self.static, self._fixed_names)
        self.start = _start_plan(s, top, own, dict(self._fixed_names))
        self._top, self._own = top, own
        #: :meth:`record_plan`'s, by ``(context keys, extra names, traced, per-process keys)``
        self.plans: dict[tuple[Any, ...], RecordPlan] = {}

    def key(self, name: Any) -> str:
        """The output key of a record's own field ``name`` (renamed, or moved off a
        reserved name)."""
        out = self._keys.get(name)
        if out is None:
            s = self.schema
            text = name if isinstance(name, str) else safe_str(name)
            out = s.renames.get(text)
            if out is None:
                out = text
                if text.partition(".")[0] in s.reserved or text in s.reserved:
                    out = s.clash_prefix + text
            if len(self._keys) < 4096:
                self._keys[name] = out
        return out

    def translate(self, items: Any, out: dict[str, Any], top: dict[str, Any]) -> None:
        """Put ``(name, value)`` items into ``out`` under their output keys (trace ids
        into ``top``)."""
        keys, key, convert, top_keys = self._keys, self.key, self.convert, self.top
        for name, value in items:
            k = keys.get(name) or key(name)
            conv = convert.get(k)
            if conv is not None:
                value = conv(value)
            if k in top_keys:
                top[k] = value
            else:
                out[k] = value

    def add_extras(self, record: logging.LogRecord, fields: dict[str, Any],
                   top: dict[str, Any]) -> dict[str, Any]:
        """Put the record's ``extra`` fields into ``fields`` under their output keys, as
        :meth:`_Fields.add_extras` then :meth:`translate` would, in one pass with each
        name's key, conversion and place decided once; return ``top`` (a copy, when a
        trace id went into it)."""
        rd = record.__dict__
        filled = rd.get("_logkit_filled")
        plans = self._extra_plans
        limit = self.limit
        copied = False
        for name in extra_names(rd):
            plan = plans.get(name)
            if plan is None:
                plan = self._extra_plan(name)
            if plan is _SKIP or (filled and name in filled):
                continue
            key, conv, to_top = plan
            value = rd[name]
            if type(value) is str and len(value) > limit:
                value = cap(value, limit)
            if conv is not None:
                value = conv(value)
            if to_top:
                if not copied:
                    top, copied = dict(top), True
                top[key] = value
            else:
                fields[key] = value
        return top

    def _extra_plan(self, name: Any) -> Any:
        if name in RESERVED:
            plan: Any = _SKIP
        else:
            key = self.key(f"_{name}" if name in self.base else name)
            plan = (key, self.convert.get(key), key in self.top)
        if len(self._extra_plans) < 4096:
            self._extra_plans[name] = plan
        return plan

    def context(self, ctx: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``ctx`` translated (fields, top-level trace ids); context dicts are never mutated,
        so the last one's translation is reused."""
        cached = self._ctx
        if cached[0] is ctx:
            return cached[1], cached[2]
        fields: dict[str, Any] = {}
        top: dict[str, Any] = {}
        self.translate(ctx.items(), fields, top)
        self._ctx = (ctx, fields, top)
        return fields, top

    def per_process(self, pid: int) -> tuple[int, Mapping[str, Any], tuple[str, ...]]:
        """``(pid, the schema's per-process fields, their keys)``, cached for the last pid."""
        cached = self.process
        if cached[0] != pid:
            make = self.schema.per_process
            fields = make(self.config, pid) if make else {}
            cached = self.process = (pid, fields, tuple(fields))
        return cached

    def keys_of(self, ctx: Mapping[str, Any]) -> tuple[Any, tuple[Any, ...]]:
        """``(ctx, its keys)``, cached for the last context dict (never mutated)."""
        cached = self.ctx_keys = (ctx, tuple(ctx))
        return cached

    def record_plan(self, key: tuple[Any, ...]) -> RecordPlan:
        """The function building a whole record whose context has the keys ``key[0]``,
        whose ``extra`` fields are named ``key[1]``, with (``key[2]`` false) or without a
        current span's ids, and per-process fields named ``key[3]``: one literal
        (nested, for a nesting schema), in the style of attrs' generated ``__init__``.

        The literal is what :meth:`JsonFormatter._build_generic` builds: its steps, in its
        order, with placeholders (:class:`_Code`) for values and the same key, conversion
        and nesting helpers (``tests/test_schemas.py`` compares the two outputs). A
        key sequence that cannot be planned (too long, a name that is not a ``str``)
        gets :data:`_NO_PLAN`, and the generic build. Plans are cached, up to
        :data:`_PLAN_CACHE` per formatter; past that, new shapes take the generic build."""
        plan = self.plans.get(key)
        if plan is None:
            if len(self.plans) >= _PLAN_CACHE:  # no compiling per record past the bound
                return _NO_PLAN
            try:
                plan = self._record_plan(*key)
            except Exception:  # a plan that does not compile: the generic build is right too
                plan = _NO_PLAN
            self.plans[key] = plan
        return plan

    def _record_plan(self, ckeys: tuple[Any, ...], names: tuple[Any, ...], untraced: bool,
                     pkeys: tuple[str, ...]) -> RecordPlan:
        s = self.schema
        if (len(ckeys) + len(names) > _PLAN_MAX_KEYS
                or not all(type(k) is str for k in (*ckeys, *names))):
            return _NO_PLAN
        ns: dict[str, Any] = dict(self._fixed_names)
        ns.update(cap=cap, limit=self.limit, top_values=list(self.static_top.values()),
                  trace_format=s.trace_format, span_format=s.span_format,
                  sampled_format=s.sampled_format, private=self.private)
        out: dict[str, Any] = dict(self._top)
        fields = out if s.attributes is None else {}
        fields.update(self._own)
        top = {k: _constant(v, f"top_values[{i}]")
               for i, (k, v) in enumerate(self.static_top.items())}

        def put(key: str, code: str, to_top: bool) -> None:
            conv = self.convert.get(key)
            if conv is not None:
                ns[f"conv{len(ns)}"] = conv
                code = f"conv{len(ns) - 1}({code})"
            (top if to_top else fields)[key] = _Code(code)

        for name in ckeys:
            key = self.key(name)
            put(key, f"ctx[{name!r}]", key in self.top)
        for name in names:
            extra = self._extra_plans.get(name) or self._extra_plan(name)
            if extra is not _SKIP:
                # capped as add_extras() caps it
                put(extra[0], f"(v if type(v := rd[{name!r}]) is not str or len(v) <= limit "
                              f"else cap(v, limit))", extra[2])
        if s.attributes is not None:
            out[s.attributes] = fields
        if untraced:
            out.update(top)
        else:
            out[s.trace_id] = _Code("trace_format(ids[0], private)")
            out[s.span_id] = _Code("span_format(ids[1])")
            if s.trace_sampled is not None:
                out[s.trace_sampled] = _Code("sampled_format(ids[2])")
        out.update((k, _Code(f"pp[{k!r}]")) for k in pkeys)
        literal = _literal((self.nest(out) if s.nest else out).items())
        plan: RecordPlan = _compile("record", "record, rd, ctx, msg, stamp, ids, pp",
                                    f"    return {literal}\n", ns)
        return plan

    def nest(self, flat: dict[str, Any]) -> dict[str, Any]:
        """Dotted keys as nested objects (``{"log.logger": x}`` -> ``{"log": {"logger": x}}``),
        as ecs-logging writes them; the schema's ``keep_dotted`` keys stay as they are. A
        dotted key under a name that holds a value replaces the value (even a dict: a
        record's own object is never merged into). Records of :attr:`combined` schemas
        take :meth:`finish`, which gives the same result from a plan made by this."""
        out: dict[str, Any] = {}
        paths = self._paths
        keep = self.schema.keep_dotted
        made: set[int] = set()  # the objects made here (a record's own dict is a value)
        for key, value in flat.items():
            if "." not in key or key in keep:
                out[key] = value
                continue
            parts = paths.get(key)
            if parts is None:
                parts = key.split(".")
                if len(paths) < 4096:
                    paths[key] = parts
            node = out
            for part in parts[:-1]:
                child = node.get(part)
                if child is None or id(child) not in made:  # a value (even a dict) is replaced
                    child = node[part] = {}
                    made.add(id(child))
                node = child
            node[parts[-1]] = value
        return out


_StartPlan = Callable[[logging.LogRecord, str, Callable[[float, float], str]],
                      tuple[dict[str, Any], dict[str, Any]]]


class _Code:
    """An expression of a planned dict literal (``record.name``...)."""

    __slots__ = ("code",)

    def __init__(self, code: str) -> None:
        self.code = code


def _fixed_fields(s: Schema, head: Mapping[str, Any], static: Mapping[str, Any],
                  names: dict[str, Any]) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """The fields every record of schema ``s`` has, as ``(key, expression)`` pairs in output
    order: the top level's (time, level, message, constants, logger, labels) and the
    record's own (process, thread, source location, static fields). An expression is a
    :class:`_Code` or, for the source location under ``source_key``, a list of pairs.
    Values the expressions name (``levels``, the constants...) are put in ``names``."""
    names.update(levels=dict(s.levels), severity_numbers=dict(s.severity_numbers),
                 head_values=list(head.values()), static_values=list(static.values()))
    top: list[tuple[str, Any]] = [
        (s.timestamp, _Code("stamp(record.created, record.msecs)")),
        (s.level, _Code("levels.get(record.levelname, record.levelname)")),
    ]
    if s.severity_number is not None:
        top.append((s.severity_number,
                    _Code("severity_numbers.get(record.levelname, record.levelno)")))
    top.append((s.message, _Code("msg")))
    top.extend((key, _constant(value, f"head_values[{i}]"))
               for i, (key, value) in enumerate(head.items()))
    if s.logger is not None:
        top.append((s.logger, _Code("record.name")))
    if s.labels is not None:
        top.append((s.labels, _Code(f"{{{s.labels_name!r}: record.name}}")))
    own: list[tuple[str, Any]] = []
    for key, attr in ((s.process, "process"), (s.process_name, "processName"),
                      (s.thread, "thread"), (s.thread_name, "threadName")):
        if key is not None:
            own.append((key, _Code(f"record.{attr}")))
    if s.source is not None:
        file_key, line_key, function_key = s.source
        file_attr = "filename" if s.source_basename else "pathname"
        source = [(file_key, _Code(f"record.{file_attr}")), (line_key, _Code("record.lineno")),
                  (function_key, _Code("record.funcName"))]
        if s.source_key is None:
            own.extend(source)
        else:
            own.append((s.source_key, source))
    own.extend((key, _constant(value, f"static_values[{i}]"))
               for i, (key, value) in enumerate(static.items()))
    return top, own


def _constant(value: Any, name: str) -> _Code:
    """A constant's expression: itself when a literal gives back the same value (a string,
    an integer...), else ``name`` (the value, looked up when the record is built)."""
    if type(value) in (str, int, bool, type(None)) or (
            type(value) is float and math.isfinite(value)):
        return _Code(repr(value))
    return _Code(name)


def _literal(items: Any) -> str:
    """Python source of a dict literal of ``(key, value)`` items; a value is a
    :class:`_Code`, a nested dict or a list of pairs (a nested literal)."""
    out = []
    for key, value in items:
        if type(value) is _Code:
            code = value.code
        elif type(value) is dict:
            code = _literal(value.items())
        else:
            code = _literal(value)
        out.append(f"{key!r}: {code}")
    return "{" + ", ".join(out) + "}"


def _compile(name: str, params: str, body: str, names: dict[str, Any]) -> Any:
    """The function ``name(params)`` with ``body``, compiled in ``names``; its source is
    its ``__doc__`` (what a reader of a traceback or a debugger wants to see)."""
    code = f"def {name}({params}):\n{body}"
    exec(code, names)
    fn = names[name]
    fn.__doc__ = code
    return fn


def _start_plan(s: Schema, top: list[tuple[str, Any]], own: list[tuple[str, Any]],
                names: dict[str, Any]) -> _StartPlan:
    """The part of a schema's record every record has -- time, level, message, the
    constant and static fields, logger, process, thread, source location -- as one
    function building ``(out, fields)`` from dict literals: ``fields`` is the object
    the record's own fields go in (``out`` itself, or ``out[schema.attributes]`` once the
    caller puts it there). The keys are the schema's, known when the formatter is built;
    what ``if schema.x is not None`` decided per record is decided here, once. ``top``
    and ``own`` are :func:`_fixed_fields`'s, compiled in ``names``."""
    drop_function = ""
    if s.source is not None:
        where = "fields" if s.source_key is None else f"fields[{s.source_key!r}]"
        # no function (a record made by hand): no key, unless a static field has it
        function = f"{where}[{s.source[2]!r}]"
        drop_function = (f"    if record.funcName is None and {function} is None:\n"
                         f"        del {function}\n")
    if s.attributes is None:
        body = f"    out = fields = {_literal(top + own)}\n"
    else:
        body = f"    out = {_literal(top)}\n    fields = {_literal(own)}\n"
    start: _StartPlan = _compile("start", "record, msg, stamp",
                                 f"{body}{drop_function}    return out, fields\n", names)
    return start


#: :meth:`_SchemaFields.add_extras`: a name that is not an ``extra`` field.
_SKIP = object()


#: Records with more context and ``extra`` fields than this take the generic build.
_PLAN_MAX_KEYS = 96
#: Record plans kept per formatter (call sites with their own ``extra`` keys, contexts).
_PLAN_CACHE = 512

#: :meth:`_SchemaFields.record_plan`: ``plan(record, rd, ctx, msg, stamp, ids, pp)``.
RecordPlan = Callable[..., dict[str, Any]]


def _NO_PLAN(*values: Any) -> dict[str, Any]:  # a sentinel, never called
    raise AssertionError("not a plan")


# ---------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------


class JsonFormatter(OrjsonFormatter):
    """One JSON object per line: python-json-logger's orjson formatter with a fast path.

    Output keys: ``timestamp`` (ISO 8601, UTC, ms), ``level``, ``logger``, ``message``,
    the static fields, the log context, the record's ``extra`` fields, ``process``,
    ``thread`` and, when there is one, ``exception`` (``type``, ``message``, ``traceback``).
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
        accepted and ignored (the JSON keys are logkit's)."""
        options.pop("format", None)  # dictConfig's "format" key, with the "()" factory
        config = _formatter_config(config, options, "JsonFormatter")
        super().__init__(
            reserved_attrs=sorted(RESERVED),
            static_fields=dict(config.fields),
            rename_fields=dict(config.field_names),
            json_default=_json_default,
        )
        self._f = _Fields(config)
        self._clock = _Clock(utc=True)
        names = config.field_names
        self._process = names.get("process", "process")
        self._thread = names.get("thread", "thread")
        # Hot-path copies of the field pipeline (one attribute load each in build()).
        f = self._f
        self._keys = (f.timestamp, f.level, f.logger, f.message)
        self._static = dict(f.static)
        self._message_of = f.message_of
        self._add_extras = f.add_extras
        self._stamp = self._clock.__call__
        #: The last context dict seen and whether it has a key named like a base field;
        #: context dicts are never mutated, so identity is enough to reuse the answer.
        self._last_ctx: tuple[Mapping[str, Any] | None, bool] = (None, False)
        #: A longer line has an uncapped value (bytes, a string nested in a dict...):
        #: the slow path caps every string at any depth.
        self._long_line = 4 * f.limit + 4096
        #: event_line(): static fields that cannot collide with a base or record field.
        self._static_ok = f.base.isdisjoint(self._static) and self._process != self._thread
        #: event_line(): names an ``extra`` field must not have (renamed or dropped by build()).
        self._blocked = RESERVED | f.base | {self._process, self._thread}
        self._base_pt = f.base | {self._process, self._thread}
        #: event_line(): the last context, and whether the last key set checked against it
        #: (``(context, keys, verdict)``) could go without a collision. Context dicts are
        #: never mutated, so the same dict object has the same keys.
        self._ctx_keys: tuple[Any, Any, bool] = (None, None, False)
        #: The current OpenTelemetry span's ids, or ``None`` without ``opentelemetry-api``.
        self._trace = span_lookup()
        trace_names = (names.get("trace_id", "trace_id"), names.get("span_id", "span_id"))
        self._trace_keys = trace_names
        #: ``schema``: a backend's names and formats (``logkit``: the build below).
        self._schema: _SchemaFields | None = None
        schema = schema_for(config)
        if schema.name != "logkit":
            self._schema = _SchemaFields(config, schema)
            self.build = self._build_schema  # type: ignore[method-assign]
            self._static_ok = False  # event_line() steps aside: events take build()

    def format(self, record: logging.LogRecord) -> str:
        """Return ``record`` as one line of JSON; never raises."""
        try:
            line = orjson.dumps(
                self.build(record), default=_json_default, option=_JSON_OPTIONS
            ).decode()
        except Exception:
            return self._format_slow(record)
        return line if len(line) <= self._long_line else self._format_slow(record)

    def format_line(self, record: logging.LogRecord) -> bytes:
        """:meth:`format` as UTF-8 bytes ending in a newline (what a sink writes); never raises."""
        try:
            line = orjson.dumps(
                self.build(record), default=_json_default, option=_JSON_LINE_OPTIONS
            )
            if len(line) <= self._long_line:
                return line
        except Exception:
            pass
        return f"{self._format_slow(record)}\n".encode("utf-8", "backslashreplace")

    def build(self, record: logging.LogRecord) -> dict[Any, Any]:
        """The record as a dict of output fields (before serialisation)."""
        rd = record.__dict__
        ctx = rd.get("_logkit_ctx")
        if ctx is None:
            ctx = current()
        ts, level, name, message = self._keys
        msg = record.msg
        if type(msg) is str and type(record) is logging.LogRecord:  # getMessage(), inlined
            if record.args:
                try:
                    msg = msg % record.args
                except Exception:
                    msg = self._message_of(record)
            if len(msg) > self._f.limit:
                msg = cap(msg, self._f.limit)
        else:  # a custom record class may override getMessage()
            msg = self._message_of(record)
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
        if len(rd) > _BASE_LEN:
            self._add_extras(record, out)
        if self._trace is not None:
            ids = self._trace()
            if ids is not None:
                out[self._trace_keys[0]] = ids[0]
                out[self._trace_keys[1]] = ids[1]
        out[self._process] = record.process
        out[self._thread] = record.thread
        if record.exc_info or record.exc_text:
            exc = self._f.exception_of(self, record)
            if exc is not None:
                out[self._f.exception] = exc
        if record.stack_info:
            out["stack"] = cap(record.stack_info, self._f.limit)
        if ctx:
            last = self._last_ctx
            if last[0] is ctx:
                collides = last[1]
            else:
                collides = not self._f.base.isdisjoint(ctx)
                self._last_ctx = (ctx, collides)
            if collides:  # a bound key named like a base field: base wins
                out[level] = record.levelname
                out[name] = record.name
                out[message] = self._message_of(record)
                out[ts] = self._clock(record.created, record.msecs)
        return out

    def _build_schema(self, record: logging.LogRecord) -> dict[Any, Any]:
        """:meth:`build` for a backend's schema (``self._schema``): the same fields, under
        the schema's names and in its formats. A record with a function name and no
        exception or stack is built by its shape's compiled plan
        (:meth:`_SchemaFields.record_plan`); the others by :meth:`_build_generic`, which
        the plans are made from."""
        sf = self._schema
        assert sf is not None
        rd = record.__dict__
        ctx = rd.get("_logkit_ctx")
        if ctx is None:
            ctx = current()
        msg = record.msg
        if type(msg) is str and type(record) is logging.LogRecord:  # getMessage(), inlined
            if record.args:
                try:
                    msg = msg % record.args
                except Exception:
                    msg = self._message_of(record)
            if len(msg) > self._f.limit:
                msg = cap(msg, self._f.limit)
        else:
            msg = self._message_of(record)
        if record.exc_info or record.exc_text or record.stack_info or record.funcName is None:
            return self._build_generic(record, ctx, msg)
        ckeys = sf.ctx_keys
        if ckeys[0] is not ctx:
            ckeys = sf.keys_of(ctx)
        names: tuple[Any, ...] = ()
        if len(rd) > _BASE_LEN:
            names = tuple(extra_names(rd))
            filled = rd.get("_logkit_filled")  # a ContextFilter's names are not extras
            if filled:
                names = tuple(n for n in names if n not in filled)
        ids = self._trace() if self._trace is not None else None
        process = sf.process
        if process[0] != (record.process or 0):
            process = sf.per_process(record.process or 0)
        key = (ckeys[1], names, ids is None, process[2])
        plan = sf.plans.get(key) or sf.record_plan(key)
        if plan is _NO_PLAN:
            return self._build_generic(record, ctx, msg)
        return plan(record, rd, ctx, msg, self._stamp, ids, process[1])

    def _build_generic(self, record: logging.LogRecord, ctx: Mapping[str, Any],
                       msg: str) -> dict[Any, Any]:
        """:meth:`_build_schema` step by step, for any record: the fixed fields, the
        context, the ``extra`` fields, the exception and stack, the trace ids (the
        current span's, or any bound or given), the per-process fields; nested last."""
        sf = self._schema
        assert sf is not None
        s = sf.schema
        out, fields = sf.start(record, msg, self._stamp)
        top: dict[str, Any] = sf.static_top
        if ctx:
            ctx_fields, ctx_top = sf.context(ctx)
            fields.update(ctx_fields)
            if ctx_top:
                top = {**top, **ctx_top}
        if len(record.__dict__) > _BASE_LEN:
            top = sf.add_extras(record, fields, top)
        if record.exc_info or record.exc_text:
            exc = self._f.exception_of(self, record)
            if exc is not None:
                type_key, message_key, traceback_key = s.exception
                if "type" in exc:
                    fields[type_key] = exc["type"]
                    fields[message_key] = exc["message"]
                fields[traceback_key] = exc["traceback"]
        if record.stack_info:
            fields[sf.key("stack")] = cap(record.stack_info, self._f.limit)
        if s.attributes is not None:
            out[s.attributes] = fields
        ids = self._trace() if self._trace is not None else None
        if ids is not None:
            out[s.trace_id] = s.trace_format(ids[0], sf.private)
            out[s.span_id] = s.span_format(ids[1])
            if s.trace_sampled is not None:
                out[s.trace_sampled] = s.sampled_format(ids[2])
        elif top:
            out.update(top)
        if s.per_process is not None:
            out.update(sf.per_process(record.process or 0)[1])
        return sf.nest(out) if s.nest else out

    def event_line(
        self,
        created: float,
        msecs: float,
        levelname: str,
        name: str,
        msg: str,
        ctx: Mapping[str, Any],
        extras: Mapping[str, Any],
        process: int | None,
        thread: int | None,
        keys: frozenset[str],
    ) -> bytes | None:
        """:meth:`format_line` of a record with these attributes, no args, exception or
        stack, and ``extras`` as its ``extra`` fields (their names among ``keys``, a
        constant set) -- or ``None`` when a shortcut could differ.

        The shortcut behind logkit's per-task events: no ``LogRecord``, and the checks
        that decide whether a plain dict merge gives :meth:`build`'s output (no key of
        the context or the static fields named like a base field, no key of ``keys``
        named like a base field or ``process``/``thread``) made once per context and key
        set. A key of ``keys`` that is also a context or static key is fine: :meth:`build`
        too writes the extra field over the context's value, in the context's place (the
        ``queue`` of ``task_received``, also a task context field: #28). A string longer
        than the field limit, an over-long line or a value that does not serialise also
        return ``None``; the caller then formats a real record.
        """
        if not self._static_ok:
            return None
        try:
            cached = self._ctx_keys
            if cached[0] is ctx and cached[1] is keys:
                ok = cached[2]
            else:
                taken = ctx.keys() | self._static.keys() if self._static else ctx.keys()
                ok = (
                    self._base_pt.isdisjoint(taken)  # build() lets a base field win
                    and self._blocked.isdisjoint(keys)  # build() renames or drops these
                )
                self._ctx_keys = (ctx, keys, ok)
            if not ok or not keys.issuperset(extras):
                return None
            limit = self._f.limit
            for value in extras.values():
                if type(value) is str and len(value) > limit:
                    return None
            if len(msg) > limit:
                return None
            ts, level, logger_key, message = self._keys
            out: dict[str, Any] = {ts: self._stamp(created, msecs), level: levelname,
                                   logger_key: name, message: msg}
            if self._static:
                out.update(self._static)
            if ctx:
                out.update(ctx)
            out.update(extras)
            if self._trace is not None:
                ids = self._trace()
                if ids is not None:
                    out[self._trace_keys[0]] = ids[0]
                    out[self._trace_keys[1]] = ids[1]
            out[self._process] = process
            out[self._thread] = thread
            line = orjson.dumps(out, default=_json_default, option=_JSON_LINE_OPTIONS)
        except Exception:
            return None
        return line if len(line) <= self._long_line else None

    def _format_slow(self, record: logging.LogRecord) -> str:
        """Cycles, odd keys, surrogates, huge ints: sanitise everything, then serialise."""
        try:
            data = _sanitize(self.build(record), self._f.limit)
        except Exception as exc:
            try:
                stamp = self._clock(record.created, record.msecs)
            except Exception:  # ``created`` overwritten by someone: use the time now
                stamp = self._clock(time.time(), 0)
            data = {
                self._f.timestamp: stamp,
                self._f.level: safe_str(getattr(record, "levelname", "ERROR")),
                self._f.logger: safe_str(getattr(record, "name", "?")),
                self._f.message: _sanitize(safe_str(getattr(record, "msg", "")), self._f.limit),
                "logkit_error": f"record could not be formatted: {type(exc).__name__}",
            }
        return orjson.dumps(data, option=_JSON_OPTIONS).decode()


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

    _f: _Fields

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
        exc = self._f.exception_of(self, record)
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
        accepted and ignored."""
        super().__init__()
        options.pop("format", None)
        self._f = _Fields(_formatter_config(config, options, "ConsoleFormatter"))
        self._clock = _Clock(utc=False, sep=" ")
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
        ctx = _context_of(record)
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
        Without ``fmt``, Celery's default worker format."""
        style = config if isinstance(config, str) else "%"
        if style != "%":
            raise ConfigError(f"logkit: PlainFormatter takes '%' style formats; got {style!r}")
        fmt = options.pop("format", None) or fmt or DEFAULT_PLAIN_FORMAT
        super().__init__(
            fmt, datefmt, validate=validate, defaults={"task_id": "???", "task_name": "???"}
        )
        self._f = _Fields(_formatter_config(config, options, "PlainFormatter"))
        self._task_format = "%(task_id)" in fmt or "%(task_name)" in fmt

    def _format(self, record: logging.LogRecord) -> str:
        f = self._f
        ctx = _context_of(record)
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


def traceback_text(exc: BaseException) -> str:
    """The formatted traceback of ``exc`` (used by lifecycle events)."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
