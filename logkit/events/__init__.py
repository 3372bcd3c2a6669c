"""Task, worker and beat lifecycle events as structured log records.

One small receiver per Celery signal turns the signal into one record on the
``logkit.events`` logger, with a stable ``event`` field and the event's fields
as ``extra``. Importing this package connects nothing: :func:`logkit.install`
connects the receivers.

==========  ==============================================================
module      responsibility
==========  ==============================================================
``base``    the event table (levels, messages), :func:`emit`, field helpers
``prose``   Celery's own lines for the same events: filtered, quieted
``task``    task events (``task_started``/``task_finished`` + receivers)
``worker``  worker events
``beat``    beat events
==========  ==============================================================
"""

from __future__ import annotations

from .base import DEFAULT_LEVELS, EVENTS_LOGGER, MESSAGES, emit

__all__ = ["DEFAULT_LEVELS", "EVENTS_LOGGER", "MESSAGES", "emit"]
