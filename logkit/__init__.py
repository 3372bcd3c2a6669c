"""logkit: production-grade logging for Celery workers in one call.

>>> import logkit
>>> logkit.install(app, format="json")  # doctest: +SKIP
"""

from __future__ import annotations

from .config import ConfigError, LogConfig
from .context import bind, bound, clear, get_context, unbind
from .filters import ContextFilter
from .formatters import ConsoleFormatter, JsonFormatter, PlainFormatter
from .receivers import Installation, configure, install

__version__ = "0.1.0"

# `celery ... --log-format/--log-field/--log-events`: added to the app by install().
from .cli import add_preload_options as _add_preload_options
from .receivers import _INSTALL_HOOKS

if _add_preload_options not in _INSTALL_HOOKS:
    _INSTALL_HOOKS.append(_add_preload_options)

# Lifecycle events (task_succeeded, worker_ready...): receivers connected by install().
from .events import connect as _connect_events

if _connect_events not in _INSTALL_HOOKS:
    _INSTALL_HOOKS.append(_connect_events)

# Celery's startup banner (and warnings before logging is configured): connected by install().
from .banner import connect as _connect_banner

if _connect_banner not in _INSTALL_HOOKS:
    _INSTALL_HOOKS.append(_connect_banner)

__all__ = [
    "ConfigError",
    "ConsoleFormatter",
    "ContextFilter",
    "Installation",
    "JsonFormatter",
    "LogConfig",
    "PlainFormatter",
    "__version__",
    "bind",
    "bound",
    "clear",
    "configure",
    "get_context",
    "install",
    "unbind",
]
