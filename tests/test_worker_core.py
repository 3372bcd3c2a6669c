"""Issue #2 with real ``celery worker`` / ``celery beat`` processes.

One module-scoped prefork worker (``-c 2 -l INFO -f worker.log``) serves most checks;
the options that change how a worker starts (``%i`` file names, a TTY, the override
contract, bad config, an unwritable file, other pools, beat) get a short-lived process
each.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from workerutil import (
    REPO_ROOT,
    AppModule,
    Worker,
    WorkerStartError,
    expand_nodename,
    make_app,
    parse_json_lines,
    ready_marker,
    start_worker,
    wait_for,
)

#: Run on every supported Celery minor and Python version by ``nox -s celery``.
pytestmark = pytest.mark.contract

ISO_UTC_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ANSI = "\x1b["

#: Records each after_setup_* signal (exact kwargs and their types) to signals.jsonl.
SIGNAL_RECORDER = r"""
import json as _sr_json
import logging as _sr_logging
import os as _sr_os

from celery import signals as _sr_signals


def _sr_record(name, sender, logger, loglevel, logfile, format, colorize, extra):
    row = {
        "signal": name, "pid": _sr_os.getpid(), "sender": repr(sender),
        "logger": logger.name, "logger_is_root": logger is _sr_logging.getLogger(),
        "loglevel": loglevel, "loglevel_type": type(loglevel).__name__,
        "logfile": logfile, "logfile_type": type(logfile).__name__,
        "format": format, "format_type": type(format).__name__,
        "colorize": colorize, "colorize_type": type(colorize).__name__,
        "extra": sorted(extra),
    }
    with open(_sr_os.path.join(WORKDIR, "signals.jsonl"), "a") as fh:
        fh.write(_sr_json.dumps(row) + "\n")


@_sr_signals.after_setup_logger.connect(weak=False)
def _sr_root(sender=None, logger=None, loglevel=None, logfile=None, format=None,
             colorize=None, **kwargs):
    _sr_record("after_setup_logger", sender, logger, loglevel, logfile, format, colorize, kwargs)


@_sr_signals.after_setup_task_logger.connect(weak=False)
def _sr_task(sender=None, logger=None, loglevel=None, logfile=None, format=None,
             colorize=None, **kwargs):
    _sr_record(
        "after_setup_task_logger", sender, logger, loglevel, logfile, format, colorize, kwargs
    )
"""

TASKS = r"""
import logging
import os
import sys

import structlog
from celery.utils.log import get_multiprocessing_logger, get_task_logger

std = logging.getLogger("core.lib")
tlog = get_task_logger("core.tasks")
slog = structlog.get_logger("core.sl")


@app.task(bind=True)
def hello(self, tag):
    std.debug("debug %s", tag)  # below -l INFO
    std.info("std %s", tag)
    tlog.warning("tlog %s", tag)
    slog.info("slog", tag=tag, count=3)
    print(f"printed {tag}")
    return os.getpid()


class Weird:
    def __repr__(self):
        raise RuntimeError("no repr")


@app.task
def boom():
    try:
        1 / 0
    except ZeroDivisionError:
        std.exception(
            "it failed",
            extra={"obj": object(), "weird": Weird(), "n": 3, "data": {"k": [1, 2]}},
        )
    return "ok"


def _describe(logger):
    return {
        "level": logging.getLevelName(logger.level),
        "propagate": bool(logger.propagate),
        "handlers": [type(h).__name__ for h in logger.handlers],
    }


@app.task
def describe_logging():
    return {
        "pid": os.getpid(),
        "root": _describe(logging.getLogger()),
        "task": _describe(logging.getLogger("celery.task")),
        "mp": _describe(get_multiprocessing_logger()),
        "stdout": type(sys.stdout).__name__,
    }
"""

MAIN_BODY = (
    SIGNAL_RECORDER
    + TASKS
    + r"""
import logkit

app.conf.worker_hijack_root_logger = False
app.conf.worker_redirect_stdouts_level = "ERROR"
app.conf.logkit_fields = {"service": "billing"}  # app.conf source
app.conf.logkit_format = "plain"  # install()'s keyword argument wins over app.conf

