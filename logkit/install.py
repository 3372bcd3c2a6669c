"""The composition root: :func:`install` puts logkit's parts together for one app.

Importing logkit connects nothing. Everything that makes a Celery signal end in a
written line is connected here, in :func:`_connect`, and nowhere else:

1. task context (:mod:`logkit.receivers`): ``task_prerun`` binds it, ``task_postrun``
   restores it, ``before_task_publish`` carries it to the tasks a task sends;
2. the ``celery`` command line options (:mod:`logkit.celery_options`), and on Celery
   5.3 to 5.6 the ``celery`` sub-commands' callbacks that would refuse them
   (:mod:`logkit._compat`, where every version difference is);
3. lifecycle events (:mod:`logkit.events`): one receiver per signal, plus
   ``task_started`` / ``task_finished``, which the context receivers call (see
   :func:`_new_installation`), and the filters on Celery's own lines;
4. per-process setup: ``setup_logging`` runs :func:`logkit.setup.configure_process`
   with the installation's ``configured`` step (quieting Celery's task loggers);
5. flushing the non-blocking queue when a process shuts down (and at interpreter exit);
6. Celery's startup banners (:mod:`logkit.banner`): text, or fields of the startup
   events, and Python warnings held until logging is configured (:mod:`logkit.early`);
7. the ``logkit_level`` / ``logkit_levels`` / ``logkit_sample`` remote control commands
   (:mod:`logkit.control`);
8. once a process's logging is configured (:func:`_configured`), the per-task buffer
   (:mod:`logkit.buffer`, ``task_buffer``), repeat folding (:mod:`logkit.dedupe`,
   ``dedupe_window``) and sampling per workflow (:mod:`logkit.sample`, ``task_sample``),
   with their steps and receivers connected only while they are on.

Every change is recorded in the installation's ``changes`` with its undo;
:func:`uninstall` runs them in reverse order. Importing logkit registers nothing: the
installation registers its ``atexit`` callback (removed by :func:`uninstall`) and, once
per process, an at-fork dispatcher (at-fork hooks cannot be unregistered; it does
nothing while no installation is current).
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import time
from typing import Any

from celery import signals

from . import _compat, banner, buffer, celery_options, control, dedupe, receivers, sample
from .config import LogConfig, check_options
from .events import beat, prose, task, worker
from .handlers import flush_at_exit, flush_queues, reset_after_fork
from .receivers import Installation
from .setup import Active

__all__ = ["configure", "install", "uninstall"]

logger = logging.getLogger("logkit")

#: Seconds :func:`uninstall` and the exit hook wait for a ``queue=True`` queue to drain.
QUEUE_WAIT = 10.0


def install(app: Any, **options: Any) -> Installation:
    """Make logkit own ``app``'s worker logging; return the :class:`Installation`.

    Connects logkit's receivers to Celery's signals (``setup_logging`` among them, so
    Celery configures nothing itself) and adds the ``celery`` command's ``--log-*``
    options and the ``logkit_level``/``logkit_levels`` remote control commands. Options
    are validated now; ``app.conf``, ``LOGKIT_*`` env vars and command-line options are
    merged in when the worker configures logging. Calling it again with the same app and
    options returns the current installation (an app module imported twice installs
    once); with another app or other options it first uninstalls the previous
    installation (everything it changed is put back), then installs anew. After
    :func:`configure` without an app (a web process importing its Celery app), the new
    installation takes over what that configuration set up instead.

    Args:
        app: The Celery app whose workers (and beat, and publishers) logkit serves.
        **options: Any option of the configuration reference, e.g. ``format="json"``,
            ``fields={"service": "billing"}``, ``task_buffer=50``.

    Returns:
        The current installation: its ``changes`` list what it changed in the process.

    Raises:
        ConfigError: An option is unknown or its value invalid (the message names the
            valid choices).
        ImportError: The running Celery lacks a part logkit needs on it (the message
            names it; see docs/compatibility.md).
    """
    checked = check_options(options)  # a bad option raises before anything is undone
    _compat.require()
    current = receivers.installation()
    if current is not None and current.app is app and current.options == checked:
        return current
    inst = _replace(app, options)
    # 4. Per-process setup (configure() has none: it runs from the user's own receiver).
    inst.connect(signals.setup_logging, receivers.on_setup_logging, "logkit.setup")
    _connect(inst)
    return inst


def uninstall() -> bool:
    """Undo :func:`install` and :func:`configure`: put back what they changed in the process.

    Waits (at most 10 seconds) for the ``queue=True`` queue to be written, then undoes
    every recorded change, the last one first: receivers disconnected, loggers' handlers,
    filters, levels and ``propagate`` as they were, the log file closed, queue writer
    threads stopped, ``sys.stdout``/``sys.stderr``, ``Logger.makeRecord``,
    ``warnings.showwarning`` (``logging.captureWarnings``) and structlog's configuration
    put back, the remote control commands removed, the ``atexit`` callback removed. A hook
    another library put over one of logkit's after it (its own ``makeRecord`` wrapper,
    ``warnings.showwarning``, streams) is left in place. ``install()`` works again
    afterwards.

    Returns:
        ``True`` if an installation was undone; ``False`` if logkit was not installed
        (then nothing changes).
    """
    inst = receivers.installation()
    if inst is None:
        return False
    if inst.sampler is not None:  # what sampling left out, while its event can be written
        inst.sampler.flush_report()
    receivers.activate(None)
    if not flush_queues(QUEUE_WAIT):
        logger.debug("logkit: uninstall: the queue was not written out within %ss", QUEUE_WAIT)
    for what, exc in inst.changes.undo():
        logger.warning("logkit: uninstall: could not undo %s: %r", what, exc)
    inst.active = None
    inst.quieted.clear()
    return True


def _replace(app: Any, options: Any) -> Installation:
    """A new current installation for ``app``: the previous one uninstalled first, or, if
    it was made by :func:`configure` for no app, what it set up taken over."""
    current = receivers.installation()
    if current is not None and current.app is None and app is not None:
        inst = _new_installation(app, options, take_over=current)
    else:
        uninstall()
        inst = _new_installation(app, options)
    if current is not None:  # its workers still run in this process (a session's test worker)
        inst.workers[:] = current.workers
    receivers.activate(inst)
    return inst


def _new_installation(
    app: Any, options: Any, take_over: Installation | None = None
) -> Installation:
    """An :class:`Installation` for ``app`` with the lifecycle events plugged in, and the
    process-wide hooks it owns (``atexit``; the at-fork dispatcher) registered.

    ``task_started`` / ``task_finished`` ride on the context receivers of
    ``task_prerun`` / ``task_postrun`` (one dispatch per signal, not two).
    """
    inst = Installation(
        app,
        options,
        task_started=task.task_started,  # after task_prerun bound the task's context
        task_finished=task.task_finished,  # before task_postrun restores it
        configured=_configured,  # once a process's logging is set up
    )
    if take_over is not None:  # its changes, what it set up, its state: now inst's
        inst.changes, inst.active = take_over.changes, take_over.active
        inst.quieted, inst.warnings = take_over.quieted, take_over.warnings
        # the per-task steps of the tools it turned on (8.), which its changes undo
        inst.prerun_hooks, inst.postrun_hooks = take_over.prerun_hooks, take_over.postrun_hooks
    if inst.changes.add("atexit: write out the queue", lambda: atexit.unregister(_at_exit),
                        key="atexit"):
        atexit.register(_at_exit)
    _register_at_fork()
    return inst


def _at_exit() -> None:
    """At interpreter exit: write out the queue, waiting at most 10 seconds (a stalled
    sink: the records left are counted and reported on stderr if it can take a line)."""
    flush_at_exit(QUEUE_WAIT)


_at_fork: list[bool] = []


def _register_at_fork() -> None:
    """Register :func:`_after_fork_in_child` once per process, at the first installation.

    An at-fork hook cannot be unregistered (``os.register_at_fork`` has no undo): this
    one dispatcher stays after :func:`uninstall` and does nothing while no installation
    is current.
    """
    if not _at_fork:
        _at_fork.append(True)
        os.register_at_fork(after_in_child=_after_fork_in_child)


def _after_fork_in_child() -> None:
    """In a forked child: fresh locks for the sinks, fresh queue writers, folds with no
    window of the parent's (if installed)."""
    if receivers.installation() is not None:
        reset_after_fork()
        dedupe.reset_after_fork()


