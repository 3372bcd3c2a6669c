"""Worker events: ready, shutting down, pool process started/stopped, shut down.

Connected by :func:`logkit.install.install`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from .._safe import log_exception, safe_str
from ..banner import worker_fields
from .base import _guarded, _worker_bind, emit, level_of

__all__ = [
    "log_level_changed",
    "on_worker_process_init",
    "on_worker_process_shutdown",
    "on_worker_ready",
    "on_worker_shutdown",
    "on_worker_shutting_down",
    "task_sample_changed",
    "tasks_sampled_out",
]


def _pool_name(consumer: Any) -> str | None:
    pool = getattr(consumer, "pool", None)
    if pool is None:
        return None
    return type(pool).__module__.rsplit(".", 1)[-1]


@_guarded
def on_worker_ready(sender: Any = None, **_: Any) -> None:
    """``worker_ready``: the worker consumes (``pid``, ``pool``, ``concurrency``)."""
    level = level_of("worker_ready")
    if level is None:
        return
    controller = getattr(sender, "controller", None)
    fields = {
        "pid": os.getpid(),
        "pool": _pool_name(sender),
        "concurrency": getattr(controller, "concurrency", None),
        **worker_fields(controller),  # the banner's facts, when they replace its text
    }
    emit("worker_ready", level, fields, bind=_worker_bind(getattr(sender, "hostname", None)))


@_guarded
def on_worker_shutting_down(
    sender: Any = None, sig: Any = None, how: Any = None, exitcode: Any = None, **_: Any
) -> None:
    """``worker_shutting_down`` (in the signal handler): ``sig``, ``how``, ``exitcode``."""
    level = level_of("worker_shutting_down")
    if level is None:
        return
    fields = {"sig": safe_str(sig) if sig is not None else None, "how": how,
              "exitcode": exitcode, "pid": os.getpid()}
    emit("worker_shutting_down", level, fields, bind=_worker_bind(sender))


@_guarded
def on_worker_process_init(sender: Any = None, **_: Any) -> None:
    """``worker_process_init`` (pool child): the child's ``pid``."""
    level = level_of("worker_process_init")
    if level is None:
        return
    emit("worker_process_init", level, {"pid": os.getpid()}, bind=_worker_bind(sender))


@_guarded
def on_worker_process_shutdown(
    sender: Any = None, pid: Any = None, exitcode: Any = None, **_: Any
) -> None:
    """``worker_process_shutdown`` (pool child): ``pid`` and ``exitcode``."""
    level = level_of("worker_process_shutdown")
    if level is None:
        return
    fields = {"pid": pid if pid is not None else os.getpid(), "exitcode": exitcode}
    emit("worker_process_shutdown", level, fields, bind=_worker_bind(sender))


@_guarded
def on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    """``worker_shutdown``: the worker has stopped."""
    level = level_of("worker_shutdown")
    if level is None:
        return
    emit("worker_shutdown", level, {"pid": os.getpid()},
         bind=_worker_bind(getattr(sender, "hostname", None)))


def log_level_changed(
    hostname: Any, logger: str, level: int, previous: int, ttl: float | None,
    until: str | None, reason: str,
) -> None:
    """``log_level_changed`` (worker main process): a level set by remote control
    (:mod:`logkit.control`), or set back when its ``ttl`` ran out (``reason``
    ``expired``). ``logger`` and ``level`` are written as ``target_logger`` and
    ``new_level``: a record's own ``logger``/``level`` keys are taken."""
    try:
        event_level = level_of("log_level_changed")
        if event_level is None:
            return
        fields = {
            "target_logger": logger,
            "new_level": logging.getLevelName(level),
            "previous": logging.getLevelName(previous),
            "ttl": ttl,
            "until": until,
            "reason": reason,
        }
        emit("log_level_changed", event_level, fields, bind=_worker_bind(hostname))
    except Exception:
        log_exception(logging.getLogger("logkit"), logging.WARNING,
                      "logkit: log_level_changed failed")


def _iso(when: Any) -> Any:
    if not isinstance(when, (int, float)):
        return when
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def task_sample_changed(
    hostname: Any, rate: float, previous: float, ttl: float | None, until: str | None,
    reason: str,
) -> None:
    """``task_sample_changed`` (worker main process): the ``task_sample`` rate set by
    remote control (``logkit_sample``), or set back when its ``ttl`` ran out (``reason``
    ``expired``)."""
    try:
        event_level = level_of("task_sample_changed")
        if event_level is None:
            return
        fields = {"task_sample": rate, "previous": previous, "ttl": ttl, "until": until,
                  "reason": reason}
        emit("task_sample_changed", event_level, fields, bind=_worker_bind(hostname))
    except Exception:
        log_exception(logging.getLogger("logkit"), logging.WARNING,
                      "logkit: task_sample_changed failed")


def tasks_sampled_out(fields: Mapping[str, Any], hostname: Any = None) -> None:
    """``tasks_sampled_out`` (any process that runs tasks): the tasks outside the sample
    that this process did not write, and their lines, per task name, since ``since``
    (:mod:`logkit.sample`)."""
    level = level_of("tasks_sampled_out")
    if level is None:
        return
    out = {
        "tasks": fields["tasks"],
        "lines": fields["lines"],
        "by_task": fields["by_task"],
        "overflowed": fields["overflowed"],
        "task_sample": fields["task_sample"],
        "since": _iso(fields["since"]),
        "pid": os.getpid(),
    }
    emit("tasks_sampled_out", level, out, bind=_worker_bind(hostname))
