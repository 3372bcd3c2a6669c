"""The per-task DEBUG buffer (``task_buffer``) and repeat folding (``dedupe_window``)
in real ``celery worker`` processes at ``-l INFO``, per pool (#29).

One worker per pool runs, several at once, tasks that fail with more DEBUG lines
than the buffer holds, succeed after DEBUG lines, log ERROR and then succeed, retry
once, and loop on one warning 1,000 times; and the two operating scenarios (500
identical WARNINGs; 5 DEBUG lines then an ERROR in a task that returns normally)
through every kind of logger a task logs with: a module logger, ``get_task_logger``,
structlog, Celery's own loggers and ``print()`` (#34). A marker task runs last; the
worker is stopped (its shutdown writes the pending repeat counts) and every line of
its log file is parsed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_hotpath import restore_logging  # noqa: F401  (the fixture)
from workerutil import (
    Worker,
    WorkerStartError,
    make_app,
    parse_json_lines,
    start_worker,
    wait_for,
)

from logkit.config import ConfigError, LogConfig

BODY = r"""
import logging
import os
import time

import structlog
from celery import signals
from celery.utils.log import get_logger, get_task_logger

import logkit

#: Set in the workers: what only a worker does (the receivers below, the user's logging)
#: is not done in the test process, which imports this module to send the tasks.
IN_WORKER = bool(os.environ.get("OPS_WORKER"))
logkit.install(app, format="json")
lib = logging.getLogger("ops.lib")      # any logger, not only the task's
tlog = get_task_logger("ops.tasks")

#: every kind of logger a task logs with (#34), by route name
ROUTES = {
    "module": logging.getLogger("ops.module"),
    "task_logger": get_task_logger("ops.task_logger"),  # celery.task's handler
    "structlog": structlog.get_logger("ops.structlog"),
    "celery": get_logger("celery.ops"),  # under Celery's own `celery` logger
}


def chatter(tag, n):
    for i in range(n):
        (lib, tlog)[i % 2].debug("%s line %d", tag, i, extra={"at": time.time(), "i": i})
        time.sleep(0.004)


@app.task
def fails(tag, n):
    chatter(tag, n)
    raise ValueError(f"{tag} failed")


@app.task
def succeeds(tag, n):
    chatter(tag, n)
    lib.info("%s done", tag)
    return tag


@app.task
def logs_error(tag, n):
    chatter(tag, n)
    lib.error("%s went wrong but carries on", tag)
    lib.debug("%s after the error", tag)
    return tag


@app.task(bind=True, max_retries=1, default_retry_delay=0)
def retries(self, tag, n):
    chatter(f"{tag} try {self.request.retries}", n)
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return tag


@app.task
def burst(n):
    for i in range(n):
        lib.warning("connection refused (attempt %d)", i)
    for i in range(3):  # two templates, never folded together
        lib.warning("template A %d", i)
        lib.warning("template B %d", i)
    for i in range(4):  # a new template each time: nothing folds
        lib.warning(f"distinct {i}")
    for exc_type in (ValueError, KeyError, ValueError, KeyError):
        try:
            raise exc_type("boom")
        except Exception:
            lib.exception("call failed")


@app.task
def route_burst(route, n):
    if route == "print":  # stdout, redirected to Celery's celery.redirected logger
        for _ in range(n):
            print("print refused")
        return
    for i in range(n):
        ROUTES[route].warning("%s refused (attempt %d)", route, i)


@app.task
def route_error(route, n):
    log = ROUTES[route]
    for i in range(n):
        log.debug("%s step %d", route, i)
    log.error("%s went wrong but carries on", route)
    return route


@app.task
def marker():
    lib.info("marker")


@signals.worker_ready.connect(weak=False)
def _outside(**_):
    lib.debug("debug outside any task")


def _before_the_pool(**_):  # the main process, before it forks the prefork pool
    for _ in range(3):
        lib.warning("main process, before the pool starts")


if IN_WORKER:
    signals.celeryd_after_setup.connect(_before_the_pool, weak=False)
"""

POOLS = {"prefork": 2, "threads": 4, "solo": 1, "gevent": 4}
SIZE = 5
BURST = 1000
#: The loggers of the operating scenarios (#34): each task's burst and error run through one.
ROUTES = ("module", "task_logger", "structlog", "celery")
#: The scenarios' sizes: identical WARNINGs in a burst; DEBUG lines before the ERROR.
ROUTE_BURST, ROUTE_DEBUG = 500, 5
INSTALL = 'logkit.install(app, format="json")\n'

#: The same tasks where logging is configured more than once in a process (#34), on a
#: prefork worker: the app's own setup_logging receiver calls logkit.configure(), and again
#: in each pool child (``-f worker-%i.log``: Celery sets logging up again there) ...
CONFIGURE_AGAIN = f"""{INSTALL}