def _configured(inst: Installation, active: Active, app: Any) -> None:
    """The last step of a process's logging set-up, given what was set up (``active``):
    Celery's task loggers quieted (or not), then 8. the per-task buffer, repeat folding
    and sampling on every handler that writes the records (``active.output_handlers``),
    each connected only when on."""
    config = active.config
    prose.quiet_celery_loggers(inst, config, app)
    handlers = active.output_handlers
    buffering = buffer.apply(config, handlers, active.loglevel)
    folding = dedupe.apply(config, handlers)
    sampler = inst.sampler = sample.apply(config, handlers, inst.sampler)
    sampler.report = worker.tasks_sampled_out
    sampler.held_received = task.held_received
    sampler.write_received = task.write_held_received
    # a logkit_sample command turning sampling on later sets its steps then
    sampler.on_attach = functools.partial(_connect_operating, inst, buffering, folding, sampler)
    _connect_operating(inst, buffering, folding, sampler)


def _flush_folds(**_: Any) -> None:
    """Write the pending repeat counts (and the non-blocking queue after them)."""
    if dedupe.flush():
        flush_queues()


def _task_end_folds(**_: Any) -> None:
    """After a task: write the repeat counts whose window has closed."""
    dedupe.flush(time.time())


#: The per-task steps (8, #29), run by logkit's own task_prerun/task_postrun receivers
#: (``Installation.prerun_hooks``/``postrun_hooks``): the buffer's, and the folds' counts
#: whose window has closed written when a task ends.
_BUFFER_HOOKS = ((buffer.on_task_prerun,), (buffer.on_task_postrun,))
_FOLD_HOOKS: tuple[tuple[Any, ...], tuple[Any, ...]] = ((), (_task_end_folds,))
#: (signal, receiver, dispatch_uid) of repeat folding: pending counts written at shutdown.
_FOLD_RECEIVERS: tuple[tuple[Any, Any, str], ...] = (
    (signals.worker_shutting_down, _flush_folds, "logkit.dedupe.shutting_down"),
    (signals.worker_process_shutdown, _flush_folds, "logkit.dedupe.process_shutdown"),
    (signals.worker_shutdown, _flush_folds, "logkit.dedupe.shutdown"),
)


