"""logkit: production-grade logging for Celery workers in one call.

>>> import logkit
>>> logkit.install(app, format="json")  # doctest: +SKIP
"""

from __future__ import annotations

from .config import ConfigError, LogConfig
from .context import bind, bound, clear, get_context, unbind
from .receivers import Installation, configure, install

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Installation",
    "LogConfig",
    "__version__",
    "bind",
    "bound",
    "clear",
    "configure",
    "get_context",
    "install",
    "unbind",
]