def _own_setup(loglevel=None, logfile=None, **_):
    logkit.configure(loglevel, logfile, format="json", task_buffer={SIZE}, dedupe_window=600)


if IN_WORKER:
    signals.setup_logging.connect(_own_setup, weak=False)
"""
#: ... and each pool child, configured by fork, uninstalls logkit, installs it again and
#: configures (the options from the environment).
REINSTALL = f"""{INSTALL}

def _reinstall(**_):
    logkit.uninstall()
    logkit.install(app, format="json")
    logkit.configure(int(os.environ["CELERY_LOG_LEVEL"]), os.environ["CELERY_LOG_FILE"])


if IN_WORKER:
    signals.worker_process_init.connect(_reinstall, weak=False)
"""
#: run -> (pool, concurrency, how logkit is set up, log file)
RUNS = {
    **{pool: (pool, n, INSTALL, "worker.log") for pool, n in POOLS.items()},
    "configure-again": ("prefork", 2, CONFIGURE_AGAIN, "worker-%i.log"),
    "reinstall": ("prefork", 2, REINSTALL, "worker.log"),
}


class Outcome:
    def __init__(self, run: str, worker: Worker, ids: dict[str, str],
                 records: list[dict[str, Any]] | None = None) -> None:
        self.run = run
        self.worker = worker
        self.ids = ids
        self.records = _records(worker) if records is None else records

    def of(self, task: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("task_id") == self.ids[task]]


def _records(worker: Worker) -> list[dict[str, Any]]:
    """Every line the worker wrote (``-f worker-%i.log``: the main process's file first)."""
    return [r for path in sorted(worker.workdir.glob("worker*.log"))
            for r in parse_json_lines(path.read_text(), str(path))]


@pytest.fixture(scope="module", params=list(RUNS))
def outcome(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Outcome]:
    run = request.param
    pool, concurrency, setup, logfile = RUNS[run]
    if pool == "gevent":
        pytest.importorskip("gevent")
    appmod = make_app(tmp_path_factory.mktemp(f"ops-{run}"), BODY.replace(INSTALL, setup))
    # every source of the options is exercised: the celery flags, the env vars, configure()
    extra: list[str] = []
    env = {"OPS_WORKER": "1"}
    if run == "prefork":
        extra = ["--log-task-buffer", str(SIZE), "--log-dedupe-window", "600"]
    elif run != "configure-again":
        env.update(LOGKIT_TASK_BUFFER=str(SIZE), LOGKIT_DEDUPE_WINDOW="600")
    worker = start_worker(appmod, pool=pool, concurrency=concurrency, logfile=logfile,
                          extra_args=extra, env=env)
    try:
        mod = appmod.load()
        sent = {
            "fail_many": mod.fails.delay("fail_many", 12),
            "fail_few": mod.fails.delay("fail_few", 3),
            "ok": mod.succeeds.delay("ok", 12),
            "ok2": mod.succeeds.delay("ok2", 4),
            "error": mod.logs_error.delay("error", 3),
            "retry": mod.retries.delay("retry", 3),
        }
        for route in ROUTES:
            sent[f"burst-{route}"] = mod.route_burst.delay(route, ROUTE_BURST)
            sent[f"error-{route}"] = mod.route_error.delay(route, ROUTE_DEBUG)
        sent["burst-print"] = mod.route_burst.delay("print", ROUTE_BURST)
        for result in sent.values():
            result.get(timeout=60, propagate=False)
        mod.burst.delay(BURST).get(timeout=60)
        mod.marker.delay().get(timeout=60)
        wait_for(lambda: any(r.get("message") == "marker" for r in _records(worker)),
                 timeout=30, message=worker.describe)
        assert worker.stop(timeout=30) == 0, worker.describe()
        yield Outcome(run, worker, {k: v.id for k, v in sent.items()})
    finally:
        worker.stop(timeout=15)
        appmod.unload()


def _debug_lines(records: list[dict[str, Any]], tag: str) -> list[dict[str, Any]]:
    return [r for r in records if r["level"] == "DEBUG" and r["message"].startswith(f"{tag} ")]


@pytest.mark.worker
def test_failing_task_writes_its_last_lines_in_order(outcome: Outcome) -> None:
    records = outcome.of("fail_many")
    lines = _debug_lines(records, "fail_many")
    assert [r["i"] for r in lines] == list(range(12 - SIZE, 12))  # the last five, in order
    assert all(r["buffered"] is True and r["buffer_dropped"] == 12 - SIZE for r in lines)
    # each with its own timestamp (when it was logged, not when it was written) and context
    # each made between its own log call and the next one (ms in the timestamp: -0.001)
    for r, after in zip(lines, [*(r["at"] for r in lines[1:]), time.time()], strict=True):
        assert r["at"] - 0.001 <= _epoch(r["timestamp"]) <= after, r
        assert r["task_name"].endswith(".fails")
    stamps = [_epoch(r["timestamp"]) for r in lines]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] >= 0.015  # 4 ms sleeps
    # written before the task_failed event, which follows them
    failed = [i for i, r in enumerate(records) if r.get("event") == "task_failed"]
    assert failed and records.index(lines[-1]) < failed[0]
    assert {r["logger"] for r in lines} == {"ops.lib", "ops.tasks"}