def _report_sampled(**_: Any) -> None:
    """Write what this process left out (``tasks_sampled_out``), then the queue."""
    inst = receivers.installation()
    sampler = inst.sampler if inst is not None else None
    if sampler is not None and sampler.flush_report():
        flush_queues()


#: (signal, receiver, dispatch_uid) of sampling: what was left out written at shutdown
#: (a prefork child's at its exit, the main process's at the worker's).
_SAMPLE_RECEIVERS: tuple[tuple[Any, Any, str], ...] = (
    (signals.worker_process_shutdown, _report_sampled, "logkit.sample.process_shutdown"),
    (signals.worker_shutdown, _report_sampled, "logkit.sample.shutdown"),
)


def _stop_operating() -> None:
    """Undo 8.: the buffer's wrappers and filters, the folds (their counts written)."""
    buffer.off()
    dedupe.off()


def _stop_sampling(inst: Installation) -> None:
    """Undo 8.'s sampling: what was left out reported, the filters taken away."""
    sampler = inst.sampler
    if sampler is not None:
        sampler.flush_report()
        sampler.detach()


def _connect_operating(inst: Installation, buffering: bool, folding: bool,
                       sampler: sample.Sampler | None = None) -> None:
    """8. Set the per-task steps of the buffer, the folds and sampling, and connect the
    folds' and sampling's shutdown receivers, when on (taken away when off); what
    :func:`uninstall` must take back is recorded in ``inst.changes``."""
    sampling = sampler is not None and sampler.attached
    prerun: list[Any] = []
    postrun: list[Any] = []
    for on, (before, after) in ((buffering, _BUFFER_HOOKS), (folding, _FOLD_HOOKS)):
        if on:
            prerun += before
            postrun += after
    if sampling and sampler is not None:  # last after a task: what the buffer wrote is held
        prerun.append(sampler.prerun)
        postrun.append(sampler.postrun)
    inst.prerun_hooks, inst.postrun_hooks = tuple(prerun), tuple(postrun)
    if prerun or postrun:
        inst.changes.add("task_buffer / dedupe_window / task_sample: per-task steps",
                         lambda: _clear_hooks(inst), key="operating.hooks")
    if sampling:
        for sig, receiver, uid in _SAMPLE_RECEIVERS:
            inst.connect(sig, receiver, uid)
        if inst.changes.add("atexit: write what sampling left out",
                            lambda: atexit.unregister(_report_sampled), key="atexit.sample"):
            atexit.register(_report_sampled)
        inst.changes.add("task_sample: filters on logkit's handlers",
                         functools.partial(_stop_sampling, inst), key="sample")
    for sig, receiver, uid in _FOLD_RECEIVERS:
        if folding:
            inst.connect(sig, receiver, uid)
        else:
            sig.disconnect(receiver, dispatch_uid=uid)
    if folding and inst.changes.add("atexit: write the pending repeat counts",
                                    lambda: atexit.unregister(_flush_folds), key="atexit.folds"):
        atexit.register(_flush_folds)  # stays while installed; nothing to do once folds are off
    if buffering or folding:
        inst.changes.add("task_buffer / dedupe_window: wrappers, filters, atexit",
                         _stop_operating, key="operating")


def _clear_hooks(inst: Installation) -> None:
    inst.prerun_hooks = inst.postrun_hooks = ()


def _flush(**_: Any) -> None:
    """Write out the non-blocking queue (``queue=True``) before the process exits."""
    flush_queues()


