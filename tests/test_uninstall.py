"""One installation owns what it changes: ``logkit.uninstall()`` puts the process back (#27).

Probes run in fresh interpreters (per-process state: receivers, hooks, threads): each
snapshots what logkit may change -- the receivers of every Celery signal, loggers'
handlers/filters/levels, ``Logger.makeRecord``, ``warnings.showwarning``,
``sys.stdout``/``sys.stderr``, structlog's configuration, threads, ``atexit`` callbacks
and at-fork hooks -- before ``install()``, after ``install()`` + ``configure()`` and after
``uninstall()``, and prints the comparison as JSON.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import logkit

ROOT = Path(__file__).resolve().parent.parent

#: Shared by the probes: a snapshot of everything logkit may change in the process, with
#: ``atexit.register``/``unregister`` and ``os.register_at_fork`` counted from here on.
PROBE = r'''
import atexit, json, logging, os, sys, threading, warnings
import structlog
from celery import Celery, signals
from celery.utils.dispatch import Signal
from celery.utils.log import get_multiprocessing_logger

get_multiprocessing_logger()  # billiard's own atexit hook, as any Celery process has it
# Celery's modules a worker has imported (importing one gives its logger a NullHandler)
import celery.app.trace, celery.apps.worker, celery.beat, celery.worker.consumer.consumer
import celery.worker.control, celery.worker.request, celery.worker.strategy

registered = []
_register, _unregister, _at_fork = atexit.register, atexit.unregister, os.register_at_fork
def _logkit_caller():
    return "/logkit/" in sys._getframe(2).f_code.co_filename
def register(fn, *a, **k):
    registered.append(("+", repr(fn)))
    if _logkit_caller():
        by_logkit.append(repr(fn))
    return _register(fn, *a, **k)
def unregister(fn):
    registered.append(("-", repr(fn)))
    return _unregister(fn)
forks = []
by_logkit = []
def register_at_fork(**kw):
    if _logkit_caller():
        forks.append(sorted(kw))
    return _at_fork(**kw)
atexit.register, atexit.unregister, os.register_at_fork = register, unregister, register_at_fork

NAMES = ["", "celery", "celery.task", "celery.redirected", "celery.app.trace",
         "celery.worker.strategy", "celery.worker.request", "celery.worker.control",
         "celery.worker.consumer.consumer", "celery.apps.worker", "celery.beat",
         "logkit", "logkit.events", "py.warnings", "multiprocessing", "app"]

def net_atexit():
    count = {}
    for sign, name in registered:
        count[name] = count.get(name, 0) + (1 if sign == "+" else -1)
    return {name: n for name, n in count.items() if n}

def snapshot():
    sigs = {}
    for name in dir(signals):
        sig = getattr(signals, name)
        if isinstance(sig, Signal):
            sigs[name] = [repr(key) for key, _ in sig.receivers]
    loggers = {}
    known = logging.Logger.manager.loggerDict
    for name in NAMES + sorted(n for n in known if n.startswith("celery")):
        lg = logging.getLogger(name) if name else logging.getLogger()
        loggers[name] = [[repr(h) for h in lg.handlers], [repr(f) for f in lg.filters],
                         lg.level, bool(lg.propagate), lg.disabled]
    sl = structlog.get_config()
    return {
        "signals": sigs,
        "loggers": loggers,
        "makeRecord": repr(logging.Logger.__dict__["makeRecord"]),
        "showwarning": repr(warnings.showwarning),
        "captureWarnings": repr(logging._warnings_showwarning),
        "stdout": repr(sys.stdout), "stderr": repr(sys.stderr),
        "structlog": [structlog.is_configured(), repr(sl["processors"]),
                      repr(sl["logger_factory"]), repr(sl["wrapper_class"]),
                      sl["cache_logger_on_first_use"]],
        "threads": sorted(t.name for t in threading.enumerate()),
        "atexit": net_atexit(),
        "env": {k: os.environ.get(k) for k in ("CELERY_LOG_REDIRECT", "CELERY_LOG_REDIRECT_LEVEL")},
    }

def diff(a, b):
    """What differs: for a dict of dicts, the inner keys that differ."""
    out = {}
    for k in a:
        if a[k] != b[k]:
            if isinstance(a[k], dict) and isinstance(b[k], dict):
                # a logger first made after the first snapshot (by importing a module
                # of Celery's) is not a change
                out[k] = {i: [a[k].get(i), b[k].get(i)] for i in a[k]
                          if a[k].get(i) != b[k].get(i)}
            else:
                out[k] = [a[k], b[k]]
    return out
'''


def _run(code: str, *, timeout: float = 120) -> dict[str, Any]:
    """Run ``code`` (after :data:`PROBE`) in a fresh interpreter; its last stdout line."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE + code], capture_output=True, text=True, timeout=timeout,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


