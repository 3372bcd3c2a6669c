"""Each shim of logkit._compat, on the Celery and Python it serves (#35).

Marked ``contract``: the version matrix runs this file in every
``celery-<python>(<minor>)`` session, so each gate is checked against the behaviour of
the Celery and Python it is decided on, and each shim is run where it is used.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celery
import pytest
from celery import Celery, platforms, signals
from celery_versions import (
    APPLY_HAS_NO_LINEAGE,
    CONTROL_HAS_LIST,
    SHUTDOWN_NOTICE,
    SHUTDOWN_NOTICE_ON_STDERR,
    SUBCOMMANDS_REFUSE_PRELOAD_OPTIONS,
)

import logkit
from logkit import _compat, banner, buffer
from logkit._changes import Changes
from logkit.events import base

pytestmark = pytest.mark.contract

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------
# Gates: each one what the running versions do
# ---------------------------------------------------------------------------


def test_the_gates_are_the_running_versions() -> None:
    assert (celery.VERSION.major, celery.VERSION.minor) == _compat.CELERY
    assert sys.version_info[:2] == _compat.PYTHON
    # each as the tests' own table of Celery's differences says (tests/celery_versions.py)
    assert _compat.APPLY_HAS_NO_LINEAGE is APPLY_HAS_NO_LINEAGE
    assert _compat.SHUTDOWN_NOTICE_ON_STDERR is SHUTDOWN_NOTICE_ON_STDERR
    assert _compat.SUBCOMMANDS_REFUSE_PRELOAD_OPTIONS is SUBCOMMANDS_REFUSE_PRELOAD_OPTIONS
    assert _compat.CONTROL_ACTIONS_FIXED is not CONTROL_HAS_LIST


def test_each_celery_gate_is_what_celery_s_code_does() -> None:
    from celery.apps import worker
    from celery.bin import base as bin_base
    from celery.bin import control

    verbose = "verbose" in inspect.signature(worker._shutdown_handler).parameters
    assert _compat.SHUTDOWN_HANDLER_HAS_NO_VERBOSE is not verbose
    refuse = not hasattr(bin_base, "consume_preload_options")
    assert _compat.SUBCOMMANDS_REFUSE_PRELOAD_OPTIONS is refuse
    fixed = any(p.name == "action" and hasattr(p.type, "choices") for p in control.control.params)
    assert _compat.CONTROL_ACTIONS_FIXED is fixed


def test_each_python_gate_is_what_logging_does() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    assert _compat.PY312 is hasattr(record, "taskName")
    assert _compat.PY313 is isinstance(logging._startTime, int)  # type: ignore[attr-defined]
    # logging's start in seconds, whichever unit logging keeps it in
    assert abs(_compat.LOGGING_START + record.relativeCreated / 1000 - record.created) < 0.01


def test_every_internal_is_there_on_the_supported_celery() -> None:
    missing = [str(internal) for internal in _compat.INTERNALS
               if internal.needed and not internal.present()]
    assert missing == []
    _compat.require()


# ---------------------------------------------------------------------------
# Celery's internals: `import logkit` survives their absence, install() names them
# ---------------------------------------------------------------------------

REMOVE_THEN_INSTALL = r"""
import importlib, json, sys
# Celery's own modules first: they import the name themselves (a Celery without it
# would not), then the name goes
import celery.app.base, celery.apps.worker, celery.bin.base, celery.worker.control

module_name, name = sys.argv[1], sys.argv[2]
module = importlib.import_module(module_name)
*path, last = name.split(".")
owner = module
for part in path:
    owner = getattr(owner, part)
try:
    delattr(owner, last)
except (AttributeError, TypeError):  # a partial's keywords: the partial made a function
    setattr(module, path[0], lambda *args, **kwargs: None)

import logkit  # must work without it
from celery import Celery

try:
    logkit.install(Celery("compat_probe", set_as_current=False))
except ImportError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
else:
    logkit.uninstall()
    print(json.dumps({"error": None}))