# A handler the user adds at import time: must survive (worker_hijack_root_logger=False).
# With it on the root, logkit would leave the root to it ("auto", #13): "add" asks for both.
app.conf.logkit_root_handlers = "add"
_user = logging.FileHandler(os.path.join(WORKDIR, "user.log"))
_user.setFormatter(logging.Formatter("USER %(levelname)s %(name)s %(message)s"))
logging.getLogger().addHandler(_user)

logkit.install(app, format="json")
"""
)


def _signals(workdir: Path) -> list[dict[str, Any]]:
    path = workdir / "signals.jsonl"
    return parse_json_lines(path.read_text(), str(path)) if path.exists() else []


# ---------------------------------------------------------------------------
# the shared prefork worker
# ---------------------------------------------------------------------------


class Main:
    def __init__(self, appmod: AppModule, worker: Worker, pids: list[int], described: list[Any]):
        self.appmod = appmod
        self.worker = worker
        self.task_pids = pids
        self.described = described
        self.records = worker.json_lines()


@pytest.fixture(scope="module")
def main(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Main]:
    appmod = make_app(tmp_path_factory.mktemp("core"), MAIN_BODY)
    worker = start_worker(appmod, pool="prefork", concurrency=2, logfile="worker.log")
    try:
        mod = appmod.load()
        pids = [r.get(timeout=30) for r in [mod.hello.delay(f"t{i}") for i in range(6)]]
        assert mod.boom.delay().get(timeout=30) == "ok"
        described = [mod.describe_logging.delay().get(timeout=30) for _ in range(4)]
        wait_for(
            lambda: worker.read_log().count("printed t") >= 6 and "it failed" in worker.read_log(),
            timeout=15,
            message=worker.describe,
        )
        yield Main(appmod, worker, pids, described)
    finally:
        worker.stop(timeout=15)
        appmod.unload()


@pytest.mark.worker
def test_log_file_has_only_json_lines_including_children(main: Main) -> None:
    text = main.worker.read_log()
    assert text.endswith("\n")
    records = parse_json_lines(text, "worker.log")  # raises on any non-JSON line
    assert len(records) > 20
    children = set(main.task_pids)
    assert children and main.worker.pid not in children
    from_children = [r for r in records if r["process"] in children]
    assert {r["message"] for r in from_children} >= {f"std t{i}" for i in range(6)}
    assert all(r.get("task_id") for r in from_children if r["logger"].startswith("core."))
    # the worker's own lines (main process) are JSON too
    main_lines = [r for r in records if r["process"] == main.worker.pid]
    assert any(r["message"].startswith("Connected to") for r in main_lines)


@pytest.mark.worker
def test_json_fields(main: Main) -> None:
    started = time.time() - 300
    for rec in main.records:
        assert ISO_UTC_MS.match(rec["timestamp"]), rec
        assert (
            time.mktime(time.strptime(rec["timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
            - (time.timezone if time.daylight == 0 else time.altzone)
            > started
        )
        assert rec["level"] in ("INFO", "WARNING", "ERROR", "CRITICAL"), rec  # -l INFO
        assert isinstance(rec["logger"], str) and isinstance(rec["message"], str)
        assert isinstance(rec["process"], int)
        # the main thread's id is left out (#37): a prefork child runs tasks in its main
        # thread; another thread's line says which
        assert ("thread" not in rec) if "task_id" in rec else isinstance(
            rec.get("thread", 0), int), rec
        assert rec["service"] == "billing"  # static field from app.conf logkit_fields
    assert not [r for r in main.records if r["message"].startswith("debug ")]
    slog = [r for r in main.records if r["logger"] == "core.sl"]
    assert len(slog) == 6
    assert all(r["message"] == "slog" and r["count"] == 3 and r["task_id"] for r in slog)
    tlog = [r for r in main.records if r["logger"] == "core.tasks"]
    assert len(tlog) == 6 and all(r["level"] == "WARNING" for r in tlog)


@pytest.mark.worker
def test_structured_exception_and_unserialisable_extras(main: Main) -> None:
    (rec,) = [r for r in main.records if r["message"] == "it failed"]
    assert rec["level"] == "ERROR"
    assert rec["exception"]["type"] == "ZeroDivisionError"
    assert rec["exception"]["message"] == "division by zero"
    assert "Traceback (most recent call last)" in rec["exception"]["traceback"]
    assert "1 / 0" in rec["exception"]["traceback"]
    assert rec["obj"].startswith("<object object at 0x")
    assert rec["weird"].startswith("<unrepresentable")  # __repr__ raised: still a record
    assert rec["n"] == 3 and rec["data"] == {"k": [1, 2]}
    assert rec["task_name"].endswith(".boom")


@pytest.mark.worker
def test_print_in_task_is_a_record_at_redirect_level(main: Main) -> None:
    printed = [r for r in main.records if r["message"].startswith("printed t")]
    assert len(printed) == 6
    for rec in printed:
        assert rec["level"] == "ERROR"  # worker_redirect_stdouts_level
        assert rec["logger"] == "celery.redirected"
        assert rec["task_name"].endswith(".hello") and rec["task_id"]
    assert all(d["stdout"] == "LoggingProxy" for d in main.described)


@pytest.mark.worker
def test_loggers_configured_as_celery_would(main: Main) -> None:
    for d in main.described:
        assert d["pid"] in main.worker.child_pids() or d["pid"] in main.task_pids
        assert d["root"]["level"] == "INFO"
        assert "SinkHandler" in d["root"]["handlers"]
        assert d["task"]["level"] == "INFO"
        assert d["task"]["propagate"] is False
        # hijack=False: like Celery, pre-existing handlers (Celery's NullHandler) stay
        assert [h for h in d["task"]["handlers"] if h != "NullHandler"] == ["SinkHandler"]
        assert d["mp"]["level"] == "ERROR"  # as Celery: ERROR unless MP_LOG is set
        assert "SinkHandler" in d["mp"]["handlers"]


@pytest.mark.worker
def test_hijack_false_keeps_users_root_handler(main: Main) -> None:
    for d in main.described:
        assert "FileHandler" in d["root"]["handlers"]
    user = (main.appmod.workdir / "user.log").read_text()
    for i in range(6):
        assert f"USER INFO core.lib std t{i}" in user
    assert "Connected to" in user  # the worker's own records as well
    # and logkit's output is unaffected by the user's handler
    assert not [r for r in main.records if r["message"].startswith("USER")]


@pytest.mark.worker
def test_after_setup_signals_get_celerys_exact_kwargs(main: Main) -> None:
    rows = _signals(main.appmod.workdir)
    conf = main.appmod.load().app.conf
    by_name = {r["signal"]: r for r in rows if r["pid"] == main.worker.pid}
    assert set(by_name) == {"after_setup_logger", "after_setup_task_logger"}
    common = {
        "sender": "None",
        "loglevel": 20,
        "loglevel_type": "int",
        "logfile": str(main.worker.logfile),
        "logfile_type": "str",
        "colorize": False,  # a file is never coloured
        "colorize_type": "bool",
        "format_type": "str",
        "extra": ["signal"],
    }
    root, task = by_name["after_setup_logger"], by_name["after_setup_task_logger"]
    assert {k: root[k] for k in common} == common
    assert {k: task[k] for k in common} == common
    assert root["logger_is_root"] is True and root["logger"] == "root"
    assert task["logger"] == "celery.task"
    assert root["format"] == conf.worker_log_format
    assert task["format"] == conf.worker_task_log_format
    # children inherit the configuration (no %i in the file name): no second setup
    assert all(r["pid"] == main.worker.pid for r in rows)


# ---------------------------------------------------------------------------
# file names, colours, formats, other pools, beat
# ---------------------------------------------------------------------------

SIMPLE_BODY = SIGNAL_RECORDER + TASKS + "\nimport logkit\n\nlogkit.install(app{install_args})\n"


def _simple(
    app_factory: Callable[..., AppModule], install_args: str = "", extra: str = ""
) -> AppModule:
    return app_factory(SIMPLE_BODY.replace("{install_args}", install_args) + extra)


@pytest.mark.worker
def test_log_file_name_placeholders_per_child(
    app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker]
) -> None:
    appmod = _simple(app_factory, ', format="json"')
    template = "logs-%h/%n-%d%I.%i.log"
    (appmod.workdir / f"logs-{socket.gethostname()}").mkdir()
    worker = worker_factory(appmod, concurrency=2, logfile=appmod.workdir / template)
    mod = appmod.load()
    pids = {r.get(timeout=30) for r in [mod.hello.delay(f"p{i}") for i in range(8)]}
    host = worker.hostname.split("@", 1)[1]
    domain = host.partition(".")[2]
    logdir = appmod.workdir / f"logs-{host}"
    expected = {f"w1-{domain}.0.log"} | {f"w1-{domain}-{i}.{i}.log" for i in (1, 2)}

    def files() -> set[str]:
        return {p.name for p in logdir.iterdir()}

    wait_for(lambda: files() == expected, timeout=15, message=lambda: f"{files()} != {expected}")
    by_file = {
        name: parse_json_lines((logdir / name).read_text(), name) for name in sorted(expected)
    }
    main_recs = by_file.pop(f"w1-{domain}.0.log")
    assert {r["process"] for r in main_recs} == {worker.pid}
    wait_for(lambda: sum(p.read_text().count("std p") for p in logdir.iterdir()) == 8, timeout=10)
    seen_pids: set[int] = set()
    for name, _ in by_file.items():
        recs = parse_json_lines((logdir / name).read_text(), name)
        if not recs:  # a child the pool gave no task writes nothing at INFO
            continue
        procs = {r["process"] for r in recs}
        assert len(procs) == 1, (name, procs)  # each child writes to its own file only
        seen_pids |= procs
    assert pids <= seen_pids
    # with %i, each child sets logging up again: the signals fire in the children too
    sig_pids = {r["pid"] for r in _signals(appmod.workdir) if r["signal"] == "after_setup_logger"}
    assert worker.pid in sig_pids and len(sig_pids) >= 3
    for row in _signals(appmod.workdir):
        assert "%" not in row["logfile"] and row["logfile"].startswith(str(logdir))


def _start_on_pty(
    appmod: AppModule, extra_env: dict[str, str], global_args: list[str]
) -> tuple[subprocess.Popen[bytes], Callable[[], str]]:
    """A worker whose stdout/stderr is a pseudo-terminal; returns (process, output())."""
    master, slave = pty.openpty()
    env = dict(os.environ)
    env.pop("NO_COLOR", None)
    env.pop("FORCE_COLOR", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(appmod.workdir)])
    env.update(extra_env)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            *global_args,
            "-A",
            appmod.name,
            "worker",
            "--pool",
            "solo",
            "-l",
            "INFO",
            "-n",
            "w1@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=appmod.workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def pump() -> None:
        while True:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        os.close(master)

    threading.Thread(target=pump, daemon=True).start()
    return proc, lambda: b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.worker
@pytest.mark.parametrize(
    ("global_args", "env", "colour"),
    [([], {}, True), (["--no-color"], {}, False), ([], {"NO_COLOR": "1"}, False)],
    ids=["tty", "no-color-flag", "NO_COLOR"],
)
def test_console_colour_on_a_tty(
    app_factory: Callable[..., AppModule], global_args: list[str], env: dict[str, str], colour: bool
) -> None:
    appmod = _simple(app_factory)  # format auto: console on a terminal
    proc, output = _start_on_pty(appmod, env, global_args)
    try:
        marker = ready_marker(appmod.workdir, expand_nodename("w1@%h"))
        wait_for(lambda: marker.exists() or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, output()
        appmod.load().hello.delay("tty").get(timeout=30)
        wait_for(lambda: "std tty" in output(), timeout=10, message=output)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = output()
    line = next(ln for ln in text.splitlines() if "std tty" in ln)
    assert not line.lstrip().startswith("{")  # console, not JSON
    assert "core.lib" in line and "[" in line and "hello" in line  # [task_name task_id] prefix
    assert (ANSI in line) is colour, repr(line)
    rows = [r for r in _signals(appmod.workdir) if r["signal"] == "after_setup_logger"]
    assert rows and rows[0]["colorize"] is colour and rows[0]["logfile"] is None


@pytest.mark.worker
def test_plain_format_uses_celerys_formats(
    app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker]
) -> None:
    extra = (
        '\napp.conf.worker_log_format = "ROOT %(levelname)s %(processName)s: %(message)s"'
        "\napp.conf.worker_task_log_format = "
        '"TASK %(levelname)s %(task_name)s %(task_id)s: %(message)s"\n'
    )
    appmod = _simple(app_factory, ', format="plain"', extra)
    worker = worker_factory(appmod, concurrency=1, logfile="worker.log", global_args=["-C"])
    task_id = appmod.load().hello.delay("pl").id
    wait_for(lambda: "printed pl" in worker.read_log(), timeout=30, message=worker.describe)
    text = worker.read_log()
    assert ANSI not in text
    lines = text.splitlines()
    assert all(ln.startswith(("ROOT ", "TASK ", "    ")) for ln in lines), text
    std_line = next(ln for ln in lines if "std pl" in ln)
    assert std_line.startswith("ROOT INFO ForkPoolWorker-1: [")
    assert f"{appmod.name}.hello {task_id}] std pl" in std_line
    tlog_line = next(ln for ln in lines if "tlog pl" in ln)
    assert tlog_line == f"TASK WARNING {appmod.name}.hello {task_id}: tlog pl"
    assert any(ln.startswith("ROOT INFO MainProcess: Connected to") for ln in lines)


@pytest.mark.worker
def test_console_format_in_a_file_never_has_escape_codes(
    app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker]
) -> None:
    appmod = _simple(app_factory, ', format="console"')
    worker = worker_factory(appmod, concurrency=1, logfile="worker.log", env={"FORCE_COLOR": "1"})
    result = appmod.load().hello.delay("cf")
    result.get(timeout=30)
    wait_for(lambda: "printed cf" in worker.read_log(), timeout=10, message=worker.describe)
    text = worker.read_log()
    assert ANSI not in text and "\x1b" not in text
    line = next(ln for ln in text.splitlines() if "std cf" in ln)
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INFO +core\.lib: \[", line), line
    assert f"[{appmod.name}.hello {result.id}] std cf" in line


@pytest.mark.worker
@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_other_pools_get_the_same_configuration(
    pool: str, app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker]
) -> None:
    appmod = _simple(
        app_factory,
        ', fields={"deploy": "from-kwargs"}',  # the LOGKIT_FIELDS env var below wins
        '\napp.conf.worker_redirect_stdouts_level = "WARNING"\n',
    )  # format auto -> json: the log file is not a terminal
    worker = worker_factory(
        appmod,
        pool=pool,
        concurrency=2,
        logfile="worker.log",
        env={"LOGKIT_FIELDS": f"deploy={pool}"},
    )
    mod = appmod.load()
    assert mod.hello.delay("x").get(timeout=30) == worker.pid  # runs in the main process
    described = mod.describe_logging.delay().get(timeout=30)
    wait_for(lambda: "printed x" in worker.read_log(), timeout=10, message=worker.describe)
    records = worker.json_lines()
    assert {r["deploy"] for r in records} == {pool}
    (printed,) = [r for r in records if r["message"] == "printed x"]
    assert printed["level"] == "WARNING" and printed["task_id"]
    assert {r["logger"] for r in records if r.get("task_id")} >= {
        "core.lib",
        "core.tasks",
        "core.sl",
    }
    assert described["root"]["level"] == "INFO" and described["root"]["handlers"] == ["SinkHandler"]
    assert described["task"] == {"level": "INFO", "propagate": False, "handlers": ["SinkHandler"]}
    assert [r["signal"] for r in _signals(appmod.workdir)] == [
        "after_setup_logger",
        "after_setup_task_logger",
    ]


@pytest.mark.worker
def test_beat_writes_json(app_factory: Callable[..., AppModule], tmp_path: Path) -> None:
    appmod = _simple(
        app_factory,
        ', format="json", fields={"component": "beat"}',
        '\napp.conf.beat_schedule = {"tick": {"task": "noop", "schedule": 0.5}}\n',
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(appmod.workdir)])
    logfile = appmod.workdir / "beat.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            appmod.name,
            "beat",
            "-l",
            "INFO",
            "-f",
            str(logfile),
            "-s",
            str(tmp_path / "schedule"),
        ],
        cwd=appmod.workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: (
                (logfile.exists() and logfile.read_text().count("tick") >= 2)
                or proc.poll() is not None
            ),
            timeout=30,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
    text = logfile.read_text()
    records = parse_json_lines(text, "beat.log")
    assert len(records) >= 3, (text, err)
    assert all(r["component"] == "beat" and ISO_UTC_MS.match(r["timestamp"]) for r in records)
    assert {r["process"] for r in records} == {proc.pid}
    # Celery's "Scheduler: Sending due task tick" line, or logkit's beat_task_sent event
    sending = [r for r in records if "tick" in json.dumps(r)]
    assert len(sending) >= 2
    assert [r["signal"] for r in _signals(appmod.workdir)][:2] == [
        "after_setup_logger",
        "after_setup_task_logger",
    ]


# ---------------------------------------------------------------------------
# the override contract
# ---------------------------------------------------------------------------

USER_SETUP = r"""
import logging
import os

