"""How long a task waited: ``queued_ms`` and ``wait_ms`` of the task events.

Two stamps travel with the task (both in its request, i.e. the message headers):

- ``logkit_published`` (:data:`~logkit.receivers.PUBLISHED`): ``time.time()`` when the
  publisher's ``before_task_publish`` ran (logkit's receiver puts it there; absent when
  the publisher ran without logkit);
- ``logkit_received`` (:data:`RECEIVED`): ``time.monotonic()`` when ``task_received``
  ran in the worker's main process (:func:`stamp_received` puts it in the request dict
  that Celery then hands to the pool child, thread or greenlet).

At the task's start (``task_prerun``) :func:`queue_fields` turns them into::

    queued_ms = start - max(published, eta)   # publisher's clock vs this machine's
    wait_ms   = start - max(received, eta)    # one machine's monotonic clock

so a countdown or ``eta`` is not counted as waiting. ``None`` when a stamp is missing;
a negative ``queued_ms`` (clock skew between the two machines) is written as measured.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from celery.app.task import Context

from ..receivers import PUBLISHED

__all__ = ["RECEIVED", "queue_fields", "stamp_received"]

#: Request key of the ``time.monotonic()`` at ``task_received`` (worker main process).
RECEIVED = "logkit_received"


def stamp_received(request: Any) -> None:
    """Put the receive time in the dict the request will be run with (never raises)."""
    request_dict = getattr(request, "request_dict", None)
    if isinstance(request_dict, dict):
        request_dict[RECEIVED] = time.monotonic()


def _eta_timestamp(eta: Any) -> float | None:
    if not eta:
        return None
    try:
        when = eta if isinstance(eta, datetime) else datetime.fromisoformat(str(eta))
    except ValueError:
        return None
    if when.tzinfo is None:  # Celery sends aware times; a naive one is taken as UTC
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def queue_fields(request: Any, start_wall: float, start_mono: float) -> dict[str, Any]:
    """``{"queued_ms": ..., "wait_ms": ...}`` for a task starting now (either ``None``
    when its stamp is missing)."""
    fields = request.__dict__ if type(request) is Context else None
    get = fields.get if fields is not None else (lambda key: getattr(request, key, None))
    published, received, eta = get(PUBLISHED), get(RECEIVED), get("eta")
    eta_ts = _eta_timestamp(eta) if eta else None
    queued = wait = None
    if isinstance(published, (int, float)):
        queued = _ms(start_wall - (published if eta_ts is None else max(published, eta_ts)))
    if isinstance(received, (int, float)):
        if eta_ts is not None:  # the eta on this machine's monotonic clock
            received = max(received, eta_ts - (start_wall - start_mono))
        wait = _ms(start_mono - received)
    return {"queued_ms": queued, "wait_ms": wait}
