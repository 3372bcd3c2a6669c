"""Route structlog loggers through the stdlib handlers logkit configures.

structlog's event dict becomes a stdlib call: the event is the message, positional
args stay args, every other key becomes an ``extra`` field. So structlog and stdlib
records go through the same filters, context, formatter and sink.

An app that configured structlog itself keeps its processors: logkit only changes the
final step (or, when the app's own handlers write, adds its task context before it);
see :func:`configure_structlog`.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import structlog

from ._changes import Changes
from .buffer import installed as buffer_installed
from .buffer import keeping, task_slot
from .context import current
from .formatters import RESERVED

_PASS_THROUGH = ("exc_info", "stack_info", "stacklevel")


def to_stdlib_call(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Final processor: ``(args, kwargs)`` for ``logging.Logger.<method>``."""
    event = event_dict.pop("event", "")
    positional = event_dict.pop("positional_args", ())
    kwargs: dict[str, Any] = {k: event_dict.pop(k) for k in _PASS_THROUGH if k in event_dict}
    extra: dict[str, Any] = {}
    for key, value in event_dict.items():
        name = key if isinstance(key, str) else str(key)
        if name in RESERVED:  # would clash with a LogRecord attribute
            name = f"{name}_"
        extra[name] = value
    if extra:
        kwargs["extra"] = extra
    if not isinstance(event, str) and positional:
        event = str(event)
    return (event, *positional), kwargs


_METHOD_LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


_DEBUG, _INFO = logging.DEBUG, logging.INFO


class LevelCheckedLogger(structlog.stdlib.BoundLogger):
    """stdlib ``BoundLogger`` whose level-filtered calls return before any processor runs.

    A disabled ``log.debug(...)`` then costs one ``isEnabledFor`` (cached by the stdlib),
    as a disabled stdlib call does, instead of copying the context and running the chain
    up to ``filter_by_level``. In a task while ``task_buffer`` keeps its calls below the
    level (:func:`logkit.buffer.keeping`), the call goes on to the stdlib logger's method,
    which keeps it.
    """

    # debug()/info() are the calls most often filtered out: the stdlib's level cache is
    # read inline (what ``Logger.isEnabledFor`` does, minus one Python call).

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """``logging.Logger.debug`` with structlog's processing, if DEBUG is enabled."""
        lg = self._logger
        try:
            enabled = lg._cache[_DEBUG] and not lg.disabled  # type: ignore[attr-defined]
        except (KeyError, AttributeError):  # not cached yet, or not a stdlib logger
            enabled = self._enabled(_DEBUG)
        if not enabled and (not buffer_installed.size or task_slot() is None):
            return None
        return super()._proxy_to_logger("debug", event, *args, **kw)

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """``logging.Logger.info`` with structlog's processing, if INFO is enabled."""
        lg = self._logger
        try:
            enabled = lg._cache[_INFO] and not lg.disabled  # type: ignore[attr-defined]
        except (KeyError, AttributeError):
            enabled = self._enabled(_INFO)
        if not enabled and (not buffer_installed.size or task_slot() is None):
            return None
        return super()._proxy_to_logger("info", event, *args, **kw)

    def _proxy_to_logger(
        self, method_name: str, event: str | None = None, *event_args: str, **event_kw: Any
    ) -> Any:
        level = _METHOD_LEVELS.get(method_name)
        if level is not None and not self._enabled(level) and not keeping():
            return None
        return super()._proxy_to_logger(method_name, event, *event_args, **event_kw)

    def _enabled(self, level: int) -> bool:
        try:
            return bool(self._logger.isEnabledFor(level))
        except Exception:  # not a stdlib logger: let filter_by_level decide
            return True


def filter_by_level(logger: Any, method_name: str, event_dict: Any) -> Any:
    """``structlog.stdlib.filter_by_level``, except that while ``task_buffer`` keeps a
    task's calls below the level (:func:`logkit.buffer.keeping`) the event goes on to
    the stdlib logger's method, which keeps it (it raises ``DropEvent`` otherwise)."""
    if keeping():
        return event_dict
    return structlog.stdlib.filter_by_level(logger, method_name, event_dict)


#: Final processors that already hand the event dict to a stdlib logger as logkit wants it.
_STDLIB_CALLS = (to_stdlib_call, structlog.stdlib.render_to_log_kwargs)


def merge_task_context(logger: Any, method_name: str, event_dict: Any) -> Any:
    """Processor: logkit's context (the task's fields, bound request fields) into the
    event dict, under keys the event does not have already."""
    ctx = current()
    if ctx:
        for key, value in ctx.items():
            event_dict.setdefault(key, value)
    return event_dict


def _logkit_config() -> dict[str, Any]:
    return {
        "processors": [
            filter_by_level,
            structlog.contextvars.merge_contextvars,
            to_stdlib_call,
        ],
        "logger_factory": structlog.stdlib.LoggerFactory(),
        "wrapper_class": LevelCheckedLogger,
        "cache_logger_on_first_use": True,
    }


