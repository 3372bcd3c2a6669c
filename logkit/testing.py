"""Helpers for your tests: capture what logkit writes, as dicts, and assert on it.

```python
from logkit.testing import capture

with capture() as records:
    add.delay(2, 3).get()
records.assert_logged(event="task_succeeded", result="5")
```

:func:`capture` collects every record any logger of this process hands to its
handlers (the root's, ``celery.task``'s, ``logkit.events``'... non-propagating
loggers included, from every thread, so the tasks of Celery's embedded test worker
too) and turns each into the dict logkit's JSON output would have for it: with the
installation's config (field names, static fields, redaction), the bound context
and the lifecycle events. Nothing is written anywhere and no handler is added.

How: while a capture is active, ``logging.Logger.callHandlers`` is wrapped (the
real handlers still run first); lifecycle events are ordinary records, so it sees
them too. The root logger and
``celery.task`` (the two loggers a worker's ``--loglevel`` sets) are lowered to the
capture's level while it is active -- also when a worker configures logging during
it -- and given their level back at the end. A logger with its own level keeps it,
as in production.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, SupportsIndex, overload

import orjson

from .config import LogConfig
from .formatters import JsonFormatter
from .redaction import RedactFilter

__all__ = ["Records", "capture", "summary"]

#: The loggers a worker's log level is set on (root and Celery's task logger).
_LEVEL_LOGGERS = ("", "celery.task")

_MISSING = object()


# ---------------------------------------------------------------------------
# The records
# ---------------------------------------------------------------------------


def _lookup(record: Mapping[str, Any], path: str) -> Any:
    """``record["exception"]["type"]`` for ``"exception__type"``; ``_MISSING`` if absent."""
    value: Any = record
    for part in path.split("__"):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _matches(expected: Any, actual: Any) -> bool:
    if actual is _MISSING:
        return False
    if callable(expected):  # captured values are JSON data: never callable
        try:
            return bool(expected(actual))
        except Exception:
            return False
    return bool(expected == actual)


def _level_name(level: int | str) -> str:
    if isinstance(level, int):
        return logging.getLevelName(level)
    return level.upper()


class Records(list[dict[str, Any]]):
    """The captured records (dicts, in the order they were logged), with selectors.

    Query keywords are output field names; ``a__b`` looks into nested dicts
    (``exception__type``), a callable is a predicate (``duration_ms=lambda v: v < 50``),
    anything else must be equal. ``level`` and ``logger`` use the field names of the
    config (``field_names`` renames), ``level`` also takes ``logging.INFO``.

    Args:
        items: The records (dicts).
        names: logkit field name -> output key, as ``LogConfig.field_names``.
    """

    def __init__(self, items: Any = (), *, names: Mapping[str, str] | None = None) -> None:
        super().__init__(items)
        #: logkit field name -> output key (``LogConfig.field_names``).
        self.names: dict[str, str] = dict(names or {})

    def _key(self, name: str) -> str:
        return self.names.get(name, name)

    def _query(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        query: dict[str, Any] = {}
        for name, value in fields.items():
            if name == "level" and value is not None and not callable(value):
                value = _level_name(value)
            query[self._key(name) if "__" not in name else name] = value
        return query

    def _select(self, query: Mapping[str, Any]) -> Records:
        out = Records(names=self.names)
        out.extend(
            r for r in list(self)
            if all(_matches(v, _lookup(r, k)) for k, v in query.items())
        )
        return out

    def filter(self, **fields: Any) -> Records:
        """Return the records whose fields match ``fields``.

        Args:
            **fields: Output fields to match (``event=``, ``task_id=``, ``level=``,
                ``logger=``, ...): a value to be equal to, or a predicate; ``a__b`` looks
                into nested dicts (``exception__type="ValueError"``).

        Returns:
            The matching records, in order, as a new ``Records``.
        """
        return self._select(self._query(fields))

    def events(self, *names: str) -> Records:
        """Return the lifecycle-event records (those with an ``event`` field).

        Args:
            *names: Event names (``"task_failed"``...); none: every event.

        Returns:
            The matching records, in order, as a new ``Records``.
        """
        return self._select({"event": (lambda e: e in names) if names else (lambda e: True)})

    def messages(self) -> list[str]:
        """Return the ``message`` of each record, in order."""
        key = self._key("message")
        return [str(r.get(key, "")) for r in list(self)]

    def text(self) -> str:
        """Return all records as JSON lines.

        For ``assert "hunter2" not in records.text()``.
        """
        return "".join(
            orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE).decode() for r in list(self)
        )

    def assert_logged(self, **fields: Any) -> dict[str, Any]:
        """Assert that a record matching ``fields`` was captured, and return the first one.

        Args:
            **fields: As for :meth:`filter`.

        Returns:
            The first matching record.

        Raises:
            AssertionError: No record matches; the message names the query and lists what
                was captured, with the fields that differ.
        """
        __tracebackhide__ = True  # pytest: the failure points at the test
        found = self.filter(**fields)
        if not found:
            raise AssertionError(self._explain(fields))
        return found[0]

    def assert_not_logged(self, **fields: Any) -> None:
        """Assert that no captured record matches ``fields``.

        Args:
            **fields: As for :meth:`filter`.

        Raises:
            AssertionError: Some records match; the message lists them.
        """
        __tracebackhide__ = True  # pytest: the failure points at the test
        found = self.filter(**fields)
        if found:
            lines = "\n".join(f"  {summary(r, self.names)}" for r in found[:20])
            raise AssertionError(
                f"expected no record with {_describe(fields)}, found {len(found)}:\n{lines}"
            )

    def wait_for(self, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        """Wait until a record matches ``fields``, and return the first one.

        :meth:`assert_logged`, retried for up to ``timeout`` seconds: for records a
        worker thread logs after the test saw the result (``task_succeeded`` is logged
        at ``task_postrun``, just after the result is stored).

        Args:
            timeout: Seconds to wait at most.
            **fields: As for :meth:`filter`.

        Returns:
            The first matching record.

        Raises:
            AssertionError: None matched within ``timeout``; as for :meth:`assert_logged`.
        """
        __tracebackhide__ = True
        deadline = time.monotonic() + timeout
        while True:
            found = self.filter(**fields)
            if found:
                return found[0]
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{self._explain(fields)}\n(waited {timeout:g}s)"
                )
            time.sleep(0.01)

    def _explain(self, fields: Mapping[str, Any]) -> str:
        query = self._query(fields)
        records = list(self)
        lines = [f"no record with {_describe(fields)} among {len(records)} captured"]
        shown = records[-30:]
        if len(records) > len(shown):
            lines.append(f"  ... {len(records) - len(shown)} earlier records not shown")
        for record in shown:
            diff = []
            for key, expected in query.items():
                actual = _lookup(record, key)
                if not _matches(expected, actual):
                    got = "<missing>" if actual is _MISSING else repr(actual)
                    diff.append(f"{key}={got}")
            lines.append(f"  {summary(record, self.names)}  [differs: {', '.join(diff)}]")
        return "\n".join(lines)

    # list methods that return a list return Records (slicing keeps the selectors)
    @overload
    def __getitem__(self, index: SupportsIndex) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> Records: ...
    def __getitem__(self, index: SupportsIndex | slice) -> dict[str, Any] | Records:
        if isinstance(index, slice):
            return Records(super().__getitem__(index), names=self.names)
        return super().__getitem__(index)


def _describe(fields: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{k}=<predicate>" if callable(v) else f"{k}={v!r}" for k, v in fields.items()
    )


def summary(record: Mapping[str, Any], names: Mapping[str, str]) -> str:
    """Describe a captured record in one line, as failure messages list them.

    Args:
        record: A captured record.
        names: logkit field name -> output key (``Records.names``).

    Returns:
        E.g. ``INFO logkit.events event='task_succeeded' task_id=549b196b… 'Task succeeded'``.
    """
    level = record.get(names.get("level", "level"), "?")
    logger = record.get(names.get("logger", "logger"), "?")
    message = str(record.get(names.get("message", "message"), ""))
    if len(message) > 80:
        message = message[:77] + "..."
    parts = [str(level), str(logger)]
    if "event" in record:
        parts.append(f"event={record['event']!r}")
    task_id = record.get(names.get("task_id", "task_id"))
    if task_id is not None:
        parts.append(f"task_id={str(task_id)[:8]}…")
    parts.append(repr(message))
    return " ".join(parts)


# ---------------------------------------------------------------------------
# Capturing
# ---------------------------------------------------------------------------


class _Capture:
    """One active :func:`capture`: its level and where its records go."""

    def __init__(self, level: int, records: Records, config: LogConfig | None) -> None:
        self.level = level
        self.records = records
        self.config = config


_lock = threading.RLock()
_captures: list[_Capture] = []
_original_call_handlers: list[Callable[[logging.Logger, logging.LogRecord], None]] = []
#: Levels of the loggers in ``_LEVEL_LOGGERS`` before a capture lowered them, and the
#: level it set (so a level set by someone else in between is left alone at the end).
_saved_levels: dict[str, tuple[int, int]] = {}
_busy = threading.local()
_formatters: dict[int, tuple[LogConfig, JsonFormatter, RedactFilter | None]] = {}


def _current_config() -> LogConfig:
    """The active installation's config, else a default JSON config."""
    from . import receivers

    inst = receivers.installation()
    if inst is not None:
        try:
            return inst.config
        except Exception:  # a bad option: the installation reports it where it matters
            pass
    return _DEFAULT_CONFIG


