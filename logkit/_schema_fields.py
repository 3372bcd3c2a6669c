"""A backend's schema applied to records: the field builder of ``JsonFormatter(schema=...)``.

:mod:`logkit.schemas` holds the data (each backend's names and formats); this module
applies one to a record. :class:`SchemaFields` is built once per formatter: the
schema's key translation (cached per name), its constant and per-process fields, and
the part every record has -- time, level, message, constants, logger, process,
thread, source location, static fields -- compiled once into one function of dict
literals (:func:`_fixed_fields_function`; its source is registered with
:mod:`linecache`, as attrs does for the ``__init__`` it generates, so a traceback
through it shows its lines). Everything a record may or may not have (context,
``extra`` fields, exception, stack, trace ids) is added step by step by
:meth:`SchemaFields.build`, then dotted keys are nested for a nesting schema.
"""

from __future__ import annotations

import itertools
import linecache
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from ._fields import BASE_LEN, RESERVED, Fields, FormatException, MainThread, extra_names
from ._safe import cap, safe_str
from .config import LogConfig
from .context import current
from .schemas import Schema
from .trace import span_lookup

__all__ = ["SchemaFields"]

#: ``start(record, msg, stamp) -> (out, fields)``: the fields every record has.
_Start = Callable[[logging.LogRecord, str, Callable[[float, float], str]],
                  tuple[dict[str, Any], dict[str, Any]]]

#: :meth:`SchemaFields._extra_key`'s answer for a name that is not an ``extra`` field.
_SKIP = object()
#: Bound of the per-name caches (a name seen once more than this is translated anew).
_CACHE = 4096


class SchemaFields:
    """A :class:`~logkit.schemas.Schema` applied to a config: :meth:`build` turns a record
    into the dict written, under the schema's keys and in its formats."""

    def __init__(self, config: LogConfig, schema: Schema, fields: Fields,
                 format_exception: FormatException, stamp: Callable[[float, float], str]
                 ) -> None:
        self.schema = s = schema
        self.config = config
        self.fields = fields
        self.limit = config.max_field_length
        #: logkit's base keys: an ``extra`` field named like one gets a ``_`` prefix
        self.base = fields.base
        self._format_exception = format_exception
        self._stamp = stamp
        constants = dict(s.constants(config))
        #: values the formats need (a project id...), not output
        self.private = {k: v for k, v in constants.items() if k.startswith("_")}
        self.head = {k: v for k, v in constants.items() if not k.startswith("_")}
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
        self._extra_keys: dict[Any, Any] = {}
        self._paths: dict[str, list[str]] = {}
        self.static: dict[str, Any] = {}
        self.static_top: dict[str, Any] = {}
        self.translate(config.fields.items(), self.static, self.static_top)
        self._ctx: tuple[Any, dict[str, Any], dict[str, Any]] = (None, {}, {})
        #: ``(pid, per-process fields)``, for the last pid seen
        self._process: tuple[int, Mapping[str, Any]] = (-1, {})
        self._trace = span_lookup()
        #: the fixed fields built nested (a nesting schema with no attributes object)
        self._prenested = s.nest and s.attributes is None
        self.start: _Start = _fixed_fields_function(s, self.head, self.static,
                                                    self if self._prenested else None,
                                                    always_thread=fields.always_thread)

    # -- the record -------------------------------------------------------------------

    def build(self, record: logging.LogRecord) -> dict[Any, Any]:
        """The record as a dict of output fields: the fixed fields, the context, the
        ``extra`` fields, the exception and stack, the trace ids (the current span's, or
        any bound or given), the per-process fields; dotted keys nested last."""
        s = self.schema
        ctx = record.__dict__.get("_logkit_ctx")
        if ctx is None:
            ctx = current()
        out, fields = self.start(record, self.fields.message_of(record), self._stamp)
        # a nesting schema's fixed fields come nested: the rest is nested into them
        tail = fields if self._prenested else out
        top: dict[str, Any] = self.static_top
        if ctx:
            ctx_fields, ctx_top = self.context(ctx)
            fields.update(ctx_fields)
            if ctx_top:
                top = {**top, **ctx_top}
        if len(record.__dict__) > BASE_LEN:
            top = self.add_extras(record, fields, top)
        if record.exc_info or record.exc_text:
            exc = self.fields.exception_of(self._format_exception, record)
            if exc is not None:
                type_key, message_key, traceback_key = s.exception
                if "type" in exc:
                    fields[type_key] = exc["type"]
                    fields[message_key] = exc["message"]
                fields[traceback_key] = exc["traceback"]
        if record.stack_info:
            fields[self.key("stack")] = cap(record.stack_info, self.limit)
        if s.attributes is not None:
            out[s.attributes] = fields
        ids = self._trace() if self._trace is not None else None
        if ids is not None:
            tail[s.trace_id] = s.trace_format(ids[0], self.private)
            tail[s.span_id] = s.span_format(ids[1])
            if s.trace_sampled is not None:
                tail[s.trace_sampled] = s.sampled_format(ids[2])
        elif top:
            tail.update(top)
        if s.per_process is not None:
            tail.update(self.per_process(record.process or 0))
        if self._prenested:
            return self.nest_into(out, tail.items())
        return self.nest(out) if s.nest else out

    # -- names and values ---------------------------------------------------------------

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
            if len(self._keys) < _CACHE:
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
        :meth:`Fields.add_extras` then :meth:`translate` would, in one pass with each
        name's key, conversion and place decided once; return ``top`` (a copy, when a
        trace id went into it)."""
        rd = record.__dict__
        filled = rd.get("_logkit_filled")
        known = self._extra_keys
        limit = self.limit
        copied = False
        for name in extra_names(rd):
            how = known.get(name)
            if how is None:
                how = self._extra_key(name)
            if how is _SKIP or (filled and name in filled):
                continue
            key, conv, to_top = how
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

    def _extra_key(self, name: Any) -> Any:
        """``(key, conversion, goes to the top level)`` of an ``extra`` field, or _SKIP."""
        if name in RESERVED:
            how: Any = _SKIP
        else:
            key = self.key(f"_{name}" if name in self.base else name)
            how = (key, self.convert.get(key), key in self.top)
        if len(self._extra_keys) < _CACHE:
            self._extra_keys[name] = how
        return how

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

    def per_process(self, pid: int) -> Mapping[str, Any]:
        """The schema's per-process fields, cached for the last pid."""
        cached = self._process
        if cached[0] != pid:
            make = self.schema.per_process
            cached = self._process = (pid, make(self.config, pid) if make else {})
        return cached[1]

    def nest(self, flat: dict[str, Any]) -> dict[str, Any]:
        """Dotted keys as nested objects (``{"log.logger": x}`` -> ``{"log": {"logger": x}}``),
        as ecs-logging writes them; the schema's ``keep_dotted`` keys stay as they are. A
        dotted key under a name that holds a value replaces the value (even a dict: a
        record's own object is never merged into)."""
        return self.nest_into({}, flat.items())

    def nest_into(self, out: dict[str, Any], items: Any) -> dict[str, Any]:
        """:meth:`nest` of ``items`` continued into ``out``, an already nested dict (the
        objects made by nesting are :class:`_Nested`, so a later key merges into them)."""
        paths = self._paths
        keep = self.schema.keep_dotted
        for key, value in items:
            if "." not in key or key in keep:
                out[key] = value
                continue
            parts = paths.get(key)
            if parts is None:
                parts = key.split(".")
                if len(paths) < _CACHE:
                    paths[key] = parts
            node = out
            for part in parts[:-1]:
                child = node.get(part)
                if type(child) is not _Nested:  # a value (even a dict) is replaced
                    child = node[part] = _Nested()
                node = child
            node[parts[-1]] = value
        return out


