"""The composition root: :func:`install` puts logkit's parts together for one app.

Importing logkit connects nothing. Everything that makes a Celery signal end in a
written line is connected here, in :func:`_connect`, and nowhere else:

1. task context (:mod:`logkit.receivers`): ``task_prerun`` binds it, ``task_postrun``
   restores it, ``before_task_publish`` carries it to the tasks a task sends;
2. the ``celery`` command line options (:mod:`logkit.celery_options`);
3. lifecycle events (:mod:`logkit.events`): one receiver per signal, plus
   ``task_started`` / ``task_finished``, which the context receivers call (see
   :func:`_new_installation`), and the filters on Celery's own lines;
4. per-process setup: ``setup_logging`` runs :func:`logkit.setup.configure_process`
   with the installation's ``configured`` step (quieting Celery's task loggers);
5. flushing the non-blocking queue when a process shuts down;
6. Celery's startup banners (:mod:`logkit.banner`): text, or fields of the startup
   events, and Python warnings held until logging is configured (:mod:`logkit.early`);
8. once a process's logging is configured (:func:`_configured`), the per-task buffer
   (:mod:`logkit.buffer`, ``task_buffer``) and repeat folding (:mod:`logkit.dedupe`,
   ``dedupe_window``), with their receivers connected only while they are on.
"""

from __future__ import annotations

import atexit
import logging
import time
from typing import Any

from celery import signals

from . import banner, buffer, celery_options, dedupe, receivers
from .config import LogConfig, check_options
from .events import beat, prose, task, worker
from .handlers import flush_queues
from .receivers import Installation
from .setup import Active, active, configure_process

__all__ = ["configure", "install"]


def install(app: Any, **options: Any) -> Installation:
    """Make logkit own ``app``'s worker logging; return the :class:`Installation`.

    Options are validated now (a bad one raises :class:`ConfigError`); ``app.conf``,
    ``LOGKIT_*`` env vars and command-line options are merged in when the worker
    configures logging. Calling it again replaces the previous installation.
    """
    inst = _new_installation(app, options)
    receivers.activate(inst)
    # 4. Per-process setup (configure() has none: it runs from the user's own receiver).
    signals.setup_logging.connect(
        receivers.on_setup_logging, weak=False, dispatch_uid="logkit.setup"
    )
    _connect(inst)
    return inst


def _new_installation(app: Any, options: Any) -> Installation:
    """An :class:`Installation` for ``app`` with the lifecycle events plugged in.

    ``task_started`` / ``task_finished`` ride on the context receivers of
    ``task_prerun`` / ``task_postrun`` (one dispatch per signal, not two).
    """
    return Installation(
        app,
        options,
        task_started=task.task_started,  # after task_prerun bound the task's context
        task_finished=task.task_finished,  # before task_postrun restores it
        configured=_configured,  # once a process's logging is set up
    )


def _configured(config: LogConfig, app: Any) -> None:
    """The last step of a process's logging set-up: Celery's task loggers quieted (or
    not), then 8. the per-task buffer and repeat folding, each connected only when on."""
    prose.quiet_celery_loggers(config, app)
    done = active()
    level = done.loglevel if done is not None else logging.getLogger().getEffectiveLevel()
    handlers = _writing_handlers()
    _connect_operating(buffer.apply(config, handlers, level), dedupe.apply(config, handlers))


def _writing_handlers() -> list[Any]:
    """The handlers that write this process's records: logkit's, or the root's if the
    user's own write them (``root_handlers``)."""
    done = active()
    if done is not None and done.handlers:
        return list(done.handlers)
    return list(logging.getLogger().handlers)


def _flush_folds(**_: Any) -> None:
    """Write the pending repeat counts (and the non-blocking queue after them)."""
    if dedupe.flush():
        flush_queues()


def _task_end_folds(**_: Any) -> None:
    """After a task: write the repeat counts whose window has closed."""
    dedupe.flush(time.time())


#: (signal, receiver, dispatch_uid) of the per-task buffer (8, #29).
_BUFFER_RECEIVERS: tuple[tuple[Any, Any, str], ...] = (
    (signals.task_prerun, buffer.on_task_prerun, "logkit.buffer.prerun"),
    (signals.task_postrun, buffer.on_task_postrun, "logkit.buffer.postrun"),
)
#: ... and of repeat folding: pending counts written when a task ends and at shutdown.
_FOLD_RECEIVERS: tuple[tuple[Any, Any, str], ...] = (
    (signals.task_postrun, _task_end_folds, "logkit.dedupe.postrun"),
    (signals.worker_shutting_down, _flush_folds, "logkit.dedupe.shutting_down"),
    (signals.worker_process_shutdown, _flush_folds, "logkit.dedupe.process_shutdown"),
    (signals.worker_shutdown, _flush_folds, "logkit.dedupe.shutdown"),
)


def _connect_operating(buffering: bool, folding: bool) -> None:
    """8. Connect the buffer's and the folds' receivers when on, disconnect them when off."""
    for on, table in ((buffering, _BUFFER_RECEIVERS), (folding, _FOLD_RECEIVERS)):
        for sig, receiver, uid in table:
            if on:
                sig.connect(receiver, weak=False, dispatch_uid=uid)
            else:
                sig.disconnect(receiver, dispatch_uid=uid)
    atexit.unregister(_flush_folds)
    if folding:
        atexit.register(_flush_folds)