@pytest.mark.worker
def test_a_few_lines_fit_and_nothing_is_dropped(outcome: Outcome) -> None:
    lines = _debug_lines(outcome.of("fail_few"), "fail_few")
    assert [r["i"] for r in lines] == [0, 1, 2]
    assert all(r["buffered"] is True and r["buffer_dropped"] == 0 for r in lines)


@pytest.mark.worker
def test_succeeding_task_lines_are_never_written(outcome: Outcome) -> None:
    # the marker ran after everything, and the worker has stopped: absent for good
    assert any(r["message"] == "marker" for r in outcome.records)
    for tag in ("ok", "ok2"):
        records = outcome.of(tag)
        assert [r["message"] for r in records if r["logger"] == "ops.lib"] == [f"{tag} done"]
        assert not _debug_lines(records, tag)
        assert not _debug_lines(outcome.records, tag)
    assert not [r for r in outcome.records if r["message"] == "debug outside any task"]
    assert not [r for r in outcome.records if r.get("event") == "task_started"]  # DEBUG event


@pytest.mark.worker
def test_an_error_writes_the_buffer_first(outcome: Outcome) -> None:
    records = outcome.of("error")
    messages = [r["message"] for r in records if r["logger"].startswith("ops.")]
    assert messages[:4] == ["error line 0", "error line 1", "error line 2",
                            "error went wrong but carries on"]
    assert "error after the error" not in messages  # kept, then dropped: the task succeeded
    assert any(r.get("event") == "task_succeeded" for r in records)


@pytest.mark.worker
def test_retry_writes_the_lines_of_the_attempt_that_retried(outcome: Outcome) -> None:
    records = outcome.of("retry")
    first = _debug_lines(records, "retry try 0")
    assert [r["i"] for r in first] == [0, 1, 2] and all(r["buffered"] for r in first)
    assert [r.get("retries", 0) for r in first] == [0, 0, 0]
    retried = [i for i, r in enumerate(records) if r.get("event") == "task_retried"]
    assert retried and records.index(first[-1]) < retried[0]
    assert not _debug_lines(records, "retry try 1")  # the second attempt succeeded
    assert any(r.get("event") == "task_succeeded" and r["retries"] == 1 for r in records)


@pytest.mark.worker
def test_threads_keep_a_buffer_per_task(outcome: Outcome) -> None:
    # tasks ran at once (threads, prefork): no buffered line is another task's
    for r in outcome.records:
        if r.get("buffered"):
            tag = r["message"].split(" line ")[0].split(" try ")[0]
            if " step " in tag:  # the error scenario's, by route
                tag = f"error-{tag.split(' step ')[0]}"
            assert r["task_id"] == outcome.ids[tag], r


@pytest.mark.worker
def test_a_burst_is_one_line_and_one_count(outcome: Outcome) -> None:
    burst = [r for r in outcome.records if r["message"].startswith("connection refused")]
    assert [r["message"] for r in burst] == [
        "connection refused (attempt 0)", f"connection refused (attempt {BURST - 1})"]
    assert "repeated" not in burst[0]
    assert burst[1]["repeated"] == BURST - 1  # written at shutdown: every record accounted for
    assert burst[1]["task_name"].endswith(".burst")