def _app_config(app: dict[str, Any], own_output: bool) -> dict[str, Any]:
    """The app's structlog configuration with only what logkit needs added.

    structlog's ``filter_by_level`` becomes logkit's :func:`filter_by_level` (the same,
    but a task's calls below the level reach ``task_buffer``). ``own_output`` (logkit's
    handlers write the records): the final step (a renderer, or
    ``ProcessorFormatter.wrap_for_formatter``) becomes :func:`to_stdlib_call`, so
    logkit's formatter renders the event dict (``event`` as the message, the other keys
    as fields, one line per call) on a stdlib logger. Otherwise (the app's own handlers
    write): :func:`merge_task_context` before the final step, which stays.
    """
    # structlog's level filter, as logkit's: a task's calls below the level reach the buffer
    processors = [filter_by_level if p is structlog.stdlib.filter_by_level else p
                  for p in app["processors"]]
    if not processors:
        processors = [to_stdlib_call]
    elif own_output:
        if processors[-1] not in _STDLIB_CALLS:
            processors[-1] = to_stdlib_call
    else:
        processors.insert(len(processors) - 1, merge_task_context)
        return {"processors": processors}
    config: dict[str, Any] = {"processors": processors}
    if not isinstance(app["logger_factory"], structlog.stdlib.LoggerFactory):
        config["logger_factory"] = structlog.stdlib.LoggerFactory()
        wrapper = app["wrapper_class"]
        if not (isinstance(wrapper, type) and issubclass(wrapper, structlog.stdlib.BoundLogger)):
            config["wrapper_class"] = LevelCheckedLogger
    return config


def configure_structlog(changes: Changes, *, own_output: bool = True) -> None:
    """Make ``structlog.get_logger()`` write through stdlib logging, and logkit's output.

    Nobody configured structlog: logkit's configuration (its own pipeline). The app did
    (``structlog.is_configured()`` before logkit): the app's processors stay, with only
    what logkit needs (see :func:`_app_config`). Recorded in ``changes``: the undo puts
    back the configuration from before logkit (or structlog's defaults).
    """
    if "structlog" not in changes:
        was_configured = structlog.is_configured()
        before = structlog.get_config()

        def undo() -> None:
            if was_configured:
                structlog.configure(**before)
            else:
                structlog.reset_defaults()

        changes.add("structlog.configure()", undo, key="structlog",
                    data=before if was_configured else None)
    app = changes.data("structlog")
    logger_class = logging.getLoggerClass()
    structlog.configure(**(_logkit_config() if app is None else _app_config(app, own_output)))
    _keep_logger_class(changes, logger_class)


def _keep_logger_class(changes: Changes, before: type[logging.Logger]) -> None:
    """After a ``structlog.stdlib.LoggerFactory()`` was made: it sets structlog's own
    ``Logger`` subclass as the class of every logger made afterwards
    (``logging.setLoggerClass``; its ``findCaller`` skips structlog's frames). Over the
    stdlib's own class that is recorded with its undo (``before`` again, if the class is
    still structlog's); a class someone else set (``before``) is put back at once."""
    ours = logging.getLoggerClass()
    if ours is before:
        return
    if before is not logging.Logger:
        logging.setLoggerClass(before)
        return

    def undo() -> None:
        if logging.getLoggerClass() is ours:
            logging.setLoggerClass(before)

    changes.add("logging.setLoggerClass (structlog's LoggerFactory)", undo, key="loggerClass")


_REGISTRY: dict[str, Any] | None
try:  # structlog keeps one ContextVar per key in this (private) registry
    from structlog.contextvars import _CONTEXT_VARS as _REGISTRY
except ImportError:  # pragma: no cover - a structlog without it: the public API
    _REGISTRY = None


def contextvars_snapshot() -> Any:
    """What is bound with ``structlog.contextvars`` in the current context.

    Reads structlog's per-key variables directly (no ``copy_context()`` walk): a task
    start costs nothing when ``structlog.contextvars`` was never used.
    """
    if _REGISTRY is None:  # pragma: no cover
        return structlog.contextvars.get_contextvars()
    return {var: var.get() for var in _REGISTRY.values()}


def restore_contextvars(snapshot: Any) -> None:
    """Put ``structlog.contextvars`` back as ``snapshot`` (drop what a task bound)."""
    if _REGISTRY is None:  # pragma: no cover
        if structlog.contextvars.get_contextvars() != snapshot:
            structlog.contextvars.clear_contextvars()
            if snapshot:
                structlog.contextvars.bind_contextvars(**snapshot)
        return
    for var in list(_REGISTRY.values()):
        before = snapshot.get(var, Ellipsis)  # a key first bound by the task: unbound
        if var.get() is not before:
            var.set(before)
