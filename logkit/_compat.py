"""Every difference between the Celery and Python versions logkit supports, in one place.

logkit supports Celery 5.3 to 5.7 on Python 3.11 to 3.15 (docs/compatibility.md). Where
those versions differ, or where logkit needs a part of Celery that is not public API,
the code is here and nowhere else:

* a **gate** per difference: a named constant, decided once from the running versions,
  whose comment says which version makes it obsolete. Dropping that version is deleting
  the constant and the branches behind it;
* the **shims** the gates choose between, each a function the rest of logkit calls;
* **Celery's internals** (a private name, a registry with no public call, a function's
  closure): imported inside the function that uses them, never when logkit is imported,
  so ``import logkit`` works on a Celery that renamed one. :func:`require`, run by
  ``logkit.install()`` and ``logkit.configure()``, raises :class:`CeleryInternalsMissing`
  naming each one logkit needs on the running Celery and does not find
  (:data:`INTERNALS`).

Each shim is tested on the versions it serves: ``tests/test_compat.py`` is part of the
``-m contract`` tests that every ``celery-<python>(<minor>)`` session of the version
matrix (noxfile.py) runs.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import celery
import click
from celery import signals

from ._changes import Changes

__all__ = [
    "APPLY_HAS_NO_LINEAGE",
    "CELERY",
    "CONTROL_ACTIONS_FIXED",
    "INTERNALS",
    "LOGGING_START",
    "PY312",
    "PY313",
    "PYTHON",
    "SHUTDOWN_HANDLER_HAS_NO_VERBOSE",
    "SHUTDOWN_NOTICE_ON_STDERR",
    "SUBCOMMANDS_REFUSE_PRELOAD_OPTIONS",
    "CeleryInternalsMissing",
    "Internal",
    "add_control_actions",
    "celery_redirect",
    "eager_lineage",
    "fill_preload_gaps",
    "install_quiet_shutdown_handlers",
    "live_receivers",
    "remove_control_command",
    "require",
]

#: The running Celery's ``(major, minor)``.
CELERY: tuple[int, int] = (int(celery.VERSION[0]), int(celery.VERSION[1]))
#: The running Python's ``(major, minor)``.
PYTHON: tuple[int, int] = (sys.version_info[0], sys.version_info[1])

# ---------------------------------------------------------------------------
# Gates: one per difference
# ---------------------------------------------------------------------------

#: Python 3.12+: a ``LogRecord`` has ``taskName`` (the running asyncio task's name, when
#: ``logging.logAsyncioTasks``). Remove (always true) when Python 3.11 is dropped.
PY312 = PYTHON >= (3, 12)
#: Python 3.13+: ``LogRecord`` takes its times from ``time.time_ns()`` and
#: ``logging._startTime`` is in nanoseconds (3.11, 3.12: ``time.time()``, seconds).
#: Remove the older branches when Python 3.12 is dropped.
PY313 = PYTHON >= (3, 13)

#: Celery 5.3 prints its shutdown notice (``worker: Warm shutdown (MainProcess)``) on
#: stderr, where logkit's JSON goes (5.4+: on stdout). Remove when Celery 5.3 is dropped.
SHUTDOWN_NOTICE_ON_STDERR = CELERY < (5, 4)
#: Celery 5.3's ``celery control`` and ``celery inspect`` fix the choices of their action
#: argument when their module is imported, before the app registers logkit's commands
#: (:func:`add_control_actions`). Remove when Celery 5.3 is dropped.
CONTROL_ACTIONS_FIXED = CELERY < (5, 4)
#: Celery 5.3 and 5.4's shutdown handlers always print their notice (5.5+:
#: ``verbose=False``): logkit installs the same handlers without it
#: (:func:`install_quiet_shutdown_handlers`). Remove when Celery 5.4 is dropped.
SHUTDOWN_HANDLER_HAS_NO_VERBOSE = CELERY < (5, 5)
#: Celery < 5.6 gives a task run by ``apply()`` inside another task no ``parent_id`` nor
#: ``root_id``: logkit takes them from the calling task (:func:`eager_lineage`). Remove
#: when Celery 5.5 is dropped.
APPLY_HAS_NO_LINEAGE = CELERY < (5, 6)
#: Celery < 5.7 hands an app's preload options (logkit's ``--log-*``) to every ``celery``
#: sub-command's function, and most take none (:func:`fill_preload_gaps`). Remove when
#: Celery 5.6 is dropped.
SUBCOMMANDS_REFUSE_PRELOAD_OPTIONS = CELERY < (5, 7)

#: logging's start time in seconds, which ``LogRecord.relativeCreated`` counts from.
LOGGING_START: float = (
    logging._startTime / 1e9 if PY313  # type: ignore[attr-defined]
    else logging._startTime  # type: ignore[attr-defined]
)

# ---------------------------------------------------------------------------
# Celery's internals: what logkit needs, on which Celery
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Internal:
    """A part of Celery that logkit uses and that is not public API."""

    #: The module it is in, e.g. ``celery._state``.
    module: str
    #: Its name in the module (dotted for an attribute's attribute), e.g. ``_task_stack``.
    name: str
    #: Whether logkit needs it on the running Celery (the gate of the shim that uses it).
    needed: bool
    #: What logkit does with it.
    used_for: str

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"

    def present(self) -> bool:
        """Whether the running Celery has it."""
        try:
            value: Any = importlib.import_module(self.module)
        except ImportError:
            return False
        for part in self.name.split("."):
            try:
                value = getattr(value, part)
            except AttributeError:
                return False
        return True


#: Every part of Celery logkit uses that is not public API, and whether this Celery needs it.
INTERNALS: tuple[Internal, ...] = (
    Internal("celery._state", "_task_stack", APPLY_HAS_NO_LINEAGE,
             "the parent_id and root_id of a task run by apply() inside a task"),
    Internal("celery.bin.base", "handle_preload_options", SUBCOMMANDS_REFUSE_PRELOAD_OPTIONS,
             "letting every celery sub-command take the --log-* options"),
    Internal("celery.worker.control", "Panel.data", True,
             "taking the logkit_level, logkit_levels, logkit_sample commands out at uninstall()"),
    Internal("celery.worker.control", "Panel.meta", True,
             "taking the logkit_level, logkit_levels, logkit_sample commands out at uninstall()"),
    Internal("celery.utils.dispatch.signal", "Signal._live_receivers", True,
             "knowing whether the app connected its own setup_logging receiver"),
    Internal("celery.apps.worker", "install_worker_term_handler.keywords", True,
             "leaving the worker's shutdown notice out of JSON output"),
    Internal("celery.apps.worker", "install_worker_term_hard_handler.keywords", True,
             "leaving the worker's shutdown notice out of JSON output"),
    Internal("celery.utils.log", "in_sighandler", SHUTDOWN_HANDLER_HAS_NO_VERBOSE,
             "leaving the worker's shutdown notice out of JSON output"),
    Internal("celery.worker.state", "should_stop", SHUTDOWN_HANDLER_HAS_NO_VERBOSE,
             "leaving the worker's shutdown notice out of JSON output"),
    Internal("celery.worker.state", "should_terminate", SHUTDOWN_HANDLER_HAS_NO_VERBOSE,
             "leaving the worker's shutdown notice out of JSON output"),
)


class CeleryInternalsMissing(ImportError):
    """The running Celery lacks a part logkit needs on it; the message names each one."""


def require() -> None:
    """Check that the running Celery has every internal logkit needs on it.

    Raises:
        CeleryInternalsMissing: An ``ImportError`` naming each missing part, what logkit
            uses it for and the Celery versions logkit supports.
    """
    missing = [internal for internal in INTERNALS if internal.needed and not internal.present()]
    if missing:
        parts = "; ".join(f"{internal} (for {internal.used_for})" for internal in missing)
        raise CeleryInternalsMissing(
            f"logkit: this Celery ({celery.__version__}) has no {parts}; logkit supports "
            "Celery 5.3 to 5.7 (see docs/compatibility.md)"
        )


# ---------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------


def live_receivers(signal: Any, sender: Any = None) -> list[Any]:
    """The receivers of Celery ``signal`` for ``sender``, weak references resolved."""
    receivers: list[Any] = signal._live_receivers(sender)
    return receivers


# ---------------------------------------------------------------------------
# Standard streams: redirected exactly when Celery would (#39)
# ---------------------------------------------------------------------------


def celery_redirect() -> tuple[bool, Any] | None:
    """What Celery would do with ``sys.stdout``/``sys.stderr`` for the logging set-up under
    way in this thread, had no receiver taken ``setup_logging``: ``(redirect, level)``,
    or ``None`` when no set-up of Celery's is under way (``setup_logging`` sent by other
    code; ``setup_logging_subsystem`` called alone, which never redirects).

    The ``setup_logging`` signal does not carry it, so it is read from the call that
    sent the signal, ``celery.app.log.Logging.setup(redirect_stdouts=..., redirect_level=...)``
    (``celery beat``: ``worker_redirect_stdouts``; a prefork child: as its parent did;
    ``celery.contrib.testing.worker.start_worker`` and ``celery_worker``: never), and, when
    ``celery worker`` made that call (``redirect_stdouts=False``: it redirects later, on
    start, and only if nobody took ``setup_logging``), from the worker's own
    ``redirect_stdouts`` and ``redirect_stdouts_level``. Celery 5.3 to 5.7 alike.
    """
    log_module = sys.modules.get("celery.app.log")
    setup = getattr(getattr(log_module, "Logging", None), "setup", None)
    code = getattr(setup, "__code__", None)
    if code is None:
        return None
    frame: types.FrameType | None = sys._getframe(1)
    for _ in range(64):
        if frame is None:
            return None
        if frame.f_code is code:
            break
        frame = frame.f_back
    else:
        return None
    try:
        local = frame.f_locals
        redirect, level = bool(local.get("redirect_stdouts")), local.get("redirect_level")
        caller = frame.f_back
        worker = caller.f_locals.get("self") if caller is not None else None
        apps_worker = sys.modules.get("celery.apps.worker")
        worker_class = getattr(apps_worker, "Worker", None)
        if (not redirect and isinstance(worker_class, type) and isinstance(worker, worker_class)
                and getattr(worker, "redirect_stdouts", False)):
            return True, getattr(worker, "redirect_stdouts_level", None)
        return redirect, level
    finally:
        del frame


# ---------------------------------------------------------------------------
# Task context: eager lineage (Celery < 5.6)
# ---------------------------------------------------------------------------


def eager_lineage() -> tuple[Any, Any]:
    """``(parent_id, root_id)`` of the task ``apply()`` runs now, from the calling task.

    Celery < 5.6 (:data:`APPLY_HAS_NO_LINEAGE`): ``apply()`` inside a task leaves both
    out of the subtask's request: they come from the calling task's request (the entry
    below this task on Celery's task stack). A top-level ``apply()`` (no calling task)
    gives ``(None, None)``.
    """
    from celery._state import _task_stack

    tasks = _task_stack.stack
    if len(tasks) < 2:
        return None, None
    caller = tasks[-2]
    requests = caller.request_stack.stack  # the caller's request is below this one's when
    calling = requests[-2] if caller is tasks[-1] and len(requests) > 1 else requests[-1]
    return calling.id, getattr(calling, "root_id", None) or calling.id


# ---------------------------------------------------------------------------
# Remote control commands
# ---------------------------------------------------------------------------


def remove_control_command(name: str, handler: Callable[..., Any]) -> None:
    """Take remote control command ``name`` out of Celery's registry, if ``handler`` is
    still the one registered (Celery has no call to unregister a command)."""
    from celery.worker.control import Panel

    if Panel.data.get(name) is handler:
        del Panel.data[name]
        Panel.meta.pop(name, None)


def add_control_actions(names: Mapping[str, Sequence[str]], changes: Changes) -> list[str]:
    """Let ``celery control``/``celery inspect`` take logkit's commands on Celery 5.3.

    ``names``: the ``celery`` sub-command (``control``, ``inspect``) -> logkit's commands.
    Only while the ``celery`` command runs (``celery.bin.control`` imported: the app
    module is loaded before the sub-command's arguments are parsed) and only on Celery
    5.3 (:data:`CONTROL_ACTIONS_FIXED`), which fixes the choices of their action argument
    when the module is imported, before the app registers any command: each command is
    added to them, recorded in ``changes`` (:func:`logkit.uninstall` puts the choices back).

    Returns:
        The sub-commands whose choices were extended.
    """
    if not CONTROL_ACTIONS_FIXED:
        return []
    module = sys.modules.get("celery.bin.control")
    done: list[str] = []
    for command, ours in names.items():
        for param in getattr(getattr(module, command, None), "params", ()):
            choices = getattr(param.type, "choices", None)
            if param.name != "action" or choices is None:
                continue
            new = [name for name in ours if name not in choices]
            if new and changes.add(f"celery {command}: {', '.join(new)} among its actions",
                                   functools.partial(setattr, param.type, "choices", choices),
                                   key=("celery actions", command)):
                param.type.choices = [*choices, *new]
                done.append(command)
    return done


# ---------------------------------------------------------------------------
# The worker's shutdown notice (Celery 5.3 and 5.4: no ``verbose``)
# ---------------------------------------------------------------------------


def install_quiet_shutdown_handlers(worker: Any, changes: Changes) -> None:
    """Install ``worker``'s SIGTERM and SIGQUIT handlers without their text notice.

    Celery 5.5+ installs them itself with ``verbose=False``; on 5.3 and 5.4
    (:data:`SHUTDOWN_HANDLER_HAS_NO_VERBOSE`) logkit installs the same handlers less the
    notice (:func:`_quiet_shutdown_handler`). Each replaced handler is recorded in
    ``changes``: :func:`logkit.uninstall` puts Celery's back, unless another one was
    installed since.
    """
    from celery import platforms
    from celery.apps import worker as program

    for install in (program.install_worker_term_handler,
                    program.install_worker_term_hard_handler):
        sig = install.keywords["sig"]
        previous = platforms.signals[sig]
        if SHUTDOWN_HANDLER_HAS_NO_VERBOSE:
            _quiet_shutdown_handler(worker, **install.keywords)
        else:
            install(worker, verbose=False)
        handler = platforms.signals[sig]
        changes.add(f"{sig} handler: the worker's shutdown without its notice",
                    functools.partial(_put_back_handler, sig, handler, previous),
                    key=("shutdown handler", sig))


def _put_back_handler(sig: str, installed: Any, previous: Any) -> None:
    from celery import platforms

    if platforms.signals[sig] is installed:  # another handler since: leave it
        platforms.signals[sig] = previous


def _quiet_shutdown_handler(
    worker: Any, sig: str, how: str, exitcode: int = 0, callback: Any = None
) -> None:
    """Celery 5.3/5.4's ``celery.apps.worker._shutdown_handler``, less its notice.

    What it installs for ``sig``, less the ``safe_say``: the ``worker_shutting_down``
    signal (logkit's event of that name says it as a record) and the worker state's stop
    flag.
    """
    from billiard.process import current_process
    from celery import platforms
    from celery.utils.log import in_sighandler

    def _handle_request(*_: Any) -> None:
        with in_sighandler():
            from celery.worker import state

            if current_process()._name == "MainProcess":
                if callback:
                    callback(worker)
                signals.worker_shutting_down.send(
                    sender=worker.hostname, sig=sig, how=how, exitcode=exitcode
                )
            setattr(state, {"Warm": "should_stop", "Cold": "should_terminate"}[how], exitcode)

    _handle_request.__name__ = f"worker_{how}"
    platforms.signals[sig] = _handle_request


# ---------------------------------------------------------------------------
# `celery` sub-commands that refuse the preload options (Celery 5.3 to 5.6)
# ---------------------------------------------------------------------------


def _accepts(function: Callable[..., Any], name: str) -> bool:
    """Whether ``function`` takes a keyword argument ``name`` (as Celery 5.7 decides)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.kind is not inspect.Parameter.POSITIONAL_ONLY and p.name == name)
        for p in parameters
    )


class _PreloadConsumer:
    """A ``celery`` sub-command's callback that takes off the preload options its
    function refuses, after ``user_preload_options`` was sent with them (once).

    ``through``: the callback is Celery's ``pass_context(handle_preload_options(f))``,
    whose middle part would send the signal and hand the options to ``f``: ``f`` is
    called here directly, with the context, after the same signal (sender ``f``).
    Otherwise the callback is called without the refused options, after the signal
    (sender: the callback), as Celery 5.7's ``consume_preload_options`` does.
    """

    def __init__(self, callback: Callable[..., Any], inner: Callable[..., Any],
                 through: bool) -> None:
        functools.update_wrapper(self, callback)  # its name and doc; __wrapped__
        self.callback, self.inner, self.through = callback, inner, through

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        app = ctx.obj.app
        options: dict[str, Any] = {}
        for option in app.user_options.get("preload", ()):
            name = option.name
            if name in kwargs:
                options[name] = kwargs[name]
                if not _accepts(self.inner, name):
                    del kwargs[name]
        if options:
            sender = self.inner if self.through else self.callback
            signals.user_preload_options.send(sender=sender, app=app, options=options)
        if self.through:
            return self.inner(ctx, *args, **kwargs)
        return self.callback(*args, **kwargs)


def _noop() -> None:  # pragma: no cover - never called: its wrapper's code is compared
    pass


def fill_preload_gaps(app: Any, changes: Changes) -> list[str]:
    """Let every ``celery`` sub-command of Celery 5.3 to 5.6 take ``app``'s preload options.

    Celery adds an app's preload options (logkit's ``--log-*``) to every ``celery``
    sub-command and hands their values to the sub-command's function; on Celery 5.3 to
    5.6 (:data:`SUBCOMMANDS_REFUSE_PRELOAD_OPTIONS`) most of those functions take none,
    so ``celery -A proj result ID`` (``call``, ``graph``, ``list``, ``upgrade``,
    ``logtool``, ``amqp``, ``control``; on 5.3.0 also ``purge``, ``shell``, ``multi``,
    ``report``) fails with a ``TypeError``. Celery 5.7 wraps each callback in
    ``consume_preload_options``; this does the same on the older releases, for the
    callbacks whose function refuses an option, and records each replacement in
    ``changes`` (:func:`logkit.uninstall` puts Celery's callback back).

    Does nothing unless the ``celery`` command is running (``celery.bin.celery``
    imported: the app module is loaded before the sub-command's arguments are parsed).
    ``user_preload_options`` is sent once per command, as before: where Celery's
    ``handle_preload_options`` would send it, the signal is sent here instead of there
    (a callback is recognised as Celery's wrapper by its code, the closure
    ``handle_preload_options`` returns).

    Returns:
        The names of the sub-commands whose callback was replaced.
    """
    if not SUBCOMMANDS_REFUSE_PRELOAD_OPTIONS:
        return []
    group = getattr(sys.modules.get("celery.bin.celery"), "celery", None)
    commands = getattr(group, "commands", None)
    if not isinstance(commands, Mapping):
        return []
    from celery.bin import base

    names = [option.name for option in app.user_options.get("preload", ())]
    sending = base.handle_preload_options(_noop).__code__  # its wrapper's code
    filled: list[str] = []
    for name, command in commands.items():
        callback = command.callback
        if callback is None or isinstance(callback, _PreloadConsumer):
            continue
        chain = [callback]
        while (wrapped := getattr(chain[-1], "__wrapped__", None)) is not None:
            chain.append(wrapped)
        inner = chain[-1]
        if all(_accepts(inner, option) for option in names):
            continue
        through = len(chain) == 3 and getattr(chain[1], "__code__", None) is sending
        if not through and any(getattr(f, "__code__", None) is sending for f in chain):
            continue  # handle_preload_options inside another shape: leave it
        if changes.add(f"celery {name}: preload options taken off its arguments",
                       functools.partial(setattr, command, "callback", callback),
                       key=("celery preload options", name)):
            command.callback = _PreloadConsumer(callback, inner, through)
            filled.append(name)
    return filled