@pytest.mark.worker
def test_templates_and_exception_types_fold_apart(outcome: Outcome) -> None:
    def written(prefix: str) -> list[tuple[str, Any]]:
        return [(r["message"], r.get("repeated")) for r in outcome.records
                if r["message"].startswith(prefix)]

    assert written("template A") == [("template A 0", None), ("template A 2", 2)]
    assert written("template B") == [("template B 0", None), ("template B 2", 2)]
    assert written("distinct") == [(f"distinct {i}", None) for i in range(4)]
    failed = [r for r in outcome.records if r["message"] == "call failed"]
    kinds = [(r["exception"]["type"], r.get("repeated")) for r in failed]
    assert sorted(kinds, key=str) == sorted(
        [("ValueError", None), ("KeyError", None), ("ValueError", 1), ("KeyError", 1)], key=str)


@pytest.mark.worker
@pytest.mark.parametrize("route", [*ROUTES, "print"])
def test_a_burst_folds_whatever_logger_logs_it(outcome: Outcome, route: str) -> None:
    """500 identical WARNINGs through a module logger, get_task_logger (the celery.task
    handler), structlog, a logger under Celery's own, print(): two lines, one count (#34)."""
    _assert_folded(outcome, route)


@pytest.mark.worker
@pytest.mark.parametrize("route", ROUTES)
def test_an_error_writes_the_buffer_whatever_logger_logs_it(outcome: Outcome, route: str) -> None:
    """5 DEBUG lines then an ERROR, in a task that returns normally: the five are
    written, buffered, before the ERROR, whichever logger logs them (#34)."""
    _assert_buffer_written(outcome, route)


def _assert_folded(outcome: Outcome, route: str) -> None:
    burst = [r for r in outcome.of(f"burst-{route}") if r["level"] == "WARNING"]
    assert [r.get("repeated") for r in burst] == [None, ROUTE_BURST - 1], [
        (r["logger"], r["message"]) for r in burst[:3]]
    assert all(r["message"].startswith(f"{route} refused") for r in burst)


def _assert_buffer_written(outcome: Outcome, route: str) -> None:
    records = outcome.of(f"error-{route}")
    mine = [(r["level"], r["message"], r.get("buffered")) for r in records
            if r["message"].startswith(f"{route} ")]
    assert mine == [*(("DEBUG", f"{route} step {i}", True) for i in range(ROUTE_DEBUG)),
                    ("ERROR", f"{route} went wrong but carries on", None)]
    assert [r.get("event") for r in records if r.get("event")][-1] == "task_succeeded"


#: The user's own handlers write the records (a dictConfig, worker_hijack_root_logger off):
#: one on the root, one on a logger of theirs that does not propagate; logkit's context
#: filter joins both, and so do the tools (#34).
USER_HANDLERS = """
import json as _json
import logging.config


class UserLines(logging.Formatter):
    \"\"\"The user's own format: a few fields of the record, as JSON.\"\"\"

    def format(self, record):
        out = {"level": record.levelname, "logger": record.name,
               "message": record.getMessage(), "task_id": getattr(record, "task_id", None)}
        for key in ("repeated", "buffered", "event"):
            if key in record.__dict__:
                out[key] = record.__dict__[key]
        return _json.dumps(out)


app.conf.worker_hijack_root_logger = False
if IN_WORKER:
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"lines": {"()": UserLines}},
        "handlers": {
            "root_file": {"class": "logging.FileHandler", "filename": WORKDIR + "/user.log",
                          "formatter": "lines"},
            "own_file": {"class": "logging.FileHandler", "filename": WORKDIR + "/own.log",
                         "formatter": "lines"},
        },
        "root": {"handlers": ["root_file"], "level": "INFO"},
        "loggers": {"ops.own": {"handlers": ["own_file"], "propagate": False}},
    })
logkit.install(app, format="json")
"""


