"""logkit: production-grade logging for Celery workers in one call.

>>> import logkit
>>> logkit.install(app, format="json")  # doctest: +SKIP

Importing logkit connects nothing: :func:`install` (``logkit/install.py``, the
composition root) does.
"""

from __future__ import annotations

from .config import ConfigError, LogConfig
from .context import bind, bound, clear, get_context, unbind
from .control import set_level
from .filters import ContextFilter
from .formatters import ConsoleFormatter, JsonFormatter, PlainFormatter
from .install import configure, install
from .receivers import Installation

__version__ = "0.1.0"

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
    "set_level",
    "unbind",
]
