"""Keep secrets out of log lines: the one place that knows how to redact.

:func:`redact` copies a structure (the task's ``args``/``kwargs`` bound in the
context) with the values of sensitive keys replaced; the rest of this module
handles *text*.

Celery logs task arguments itself: the worker's ``Task ... received`` line carries
``data={"args": argsrepr, "kwargs": kwargsrepr}``, the failure/retry lines of
``celery.app.trace`` carry the same reprs plus the exception's ``repr`` and
traceback, and an exception message may contain ``repr(kwargs)``. Those are
*text*, so :func:`redact_text` finds ``key=value``, ``'key': value`` and
``"key": value`` pairs whose key contains a redact key (case-insensitive
substring, like the ``args``/``kwargs`` context fields) and replaces the value --
a quoted string, a bracketed ``{...}``/``[...]``/``(...)`` value or a bare word --
by ``'[REDACTED]'``.

:class:`RedactFilter` applies that to records of the ``celery`` and ``logkit``
loggers (message, ``extra`` fields such as ``data``, exception) and to the exception of any record.

A secret passed as a *positional* argument has no key in that text: it is redacted
before it gets there, by the name of the task's parameter (:func:`redact_positional`),
in the message's ``argsrepr`` header at publish time and in the ``args`` context field.
Limits: a secret in free text without a ``key=``/``key:`` in front of it is not found,
nor a positional secret published by a process without logkit installed.
"""

from __future__ import annotations

import copy
import inspect
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from ._fields import RESERVED, extra_names

__all__ = [
    "REDACTED",
    "CleanArgs",
    "RedactFilter",
    "has_sensitive_key",
    "parameter_names",
    "redact",
    "redact_positional",
    "redact_text",
]

REDACTED = "[REDACTED]"
_SCALARS = frozenset({int, float, bool, type(None)})
_FORMATTER = logging.Formatter()
_CLOSING = {"{": "}", "[": "]", "(": ")"}
_BARE_END = frozenset(" \t\r\n,;&)]}>\"'")
_AUTH_SCHEMES = frozenset({"bearer", "basic", "token", "digest", "negotiate"})


