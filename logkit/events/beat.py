"""Beat events: ``beat_started``, and ``beat_task_sent`` for each due task it sends.

Connected by :func:`logkit.install.install`.
"""

from __future__ import annotations

import os
from typing import Any

from .._safe import safe_str
from ..banner import beat_fields
from ..receivers import installation
from .base import _guarded, _names, emit, level_of

__all__ = ["on_beat_init", "watch_scheduler"]


@_guarded
def on_beat_init(sender: Any = None, **_: Any) -> None:
    """``beat_init``: emit ``beat_started``; watch the scheduler for each due task it sends."""
    scheduler = getattr(sender, "scheduler", None)
    if scheduler is not None:
        watch_scheduler(scheduler)
    level = level_of("beat_started")
    if level is None:
        return
    fields = {
        "scheduler": f"{type(scheduler).__module__}.{type(scheduler).__qualname__}"
        if scheduler is not None
        else None,
        "max_interval": getattr(scheduler, "max_interval", None),
        "schedule_file": getattr(sender, "schedule_filename", None),
        "pid": os.getpid(),
        **beat_fields(sender),  # the banner's facts, when they replace its text
    }
    emit("beat_started", level, fields)


def watch_scheduler(scheduler: Any) -> None:
    """Emit ``beat_task_sent`` after each ``scheduler.apply_async`` (this instance only)."""
    if getattr(scheduler, "_logkit_watched", False):
        return
    original = scheduler.apply_async

    def apply_async(entry: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(entry, *args, **kwargs)
        _beat_task_sent(entry, result)
        return result

    scheduler.apply_async = apply_async
    scheduler._logkit_watched = True


@_guarded
def _beat_task_sent(entry: Any, result: Any) -> None:
    level = level_of("beat_task_sent")
    inst = installation()
    if level is None or inst is None:
        return
    names = _names(inst)
    bind = {names.get("task_name", "task_name"): getattr(entry, "task", None)}
    task_id = getattr(result, "id", None)
    if task_id is not None:
        bind[names.get("task_id", "task_id")] = task_id
    fields = {"entry": getattr(entry, "name", None),
              "schedule": safe_str(getattr(entry, "schedule", None))}
    emit("beat_task_sent", level, fields, bind=bind)
