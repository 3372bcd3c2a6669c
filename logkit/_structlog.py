"""Route structlog loggers through the stdlib handlers logkit configures.

structlog's event dict becomes a stdlib call: the event is the message, positional
args stay args, every other key becomes an ``extra`` field. So structlog and stdlib
records go through the same filters, context, formatter and sink.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import structlog

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
    up to ``filter_by_level``.
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
        if not enabled:
            return None
        return super()._proxy_to_logger("debug", event, *args, **kw)

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """``logging.Logger.info`` with structlog's processing, if INFO is enabled."""
        lg = self._logger
        try:
            enabled = lg._cache[_INFO] and not lg.disabled  # type: ignore[attr-defined]
        except (KeyError, AttributeError):
            enabled = self._enabled(_INFO)
        if not enabled:
            return None
        return super()._proxy_to_logger("info", event, *args, **kw)

    def _proxy_to_logger(
        self, method_name: str, event: str | None = None, *event_args: str, **event_kw: Any
    ) -> Any:
        level = _METHOD_LEVELS.get(method_name)
        if level is not None and not self._enabled(level):
            return None
        return super()._proxy_to_logger(method_name, event, *event_args, **event_kw)

    def _enabled(self, level: int) -> bool:
        try:
            return bool(self._logger.isEnabledFor(level))
        except Exception:  # not a stdlib logger: let filter_by_level decide
            return True


def configure_structlog() -> None:
    """Configure structlog so that ``structlog.get_logger()`` writes through stdlib logging."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            to_stdlib_call,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=LevelCheckedLogger,
        cache_logger_on_first_use=True,
    )


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
