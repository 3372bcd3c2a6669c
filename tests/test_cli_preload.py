"""Every ``celery`` sub-command takes logkit's ``--log-*`` preload options, on every
Celery minor: the real ``celery`` command against the filesystem broker (and a real
worker for ``call`` -> ``result`` and ``control``).

Celery 5.3 to 5.6 hand an app's preload options to each sub-command's function, and
most take none (``TypeError: result() got an unexpected keyword argument 'log_field'``);
5.7 takes them off itself. logkit fills the gap on the older releases
(:func:`logkit._compat.fill_preload_gaps`): the options still reach logkit, through
``user_preload_options``, sent once per command.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from celery_versions import REPORT_SENDS_NO_PRELOAD_OPTIONS, SUBCOMMANDS_REFUSE_PRELOAD_OPTIONS
from workerutil import REPO_ROOT, AppModule, Worker, celery_cmd

BODY = r"""
import json
import sys

from celery import signals

import logkit
from logkit.receivers import installation

logkit.install(app, format="json")


@signals.user_preload_options.connect(weak=False)
def _preload_seen(sender=None, app=None, options=None, **kwargs):
    # connected after logkit's own receiver: sees what logkit took from the options
    given = {k: v for k, v in (options or {}).items() if v not in (None, (), {})}
    inst = installation()
    cli = inst.cli if inst else {}
    taken = {k: dict(v) if hasattr(v, "items") else v for k, v in cli.items()}
    print("preload-seen " + json.dumps({"options": given, "logkit": taken}, default=str,
                                       sort_keys=True), file=sys.stderr)


@app.task
def add(x, y):
    return x + y
"""

#: logkit's options as an operator gives them, and what logkit makes of them.
OPTIONS = ("--log-format", "json", "--log-field", "service=billing")
GIVEN = {"log_field": {"service": "billing"}, "log_format": "json"}
TAKEN = {"fields": {"service": "billing"}, "format": "json"}



def _seen(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """Each ``user_preload_options`` the command sent: the options given, logkit's values."""
    return [json.loads(line.split(" ", 1)[1]) for line in proc.stderr.splitlines()
            if line.startswith("preload-seen ")]


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    """The command's stdout, once it exited 0 without a ``TypeError``."""
    described = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, described
    assert "TypeError" not in proc.stderr, described
    return proc.stdout


def _reached_logkit_once(proc: subprocess.CompletedProcess[str]) -> None:
    assert _seen(proc) == [{"options": GIVEN, "logkit": TAKEN}], proc.stderr


#: sub-command -> (arguments, with logkit's options where the sub-command's own go, a
#: line of its output). Groups (``graph``, ``list`` ...) take them before their command.
SUBCOMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "graph": (("graph", *OPTIONS, "bootsteps"), "digraph dependencies {"),
    "list": (("list", *OPTIONS, "bindings"), "celery                       celery"),
    "purge": (("purge", "-f", *OPTIONS), "No messages purged from 1 queue."),
    "upgrade": (("upgrade", *OPTIONS, "settings", "settings.py", "--no-backup"),
                "Changes to your setting have been made!"),
    "logtool": (("logtool", *OPTIONS, "stats", "worker.log"), "Task errors: 1"),
    "report": (("report", *OPTIONS), "loader   -> celery.loaders.app.AppLoader"),
}


#: Run on every Celery minor and Python (``-m contract``, #35): one group and ``report``
#: (which takes the options on 5.3.4+, refuses them on 5.3.0).
_CONTRACT = ("graph", "report")


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.contract) if name in _CONTRACT else name
    for name in SUBCOMMANDS
])
def test_subcommands_take_logkit_options(
    name: str, app_factory: Callable[..., AppModule],
) -> None:
    appmod = app_factory(BODY)
    (appmod.workdir / "settings.py").write_text("CELERY_ACCEPT_CONTENT = ['json']\n")
    (appmod.workdir / "worker.log").write_text(
        "[2026-01-01 00:00:00,000: INFO/MainProcess] Task proj.add[1] received\n"
    )
    args, expected = SUBCOMMANDS[name]
    proc = celery_cmd(appmod, *args)
    assert expected in _ok(proc)
    if name == "report" and REPORT_SENDS_NO_PRELOAD_OPTIONS:
        # Celery's report takes the options and sends no signal: left as Celery has it
        assert _seen(proc) == [], proc.stderr
    else:
        _reached_logkit_once(proc)
    if name == "upgrade":
        assert "accept_content" in (appmod.workdir / "settings.py").read_text()


def test_call_result_and_control_with_a_worker(
    app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker],
) -> None:
    appmod = app_factory(BODY)
    worker_factory(appmod, pool="solo", concurrency=1)
    called = celery_cmd(appmod, "call", f"{appmod.name}.add", "--args", "[2, 3]", *OPTIONS)
    task_id = _ok(called).strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", task_id), called.stdout
    _reached_logkit_once(called)

    result = celery_cmd(appmod, "result", task_id, *OPTIONS)  # waits for the task
    assert _ok(result).strip() == "5"
    _reached_logkit_once(result)

    control = celery_cmd(appmod, "control", "-t", "10", "rate_limit", f"{appmod.name}.add",
                         "10/m", *OPTIONS)
    assert "new rate limit set successfully" in _ok(control)
    _reached_logkit_once(control)


@pytest.mark.contract
def test_only_callbacks_that_refuse_the_options_are_replaced_and_uninstall_restores() -> None:
    from celery import Celery
    from celery.bin.celery import celery as group

    import logkit

    before = {name: command.callback for name, command in group.commands.items()}
    inst = logkit.install(Celery("preload_unit", set_as_current=False))
    replaced = {name for name, command in group.commands.items()
                if command.callback is not before[name]}
    if SUBCOMMANDS_REFUSE_PRELOAD_OPTIONS:
        assert {"result", "call", "graph", "list", "upgrade", "logtool", "amqp",
                "control"} <= replaced
        # these take the options (**kwargs or their own): Celery's own callbacks stay
        assert not replaced & {"worker", "beat", "events", "inspect", "status", "migrate"}
        assert any("celery result: preload options" in what for what in inst.changes.describe())
    else:  # Celery 5.7+ takes them off itself
        assert replaced == set()
    assert logkit.uninstall()
    assert {name: command.callback for name, command in group.commands.items()} == before


def test_install_outside_the_celery_command_leaves_it_alone() -> None:
    code = (
        "import sys, logkit; from celery import Celery; "
        "logkit.install(Celery('x', set_as_current=False)); "
        "print('celery.bin.celery' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
