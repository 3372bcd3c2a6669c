"""Route structlog loggers through the stdlib handlers logkit configures.

structlog's event dict becomes a stdlib call: the event is the message, positional
args stay args, every other key becomes an ``extra`` field. So structlog and stdlib
records go through the same filters, context, formatter and sink.
"""

from __future__ import annotations

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


def configure_structlog() -> None:
    """Configure structlog so that ``structlog.get_logger()`` writes through stdlib logging."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            to_stdlib_call,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