ROUND_TRIP = r'''
import tempfile
import logkit

app = Celery("probe", set_as_current=False)
app.conf.worker_redirect_stdouts = True
logfile = tempfile.mktemp(suffix=".log")
before = snapshot()
inst = logkit.install(app, format="json", queue=True, structlog=True)
logkit.configure(loglevel="INFO", logfile=logfile)
with warnings.catch_warnings():
    warnings.simplefilter("always")
    warnings.warn("probe warning")
logging.getLogger("app").info("a line")
structlog.get_logger("app").info("a structlog line", k=1)
installed = snapshot()
changes = inst.changes.describe()
assert logkit.uninstall() is True
after = snapshot()
again = logkit.uninstall()
# install() works again afterwards, and a second install() replaces the first one whole
logkit.install(app, format="json")
logkit.configure(loglevel="INFO", logfile=logfile)
logkit.install(Celery("other", set_as_current=False), format="plain")
logkit.configure(loglevel="DEBUG", logfile=logfile)
logging.getLogger("app").info("a second line")
logkit.uninstall()
twice = snapshot()
lines = open(logfile).read().splitlines()
print(json.dumps({"changed": sorted(diff(before, installed)), "after": diff(before, after),
                  "twice": diff(before, twice), "again": again, "changes": changes,
                  "lines": lines, "forks": forks}))
'''


def test_uninstall_puts_the_process_back_as_it_was() -> None:
    out = _run(ROUND_TRIP)
    # install() + configure() did change all of these ...
    assert set(out["changed"]) >= {
        "signals", "loggers", "makeRecord", "showwarning", "captureWarnings", "stdout",
        "stderr", "structlog", "threads", "atexit", "env",
    }, out["changed"]
    # ... and uninstall() put every one of them back, also after a second install()
    assert out["after"] == {}, out["after"]
    assert out["twice"] == {}, out["twice"]
    assert out["again"] is False  # nothing installed: nothing to undo
    # one at-fork dispatcher, registered once (at-fork hooks cannot be unregistered)
    assert out["forks"] == [["after_in_child"]]
    assert "queue writer thread" in out["changes"]
    # the queue was written out before the sink was closed; the second installation's
    # plain line is in the file too
    assert any('"message":"a line"' in line for line in out["lines"])
    assert any('"message":"a structlog line"' in line for line in out["lines"])
    assert any("a second line" in line and not line.startswith("{") for line in out["lines"])


IMPORT_ALL = r'''
before = snapshot()
import importlib, pkgutil
import logkit
skipped = []
for info in pkgutil.walk_packages(logkit.__path__, "logkit."):
    if info.name in ("logkit.__main__", "logkit.demo_app"):  # the demo's app installs
        continue
    try:
        importlib.import_module(info.name)
    except ImportError as exc:  # an optional extra (django, flask) not installed
        skipped.append(info.name)
after = snapshot()
print(json.dumps({"diff": diff(before, after), "forks": forks, "by_logkit": by_logkit,
                  "skipped": skipped}))
'''


def test_importing_any_logkit_module_changes_nothing() -> None:
    out = _run(IMPORT_ALL)
    # other libraries (imported by optional extras) may register their own hooks
    diff = {k: v for k, v in out["diff"].items() if k != "atexit"}
    assert diff == {}, out["diff"]
    assert out["by_logkit"] == []  # no atexit callback
    assert out["forks"] == []  # no at-fork hook either


