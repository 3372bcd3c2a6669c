"""logkit: production-grade logging for Celery workers in one call.

```python
import logkit

logkit.install(app, format="json")
```

Importing logkit changes nothing in the process: :func:`install` (``logkit/install.py``,
the composition root) does, and :func:`uninstall` puts back everything it changed. The
names below are logkit's public API (``logkit.__all__``).
"""

from __future__ import annotations

from .config import ConfigError, LogConfig
from .context import bind, bound, clear, get_context, unbind
from .control import sampled, set_level, set_sample
from .filters import ContextFilter
from .formatters import ConsoleFormatter, JsonFormatter, PlainFormatter
from .install import configure, install, uninstall
from .receivers import Installation

__version__ = "0.1.0"
"""The installed logkit's version, as in ``pyproject.toml``."""

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
    "sampled",
    "set_level",
    "set_sample",
    "unbind",
    "uninstall",
]
