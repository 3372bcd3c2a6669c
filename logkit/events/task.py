"""Task events: one receiver per task signal, plus the two functions the
``task_prerun`` / ``task_postrun`` receivers call (``task_started``,
``task_finished``: one signal dispatch per task, not two).

Connected by :func:`logkit.install.install`.
"""

from __future__ import annotations

import os
import pickle
import signal as _signal
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from celery.app.task import Context
from celery.exceptions import Reject, Retry
from celery.utils.saferepr import saferepr

from .. import context
from .._safe import cap, iso, log_exception, safe_repr, safe_str
from ..receivers import Installation, installation
from ..sample import HELD_RECEIVED, SAMPLED_OUT, Sampler
from ..trace import ids_from_headers
from .base import (
    _I,
    _W,
    DEFAULT_LEVELS,
    _as_context,
    _bind_for,
    _guarded,
    _internal,
    emit,
    level_of,
    logger,
    task_identity,
)
from .prose import TRACE_LOGGER, _reemit_ignored
from .queue import RECEIVED, queue_fields, stamp_received

__all__ = [
    "held_received",
    "on_task_failure",
    "on_task_internal_error",
    "on_task_received",
    "on_task_rejected",
    "on_task_retry",
    "on_task_revoked",
    "on_task_unknown",
    "task_finished",
    "task_started",
    "write_held_received",
]

#: Longest repr kept for a rejected/unknown message's body (Celery's dump_body uses 1024 too).
BODY_MAX_LENGTH = 1024

_NO_QUEUE_TIMES: Mapping[str, Any] = MappingProxyType({"queued_ms": None, "wait_ms": None})


_NOT_RUNNING: tuple[float | None, Mapping[str, Any]] = (None, _NO_QUEUE_TIMES)


def _running_of(task_id: Any) -> tuple[float | None, Mapping[str, Any]]:
    """``(start, queue times)`` of a task running in this process (``Installation.running``)."""
    inst = installation()
    running = inst.running.get(task_id) if inst is not None and task_id is not None else None
    return running if running is not None else _NOT_RUNNING


#: Task ids whose ``task_failed`` was emitted in this process (bounded, oldest dropped).
_failed: dict[Any, None] = {}


def _duration_ms(task_id: Any) -> float | None:
    start = _running_of(task_id)[0]
    if start is None:
        return None
    return round((time.monotonic() - start) * 1000.0, 3)


def _queue(request: Any) -> Any:
    info = getattr(request, "delivery_info", None) or {}
    return info.get("routing_key") or info.get("queue")


def _exc_info(
    exception: Any, checked: bool = True
) -> tuple[type[BaseException], BaseException, None] | None:
    """The exception as an event record keeps it: without its traceback (the record has
    it as text), and only if it pickles (``None`` then: the traceback text is all).

    ``checked``: ``exception`` is what Celery made sure pickles (``task_failure``'s, an
    ``ExceptionInfo``'s); its stand-in for one that does not is turned back into the
    task's exception type when that pickles.
    """
    original = _unpickled(exception)
    if not isinstance(original, BaseException):
        return None
    if original is not exception or not checked:
        try:
            pickle.dumps(original)
        except Exception:
            return None
    return (type(original), original, None)


def _traceback_text(einfo: Any, tb: Any) -> str | None:
    """Celery's already formatted traceback (``ExceptionInfo.traceback`` or a string)."""
    text = getattr(einfo, "traceback", None)
    if isinstance(text, str) and text:
        return text
    return tb if isinstance(tb, str) and tb else None


def _unpickled(exception: Any) -> Any:
    try:
        from celery.utils.serialization import get_pickled_exception

        return get_pickled_exception(exception)
    except Exception:
        return exception


def _signum(value: Any) -> tuple[Any, str | None]:
    if value is None:
        return None, None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return safe_str(value), None
    try:
        return number, _signal.Signals(number).name
    except ValueError:
        return number, None


