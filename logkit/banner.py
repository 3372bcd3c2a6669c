"""Celery's startup banners: kept as text, or turned into fields of the startup events.

``celery worker`` prints a 16-line banner on stdout (node, version, transport,
results, concurrency, queues, tasks) and ``celery beat`` a 10-line one; both are
text, which every JSON log pipeline turns into junk entries. With the ``banner``
option at ``auto`` (the default) and JSON output, or at ``event``, the text is
not printed and its facts become fields of ``worker_ready`` / ``beat_started``
(:func:`worker_fields`, :func:`beat_fields`); ``text`` keeps Celery's banner,
``off`` drops it without adding fields.

How the text is suppressed, with no Celery class patched globally:

* worker: ``celeryd_after_setup`` fires after logging is configured and right
  before ``Worker.on_start`` prints the banner when ``quiet`` is false: the
  receiver sets that worker's ``quiet``. The plain "worker: Warm shutdown
  (MainProcess)" line is dropped too (that worker's shutdown handlers are
  installed with ``verbose=False``; the ``worker_shutting_down`` event says it;
  recorded in the installation's changes, put back by ``uninstall()``).
  Celery 5.3 and 5.4 have no ``verbose``: logkit installs the same handlers without
  the line (:mod:`logkit._compat`), and on 5.3, which prints it on stderr, does so in
  JSON mode whatever the ``banner`` option says.
* beat: ``Beat.run`` prints its banner before configuring logging and no signal
  fires in between, so logkit gives the app a ``Beat`` subclass (this app only,
  set by the ``user_preload_options`` receiver of ``celery beat``) whose
  ``__init__`` sets ``quiet`` when the output will be JSON.

The same signals start holding Python warnings until logging is configured
(:mod:`logkit.early`).
"""

from __future__ import annotations

import contextlib
import logging
import platform
from collections.abc import Callable
from typing import Any

import celery
from celery import signals

from . import _compat
from ._changes import Changes
from ._safe import log_exception
from .config import ConfigError, decide_format
from .early import intended_format, stderr_isatty
from .receivers import Installation, _other_setup_logging_receivers, installation

__all__ = ["beat_fields", "connect", "replaces_text", "worker_fields"]

logger = logging.getLogger("logkit")


def replaces_text(mode: str, fmt: str) -> bool:
    """Whether Celery's text banner is left out for ``banner`` ``mode`` and output ``fmt``."""
    return mode in ("event", "off") or (mode == "auto" and fmt == "json")


def adds_fields(mode: str, fmt: str) -> bool:
    """Whether the banner's facts are added to ``worker_ready`` / ``beat_started``."""
    return mode == "event" or (mode == "auto" and fmt == "json")


def _mode(inst: Installation) -> str:
    try:
        return inst.config.banner
    except ConfigError:  # reported when logging is configured
        return "auto"


def _configured() -> tuple[str, str] | None:
    """``(banner mode, output format)`` where logkit configured logging, else ``None``."""
    inst = installation()
    if inst is None or inst.active is None:
        return None
    return _mode(inst), inst.active.format


# ---------------------------------------------------------------------------
# The banner's facts
# ---------------------------------------------------------------------------


def _put(facts: dict[str, Any], key: str, get: Callable[[], Any]) -> None:
    """``facts[key] = get()``, unless it fails (a fact is never worth failing for)."""
    try:
        value = get()
    except Exception:
        return
    if value is not None:
        facts[key] = value


def _uri(app: Any) -> str:
    """The broker URL with the password masked, as Celery's banner shows it."""
    conn = app.connection()
    try:
        return str(conn.as_uri())
    finally:
        with contextlib.suppress(Exception):
            conn.release()


def _tasks(worker: Any) -> list[str]:
    """Registered task names; Celery's own (``celery.*``) only at DEBUG, as the banner does."""
    builtins = worker.loglevel is not None and worker.loglevel <= 10
    return sorted(t for t in worker.app.tasks if builtins or not t.startswith("celery."))


def worker_facts(worker: Any) -> dict[str, Any]:
    """The worker banner's facts (``pid``, ``pool`` and ``concurrency`` are ``worker_ready``'s)."""
    app = worker.app
    facts: dict[str, Any] = {}
    _put(facts, "celery_version", lambda: celery.__version__)
    _put(facts, "app", lambda: app.main or "__main__")
    _put(facts, "transport", lambda: _uri(app))
    _put(facts, "results", lambda: str(app.backend.as_uri()))
    _put(facts, "autoscale", lambda: list(worker.autoscale) if worker.autoscale else None)
    _put(facts, "task_events", lambda: bool(worker.task_events))
    _put(facts, "queues", lambda: sorted(app.amqp.queues.consume_from))
    _put(facts, "tasks", lambda: _tasks(worker))
    _put(facts, "platform", platform.platform)
    return facts


def beat_facts(service: Any) -> dict[str, Any]:
    """The beat banner's facts not in ``beat_started`` already."""
    app = service.app
    facts: dict[str, Any] = {}
    _put(facts, "celery_version", lambda: celery.__version__)
    _put(facts, "app", lambda: app.main or "__main__")
    _put(facts, "transport", lambda: _uri(app))
    _put(facts, "loader", lambda: f"{type(app.loader).__module__}.{type(app.loader).__qualname__}")
    return facts


def worker_fields(worker: Any) -> dict[str, Any]:
    """Fields for ``worker_ready``: the banner's facts when they replace the text, else ``{}``."""
    decided = _configured()
    if worker is None or decided is None or not adds_fields(*decided):
        return {}
    return worker_facts(worker)


