"""configure_process / configure: loggers, signals, colour and format decisions (in-process).

The same behaviour is proven with real workers in ``test_worker_core.py``; these tests
pin down the decisions one by one. Every test restores the process's logging state.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from celery import Celery, signals
from celery.utils.log import LoggingProxy, get_multiprocessing_logger

import logkit
from logkit import receivers
from logkit.config import ConfigError, LogConfig
from logkit.receivers import Installation
from logkit.setup import decide_color, resolve_format

#: Run on every supported Celery minor and Python version by ``nox -s celery``.
pytestmark = pytest.mark.contract

LOGGER_NAMES = ("", "celery", "celery.task", "celery.redirected", "multiprocessing")


@pytest.fixture(autouse=True)
def restore_env() -> Iterator[None]:
    """Put back the env vars configure_process touches (logging itself is put back by
    ``logkit.uninstall()``, in conftest)."""
    env_vars = ("CELERY_LOG_REDIRECT", "CELERY_LOG_REDIRECT_LEVEL", "MP_LOG", "NO_COLOR")
    env = {var: os.environ.pop(var, None) for var in env_vars}
    try:
        yield
    finally:
        for var, value in env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def configure_process(config: LogConfig, **options: Any) -> Any:
    """:func:`logkit.setup.configure_process` on behalf of the current installation (one
    made for no app if there is none), so ``logkit.uninstall()`` undoes it."""
    inst = receivers.installation()
    if inst is None:
        inst = Installation(None, {})
        receivers.activate(inst)
    return inst.configure_process(config, **options)


@pytest.fixture
def signal_calls() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    calls: list[tuple[str, dict[str, Any]]] = []

    def root(**kwargs: Any) -> None:
        calls.append(("after_setup_logger", kwargs))

    def task(**kwargs: Any) -> None:
        calls.append(("after_setup_task_logger", kwargs))

    signals.after_setup_logger.connect(root, weak=False, dispatch_uid="test_setup.root")
    signals.after_setup_task_logger.connect(task, weak=False, dispatch_uid="test_setup.task")
    try:
        yield calls
    finally:
        signals.after_setup_logger.disconnect(root, dispatch_uid="test_setup.root")
        signals.after_setup_task_logger.disconnect(task, dispatch_uid="test_setup.task")


def _app(**conf: Any) -> Celery:
    app = Celery("setup_test", set_as_current=False)
    app.conf.worker_redirect_stdouts = False
    app.conf.update(conf)
    return app


def _logkit_handlers(lg: logging.Logger) -> list[logging.Handler]:
    return [h for h in lg.handlers if getattr(h, "_logkit", False)]


class _FakeSink:
    def __init__(self, path: str | None, tty: bool) -> None:
        self.path = path
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


# ---------------------------------------------------------------------------
# decisions
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "tty", "colorize", "env", "expected"),
    [
        (None, True, None, {}, True),  # a terminal: colour
        (None, False, None, {}, False),  # a pipe: none
        (None, True, False, {}, False),  # --no-color / worker_log_color=False
        (None, True, None, {"NO_COLOR": "1"}, False),
        (None, True, True, {"NO_COLOR": "1"}, False),  # NO_COLOR beats everything
        (None, False, None, {"FORCE_COLOR": "1"}, True),
        (None, False, None, {"FORCE_COLOR": "0"}, False),
        (None, True, None, {"NO_COLOR": ""}, True),  # empty NO_COLOR is unset
        ("/var/log/w.log", True, True, {"FORCE_COLOR": "1"}, False),  # never in a file
    ],
)
def test_decide_color(
    path: str | None, tty: bool, colorize: bool | None, env: dict[str, str], expected: bool
) -> None:
    assert decide_color(colorize, _FakeSink(path, tty), env) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fmt", "path", "tty", "expected"),
    [
        ("auto", None, True, "console"),
        ("auto", None, False, "json"),
        ("auto", "/x.log", False, "json"),
        ("console", "/x.log", False, "console"),
        ("plain", None, True, "plain"),
    ],
)
def test_resolve_format(fmt: str, path: str | None, tty: bool, expected: str) -> None:
    sink = _FakeSink(path, tty)
    assert resolve_format(LogConfig(format=fmt), sink) == expected  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# configure_process
# ---------------------------------------------------------------------------


def test_loggers_handlers_and_signals(
    tmp_path: Path, signal_calls: list[tuple[str, dict[str, Any]]]
) -> None:
    app = _app()
    logfile = str(tmp_path / "w.log")
    active = configure_process(
        LogConfig(format="json"), loglevel="INFO", logfile=logfile, colorize=False, app=app
    )
    root = logging.getLogger()
    task = logging.getLogger("celery.task")
    mp = get_multiprocessing_logger()
    assert active.format == "json" and active.loglevel == logging.INFO
    assert len(_logkit_handlers(root)) == 1 and root.level == logging.INFO
    assert len(_logkit_handlers(task)) == 1 and task.level == logging.INFO
    assert not task.propagate
    assert mp.level == logging.ERROR and _logkit_handlers(mp) == _logkit_handlers(root)

    assert [name for name, _ in signal_calls] == ["after_setup_logger", "after_setup_task_logger"]
    (_, root_kw), (_, task_kw) = signal_calls
    for kw in (root_kw, task_kw):
        assert kw["sender"] is None
        assert kw["loglevel"] == logging.INFO and type(kw["loglevel"]) is int
        assert kw["logfile"] == logfile
        assert kw["colorize"] is False
    assert root_kw["logger"] is root and task_kw["logger"] is task
    assert root_kw["format"] == app.conf.worker_log_format
    assert task_kw["format"] == app.conf.worker_task_log_format

    logging.getLogger("some.lib").info("to the file %d", 1)
    logging.getLogger("some.lib").debug("below the level")
    lines = [json.loads(ln) for ln in Path(logfile).read_text().splitlines()]
    assert [ln["message"] for ln in lines if ln["logger"] == "some.lib"] == ["to the file 1"]


def test_configuring_twice_does_not_duplicate_handlers(tmp_path: Path) -> None:
    for _ in range(3):
        configure_process(LogConfig(format="json"), logfile=str(tmp_path / "w.log"), app=_app())
    assert len(_logkit_handlers(logging.getLogger())) == 1
    assert len(_logkit_handlers(logging.getLogger("celery.task"))) == 1


@pytest.mark.parametrize(
    ("hijack", "root_handlers", "user_writes", "logkit_writes"),
    [
        (True, "auto", False, True),  # Celery's hijack: logkit's handler replaces the user's
        (False, "auto", True, False),  # the user's handler writes it, once (#13)
        (False, "replace", False, True),
        (False, "add", True, True),  # asked for: every line twice
        (True, "add", True, True),
    ],
)
def test_worker_hijack_root_logger(
    tmp_path: Path, hijack: bool, root_handlers: str, user_writes: bool, logkit_writes: bool
) -> None:
    stream_path = tmp_path / "user.log"
    user = logging.FileHandler(stream_path)
    logging.getLogger().addHandler(user)
    try:
        configure_process(
            LogConfig(format="json", root_handlers=root_handlers),
            loglevel=logging.INFO,
            logfile=str(tmp_path / "w.log"),
            app=_app(worker_hijack_root_logger=hijack),
        )
        assert (user in logging.getLogger().handlers) is user_writes
        logging.getLogger("lib").warning("both?")
    finally:
        user.close()
    assert ("both?" in stream_path.read_text()) is user_writes
    assert ("both?" in (tmp_path / "w.log").read_text()) is logkit_writes


def test_mp_log_env_sets_the_multiprocessing_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MP_LOG", "1")
    configure_process(LogConfig(), loglevel="DEBUG", logfile=str(tmp_path / "w.log"), app=_app())
    assert get_multiprocessing_logger().level == logging.DEBUG


def test_redirect_stdouts_at_the_configured_level(tmp_path: Path) -> None:
    app = _app(worker_redirect_stdouts=True, worker_redirect_stdouts_level="ERROR")
    logfile = tmp_path / "w.log"
    configure_process(LogConfig(format="json"), loglevel="INFO", logfile=str(logfile), app=app)
    assert isinstance(sys.stdout, LoggingProxy)
    print("from print")
    sys.stdout.flush()
    lines = [json.loads(ln) for ln in logfile.read_text().splitlines()]
    (printed,) = [ln for ln in lines if ln["message"] == "from print"]
    assert printed["level"] == "ERROR" and printed["logger"] == "celery.redirected"


@pytest.mark.parametrize(
    ("path_of", "reason"),
    [
        (lambda tmp: str(tmp / "missing" / "w.log"), "No such file or directory"),
        (lambda tmp: str(tmp / "afile" / "w.log"), "Not a directory"),
        (lambda tmp: "/sys/logkit-unit.log", "Permission denied"),
    ],
    ids=["missing-dir", "not-a-dir", "permission"],
)
def test_unwritable_log_file_names_path_and_reason(
    tmp_path: Path, path_of: Any, reason: str
) -> None:
    (tmp_path / "afile").write_text("")
    path = path_of(tmp_path)
    before = list(logging.getLogger().handlers)
    with pytest.raises(ConfigError) as excinfo:
        configure_process(LogConfig(format="json"), logfile=path, app=_app())
    assert path in str(excinfo.value) and reason in str(excinfo.value)
    assert logging.getLogger().handlers == before  # nothing half-configured


def test_plain_format_uses_the_apps_formats(tmp_path: Path) -> None:
    app = _app(worker_log_format="R %(levelname)s %(message)s",
               worker_task_log_format="T %(task_name)s %(message)s")  # fmt: skip
    logfile = tmp_path / "w.log"
    configure_process(LogConfig(format="plain"), loglevel="INFO", logfile=str(logfile), app=app)
    logging.getLogger("lib").info("root record")
    logging.getLogger("celery.task").info("task record")
    assert logfile.read_text().splitlines() == ["R INFO root record", "T ??? task record"]


# ---------------------------------------------------------------------------
# configure() -- the override contract, in-process
# ---------------------------------------------------------------------------


def test_configure_with_a_celery_format_string_means_plain(
    tmp_path: Path, signal_calls: list[tuple[str, dict[str, Any]]]
) -> None:
    logfile = tmp_path / "w.log"
    active = logkit.configure(loglevel="WARNING", logfile=str(logfile), format="%(message)s!")
    assert active.format == "plain" and active.loglevel == logging.WARNING
    logging.getLogger("lib").warning("hi")
    assert logfile.read_text() == "hi!\n"
    assert [n for n, _ in signal_calls] == ["after_setup_logger", "after_setup_task_logger"]
    assert signal_calls[0][1]["format"] == "%(message)s!"


def test_configure_json_and_bad_option(tmp_path: Path) -> None:
    logfile = tmp_path / "w.log"
    logkit.configure(loglevel=logging.INFO, logfile=str(logfile), format="json", fields={"a": 1})
    logging.getLogger("lib").info("x")
    assert json.loads(logfile.read_text())["a"] == 1
    with pytest.raises(ConfigError, match="'format'"):
        logkit.configure(format="jsn")


def test_setup_logging_receiver_of_the_user_disables_logkit(tmp_path: Path) -> None:
    from logkit.receivers import on_setup_logging

    app = _app()
    logkit.install(app, format="json")

    def users_own(**kwargs: Any) -> None:
        pass

    before = list(logging.getLogger().handlers)
    signals.setup_logging.connect(users_own, weak=False, dispatch_uid="test_setup.user")
    try:
        on_setup_logging(loglevel=logging.INFO, logfile=str(tmp_path / "w.log"))
    finally:
        signals.setup_logging.disconnect(users_own, dispatch_uid="test_setup.user")
    assert logging.getLogger().handlers == before
    assert not (tmp_path / "w.log").exists()
    # without the user's receiver, logkit configures
    on_setup_logging(loglevel=logging.INFO, logfile=str(tmp_path / "w.log"))
    assert len(_logkit_handlers(logging.getLogger())) == 1
    assert os.path.exists(tmp_path / "w.log")


def test_structlog_contextvars_bound_in_a_task_end_with_it(tmp_path: Path) -> None:
    app = _app(task_always_eager=True)
    logkit.install(app, format="json")
    logfile = tmp_path / "w.log"
    logkit.configure(loglevel=logging.INFO, logfile=str(logfile), app=app)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(worker_wide="kept")

    @app.task
    def binds(n: int) -> None:
        if n == 1:
            structlog.contextvars.bind_contextvars(leaky="yes")
        structlog.get_logger("sl").info("in task", n=n)

    try:
        binds.delay(1)
        assert structlog.contextvars.get_contextvars() == {"worker_wide": "kept"}
        binds.delay(2)
    finally:
        structlog.contextvars.clear_contextvars()
    lines = [json.loads(line) for line in logfile.read_text().splitlines()]
    in_task = {r["n"]: r for r in lines if r["message"] == "in task"}
    assert in_task[1]["leaky"] == "yes" and in_task[1]["worker_wide"] == "kept"
    assert "leaky" not in in_task[2] and in_task[2]["worker_wide"] == "kept"
