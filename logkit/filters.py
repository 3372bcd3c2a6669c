""":class:`ContextFilter`: logkit's bound context as attributes of every record.

For handlers whose formatter is not logkit's (a Django ``LOGGING`` console handler
with ``"%(asctime)s [%(task_id)s] %(message)s"``, Sentry, a third-party JSON
formatter...). logkit's own formatters read the context themselves and need no filter.

Usable from ``logging.config.dictConfig`` and Django's ``LOGGING``::

    "filters": {"context": {"()": "logkit.ContextFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["context"]}},
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from .config import CONTEXT_FIELDS
from .context import current

__all__ = ["DEFAULT_RECORD_FIELDS", "ContextFilter", "add_context_filter"]

#: Attributes every record gets (empty unless bound), so a ``%(task_id)s`` or a
#: ``%(request_id)s`` in a format string never raises on a record outside a task/request.
DEFAULT_RECORD_FIELDS: tuple[str, ...] = (*CONTEXT_FIELDS, "request_id")


class ContextFilter(logging.Filter):
    """Put the bound context (task fields, ``logkit.bind(...)`` keys) on each record.

    Every bound key becomes a record attribute, unless the record already has one of
    that name (a standard attribute or an ``extra`` field wins). Each name in
    ``defaults`` (by default the task context fields and ``request_id``, all ``""``)
    is set when nothing is bound under it. Never drops a record.

    Args:
        name: Only records of this logger and its children get the context (every
            record passes the filter, as with ``logging.Filter``); ``""``: all records.
        defaults: Attribute names set to ``""``, or a mapping of names to default values,
            for records with nothing bound under that name. ``None``: the task context
            fields and ``request_id``.
    """

    def __init__(
        self, name: str = "", defaults: Mapping[str, Any] | Iterable[str] | None = None
    ) -> None:
        super().__init__(name)
        if defaults is None:
            defaults = DEFAULT_RECORD_FIELDS
        if isinstance(defaults, Mapping):
            self.defaults: dict[str, Any] = dict(defaults)
        else:
            self.defaults = dict.fromkeys(defaults, "")

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the bound context to ``record`` as attributes.

        Args:
            record: The record to complete; its own attributes are never replaced.

        Returns:
            Always ``True``: the filter never drops a record.
        """
        if self.name and not super().filter(record):  # only records of ``name`` and below
            return True
        try:
            fields = record.__dict__
            ctx = fields.get("_logkit_ctx")
            if ctx is None:
                ctx = fields["_logkit_ctx"] = current()
            # logkit's formatters (on another handler) read ``ctx``, not these attributes
            filled: set[str] = fields.setdefault("_logkit_filled", set())
            for key, value in ctx.items():
                if type(key) is str and key not in fields:
                    fields[key] = value
                    filled.add(key)
            for key, value in self.defaults.items():
                if key not in fields:
                    fields[key] = value
                    filled.add(key)
        except Exception:  # never lose a record because of its context
            pass
        return True


def add_context_filter(handler: logging.Handler) -> bool:
    """Give ``handler`` a :class:`ContextFilter` unless it has one.

    Args:
        handler: A handler whose formatter is not logkit's.

    Returns:
        ``True`` if a filter was added, ``False`` if the handler had one already.
    """
    if any(isinstance(f, ContextFilter) for f in handler.filters):
        return False
    handler.addFilter(ContextFilter())
    return True