@pytest.fixture(scope="module")
def users_outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    body = BODY.replace(INSTALL, USER_HANDLERS) + '\nROUTES["own"] = logging.getLogger("ops.own")\n'
    appmod = make_app(tmp_path_factory.mktemp("ops-user"), body)
    env = {"OPS_WORKER": "1", "LOGKIT_TASK_BUFFER": str(SIZE), "LOGKIT_DEDUPE_WINDOW": "600"}
    worker = start_worker(appmod, pool="prefork", concurrency=2, env=env)
    files = [appmod.workdir / "user.log", appmod.workdir / "own.log"]

    def records() -> list[dict[str, Any]]:
        return [r for path in files if path.exists()
                for r in parse_json_lines(path.read_text(), str(path))]

    try:
        mod = appmod.load()
        sent = {}
        for route in (*ROUTES, "own"):
            sent[f"burst-{route}"] = mod.route_burst.delay(route, ROUTE_BURST)
            sent[f"error-{route}"] = mod.route_error.delay(route, ROUTE_DEBUG)
        for result in sent.values():
            result.get(timeout=60)
        mod.marker.delay().get(timeout=60)
        wait_for(lambda: any(r["message"] == "marker" for r in records()), timeout=30,
                 message=worker.describe)
        assert worker.stop(timeout=30) == 0, worker.describe()
        yield Outcome("user", worker, {k: v.id for k, v in sent.items()}, records())
    finally:
        worker.stop(timeout=15)
        appmod.unload()


@pytest.mark.worker
@pytest.mark.parametrize("route", [*ROUTES, "own"])
def test_the_users_handlers_get_the_tools(users_outcome: Outcome, route: str) -> None:
    """Where the user's dictConfig handlers write (root and a logger of theirs), a burst
    folds and an ERROR writes the buffer, whichever logger logs them (#34)."""
    _assert_folded(users_outcome, route)
    _assert_buffer_written(users_outcome, route)


@pytest.mark.worker
def test_a_count_is_written_once_by_the_process_that_counted_it(outcome: Outcome) -> None:
    """Repeats counted in the main process before it forks the pool: one count, written by
    the main process (a forked child does not write its copy of the parent's windows)."""
    lines = [r for r in outcome.records if r["message"] == "main process, before the pool starts"]
    assert [r.get("repeated") for r in lines] == [None, 2], lines
    assert len({r["process"] for r in lines}) == 1


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# --------------------------------------------------------------------------
# bad values
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("task_buffer", -1, "integer >= 0"),
        ("task_buffer", "lots", "integer >= 0"),
        ("task_buffer", 2.5, "integer >= 0"),
        ("dedupe_window", -0.5, "seconds >= 0"),
        ("dedupe_window", "soon", "seconds >= 0"),
        ("dedupe_window", float("nan"), "seconds >= 0"),
    ],
)
def test_bad_values_are_rejected_naming_the_range(option: str, value: Any, words: str) -> None:
    with pytest.raises(ConfigError, match=rf"'{option}'.*{words}"):
        LogConfig.resolve(None, {option: value})
    with pytest.raises(ConfigError, match=rf"LOGKIT_{option.upper()}.*{words}"):
        LogConfig.resolve(None, env={f"LOGKIT_{option.upper()}": str(value)})


def test_good_values_from_every_source() -> None:
    assert LogConfig().task_buffer == 0 and LogConfig().dedupe_window == 0.0
    config = LogConfig.resolve(None, env={"LOGKIT_TASK_BUFFER": "50",
                                          "LOGKIT_DEDUPE_WINDOW": "2.5"})
    assert (config.task_buffer, config.dedupe_window) == (50, 2.5)


@pytest.mark.worker
def test_worker_refuses_a_bad_value(tmp_path: Any) -> None:
    appmod = make_app(tmp_path, "import logkit\nlogkit.install(app, format='json')\n")
    with pytest.raises(WorkerStartError) as info:
        start_worker(appmod, pool="solo", concurrency=1, logfile="w.log",
                     env={"LOGKIT_TASK_BUFFER": "-3"}, ready_timeout=60)
    output = info.value.worker.output() + info.value.worker.read_log()
    assert "LOGKIT_TASK_BUFFER" in output and "integer >= 0" in output, output
    with pytest.raises(WorkerStartError) as info:
        start_worker(appmod, pool="solo", concurrency=1,
                     extra_args=["--log-dedupe-window", "-1"], ready_timeout=60)
    output = info.value.worker.output()
    assert "--log-dedupe-window" in output and "0" in output, output


# --------------------------------------------------------------------------
# windows closing in one process (record timestamps stand in for the clock)
# --------------------------------------------------------------------------