COMPOSE = r'''
import functools
import logkit

def theirs_make_record(previous, tag):
    @functools.wraps(previous)
    def make_record(self, *args, **kwargs):
        record = previous(self, *args, **kwargs)
        setattr(record, tag, True)
        return record
    make_record.__wrapped__ = previous
    return make_record

seen = []
def theirs_showwarning(previous, tag):
    def showwarning(message, *args, **kwargs):
        seen.append((tag, str(message)))
        return previous(message, *args, **kwargs)
    return showwarning

# a library that hooked in before logkit, and one that hooked in after it
logging.Logger.makeRecord = early_mr = theirs_make_record(logging.Logger.makeRecord, "early_lib")
warnings.showwarning = early_sw = theirs_showwarning(warnings.showwarning, "early")
before = snapshot()
app = Celery("compose", set_as_current=False)
logkit.install(app, format="json")
logkit.configure(loglevel="INFO", logfile=os.devnull)
logging.Logger.makeRecord = late_mr = theirs_make_record(logging.Logger.makeRecord, "late_lib")
warnings.showwarning = late_sw = theirs_showwarning(warnings.showwarning, "late")
logkit.uninstall()
after = snapshot()
record = logging.getLogger("app").makeRecord("app", 20, "f", 1, "m", (), None, extra={"msg": 1})
with warnings.catch_warnings():
    warnings.simplefilter("always")
    warnings.warn("after uninstall")
print(json.dumps({
    "late_kept": logging.Logger.__dict__["makeRecord"] is late_mr,
    "late_sw_kept": warnings.showwarning is late_sw,
    "fields": [getattr(record, "early_lib", False), getattr(record, "late_lib", False)],
    "renamed": record.__dict__.get("msg_"),
    "seen": seen,
    "diff": diff(before, after),
}))

# without the late library, both hooks are the early library's again
logging.Logger.makeRecord = early_mr
warnings.showwarning = early_sw
before = snapshot()
logkit.install(app, format="json")
logkit.configure(loglevel="INFO", logfile=os.devnull)
logkit.uninstall()
print(json.dumps({"early_only": diff(before, snapshot()),
                  "early_kept": logging.Logger.__dict__["makeRecord"] is early_mr
                  and warnings.showwarning is early_sw}))
'''


def test_hooks_of_other_libraries_survive_uninstall() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE + COMPOSE], capture_output=True, text=True, timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    late, early = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    # a wrapper put over logkit's after install() stays, and still calls down the chain
    # (logkit's renaming wrapper stays under it: the clashing key is renamed, not raised)
    assert late["late_kept"] and late["late_sw_kept"]
    assert late["fields"] == [True, True] and late["renamed"] == 1
    # the late hook sees the warning; it passes it to what it wrapped, logging's
    # captureWarnings hook, left on under it (turning it off would drop the late hook)
    assert [tag for tag, _ in late["seen"]] == ["late"]
    # what differs is theirs: their hooks, and logging's captureWarnings under the late
    # one (so py.warnings got logging's NullHandler when the warning was logged)
    assert set(late["diff"]) <= {"makeRecord", "showwarning", "captureWarnings", "loggers"}
    assert set(late["diff"].get("loggers", {})) <= {"py.warnings"}
    # a hook that was there before logkit is exactly what uninstall() puts back
    assert early["early_only"] == {} and early["early_kept"]


ATTRIBUTES = r'''
import tempfile
import types

SPACES = {"logging.Logger": logging.Logger, "logging": logging, "warnings": warnings,
          "sys": sys}

def attributes():
    """Every attribute of the shared namespaces (a submodule is not a change), the
    environment, structlog's configuration."""
    values = {f"{name}.{key}": value for name, space in SPACES.items()
              for key, value in vars(space).items() if not isinstance(value, types.ModuleType)}
    return values, dict(os.environ), repr(structlog.get_config())

def changed(a, b):
    names = sorted(k for k in a[0].keys() | b[0].keys()
                   if a[0].get(k, a) is not b[0].get(k, b))
    names += sorted(f'os.environ["{k}"]' for k in a[1].keys() | b[1].keys()
                    if a[1].get(k) != b[1].get(k))
    return names + (["structlog.configure"] if a[2] != b[2] else [])

pristine = attributes()
import logkit, logkit.testing
app = Celery("table", set_as_current=False)
app.conf.worker_redirect_stdouts = True
before = attributes()
logkit.install(app, format="json", task_buffer=5, dedupe_window=60)
installed = changed(before, attributes())
# at -l ERROR every Logger method below it is wrapped (debug, info, warning, and log)
logkit.configure("ERROR", tempfile.mktemp(suffix=".log"))
configured = changed(before, attributes())
with logkit.testing.capture():
    capturing = changed(before, attributes())
logkit.uninstall()
print(json.dumps({"import": changed(pristine, before), "install": installed,
                  "configure": configured, "capture": capturing,
                  "uninstall": changed(before, attributes())}))
'''

#: Where the first column of the table names a shared attribute (or structlog's configure).
_SHARED = re.compile(
    r"`((?:logging|warnings|sys)\.[\w.]+|os\.environ\[\"\w+\"\]|structlog\.configure)`"
)


def _table_of_changes() -> set[str]:
    """The shared attributes the rows of how-it-works' table of changes name."""
    text = (ROOT / "docs" / "how-it-works.md").read_text()
    section = text.split("## What logkit changes in the process", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]  # no header
    return {name for row in rows for name in _SHARED.findall(row.split(" | ")[0])}