"""


@pytest.mark.parametrize("internal", _compat.INTERNALS, ids=str)
def test_import_survives_a_missing_internal_and_install_names_it(
    internal: _compat.Internal,
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", REMOVE_THEN_INSTALL, internal.module, internal.name],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    if internal.needed:  # a clear error, naming it and what it is for
        assert result["error"] == "CeleryInternalsMissing", result
        assert str(internal) in result["message"]
        assert internal.used_for in result["message"]
        assert celery.__version__ in result["message"]
    else:  # this Celery does not need it
        assert result["error"] is None, result


def test_importing_logkit_imports_no_private_module_of_celery() -> None:
    code = "import sys, logkit; print(json.dumps(sorted(m for m in sys.modules if '._' in m" \
           " and m.startswith('celery'))))"
    proc = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    private = set(json.loads(proc.stdout))
    # celery._state is imported by Celery itself (celery.app); logkit reads nothing from it
    # at import: the test above deletes its _task_stack before `import logkit`
    assert private <= {"celery._state"}, private


# ---------------------------------------------------------------------------
# The worker's shutdown notice: Celery 5.5+'s verbose=False, logkit's copy on 5.3/5.4
# ---------------------------------------------------------------------------


class _Worker:
    """What Celery's shutdown handlers read of a worker, and its install_platform_tweaks."""

    hostname = "compat@test"

    def install_platform_tweaks(self, worker: Any) -> None:
        from celery.apps.worker import install_worker_term_handler, install_worker_term_hard_handler

        install_worker_term_handler(worker)
        install_worker_term_hard_handler(worker)


@pytest.fixture
def saved_handlers() -> Iterator[None]:
    """SIGTERM/SIGQUIT handlers and the worker state's flags as they were before the test."""
    from celery.worker import state

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGQUIT)}
    flags = (state.should_stop, state.should_terminate)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    state.should_stop, state.should_terminate = flags


def _shut_down(sig: str) -> list[dict[str, Any]]:
    """Call the handler installed for ``sig``; the ``worker_shutting_down`` it sent."""
    sent: list[dict[str, Any]] = []

    def seen(sender: Any = None, **kwargs: Any) -> None:
        sent.append({"sender": sender, **{k: kwargs[k] for k in ("sig", "how", "exitcode")}})

    signals.worker_shutting_down.connect(seen, weak=False)
    try:
        platforms.signals[sig](platforms.signals.signum(sig), None)
    finally:
        signals.worker_shutting_down.disconnect(seen)
    return sent


def test_celery_s_own_handler_says_the_notice(
    saved_handlers: None, capfd: pytest.CaptureFixture[str],
) -> None:
    """The contrast: without logkit's part, the notice is printed."""
    worker = _Worker()
    worker.install_platform_tweaks(worker)
    assert _shut_down("SIGTERM")[0]["how"] == "Warm"
    out, err = capfd.readouterr()
    assert SHUTDOWN_NOTICE in (err if SHUTDOWN_NOTICE_ON_STDERR else out)


def test_quiet_shutdown_handlers_send_the_signal_without_the_notice_and_are_undone(
    saved_handlers: None, capfd: pytest.CaptureFixture[str],
) -> None:
    from celery.worker import state

    worker, changes = _Worker(), Changes()
    banner._quiet_shutdown_lines(worker, changes)
    assert "install_platform_tweaks" in vars(worker)
    worker.install_platform_tweaks(worker)  # as Worker.on_start calls it
    quiet = {sig: platforms.signals[sig] for sig in ("SIGTERM", "SIGQUIT")}
    assert _shut_down("SIGTERM") == [
        {"sender": "compat@test", "sig": "SIGTERM", "how": "Warm", "exitcode": 0}]
    assert state.should_stop == 0
    out, err = capfd.readouterr()
    assert SHUTDOWN_NOTICE not in out + err
    # SIGQUIT's (not called here: on 5.5+ its callback needs a real worker's consumer)
    assert quiet["SIGQUIT"].__name__ == "worker_Cold"
    described = changes.describe()
    assert any("install_platform_tweaks" in what for what in described), described
    assert sum("handler: the worker's shutdown" in what for what in described) == 2
    # uninstall: Celery's own handlers (with their notice) and the method are back
    assert changes.undo() == []
    assert "install_platform_tweaks" not in vars(worker)
    for sig, handler in quiet.items():
        assert platforms.signals[sig] is not handler
    _shut_down("SIGTERM")
    out, err = capfd.readouterr()
    assert SHUTDOWN_NOTICE in (err if SHUTDOWN_NOTICE_ON_STDERR else out)