class Kept(logging.Handler):
    """A handler that keeps the records it is given, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_window_closes_when_the_next_repeat_comes_after_it() -> None:
    from logkit.dedupe import Fold

    handler = Kept()
    written = handler.records
    fold = Fold(handler, 1.0)
    handler.addFilter(fold)

    def log(msg: str, at: float, *args: Any) -> None:
        record = logging.LogRecord("x", logging.WARNING, __file__, 1, msg, args, None)
        record.created = at
        handler.handle(record)

    log("a %d", 100.0, 1)
    log("a %d", 100.5, 2)
    log("a %d", 100.9, 3)
    assert [r.getMessage() for r in written] == ["a 1"]
    log("a %d", 101.2, 4)  # after the window: the count, then this one (a new window)
    assert [(r.getMessage(), r.__dict__.get("repeated")) for r in written] == [
        ("a 1", None), ("a 3", 2), ("a 4", None)]
    log("b", 101.3)
    log("c", 102.5)  # any record closes the windows whose time is up (a's, with no repeats)
    log("b", 102.6)  # b's window had closed too: written again
    assert [r.getMessage() for r in written][-3:] == ["b", "c", "b"]
    log("c", 102.7)
    assert fold.flush() == 1  # at shutdown: the pending count goes out
    assert (written[-1].getMessage(), written[-1].__dict__["repeated"]) == ("c", 1)


# --------------------------------------------------------------------------
# the buffer in one process: what a kept call becomes, and what is put back
# --------------------------------------------------------------------------


def test_kept_calls_become_the_records_they_would_have_been() -> None:
    from logkit import buffer

    handler = Kept()
    written = handler.records
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), dict(vars(logging.Logger)))
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    lib = logging.getLogger("ops.unit")
    loud = logging.getLogger("ops.loud")
    loud.setLevel(logging.DEBUG)
    try:
        assert buffer.apply(LogConfig(task_buffer=4), [handler], logging.INFO)
        assert logging.Logger.debug is not saved[2]["debug"]
        lib.debug("outside a task")  # not kept, not written
        buffer.on_task_prerun(task_id="t1")
        before = time.time()
        lib.debug("zero")  # will not fit
        lib.debug("one %s", 1); line = sys_line()  # noqa: E702
        loud.debug("written at once")  # a logger set to DEBUG keeps its level
        lib.log(logging.DEBUG, "two %s", 2)
        try:
            raise KeyError("k")
        except KeyError:
            lib.debug("three", exc_info=True)
        lib.debug("four", stacklevel=1)
        assert [r.getMessage() for r in written] == ["written at once"]
        buffer.on_task_postrun(task_id="t1", state="FAILURE")
        kept = written[1:]
        assert [r.getMessage() for r in kept] == ["one 1", "two 2", "three", "four"]
        assert all(r.buffered and r.buffer_dropped == 1 for r in kept)  # "zero" did not fit
        assert kept[0].lineno == line
        assert kept[2].exc_info is not None and kept[2].exc_info[0] is KeyError
        assert all(r.funcName == "test_kept_calls_become_the_records_they_would_have_been"
                   and r.pathname == __file__ for r in kept)
        assert all(before <= r.created <= time.time() for r in kept)
        # a task that succeeds: dropped
        written.clear()
        buffer.on_task_prerun(task_id="t2")
        lib.debug("dropped")
        buffer.on_task_postrun(task_id="t2", state="SUCCESS")
        assert written == []
    finally:
        buffer.apply(LogConfig(), [handler], logging.INFO)  # off: everything put back
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
        loud.setLevel(logging.NOTSET)
    for name in ("debug", "info", "warning", "log"):
        assert vars(logging.Logger)[name] is saved[2][name]
    assert handler.filters == []


def sys_line() -> int:
    import sys

    return sys._getframe(1).f_lineno


# --------------------------------------------------------------------------
# configure(): on, the events keep their fast path; off, nothing is left behind
# --------------------------------------------------------------------------


@pytest.mark.usefixtures("restore_logging")  # test_hotpath's (autouse there and here)
def test_on_keeps_the_events_fast_path_and_off_leaves_nothing(tmp_path: Any) -> None:
    from celery import Celery

    import logkit
    from logkit import buffer, dedupe

    stock = {name: vars(logging.Logger)[name] for name in ("debug", "info", "warning", "log")}
    app = Celery("ops_unit", set_as_current=False)
    app.conf.update(task_always_eager=True, broker_url="memory://",
                    worker_redirect_stdouts=False)
    logfile = tmp_path / "ops.log"
    from celery import signals

    from logkit.receivers import installation

    logkit.install(app, format="json")
    per_task = (len(signals.task_prerun.receivers), len(signals.task_postrun.receivers))
    logkit.install(app, format="json", task_buffer=5, dedupe_window=1)
    logkit.configure(loglevel="INFO", logfile=str(logfile), app=app)
    assert buffer.size() == 5 and dedupe.folds()
    # their per-task steps run in logkit's own two receivers: no receiver more per task
    assert (len(signals.task_prerun.receivers), len(signals.task_postrun.receivers)) == per_task
    inst = installation()
    assert inst is not None and inst.prerun_hooks and inst.postrun_hooks
    assert vars(logging.Logger)["debug"] is not stock["debug"]
    handler = logging.getLogger().handlers[0]
    assert [type(f) for f in handler.filters if isinstance(f, (buffer.Trigger, dedupe.Fold))] \
        == [buffer.Trigger, dedupe.Fold]  # on logkit's handler: the one road for every record
    logkit.install(app, format="json")
    logkit.configure(loglevel="INFO", logfile=str(logfile), app=app)
    assert buffer.size() == 0 and not dedupe.folds()
    inst = installation()
    assert inst is not None and not inst.prerun_hooks and not inst.postrun_hooks
    assert {name: vars(logging.Logger)[name] for name in stock} == stock
    for handler in logging.getLogger().handlers:
        assert not [f for f in handler.filters if isinstance(f, (buffer.Trigger, dedupe.Fold))]


@pytest.mark.usefixtures("restore_logging")
def test_a_count_written_after_its_task_keeps_the_task_context_with_queue(tmp_path: Any) -> None:
    """queue=True: a repeat count written once the task is over (at shutdown) still
    carries the context its records were logged in."""
    import json

    import logkit
    from logkit import dedupe
    from logkit.handlers import flush_queues

    logfile = tmp_path / "queued.log"
    logkit.configure(loglevel="INFO", logfile=str(logfile), format="json", queue=True,
                     dedupe_window=60)
    log = logging.getLogger("ops.queued")
    with logkit.bound(task_id="t-queued", tenant="acme"):
        for _ in range(5):
            log.warning("connection refused")
    log.warning("after the task")  # the marker: the count is not written before flush
    assert dedupe.flush() == 1
    assert flush_queues()
    lines = [json.loads(line) for line in logfile.read_text().splitlines()]
    mine = [r for r in lines if r["logger"] == "ops.queued"]
    assert [(r["message"], r.get("repeated")) for r in mine] == [
        ("connection refused", None), ("after the task", None), ("connection refused", 4)]
    assert mine[-1]["task_id"] == "t-queued" and mine[-1]["tenant"] == "acme"
    assert "task_id" not in mine[1]


# --------------------------------------------------------------------------
# which handlers get the tools, configure after configure, uninstall then install (#34)
# --------------------------------------------------------------------------


def _tools(handler: logging.Handler) -> list[type]:
    from logkit import buffer, dedupe

    return [type(f) for f in handler.filters if isinstance(f, (buffer.Trigger, dedupe.Fold))]


def _every_handler() -> list[logging.Handler]:
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    return [h for lg in loggers for h in getattr(lg, "handlers", ())]


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("queue", [False, True])
def test_every_handler_gets_the_tools_on_every_configure(tmp_path: Any, queue: bool) -> None:
    """The root's and celery.task's handlers (the queue's, with queue=True) get the
    buffer's trigger and a fold on the first configure, on a second one (the removed
    handlers keep none), and after uninstall() then install(); uninstall() leaves none."""
    from celery import Celery

    import logkit
    from logkit import buffer, dedupe

    app = Celery("ops_tools", set_as_current=False)
    app.conf.update(broker_url="memory://", worker_redirect_stdouts=False)
    tools = {"task_buffer": 5, "dedupe_window": 60, "queue": queue}

    def configured(log: str) -> list[logging.Handler]:
        logkit.configure("INFO", str(tmp_path / log), app=app)
        ours = [logging.getLogger().handlers[0], logging.getLogger("celery.task").handlers[0]]
        assert {type(h).__name__ for h in ours} == {
            "QueueSinkHandler" if queue else "SinkHandler"}
        for handler in ours:
            assert _tools(handler) == [buffer.Trigger, dedupe.Fold], handler
        assert buffer.size() == 5 and len(dedupe.folds()) == 2
        return ours

    logkit.install(app, format="json", **tools)
    first = configured("one.log")
    second = configured("two.log")
    assert not set(map(id, first)) & set(map(id, second))
    assert [_tools(h) for h in first] == [[], []]  # the removed handlers keep none
    logkit.uninstall()
    assert not [h for h in _every_handler() if _tools(h)]
    assert buffer.size() == 0 and not dedupe.folds()
    logkit.install(app, format="json", **tools)
    configured("three.log")


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("queue", [False, True])
def test_a_pending_count_is_written_when_configured_again(tmp_path: Any, queue: bool) -> None:
    """A repeat count pending when logging is configured again is written, to the file
    its first line went to, before that file is closed."""
    import json

    import logkit
    from logkit.handlers import flush_queues

    first, second = tmp_path / "first.log", tmp_path / "second.log"
    logkit.configure("INFO", str(first), format="json", dedupe_window=60, queue=queue)
    log = logging.getLogger("celery.task.ops")  # celery.task's own handler
    for _ in range(4):
        log.warning("connection refused")
    logkit.configure("INFO", str(second), format="json", dedupe_window=60, queue=queue)
    log.warning("connection refused")  # a new configuration: a new window
    assert flush_queues()
    lines = [json.loads(line) for line in first.read_text().splitlines()]
    assert [(r["message"], r.get("repeated")) for r in lines if r["logger"] == log.name] == [
        ("connection refused", None), ("connection refused", 3)]
    lines = [json.loads(line) for line in second.read_text().splitlines()]
    assert [(r["message"], r.get("repeated")) for r in lines if r["logger"] == log.name] == [
        ("connection refused", None)]


@pytest.mark.usefixtures("restore_logging")
def test_the_users_handlers_get_the_tools_next_to_logkits(tmp_path: Any) -> None:
    """root_handlers="add": the user's root handler writes too, and gets the tools."""
    import logkit

    users = Kept()
    logging.getLogger().addHandler(users)
    logkit.configure("INFO", str(tmp_path / "w.log"), format="json", root_handlers="add",
                     task_buffer=5, dedupe_window=60)
    root = logging.getLogger()
    assert users in root.handlers
    for handler in (*root.handlers, *logging.getLogger("celery.task").handlers):
        assert len(_tools(handler)) == 2, handler
    for _ in range(3):
        logging.getLogger("ops.both").warning("again")
    assert [r.getMessage() for r in users.records if r.name == "ops.both"] == ["again"]