def beat_fields(service: Any) -> dict[str, Any]:
    """Fields for ``beat_started``: the banner's facts when they replace the text, else ``{}``."""
    decided = _configured()
    if service is None or decided is None or not adds_fields(*decided):
        return {}
    return beat_facts(service)


# ---------------------------------------------------------------------------
# Worker
# ---------------------------------------------------------------------------


def _quiet_shutdown_lines(worker: Any, changes: Changes) -> None:
    """Have ``worker`` install its SIGTERM/SIGQUIT handlers without their text notice
    (:func:`logkit._compat.install_quiet_shutdown_handlers`), right after Celery's own
    (``Worker.install_platform_tweaks``, called once the banner is printed). The wrapper
    and the handlers are recorded in ``changes`` with their undo."""
    original = worker.install_platform_tweaks
    had = vars(worker).get("install_platform_tweaks")

    def install_platform_tweaks(target: Any) -> None:
        original(target)
        try:
            _compat.install_quiet_shutdown_handlers(target, changes)
        except Exception:  # the worker starts whatever becomes of its notice
            log_exception(logger, logging.WARNING, "logkit: the worker's shutdown notice stays")

    def undo() -> None:
        if vars(worker).get("install_platform_tweaks") is install_platform_tweaks:
            if had is None:
                del worker.install_platform_tweaks
            else:
                worker.install_platform_tweaks = had

    if changes.add("worker.install_platform_tweaks: shutdown handlers without their notice",
                   undo, key=("install_platform_tweaks", id(worker))):
        worker.install_platform_tweaks = install_platform_tweaks


def _hold_if_logkit_configures(inst: Installation) -> None:
    """Hold warnings, unless the user's own ``setup_logging`` receiver decides about them."""
    if not _other_setup_logging_receivers():
        inst.warnings.hold(inst.changes)


def _show_held_warnings() -> None:
    inst = installation()
    if inst is not None:
        inst.warnings.show_held()


def on_celeryd_init(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """``celeryd_init`` (before Celery's ``check_privileges`` warns): hold warnings."""
    inst = installation()
    if inst is not None and getattr(instance, "app", inst.app) is inst.app:
        _hold_if_logkit_configures(inst)


def on_celeryd_after_setup(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """``celeryd_after_setup`` (logging configured, banner not yet printed): decide on it."""
    _show_held_warnings()  # when logkit did not configure logging; otherwise already done
    inst = installation()
    decided = _configured()
    if inst is None or decided is None or getattr(instance, "app", None) is not inst.app:
        return
    if not hasattr(instance, "quiet"):
        return
    if replaces_text(*decided):
        instance.quiet = True
        _quiet_shutdown_lines(instance, inst.changes)
    elif decided[1] == "json" and _compat.SHUTDOWN_NOTICE_ON_STDERR:  # keep stderr all JSON
        _quiet_shutdown_lines(instance, inst.changes)


# ---------------------------------------------------------------------------
# Beat
# ---------------------------------------------------------------------------


def _beat_replaces_text(inst: Installation, logfile: Any) -> bool:
    """Before beat configures logging: will the text banner be replaced?"""
    if _other_setup_logging_receivers():
        return False  # the user's own logging: logkit does not decide the output
    try:
        fmt = inst.config.format
    except ConfigError:  # reported (as JSON if intended) when logging is configured
        fmt = intended_format(inst.app, inst.options, inst.cli)
    return replaces_text(_mode(inst), decide_format(fmt, logfile, stderr_isatty))


def _quiet_beat_class(base: Any) -> Any:
    """``base`` (the app's ``Beat``), but quiet when the banner is replaced."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        base.__init__(self, *args, **kwargs)
        inst = installation()
        if inst is not None and inst.app is self.app and not self.quiet:
            self.quiet = _beat_replaces_text(inst, self.logfile)

    return type(base.__name__, (base,), {"__init__": __init__, "_logkit_banner": True,
                                          "__module__": base.__module__})


def on_command_start(app: Any = None, **_: Any) -> None:
    """``user_preload_options`` (a ``celery`` command starts): hold warnings; quiet beat."""
    inst = installation()
    if inst is None or app is None or app is not inst.app:
        return
    _hold_if_logkit_configures(inst)
    with contextlib.suppress(AttributeError, ImportError, TypeError):  # no Beat to quiet
        if not getattr(app.Beat, "_logkit_banner", False):
            original = app.Beat
            app.Beat = quiet = _quiet_beat_class(original)

            def undo() -> None:
                if app.__dict__.get("Beat") is quiet:
                    app.Beat = original

            inst.changes.add("app.Beat: quiet banner", undo)


def on_beat_init(**_: Any) -> None:
    """``beat_init``: show the warnings still held (when logkit did not configure logging)."""
    _show_held_warnings()


# ---------------------------------------------------------------------------
# Connecting
# ---------------------------------------------------------------------------


def connect(inst: Installation) -> None:
    """Connect the receivers above for ``inst`` (idempotent); called by :func:`logkit.install`."""
    inst.connect(signals.user_preload_options, on_command_start, "logkit.banner.preload")
    inst.connect(signals.celeryd_init, on_celeryd_init, "logkit.banner.init")
    inst.connect(signals.celeryd_after_setup, on_celeryd_after_setup,
                 "logkit.banner.after_setup")
    inst.connect(signals.beat_init, on_beat_init, "logkit.banner.beat_init")