def test_a_handler_installed_after_logkit_s_is_left_at_undo(saved_handlers: None) -> None:
    worker, changes = _Worker(), Changes()
    worker.install_platform_tweaks(worker)
    _compat.install_quiet_shutdown_handlers(worker, changes)

    def theirs(*_: Any) -> None:
        pass

    platforms.signals["SIGTERM"] = theirs
    changes.undo()
    assert platforms.signals["SIGTERM"] is theirs


# ---------------------------------------------------------------------------
# `celery control` / `celery inspect` choices (Celery 5.3)
# ---------------------------------------------------------------------------


def _actions() -> dict[str, list[str] | None]:
    from celery.bin import control

    out: dict[str, list[str] | None] = {}
    for name in ("control", "inspect"):
        params = [p for p in getattr(control, name).params if p.name == "action"]
        out[name] = list(params[0].type.choices) if params else None
    return out


def test_celery_control_takes_logkit_s_commands() -> None:
    before = _actions()
    inst = logkit.install(Celery("compat_control", set_as_current=False))
    try:
        during = _actions()
        changed = [what for what in inst.changes.describe() if "among its actions" in what]
    finally:
        logkit.uninstall()
    if _compat.CONTROL_ACTIONS_FIXED:  # Celery 5.3: fixed choices, logkit's added
        assert during["control"] == [*(before["control"] or []), "logkit_level", "logkit_sample"]
        assert during["inspect"] == [*(before["inspect"] or []), "logkit_levels"]
        assert len(changed) == 2
    else:  # 5.4+: `celery control --list`, no fixed choices to extend
        assert during == before == {"control": None, "inspect": None}
        assert changed == []
    assert _actions() == before


# ---------------------------------------------------------------------------
# A task run by apply() inside a task: its parent and root (Celery < 5.6: from the caller)
# ---------------------------------------------------------------------------


def test_a_task_applied_inside_a_task_has_its_caller_as_parent_and_root() -> None:
    app = Celery("compat_lineage", set_as_current=False)
    seen: dict[str, Any] = {}

    @app.task(bind=True)
    def inner(self: Any) -> None:
        seen["request"] = (self.request.parent_id, self.request.root_id)
        seen["context"] = logkit.get_context()

    @app.task(bind=True)
    def outer(self: Any) -> None:
        seen["outer"] = self.request.id
        inner.apply()

    logkit.install(app)
    try:
        outer.apply()
    finally:
        logkit.uninstall()
    if APPLY_HAS_NO_LINEAGE:  # Celery leaves them out: logkit's context has them
        assert seen["request"] == (None, None)
    else:
        assert seen["request"] == (seen["outer"], seen["outer"])
    assert seen["context"]["parent_id"] == seen["outer"]
    assert seen["context"]["root_id"] == seen["outer"]


# ---------------------------------------------------------------------------
# Record times (Python 3.13: nanoseconds)
# ---------------------------------------------------------------------------


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _times_agree(record: logging.LogRecord) -> None:
    fresh = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    assert abs(record.created - fresh.created) < 60
    assert abs(record.relativeCreated - fresh.relativeCreated) < 60_000
    assert 0 <= record.msecs < 1000


def test_a_buffered_record_has_the_times_logging_gives() -> None:
    target = logging.getLogger("compat.buffered")
    kept = _Kept()
    target.addHandler(kept)
    target.propagate = False
    try:
        slot = buffer.Slot("task-1", 5)
        slot.keep(target, logging.DEBUG, "kept %s", (1,), {}, 1)
        buffer.write(slot)
    finally:
        target.removeHandler(kept)
        target.propagate = True
    (record,) = kept.records
    assert record.getMessage() == "kept 1" and record.buffered  # type: ignore[attr-defined]
    _times_agree(record)


def test_an_event_record_has_the_times_logging_gives() -> None:
    record = base._templates.record("task_started", logging.INFO, {"task_id": "t"})
    _times_agree(record)
    assert record.task_id == "t"  # type: ignore[attr-defined]