def redact(value: Any, keys: frozenset[str], _depth: int = 0) -> Any:
    """Copy of ``value`` with the values of sensitive keys (at any depth) replaced."""
    if _depth > 32:
        return "<too deep>"
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            name = k.lower() if isinstance(k, str) else ""
            if name and any(secret in name for secret in keys):
                out[k] = REDACTED
            else:
                out[k] = redact(v, keys, _depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [redact(v, keys, _depth + 1) for v in value]
    return value


def has_sensitive_key(value: Any, keys: frozenset[str], _depth: int = 0) -> bool:
    """Whether :func:`redact` would replace anything in ``value``."""
    if _depth > 32:
        return True
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(k, str) and any(secret in k.lower() for secret in keys):
                return True
            if has_sensitive_key(v, keys, _depth + 1):
                return True
        return False
    if isinstance(value, (list, tuple)):
        return any(has_sensitive_key(v, keys, _depth + 1) for v in value)
    return False


class KeyPattern(NamedTuple):
    """Compiled matchers for one set of redact keys."""

    #: The redact keys, lower case (a substring test that most texts fail, cheaply).
    keys: tuple[str, ...]
    #: ``key=``, ``key:``, ``'key':``, ``"key":`` where key contains a redact key.
    pair: re.Pattern[str]


def key_pattern(keys: Iterable[str]) -> KeyPattern | None:
    """Matchers for ``key=value`` pairs whose key contains one of ``keys``; ``None`` if no keys."""
    alternatives = "|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True) if k)
    if not alternatives:
        return None
    key = rf"[\w.-]*(?:{alternatives})[\w.-]*"
    return KeyPattern(
        tuple(sorted(k.lower() for k in keys if k)),
        # everything up to the value: quote, key, quote, separator, spaces
        re.compile(rf"(?<![\w.-])(?P<q>\\?['\"]?){key}(?P=q)\s*[:=]\s*", re.IGNORECASE),
    )


def _mentions(lowered: str, keys: tuple[str, ...]) -> bool:
    for key in keys:  # noqa: SIM110 - a plain loop: faster than any() or a regex here
        if key in lowered:
            return True
    return False


def _value_end(text: str, start: int) -> int:
    """Index just past the value starting at ``start`` (a Python/JSON literal or a bare word)."""
    n = len(text)
    if start >= n:
        return start
    i = start
    if text[i] in "bruBRU" and i + 1 < n and text[i + 1] in "'\"":  # b'..', r'..'
        i += 1
    ch = text[i]
    if ch == "\\" and i + 1 < n and text[i + 1] in "'\"":  # a quote escaped by JSON
        return _quoted_end(text, i + 1, text[i + 1], escaped=True)
    if ch in "'\"":
        return _quoted_end(text, i, ch, escaped=False)
    if ch in _CLOSING:
        j = i
        stack: list[str] = []
        while j < n:
            c = text[j]
            if c in "'\"":
                j = _quoted_end(text, j, c, escaped=False)
                continue
            if c in _CLOSING:
                stack.append(_CLOSING[c])
            elif stack and c == stack[-1]:
                stack.pop()
                if not stack:
                    return j + 1
            j += 1
        return n
    j = i
    while j < n and text[j] not in _BARE_END:
        j += 1
    if text[i:j].lower() in _AUTH_SCHEMES and j + 1 < n and text[j] == " ":  # "Bearer <token>"
        return _value_end(text, j + 1)
    return j


def _quoted_end(text: str, start: int, quote: str, *, escaped: bool) -> int:
    """Index past a quoted string opening at ``start`` (``\\`` escapes honoured)."""
    n = len(text)
    j = start + 1
    while j < n:
        c = text[j]
        if c == "\\":
            if escaped and j + 1 < n and text[j + 1] == quote:
                return j + 2
            j += 2
            continue
        if c == quote and not escaped:
            return j + 1
        j += 1
    return n


def redact_text(text: str, pattern: KeyPattern | None) -> str:
    """``text`` with the value after every sensitive ``key=``/``key:`` replaced."""
    if pattern is None or ("=" not in text and ":" not in text):  # fast: no key-value pair
        return text
    if not _mentions(text.lower(), pattern.keys):
        return text
    out: list[str] = []
    pos = 0
    for match in pattern.pair.finditer(text):
        if match.start() < pos:  # inside a value already redacted
            continue
        end = _value_end(text, match.end())
        if end == match.end():  # nothing after the separator
            continue
        value_start = match.end()
        quote = text[value_start] if text[value_start] in "'\"" else ""
        out.append(text[pos:value_start])
        out.append(f"{quote}{REDACTED}{quote}")
        pos = end
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


#: Each set of redaction keys once, so that two filters with the same keys hold the same
#: object (:class:`CleanArgs` is checked by identity). A cache of values: it changes
#: nothing in the process.
_KEY_SETS: dict[frozenset[str], frozenset[str]] = {}


class CleanArgs(tuple[Any, ...]):
    """The (empty) ``args`` of a record whose message and ``extra`` fields logkit built and
    redacted itself (a lifecycle event, :func:`logkit.events.base.emit`), with the keys it
    was redacted with: a :class:`RedactFilter` with the same keys passes it as it is.

    Empty, so the record reads as any record without arguments (``getMessage()`` is its
    ``msg``); a marker that no formatter writes, unlike an attribute would be.
    """

    keys: frozenset[str]


class RedactFilter(logging.Filter):
    """Handler filter: redact sensitive ``key=value`` pairs in Celery's (and logkit's) records.

    Records of other loggers pass untouched unless they carry an exception. Never
    drops a record and never raises.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        super().__init__()
        keys = frozenset(k.lower() for k in keys if k)
        self.keys = _KEY_SETS.setdefault(keys, keys)  # equal key sets: one object
        self.pattern = key_pattern(self.keys)
        self._known: dict[str, bool] = {}  # key name -> sensitive?
        #: The ``args`` that mark a record as redacted with these keys (:meth:`clean`).
        self.clean_args = CleanArgs()
        self.clean_args.keys = self.keys

    def filter(self, record: logging.LogRecord) -> bool:
        if self.pattern is None:
            return True
        args = record.args
        if type(args) is CleanArgs and not record.exc_info and args.keys is self.keys:
            return True  # built redacted (with these keys) by logkit itself
        name = record.name
        ours = name.startswith(("celery", "logkit"))
        if not ours and not record.exc_info:
            return True
        try:
            if ours:
                self._redact_message(record)
                self._redact_extras(record)
            if record.exc_info and record.exc_info[0] is not None:
                self._redact_exception(record)
        except Exception:  # never lose a record because of redaction
            pass
        return True

    def _redact_message(self, record: logging.LogRecord) -> None:
        msg = record.msg
        if (not record.args and type(msg) is str and type(record) is logging.LogRecord
                and "=" not in msg and ":" not in msg):  # redact_text's own shortcut
            return
        try:
            message = record.getMessage()
        except Exception:
            return
        redacted = redact_text(message, self.pattern)
        if redacted is not message and redacted != message:
            record.msg, record.args = redacted, None

    def _redact_extras(self, record: logging.LogRecord) -> None:
        """``extra`` fields (Celery's ``data``, event fields): by key, and inside strings."""
        rd = record.__dict__
        known = self._known
        for key in extra_names(rd):
            if key in RESERVED:
                continue
            value = rd[key]
            sensitive = known.get(key)
            if sensitive is None:
                sensitive = self._sensitive(key)
            if sensitive:
                rd[key] = REDACTED
                continue
            kind = type(value)
            if kind is str:
                if "=" in value or ":" in value:  # else redact_text's own shortcut: no pair
                    redacted = redact_text(value, self.pattern)
                    if redacted is not value:
                        rd[key] = redacted
                continue
            if kind in _SCALARS or (kind is dict and self._clean_flat(value)):
                continue  # Celery's ``data`` dicts: nothing in them can be redacted
            if isinstance(value, (str, Mapping, list, tuple)):
                redacted = self._value(value, 0)
                if redacted is not value:
                    rd[key] = redacted

    def redact_text(self, text: str) -> str:
        """``text`` (a traceback, a message) with the value of every sensitive
        ``key=``/``key:`` pair replaced, as :meth:`filter` redacts an exception's text."""
        return redact_text(text, self.pattern)

    def redact_fields(self, fields: Mapping[str, Any]) -> Mapping[str, Any]:
        """``fields`` (a record's ``extra`` fields) as :meth:`filter` would leave them: by key,
        and inside strings and containers. The same dict when nothing is redacted."""
        pattern = self.pattern
        if pattern is None:
            return fields
        known = self._known
        out: dict[str, Any] | None = None
        for key, value in fields.items():
            sensitive = known.get(key)
            if sensitive is None:
                sensitive = self._sensitive(key)
            if sensitive:
                new: Any = REDACTED
            else:
                kind = type(value)
                if kind is str:
                    if "=" not in value and ":" not in value:  # redact_text's own shortcut
                        continue
                    new = redact_text(value, pattern)
                elif kind in _SCALARS:
                    continue
                elif isinstance(value, (str, Mapping, list, tuple)):
                    new = self._value(value, 0)
                else:
                    continue
            if new is not value:
                if out is None:
                    out = dict(fields)
                out[key] = new
        return fields if out is None else out

    def _sensitive(self, key: Any) -> bool:
        if not isinstance(key, str):
            return False
        known = self._known.get(key)
        if known is None:
            name = key.lower()
            known = any(k in name for k in self.keys)
            if len(self._known) < 4096:
                self._known[key] = known
        return known

    def _value(self, value: Any, depth: int) -> Any:
        """``value`` with secrets replaced; a plain ``dict`` or ``list`` with nothing to
        redact comes back as the same object (no copy)."""
        if isinstance(value, str):
            return redact_text(value, self.pattern)
        if depth > 16:
            return value
        if type(value) is dict and self._clean_flat(value):
            return value
        if isinstance(value, Mapping):
            out = {
                k: REDACTED if self._sensitive(k) else self._value(v, depth + 1)
                for k, v in value.items()
            }
            if type(value) is dict and all(out[k] is v for k, v in value.items()):
                return value
            return out
        if isinstance(value, (list, tuple)):
            items = [self._value(v, depth + 1) for v in value]
            if type(value) is list and all(a is b for a, b in zip(items, value, strict=True)):
                return value
            return items
        return value

    def _clean_flat(self, value: dict[Any, Any]) -> bool:
        """Quick check: no sensitive key, and only scalars or strings without ``=``/``:``
        (what Celery's ``data`` dicts usually are), so nothing in it can be redacted."""
        known = self._known
        for key, item in value.items():
            sensitive = known.get(key)
            if sensitive is None:
                sensitive = self._sensitive(key)
            if sensitive:
                return False
            kind = type(item)
            if kind is str:
                if "=" in item or ":" in item:
                    return False
            elif kind not in _SCALARS:
                return False
        return True

    def _redact_exception(self, record: logging.LogRecord) -> None:
        exc_info = record.exc_info
        if not exc_info or exc_info[0] is None or exc_info[1] is None:
            return
        etype, evalue, tb = exc_info
        text = record.exc_text or _FORMATTER.formatException(exc_info)
        redacted = redact_text(text, self.pattern)
        if redacted == text:
            return
        record.exc_text = redacted
        try:
            message = str(evalue)
        except Exception:
            return
        clean = redact_text(message, self.pattern)
        if clean == message:
            return
        try:  # the same exception type, with the redacted message
            replacement = copy.copy(evalue)
            replacement.args = (clean,)
            if str(replacement) == clean:
                record.exc_info = (etype, replacement, tb)
                return
        except Exception:
            pass
        record.exc_info = None  # keep only the redacted traceback text


# ---------------------------------------------------------------------------
# Positional arguments, by the name of the task's parameter
# ---------------------------------------------------------------------------

_POSITIONAL_KINDS = frozenset(
    {inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD}
)
#: Task name -> names of its positional parameters, and the ``*args`` name (or ``None``).
_PARAMETERS: dict[str, tuple[tuple[str, ...], str | None]] = {}


def parameter_names(task: Any) -> tuple[tuple[str, ...], str | None]:
    """Names of ``task.run``'s positional parameters and of its ``*args`` (or ``None``).

    Cached per task name; ``((), None)`` when the signature cannot be read.
    """
    name = getattr(task, "name", None)
    cached = _PARAMETERS.get(name) if isinstance(name, str) else None
    if cached is not None:
        return cached
    try:
        params = list(inspect.signature(task.run).parameters.values())
    except (TypeError, ValueError, AttributeError):
        params = []
    found = (
        tuple(p.name for p in params if p.kind in _POSITIONAL_KINDS),
        next((p.name for p in params if p.kind is inspect.Parameter.VAR_POSITIONAL), None),
    )
    if isinstance(name, str) and len(_PARAMETERS) < 4096:
        _PARAMETERS[name] = found
    return found


def redact_positional(task: Any, args: Any, keys: frozenset[str]) -> list[Any]:
    """``args`` as a list, with each argument whose parameter name (in ``task``'s
    signature) contains a redact key replaced by ``[REDACTED]``."""
    values = list(args or ())
    if not keys or not values:
        return values
    names, rest = parameter_names(task)
    for i in range(len(values)):
        name = names[i] if i < len(names) else rest
        if name is not None and any(key in name.lower() for key in keys):
            values[i] = REDACTED
    return values