_DEFAULT_CONFIG = LogConfig(format="json")


def _formatter_for(config: LogConfig) -> tuple[JsonFormatter, RedactFilter | None]:
    cached = _formatters.get(id(config))
    if cached is None or cached[0] is not config:
        redactor = RedactFilter(config.redact_keys) if config.redact_keys else None
        cached = _formatters[id(config)] = (config, JsonFormatter(config), redactor)
    return cached[1], cached[2]


def _as_dict(record: logging.LogRecord, config: LogConfig) -> dict[str, Any]:
    """``record`` as logkit's JSON output has it (redacted as a logkit handler redacts)."""
    formatter, redactor = _formatter_for(config)
    record = copy.copy(record)  # redaction changes the record: the real handlers'
    if redactor is not None:
        redactor.filter(record)
    data: dict[str, Any] = json.loads(formatter.format(record))
    return data


def _offer(record: logging.LogRecord) -> None:
    if getattr(_busy, "on", False):  # a record logged while formatting one
        return
    _busy.on = True
    try:
        default: LogConfig | None = None
        for cap in list(_captures):
            if record.levelno < cap.level:
                continue
            config = cap.config
            if config is None:
                config = default = default or _current_config()
                if cap.records.names != config.field_names:
                    cap.records.names = dict(config.field_names)
            try:
                cap.records.append(_as_dict(record, config))
            except Exception as exc:  # never break the code under test
                cap.records.append(
                    {"level": record.levelname, "logger": record.name,
                     "message": f"logkit.testing: record not captured: {exc!r}"}
                )
    finally:
        _busy.on = False