def test_the_table_of_changes_is_what_a_live_process_changes() -> None:
    """docs/how-it-works.md's table names exactly the attributes of ``logging.Logger``,
    ``logging``, ``warnings``, ``sys`` and ``os.environ`` (and structlog's configuration)
    that install() + configure() with the tools on, and a logkit.testing capture,
    change in a live process; after uninstall() none is changed (#34)."""
    table = _table_of_changes()
    assert {"logging.Logger.makeRecord", "logging.Logger.debug", "logging.Logger.log",
            "logging.Logger.callHandlers", "warnings.showwarning", "sys.stdout"} <= table
    out = _run(ATTRIBUTES)
    assert out["import"] == [] and out["install"] == []  # importing, installing: nothing
    assert set(out["capture"]) == table, set(out["capture"]) ^ table
    # capture() is the only row a configured worker does not change
    assert set(out["configure"]) == table - {"logging.Logger.callHandlers"}
    assert out["uninstall"] == []  # all put back


def test_uninstall_without_install_changes_nothing() -> None:
    logkit.uninstall()
    assert logkit.uninstall() is False


# ---------------------------------------------------------------------------
# queue=True at exit with a sink nobody reads
# ---------------------------------------------------------------------------

STALLED = r"""
import logging, sys
import logkit
logkit.configure(loglevel="INFO", format="json", queue=True)
log = logging.getLogger("stalled")
for i in range(20000):  # far more than a pipe holds (64 KiB)
    log.info("record %d %s", i, "x" * 200)
print("logged", flush=True)
"""


def test_queue_exits_within_the_wait_when_the_sink_never_drains() -> None:
    """stderr is a pipe nobody reads: the process still exits (the documented wait is
    10 s; 60 s is a generous bound, not a speed assertion)."""
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", STALLED], stdout=subprocess.PIPE, stderr=write_end,
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        os.close(write_end)
        write_end = -1
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("the process did not exit: the queue waited for a sink nobody reads")
        assert proc.returncode == 0
        assert out.strip() == b"logged"  # it did get to the end, then exited
    finally:
        if write_end >= 0:
            os.close(write_end)
        os.close(read_end)


def test_unwritten_records_are_counted_at_exit_when_stderr_can_take_it(
    tmp_path: Path,
) -> None:
    """The sink is a FIFO nobody reads; stderr is a file: the loss is reported there."""
    fifo = tmp_path / "sink.fifo"
    os.mkfifo(fifo)
    holder = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # opened, never read
    code = STALLED.replace(
        'logkit.configure(loglevel="INFO", format="json", queue=True)',
        f'logkit.configure(loglevel="INFO", logfile={str(fifo)!r}, format="json", '
        "queue=True, watch_file=False)",
    )
    try:
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    finally:
        os.close(holder)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < 60
    assert "log record(s) not written at exit" in proc.stderr, proc.stderr


def test_install_again_same_app_and_options_keeps_the_installation(tmp_path: Path) -> None:
    """An app module imported twice (the double-import trap) installs once: the second
    call keeps what the worker's setup_logging configured; other options replace it."""
    import logging

    from celery import Celery

    app = Celery("twice", set_as_current=False)
    first = logkit.install(app, format="json")
    logkit.configure(loglevel="INFO", logfile=str(tmp_path / "w.log"))
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_logkit", False)]
    assert ours
    assert logkit.install(app, format="json") is first
    assert [h for h in logging.getLogger().handlers if getattr(h, "_logkit", False)] == ours
    second = logkit.install(app, format="plain")
    assert second is not first
    # the first installation's handlers are gone with it (until the next configuration)
    assert not [h for h in logging.getLogger().handlers if getattr(h, "_logkit", False)]


def test_install_after_configure_without_app_takes_it_over(tmp_path: Path) -> None:
    """A web process: configure() for its own logging, then its Celery app module calls
    install(app): the configured logging stays, and uninstall() undoes both."""
    import logging

    from celery import Celery

    root = logging.getLogger()
    before = list(root.handlers), root.level
    logkit.configure(format="json", logfile=str(tmp_path / "web.log"), loglevel="INFO")
    ours = [h for h in root.handlers if getattr(h, "_logkit", False)]
    assert ours
    app = Celery("web_app", set_as_current=False)
    inst = logkit.install(app)
    assert inst.app is app and inst.active is not None
    assert [h for h in root.handlers if getattr(h, "_logkit", False)] == ours
    logging.getLogger("webapp").info("still written")
    assert "still written" in (tmp_path / "web.log").read_text()
    assert logkit.uninstall() is True
    assert (list(root.handlers), root.level) == before