def _message_fields(message: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    try:
        fields["content_type"] = message.content_type
        fields["content_encoding"] = message.content_encoding
        fields["delivery_info"] = dict(message.delivery_info or {})
        fields["body"] = cap(safe_repr(message.body), BODY_MAX_LENGTH)
    except Exception:
        pass
    return fields


def _message_request(message: Any, hostname: Any) -> Any:
    headers = getattr(message, "headers", None)
    request: dict[str, Any] = dict(headers) if isinstance(headers, Mapping) else {}
    try:
        payload = message.payload
        if "id" not in request and isinstance(payload, Mapping):  # task protocol 1
            request.update({k: payload[k] for k in ("id", "task") if k in payload})
    except Exception:
        pass
    request["hostname"] = hostname
    try:
        request["delivery_info"] = dict(message.delivery_info or {})
        request["correlation_id"] = (message.properties or {}).get("correlation_id")
    except Exception:
        pass
    return request



# ---------------------------------------------------------------------------
# Task receivers
# ---------------------------------------------------------------------------


def _received_fields(request: Any) -> dict[str, Any]:
    return {
        "queue": _queue(request),
        "eta": iso(getattr(request, "eta", None)),
        "expires": iso(getattr(request, "expires", None)),
    }


def _with_publish_span(bind: dict[str, Any] | None, headers: Any) -> dict[str, Any] | None:
    """``bind`` with the ids of the span the message was published in (its
    ``traceparent`` header), when there is one."""
    ids = ids_from_headers(headers)
    if ids is not None:
        inst = installation()
        if inst is not None:
            bind = {**(bind or {}), **inst.task_context.trace_fields(ids)}
    return bind


@_guarded
def on_task_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    """``task_received`` (consumer process): the worker got a task message.

    For a task outside the sample (``task_sample``) the event is not written here: it is
    noted in the request, and the process that runs the task writes it if the task goes
    wrong (:func:`write_held_received`).
    """
    stamp_received(request)  # for wait_ms, whatever the event's level
    level = level_of("task_received")
    if level is None or request is None:
        return
    inst = installation()
    sampler = inst.sampler if inst is not None else None
    if sampler is not None and sampler.rate < 1.0 and _hold_received(sampler, request):
        return
    bind = _bind_for(request.id, getattr(request, "name", None), request)
    bind = _with_publish_span(bind, getattr(request, "request_dict", None))
    emit("task_received", level, _received_fields(request), bind=bind)  # main process


def _hold_received(sampler: Sampler, request: Any) -> bool:
    """Note in the request that its ``task_received`` is held, if its workflow is not in
    the sample; whether it is."""
    request_dict = getattr(request, "request_dict", None)
    if not isinstance(request_dict, dict):
        return False
    if sampler.decide(request_dict.get("root_id") or getattr(request, "id", None)):
        return False
    request_dict[HELD_RECEIVED] = [time.time(), os.getpid(), request_dict.get(RECEIVED)]
    return True


def _note(get: Any) -> Any:
    """The held ``task_received`` note read with ``get`` (a request's field getter), or
    ``None``: none, or an earlier delivery's (carried in a retry's headers)."""
    note = get(HELD_RECEIVED)
    if not isinstance(note, (list, tuple)) or len(note) != 3 or note[2] != get(RECEIVED):
        return None
    return note


def held_received(task: Any) -> Any:
    """The note of a task whose ``task_received`` the main process held (``None`` if it
    wrote it)."""
    request = task.request
    fields = request.__dict__ if type(request) is Context else None
    return _note(fields.get if fields is not None
                 else (lambda key: getattr(request, key, None)))


def write_held_received(task_id: Any, task: Any, note: Any) -> None:
    """Write the ``task_received`` the main process held for a task outside the sample
    that went wrong: its time and process, the fields it would have had, ``sampled_out``."""
    request = task.request
    _write_held(task_id, getattr(task, "name", None), request,
                request.__dict__ if type(request) is Context else None, note)


def _write_held(task_id: Any, name: Any, request: Any, headers: Any, note: Any) -> None:
    level = level_of("task_received")
    if level is None:
        return
    created, pid = float(note[0]), note[1]
    fields = {**_received_fields(request), SAMPLED_OUT: True}
    bind = _with_publish_span(_bind_for(task_id, name, request), headers)
    emit("task_received", level, fields, bind=bind, created=created,
         process=pid if isinstance(pid, int) else None)


def task_started(inst: Installation, task_id: Any, task: Any) -> None:
    """Called by the ``task_prerun`` receiver once the task's context is bound.

    Remembers the start time and the queue times, and emits ``task_started``.
    """
    try:
        if not inst.config.events:  # events=False: no event, no duration to keep
            return
        start = time.monotonic()
        fields = _NO_QUEUE_TIMES
        if task is not None:
            fields = queue_fields(task.request, time.time(), start)
        if task_id is not None:
            inst.running[task_id] = (start, fields)
        level = _task_level(inst, "task_started")
        if level is None or task is None:
            return
        _emit_for_task(inst, "task_started", level, fields, task_id, task)
    except Exception:
        _report_failure("task_started")


def task_finished(inst: Installation, task_id: Any, task: Any, retval: Any, state: Any) -> None:
    """Called by the ``task_postrun`` receiver before the task's context is restored.

    Emits ``task_succeeded`` (with ``duration_ms`` and, optionally, a capped
    ``result`` repr) when the task succeeded, and forgets the start time. Using
    ``task_postrun`` rather than ``task_success`` spares Celery a third signal
    dispatch per task.
    """
    try:
        running = inst.running
        if not running and not inst.config.events:  # events=False: nothing to emit
            return
        start, queue_times = running.pop(task_id, _NOT_RUNNING) if task_id is not None \
            else _NOT_RUNNING
        if state != _SUCCESS or task is None:
            if state == _IGNORED and task is not None and TRACE_LOGGER in inst.quieted:
                _reemit_ignored(task, retval)
            elif state == _REJECTED and task is not None:
                _task_rejected(inst, task_id, task, retval, start)
            elif state is None and task_id is not None and _is_eager(task.request
                                                                      if task else None):
                _keep(inst.raised, task_id, (start, queue_times))  # task_internal_error next
            return
        level = _task_level(inst, "task_succeeded")
        if level is None:
            return
        config = inst.config
        fields: dict[str, Any] = {
            "duration_ms": None if start is None
            else round((time.monotonic() - start) * 1000.0, 3),
            **queue_times,
        }
        if config.result_repr:
            fields["result"] = _result_repr(task, retval, config.max_field_length)
        _emit_for_task(inst, "task_succeeded", level, fields, task_id, task)
    except Exception:
        _report_failure("task_succeeded")


def _task_rejected(inst: Installation, task_id: Any, task: Any, exc: Any, start: Any) -> None:
    """``task_rejected`` for a task that raised ``Reject``: why, and whether it is requeued.

    From ``task_postrun`` (state ``REJECTED``), the one signal every supported Celery sends
    for it (5.7 also sends ``task_failure``, which :func:`on_task_failure` leaves alone).
    """
    level = _task_level(inst, "task_rejected")
    if level is None:
        return
    reason = getattr(exc, "reason", None)
    fields = {
        "reason": reason if isinstance(reason, str) else safe_repr(reason),
        "requeue": bool(getattr(exc, "requeue", False)),
        "duration_ms": None if start is None else round((time.monotonic() - start) * 1000.0, 3),
    }
    _emit_for_task(inst, "task_rejected", level, fields, task_id, task)


_levels: tuple[Any, dict[str, int | None]] = (None, {})


def _task_level(inst: Installation, event: str) -> int | None:
    """:func:`level_of` with the config's event levels looked up once per config."""
    global _levels
    config = inst.config
    cached = _levels
    if cached[0] is not config:
        cached = _levels = (
            config, {e: config.event_level(e, level) for e, level in DEFAULT_LEVELS.items()}
        )
    level = cached[1][event]
    if level is None or not logger.isEnabledFor(level):
        return None
    return level


def _emit_for_task(
    inst: Installation, event: str, level: int, fields: Mapping[str, Any], task_id: Any, task: Any
) -> None:
    """One event record with the task's context: bound already (the usual case), or the
    task's identity bound for the record (the task cleared it)."""
    if task_id is None or context.current().get(inst.task_context.task_id_key) == task_id:
        emit(event, level, fields)
    else:
        emit(event, level, fields, bind=_bind_for(task_id, task.name, task.request))


_SUCCESS = "SUCCESS"
_IGNORED = "IGNORED"
_REJECTED = "REJECTED"
_reported: set[str] = set()


def _report_failure(what: str) -> None:
    """Report the first failure of each task hook (never raise into Celery)."""
    if what not in _reported:
        _reported.add(what)
        log_exception(_internal, _W, "logkit: lifecycle event %s failed", what)


def _result_repr(task: Any, result: Any, max_length: int) -> str:
    """The ``result`` field: Celery's ``saferepr``, capped; plain ``repr`` for small scalars."""
    limit = min(getattr(task, "resultrepr_maxsize", 1024) or 1024, max_length)
    kind = type(result)
    if result is None or kind is bool or kind is int or kind is float:
        text = repr(result)  # what saferepr gives, without its machinery
        if len(text) <= limit:
            return text
    try:
        return cap(saferepr(result, limit), limit)
    except Exception:
        return cap(safe_repr(result), limit)


def _expected(task: Any, exception: Any) -> bool:
    throws: Any = getattr(task, "throws", None)
    if not throws:
        return False
    try:
        return isinstance(exception, throws)
    except TypeError:
        return False


def _is_eager(request: Any) -> bool:
    """Whether ``request`` (a task's ``Context`` or Celery's request dict) runs eagerly."""
    if isinstance(request, Mapping):
        return bool(request.get("is_eager"))
    return bool(getattr(request, "is_eager", False))


def _keep(kept: dict[Any, Any], key: Any, value: Any) -> None:
    """``kept[key] = value``, the oldest entry dropped past 1,024 (never grows unbounded)."""
    kept[key] = value
    if len(kept) > 1024:
        del kept[next(iter(kept))]


@_guarded
def on_task_failure(
    sender: Any = None,
    task_id: Any = None,
    exception: Any = None,
    traceback: Any = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    """``task_failure``: the exception (type, message, traceback) and ``duration_ms``.

    An exception listed in the task's ``throws`` is *expected*: like Celery, it is
    logged at INFO and without its traceback.
    """
    if sender is None:
        return
    request = sender.request
    task_id = task_id if task_id is not None else getattr(request, "id", None)
    _task_failed(sender, task_id, request, exception, _traceback_text(einfo, traceback),
                 _running_of(task_id))


def _task_failed(
    task: Any, task_id: Any, request: Any, exception: Any, tb_text: str | None,
    running: tuple[float | None, Mapping[str, Any]], *, propagated: bool = False,
    checked: bool = True,
) -> None:
    """``task_failed`` for ``task``'s ``exception`` (logged once per task id).

    ``propagated``: the task ran eagerly and its exception was raised to the caller
    (``task_eager_propagates``, ``apply(throw=True)``): the caller has the exception and
    its traceback, so the event is INFO and without the traceback, as for an expected
    exception (Celery itself logs nothing then).
    """
    exc = _unpickled(exception)
    if isinstance(exc, Reject):  # not a failure: task_rejected, from task_postrun
        return
    expected = _expected(task, exc)
    level = level_of("task_failed", _I if expected or propagated else None)
    if level is None:
        return
    if task_id is not None:
        # Celery signals a hard time limit twice (timeout, then the lost worker): log once.
        if task_id in _failed:
            return
        _keep(_failed, task_id, None)
    start, queue_times = running
    fields = {
        "duration_ms": None if start is None else round((time.monotonic() - start) * 1000.0, 3),
        "expected": expected,
        "propagated": propagated,
        **queue_times,
    }
    quiet = expected or propagated
    emit(
        "task_failed", level, fields,
        bind=_bind_for(task_id, task.name, request),
        exc_info=_exc_info(exception, checked),
        exc_text=None if quiet else tb_text,
    )


@_guarded
def on_task_retry(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    """``task_retry``: why (``reason``, ``error``), when (``countdown``/``eta``), ``retries``."""
    if sender is None:
        return
    request = request if request is not None else sender.request
    _task_retried(sender, request, reason, _running_of(getattr(request, "id", None)))


def _task_retried(
    task: Any, request: Any, reason: Any, running: tuple[float | None, Mapping[str, Any]]
) -> None:
    level = level_of("task_retried")
    if level is None:
        return
    view = _as_context(request)
    task_id = getattr(view, "id", None)
    when = getattr(reason, "when", None)
    exc = getattr(reason, "exc", None)
    start, queue_times = running
    fields = {
        "reason": safe_str(reason) if reason is not None else "cancelled",
        "error": safe_repr(exc) if exc is not None else None,
        "countdown": when if isinstance(when, (int, float)) else None,
        "eta": iso(when) if when is not None and not isinstance(when, (int, float)) else None,
        "retries": getattr(view, "retries", None),
        "max_retries": getattr(task, "max_retries", None),
        "duration_ms": None if start is None else round((time.monotonic() - start) * 1000.0, 3),
        **queue_times,
    }
    emit("task_retried", level, fields, bind=_bind_for(task_id, task.name, request))


@_guarded
def on_task_revoked(
    sender: Any = None,
    request: Any = None,
    terminated: Any = None,
    signum: Any = None,
    expired: Any = None,
    **_: Any,
) -> None:
    """``task_revoked`` (consumer process): ``terminated``, ``signum``, ``expired``.

    A task outside the sample (``task_sample``) whose ``task_received`` was held: that
    line is written first (the task's other lines are in the process that ran it).
    """
    level = level_of("task_revoked")
    if level is None or request is None:
        return
    number, name = _signum(signum)
    fields = {
        "reason": "terminated" if terminated else "expired" if expired else "revoked",
        "terminated": bool(terminated),
        "signum": number,
        "signame": name,
        "expired": bool(expired),
    }
    task_name = getattr(sender, "name", None) or getattr(request, "task", None)
    task_id = getattr(request, "id", None)
    # a Context (Celery's own revoke) or a worker Request: its fields as a dict
    own = request.__dict__ if type(request) is Context else getattr(
        request, "request_dict", None)
    if isinstance(own, dict) and HELD_RECEIVED in own:
        note = _note(own.get)  # a task outside the sample: what it kept first
        if note is not None:
            _write_held(task_id, task_name, request, own, note)
    emit("task_revoked", level, fields, bind=_bind_for(task_id, task_name, request))


@_guarded
def on_task_unknown(
    sender: Any = None, message: Any = None, exc: Any = None, name: Any = None,
    id: Any = None,  # Celery's name
    **_: Any,
) -> None:
    """``task_unknown`` (consumer process): a message for a task that is not registered."""
    level = level_of("task_unknown")
    if level is None:
        return
    request = _message_request(message, getattr(sender, "hostname", None))
    request.setdefault("id", id)
    fields = {"error": safe_repr(exc) if exc is not None else None, **_message_fields(message)}
    emit("task_unknown", level, fields, bind=task_identity(name, request))


@_guarded
def on_task_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    """``task_rejected`` (consumer process): an invalid or unknown message was dropped."""
    level = level_of("task_rejected")
    if level is None:
        return
    request = _message_request(message, getattr(sender, "hostname", None))
    fields = {
        "reason": "invalid task message" if exc is not None else "unknown message format",
        "error": safe_repr(exc) if exc is not None else None,
        **_message_fields(message),
    }
    emit("task_rejected", level, fields, bind=task_identity(request.get("task"), request))


@_guarded
def on_task_internal_error(
    sender: Any = None,
    task_id: Any = None,
    request: Any = None,
    exception: Any = None,
    traceback: Any = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    """``task_internal_error``: Celery failed outside the task's body.

    Except right after an eagerly run task whose own exception was raised to the caller
    (``task_postrun`` with no state, see :func:`task_finished`): Celery sends this signal
    for that exception too, on every supported version (the tracer re-raises it, and
    its outer handler takes it for its own). That is the task failing (or asking for a
    retry), logged once, as ``task_failed`` (or ``task_retried``).
    """
    inst = installation()
    raised = inst.raised.pop(task_id, None) if inst is not None and task_id is not None \
        else None
    if raised is not None and sender is not None and _is_eager(request):
        if isinstance(exception, Retry):
            _task_retried(sender, request, exception, raised)
        else:
            _task_failed(sender, task_id, request, exception, None, raised, propagated=True,
                         checked=False)
        return
    level = level_of("task_internal_error")
    if level is None:
        return
    request = request if request else {"id": task_id}
    emit(
        "task_internal_error", level, {"duration_ms": _duration_ms(task_id)},
        bind=_bind_for(task_id, getattr(sender, "name", None), request),
        exc_info=_exc_info(exception, checked=False),  # as raised: not made pickleable
        exc_text=_traceback_text(einfo, traceback),
    )