def _call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
    """``Logger.callHandlers`` while a capture is active: the real handlers, then the captures."""
    try:
        _original_call_handlers[0](self, record)
    finally:
        if _captures:
            _offer(record)


def _lowest_level() -> int:
    return min(cap.level for cap in _captures)


def _lower_levels(**_: Any) -> None:
    """Lower the worker loggers to the captures' level (also after a worker set them)."""
    with _lock:
        if not _captures:
            return
        wanted = _lowest_level()
        for name in _LEVEL_LOGGERS:
            target = logging.getLogger(name)
            if (name and target.level == logging.NOTSET) or target.level <= wanted:
                continue  # inherits from the root, or low enough already
            saved = _saved_levels.get(name)
            # a level set since we lowered it (by a worker's setup) is the one to give back
            original = saved[0] if saved is not None and saved[1] == target.level else target.level
            _saved_levels[name] = (original, wanted)
            target.setLevel(wanted)


def _restore_levels() -> None:
    for name, (original, ours) in list(_saved_levels.items()):
        target = logging.getLogger(name)
        if target.level == ours:
            target.setLevel(original)
    _saved_levels.clear()


def _start(cap: _Capture) -> None:
    with _lock:
        if not _captures:
            if logging.Logger.callHandlers is not _call_handlers:
                _original_call_handlers[:] = [logging.Logger.callHandlers]
                logging.Logger.callHandlers = _call_handlers  # type: ignore[method-assign]
            from celery import signals

            # after_setup_task_logger fires once a setup set both levels (Celery's and logkit's)
            signals.after_setup_task_logger.connect(
                _lower_levels, weak=False, dispatch_uid="logkit.testing.levels"
            )
        _captures.append(cap)
        _lower_levels()


def _stop(cap: _Capture) -> None:
    with _lock:
        _captures.remove(cap)
        if _captures:
            _restore_levels()  # the remaining captures may want a higher level
            _lower_levels()
            return
        _restore_levels()
        from celery import signals

        signals.after_setup_task_logger.disconnect(dispatch_uid="logkit.testing.levels")
        # Someone who wrapped callHandlers after us keeps our (now idle) wrapper inside theirs.
        if logging.Logger.callHandlers is _call_handlers:
            logging.Logger.callHandlers = _original_call_handlers[0]  # type: ignore[method-assign, assignment]


@contextmanager
def capture(level: int | str = "DEBUG", *, config: LogConfig | None = None) -> Iterator[Records]:
    """Collect what logkit writes while the block runs; yields a :class:`Records` list.

    ``level`` (default ``DEBUG``: everything the code logs) is the lowest level
    captured; the root and ``celery.task`` loggers are lowered to it meanwhile. Each
    record is the dict logkit's JSON output has for it, with ``config`` (default: the
    installed app's config, or ``LogConfig(format="json")`` when logkit is not
    installed). Records from every thread are collected, by every active capture
    (captures nest). Afterwards the logging setup is as it was.

    Args:
        level: The lowest level captured: a name (``"INFO"``) or a number.
        config: The config whose field names, static fields and redaction the records
            get (default: the installed app's).

    Yields:
        The records captured so far; the list grows while the block runs.

    Raises:
        ValueError: ``level`` is not a level name or a number.
    """
    if isinstance(level, str):
        numeric = logging.getLevelName(level.upper())
        if not isinstance(numeric, int):
            raise ValueError(
                f"level must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL' "
                f"or an int; got {level!r}"
            )
        level = numeric
    names = (config or _current_config()).field_names
    cap = _Capture(level, Records(names=names), config)
    _start(cap)
    try:
        yield cap.records
    finally:
        _stop(cap)