class _Nested(dict):  # type: ignore[type-arg]
    """An object made by nesting dotted keys (serialised as any dict); a record's own
    dict value is never one, so it is never merged into."""

    __slots__ = ()


# ---------------------------------------------------------------------------
# The fields every record has, compiled once per formatter
# ---------------------------------------------------------------------------


class _Code:
    """An expression of a generated dict literal (``record.name``...)."""

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
    :class:`_Code` or a list of pairs (a nested literal)."""
    out = []
    for key, value in items:
        if type(value) is _Code:
            code = value.code
        elif type(value) is _Nested:
            code = f"nested({_literal(value.items())})"
        else:
            code = _literal(value)
        out.append(f"{key!r}: {code}")
    return "{" + ", ".join(out) + "}"


_generated = itertools.count(1)


def compile_function(name: str, params: str, body: str, names: dict[str, Any],
                     what: str) -> Any:
    """The function ``name(params)`` with ``body``, compiled in ``names`` under a file name
    of its own (``<logkit generated name for what>``) whose source is put in
    :mod:`linecache`, so a traceback or a debugger shows its lines (attrs'
    ``_linecache_and_compile``). A source that does not compile raises here, when the
    formatter is built: nothing is swallowed."""
    code = f"def {name}({params}):\n{body}"
    filename = f"<logkit generated {name} for {what}>"
    entry = (len(code), None, code.splitlines(True), filename)
    while linecache.cache.setdefault(filename, entry) != entry:  # another source: a new name
        filename = f"<logkit generated {name} for {what} #{next(_generated)}>"
        entry = (len(code), None, code.splitlines(True), filename)
    exec(compile(code, filename, "exec"), names)
    return names[name]


def _fixed_fields_function(s: Schema, head: Mapping[str, Any], static: Mapping[str, Any],
                           nester: SchemaFields | None = None, *,
                           always_thread: bool = False) -> _Start:
    """The part of a schema's record every record has -- time, level, message, the
    constant and static fields, logger, process, thread, source location -- as one
    function building ``(out, fields)`` from dict literals: ``fields`` is the object
    the record's own fields go in (``out`` itself, or ``out[schema.attributes]`` once the
    caller puts it there). The keys are the schema's, known when the formatter is built;
    what ``if schema.x is not None`` decided per record is decided here, once.

    Taken out again where they would say nothing: the thread's id and name for a record
    of its process's main thread (:class:`~logkit._fields.MainThread`; unless
    ``always_thread``), the function of a record without one, and the whole source
    location of a record without a line (``lineno`` 0 and no function: a lifecycle event,
    a record made by hand). A key a static field took stays."""
    names: dict[str, Any] = {"nested": _Nested, "main": MainThread()}
    top, own = _fixed_fields(s, head, static, names)
    nested = nester.nest_into({}, top + own) if nester is not None else None
    drops = _drop_source(s, static, nested)
    if not always_thread:
        drops += _drop_thread(s, static, nested)
    if nested is not None:  # nested once here, not per record
        body = f"    out = {_literal(nested.items())}\n"
        return compile_function("start", "record, msg, stamp",  # type: ignore[no-any-return]
                                f"{body}{drops}    return out, {{}}\n", names,
                                f"schema {s.name}")
    if s.attributes is None:
        body = f"    out = fields = {_literal(top + own)}\n"
    else:
        body = f"    out = {_literal(top)}\n    fields = {_literal(own)}\n"
    start: _Start = compile_function("start", "record, msg, stamp",
                                     f"{body}{drops}    return out, fields\n", names,
                                     f"schema {s.name}")
    return start


def _deletions(s: Schema, keys: list[str], nested: Mapping[str, Any] | None) -> list[str]:
    """``del`` statements taking ``keys`` out of the fixed fields: of ``fields`` (flat), or
    of ``out`` when the fixed fields are ``nested``; there, an object holding nothing but
    some of ``keys`` goes as a whole (ECS's ``process.thread``, ``log.origin``)."""
    if nested is None:
        return [f"del fields[{key!r}]" for key in keys]
    wanted = set(keys)
    out: list[str] = []
    for key in keys:
        parts = [key] if "." not in key or key in s.keep_dotted else key.split(".")
        cut = len(parts)
        while cut > 1:  # climb while the parent object holds only keys taken out
            node: Any = nested
            for part in parts[:cut - 1]:
                node = node[part]
            if not set(_leaves(node, ".".join(parts[:cut - 1]))) <= wanted:
                break
            cut -= 1
        code = "del out" + "".join(f"[{p!r}]" for p in parts[:cut])
        if code not in out:
            out.append(code)
    return out


def _leaves(node: Mapping[str, Any], prefix: str) -> list[str]:
    """The dotted keys of the values under a nested object (``prefix``: its own key)."""
    out: list[str] = []
    for key, value in node.items():
        if type(value) is _Nested:
            out += _leaves(value, f"{prefix}.{key}")
        else:
            out.append(f"{prefix}.{key}")
    return out


def _drop_source(s: Schema, static: Mapping[str, Any], nested: Mapping[str, Any] | None
                 ) -> str:
    """Source that takes the function out of the fixed fields for a record without one,
    and the whole source location for a record without a line either."""
    if s.source is None:
        return ""
    if s.source_key is not None:  # one object: gone as a whole
        if s.source_key in static:
            return ""
        where = f"fields[{s.source_key!r}]"
        function = f"{where}[{s.source[2]!r}]"
        location = [f"del {where}"]
    else:
        keys = [k for k in s.source if k not in static]
        if s.source[2] not in keys:
            return ""
        (function_del,) = _deletions(s, [s.source[2]], nested)
        function = function_del.removeprefix("del ")
        location = _deletions(s, keys, nested)
    lines = ["    if record.funcName is None:", "        if not record.lineno:"]
    lines += [f"            {d}" for d in location]
    lines += ["        else:", f"            del {function}"]
    return "\n".join(lines) + "\n"


def _drop_thread(s: Schema, static: Mapping[str, Any], nested: Mapping[str, Any] | None
                 ) -> str:
    """Source that takes the thread's id and name out of the fixed fields for a record of
    its process's main thread (``main``: a :class:`~logkit._fields.MainThread`)."""
    keys = [k for k in (s.thread, s.thread_name) if k is not None and k not in static]
    if not keys:
        return ""
    lines = ["    pid = record.process", "    if pid != main.pid:", "        main.refresh(pid)",
             "    if record.thread == main.ident:"]
    lines += [f"        {d}" for d in _deletions(s, keys, nested)]
    return "\n".join(lines) + "\n"