def _connect(inst: Installation) -> None:
    """Connect every receiver ``inst`` needs but ``setup_logging``'s (1-3, 5-7 above).

    Idempotent: each receiver has a ``dispatch_uid``; each is recorded in ``inst.changes``.
    """
    connect = inst.connect
    # 1. Task context.
    connect(signals.task_prerun, receivers.on_task_prerun, "logkit.prerun")
    connect(signals.task_postrun, receivers.on_task_postrun, "logkit.postrun")
    connect(signals.before_task_publish, receivers.on_before_task_publish, "logkit.publish")
    # The task's OpenTelemetry span is current when logkit binds the task's context,
    # whichever was connected first (see receivers.order_after_tracing).
    connect(signals.worker_init, receivers.on_worker_init, "logkit.wi")
    connect(signals.worker_shutdown, receivers.on_worker_stopped, "logkit.ws")
    connect(signals.worker_ready, receivers.order_after_tracing, "logkit.trace_order.ready")
    # 2. `celery ... --log-format/--log-field/--log-events`.
    if celery_options.add_preload_options(inst.app):
        connect(signals.user_preload_options, celery_options.on_user_preload_options,
                "logkit.preload")
        # Celery 5.3-5.6, while the `celery` command runs: sub-commands that refuse them.
        _compat.fill_preload_gaps(inst.app, inst.changes)
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
        connect(sig, receiver, uid)
    prose.install_filters(inst.changes)
    # 5. Connected last, so records logged by other receivers of these signals are written
    # too. Prefork children leave with os._exit (no atexit): flush on worker_process_shutdown.
    connect(signals.worker_process_shutdown, _flush, "logkit.flush.child")
    connect(signals.worker_shutdown, _flush, "logkit.flush")
    # 6. Celery's banners and the warnings it gives before logging is configured.
    banner.connect(inst)
    # 7. Levels and the sample rate over remote control.
    if "logkit.control" not in inst.changes:
        control.register()
        inst.changes.add("remote control commands (logkit_level, logkit_levels, logkit_sample)",
                         control.unregister, key="logkit.control")
    # Celery 5.3, while the `celery` command runs: `celery control/inspect` take them.
    _compat.add_control_actions({"control": (control.CONTROL_COMMAND, control.SAMPLE_COMMAND),
                                 "inspect": (control.INSPECT_COMMAND,)}, inst.changes)


def configure(
    loglevel: int | str | None = None,
    logfile: str | None = None,
    format: str | None = None,
    colorize: bool | None = None,
    *,
    app: Any = None,
    **options: Any,
) -> Active:
    """Set up logkit's logging in this process now, e.g. from your own ``setup_logging``.

    Configures the root and Celery's loggers as a worker would, then fires
    ``after_setup_logger`` and ``after_setup_task_logger`` with Celery's arguments.
    Without :func:`install` (or for another app than the installed one) it installs
    first, replacing the previous installation; :func:`uninstall` undoes both.

    Args:
        loglevel: The level (``"INFO"``, ``20``...), as Celery's ``-l``; ``None``: the
            configured or default level.
        logfile: A file to append to, as Celery's ``-f`` (``%n``/``%i``/``%I`` expanded);
            ``None``: stderr.
        format: A logkit format (``json``, ``console``, ``plain``, ``auto``) or a
            ``%``-style format string (Celery's ``format`` argument), which means
            ``plain`` with that string.
        colorize: Colour for ``console``, as Celery's ``-C``/``--no-color``; ``None``:
            decided from the stream (a terminal, ``NO_COLOR``, ``FORCE_COLOR``).
        app: The Celery app whose ``app.conf`` options apply; ``None``: the installed
            app, or none.
        **options: Any option of the configuration reference.

    Returns:
        What was set up: the resolved config, format, level, log file, sink and handlers.

    Raises:
        ConfigError: An option is invalid, or the log file cannot be opened for writing.
        ImportError: The running Celery lacks a part logkit needs on it (the message
            names it; see docs/compatibility.md).
    """
    plain_format = None
    if format is not None and "%(" in format:
        plain_format, format = format, "plain"
    if format is not None:
        options["format"] = format
    checked = check_options(options)
    _compat.require()
    inst = receivers.installation()
    if app is None and inst is not None:
        app = inst.app
    if inst is None or inst.app is not app:
        inst = _replace(app, options)
    config = LogConfig.resolve(app, {**inst.options, **checked}, cli=inst.cli)
    inst.use(config)
    _connect(inst)
    # From a setup_logging receiver: redirected when Celery would have for that call
    # (not from start_worker's); called alone: as worker_redirect_stdouts says.
    redirect, redirect_level = (_compat.celery_redirect()
                                or (None if app is not None else False, None))
    return inst.configure_process(
        config,
        loglevel=loglevel,
        logfile=logfile,
        colorize=colorize,
        app=app,
        plain_format=plain_format,
        redirect_stdouts=redirect,
        redirect_level=redirect_level,
    )