@pytest.mark.usefixtures("restore_logging")
def test_install_after_configure_without_app_keeps_the_tools_per_task_steps(
    tmp_path: Any,
) -> None:
    """A web process configures logging with the tools on, then its Celery app module calls
    install(app), which takes that configuration over: the buffer's and the folds'
    per-task steps go on running (a task's DEBUG lines are kept until its ERROR)."""
    import json

    from celery import Celery

    import logkit
    from logkit.receivers import installation

    logfile = tmp_path / "web.log"
    logkit.configure("INFO", str(logfile), format="json", task_buffer=5, dedupe_window=60)
    app = Celery("ops_take_over", set_as_current=False)
    app.conf.update(task_always_eager=True, broker_url="memory://")

    @app.task
    def steps() -> None:
        for i in range(3):
            logging.getLogger("ops.web").debug("step %d", i)
        logging.getLogger("ops.web").error("went wrong")

    inst = logkit.install(app)
    assert installation() is inst and inst.active is not None  # taken over
    assert inst.prerun_hooks and inst.postrun_hooks
    steps.apply()
    lines = [json.loads(line) for line in logfile.read_text().splitlines()]
    assert [(r["message"], r.get("buffered")) for r in lines if r["logger"] == "ops.web"] == [
        ("step 0", True), ("step 1", True), ("step 2", True), ("went wrong", None)]


@pytest.mark.usefixtures("restore_logging")
def test_a_handler_an_after_setup_logger_receiver_adds_gets_the_tools(tmp_path: Any) -> None:
    """Celery's documented way to add a handler (an after_setup_logger receiver): it
    writes the root's records next to logkit's, and folds them the same."""
    from celery import signals

    import logkit

    theirs = Kept()

    def add_handler(logger: logging.Logger, **_: Any) -> None:
        logger.addHandler(theirs)

    signals.after_setup_logger.connect(add_handler, weak=False, dispatch_uid="ops.add_handler")
    try:
        logkit.configure("INFO", str(tmp_path / "w.log"), format="json", dedupe_window=60,
                         task_buffer=5)
    finally:
        signals.after_setup_logger.disconnect(dispatch_uid="ops.add_handler")
    assert theirs in logging.getLogger().handlers and len(_tools(theirs)) == 2
    for _ in range(3):
        logging.getLogger("ops.added").warning("again")
    assert [r.getMessage() for r in theirs.records if r.name == "ops.added"] == ["again"]