def _flush(**_: Any) -> None:
    """Write out the non-blocking queue (``queue=True``) before the process exits."""
    flush_queues()


def _connect(inst: Installation) -> None:
    """Connect every receiver ``inst`` needs but ``setup_logging``'s (1-3, 5-6 above).

    Idempotent: each receiver has a ``dispatch_uid``.
    """
    # 1. Task context.
    signals.task_prerun.connect(receivers.on_task_prerun, weak=False, dispatch_uid="logkit.prerun")
    signals.task_postrun.connect(
        receivers.on_task_postrun, weak=False, dispatch_uid="logkit.postrun"
    )
    signals.before_task_publish.connect(
        receivers.on_before_task_publish, weak=False, dispatch_uid="logkit.publish"
    )
    # The task's OpenTelemetry span is current when logkit binds the task's context,
    # whichever was connected first (see receivers.order_after_tracing).
    signals.worker_init.connect(receivers.on_worker_init, weak=False, dispatch_uid="logkit.wi")
    signals.worker_ready.connect(
        receivers.order_after_tracing, weak=False, dispatch_uid="logkit.trace_order.ready"
    )
    # 2. `celery ... --log-format/--log-field/--log-events`.
    if celery_options.add_preload_options(inst.app):
        signals.user_preload_options.connect(
            celery_options.on_user_preload_options, weak=False, dispatch_uid="logkit.preload"
        )
    # 3. Lifecycle events; whether each is emitted is decided per record from the
    # installation's config (events, disabled_events, event_levels).
    event_receivers: tuple[tuple[Any, Any, str], ...] = (
        (signals.task_received, task.on_task_received, "logkit.events.received"),
        (signals.task_failure, task.on_task_failure, "logkit.events.failure"),
        (signals.task_retry, task.on_task_retry, "logkit.events.retry"),
        (signals.task_revoked, task.on_task_revoked, "logkit.events.revoked"),
        (signals.task_unknown, task.on_task_unknown, "logkit.events.unknown"),
        (signals.task_rejected, task.on_task_rejected, "logkit.events.rejected"),
        (signals.task_internal_error, task.on_task_internal_error,
         "logkit.events.internal_error"),
        (signals.worker_ready, worker.on_worker_ready, "logkit.events.worker_ready"),
        (signals.worker_shutting_down, worker.on_worker_shutting_down,
         "logkit.events.shutting_down"),
        (signals.worker_process_init, worker.on_worker_process_init,
         "logkit.events.process_init"),
        (signals.worker_process_shutdown, worker.on_worker_process_shutdown,
         "logkit.events.process_shutdown"),
        (signals.worker_shutdown, worker.on_worker_shutdown, "logkit.events.worker_shutdown"),
        (signals.beat_init, beat.on_beat_init, "logkit.events.beat_init"),
    )
    for sig, receiver, uid in event_receivers:
        sig.connect(receiver, weak=False, dispatch_uid=uid)
    # A new installation's events may differ: Celery's loggers get their level back
    # until the next configuration decides again (so no line is lost meanwhile).
    prose.unquiet_celery_loggers()
    prose.install_filters()
    # 5. Connected last, so records logged by other receivers of these signals are written
    # too. Prefork children leave with os._exit (no atexit): flush on worker_process_shutdown.
    signals.worker_process_shutdown.connect(_flush, weak=False, dispatch_uid="logkit.flush.child")
    signals.worker_shutdown.connect(_flush, weak=False, dispatch_uid="logkit.flush")
    # 6. Celery's banners and the warnings it gives before logging is configured.
    banner.connect()


def configure(
    loglevel: int | str | None = None,
    logfile: str | None = None,
    format: str | None = None,
    colorize: bool | None = None,
    *,
    app: Any = None,
    **options: Any,
) -> Active:
    """Set up logkit's logging now, e.g. from your own ``setup_logging`` receiver.

    ``format`` is a logkit format (``json``, ``console``, ``plain``, ``auto``) or a
    ``%``-style format string (Celery's ``format`` argument), which means ``plain``
    with that string. Fires ``after_setup_logger`` and ``after_setup_task_logger``.
    Returns what was set up; raises :class:`ConfigError` for a bad option or an
    unwritable log file.
    """
    plain_format = None
    if format is not None and "%(" in format:
        plain_format, format = format, "plain"
    if format is not None:
        options["format"] = format
    inst = receivers.installation()
    if app is None and inst is not None:
        app = inst.app
    if inst is None or inst.app is not app:
        inst = _new_installation(app, options)
        receivers.activate(inst)
    config = LogConfig.resolve(app, {**inst.options, **check_options(options)}, cli=inst.cli)
    inst.use(config)
    _connect(inst)
    return configure_process(
        config,
        loglevel=loglevel,
        logfile=logfile,
        colorize=colorize,
        app=app,
        plain_format=plain_format,
        redirect_stdouts=None if app is not None else False,
        configured=inst.configured,
    )