from celery import signals

import logkit

logkit.install(app, format="json")


@signals.setup_logging.connect(weak=False)
def user_setup(loglevel=None, logfile=None, format=None, colorize=None, **kwargs):
    if os.environ.get("USE_LOGKIT"):
        logkit.configure(loglevel=loglevel, logfile=logfile, format="json")
    else:
        handler = logging.FileHandler(os.path.join(WORKDIR, "mine.log"))
        handler.setFormatter(logging.Formatter("MINE %(levelname)s %(name)s %(message)s"))
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
"""


@pytest.mark.worker
def test_users_setup_logging_receiver_wins(
    app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker]
) -> None:
    appmod = app_factory(SIGNAL_RECORDER + TASKS + USER_SETUP)
    worker = worker_factory(appmod, concurrency=1, logfile="worker.log")
    appmod.load().hello.delay("u").get(timeout=30)
    mine = appmod.workdir / "mine.log"
    wait_for(lambda: mine.exists() and "std u" in mine.read_text(), timeout=10)
    text = mine.read_text()
    assert all(ln.startswith("MINE ") for ln in text.splitlines()), text
    assert "{" not in text
    # logkit configured nothing: no file of its own, no signals (Celery doesn't send them either)
    assert not worker.logfile.exists() or "{" not in worker.read_log()
    assert _signals(appmod.workdir) == []
    assert "{" not in worker.stderr()


@pytest.mark.worker
def test_configure_from_users_receiver_gives_logkits_output(
    app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker]
) -> None:
    appmod = app_factory(SIGNAL_RECORDER + TASKS + USER_SETUP)
    worker = worker_factory(appmod, concurrency=1, logfile="worker.log", env={"USE_LOGKIT": "1"})
    appmod.load().hello.delay("c").get(timeout=30)
    wait_for(lambda: "printed c" in worker.read_log(), timeout=10, message=worker.describe)
    records = worker.json_lines()
    (std,) = [r for r in records if r["message"] == "std c"]
    assert std["task_id"] and std["task_name"].endswith(".hello")
    rows = _signals(appmod.workdir)
    assert [r["signal"] for r in rows] == ["after_setup_logger", "after_setup_task_logger"]
    assert rows[0]["loglevel"] == 20 and rows[0]["logfile"] == str(worker.logfile)
    assert rows[0]["logger_is_root"] and rows[1]["logger"] == "celery.task"
    assert rows[0]["colorize"] is False and rows[0]["format_type"] == "str"


# ---------------------------------------------------------------------------
# failures at start
# ---------------------------------------------------------------------------


@pytest.mark.worker
def test_bad_env_value_fails_worker_start(
    app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker]
) -> None:
    appmod = _simple(app_factory, ', format="json"')
    t0 = time.monotonic()
    with pytest.raises(WorkerStartError) as excinfo:
        worker_factory(appmod, logfile="worker.log", env={"LOGKIT_FORMAT": "jsn"}, ready_timeout=30)
    assert time.monotonic() - t0 < 20
    worker = excinfo.value.worker
    assert worker.proc.returncode not in (0, None)
    err = worker.stderr()
    assert "'format'" in err and "LOGKIT_FORMAT" in err and "'jsn'" in err, err
    for choice in ("'auto'", "'json'", "'console'", "'plain'"):
        assert choice in err
    assert "Traceback" not in err


@pytest.mark.worker
@pytest.mark.parametrize("case", ["missing-dir", "permission-denied"])
def test_unwritable_log_file_fails_worker_start(
    case: str, app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker]
) -> None:
    appmod = _simple(app_factory, ', format="json"')
    if case == "missing-dir":
        path, reason = "/nonexistent-logkit-dir/x.log", "No such file or directory"
    else:
        # as root no directory is read-only; /sys refuses new files even to root
        path, reason = "/sys/logkit-test.log", "Permission denied"
    with pytest.raises(WorkerStartError) as excinfo:
        worker_factory(appmod, logfile=path, ready_timeout=30)
    worker = excinfo.value.worker
    assert worker.proc.returncode not in (0, None)
    err = worker.stderr()
    assert path in err and reason in err, err
    assert "Traceback" not in err
