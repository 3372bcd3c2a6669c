"""logkit's parts from ``logging.config`` (dictConfig, fileConfig, Django ``LOGGING``), the
``ContextFilter``, and the rule for who owns the root logger (#13). In-process."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from test_setup import configure_process, restore_env  # noqa: F401  (autouse: env put back)

import logkit
from logkit.config import ConfigError, LogConfig
from logkit.setup import root_owner


@pytest.fixture(autouse=True)
def _enabled_loggers() -> Iterator[None]:
    """A test's own dictConfig (handlers, levels, ``disable_existing_loggers``) must not
    outlive the test: logkit's changes are undone first (``logkit.uninstall()``), then the
    loggers are put back as they were before the test's dictConfig."""
    loggers = [lg for lg in logging.Logger.manager.loggerDict.values()
               if isinstance(lg, logging.Logger)]
    saved = [(lg, lg.disabled) for lg in loggers]
    states = [(lg, list(lg.handlers), list(lg.filters), lg.level, lg.propagate)
              for lg in [logging.getLogger(), *loggers]]
    try:
        yield
    finally:
        logkit.uninstall()
        for lg, handlers, filters, level, propagate in states:
            lg.handlers[:] = handlers
            lg.filters[:] = filters
            lg.setLevel(level)
            lg.propagate = propagate
        for lg, disabled in saved:
            lg.disabled = disabled
        for lg in logging.Logger.manager.loggerDict.values():
            if isinstance(lg, logging.Logger) and lg not in loggers:
                lg.disabled = False


FORMATTERS = ["logkit.JsonFormatter", "logkit.ConsoleFormatter", "logkit.PlainFormatter"]


def _handler_with(formatter: logging.Formatter) -> tuple[logging.Handler, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    return handler, stream


def _dict_config(formatter: dict[str, Any], *, filters: bool = False) -> io.StringIO:
    """dictConfig a ``t`` logger writing to a StringIO through ``formatter``."""
    stream = io.StringIO()
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"f": formatter},
        "filters": {"context": {"()": "logkit.ContextFilter"}} if filters else {},
        "handlers": {"h": {"class": "logging.StreamHandler", "formatter": "f",
                           "stream": stream, **({"filters": ["context"]} if filters else {})}},
        "loggers": {"t": {"handlers": ["h"], "level": "INFO", "propagate": False}},
    })
    return stream


@pytest.mark.parametrize("key", ["()", "class"])
@pytest.mark.parametrize("path", FORMATTERS)
def test_formatters_from_dict_config(key: str, path: str) -> None:
    stream = _dict_config({key: path, "format": "%(levelname)s %(message)s"})
    with logkit.bound(request_id="r-1"):
        logging.getLogger("t").info("hello %s", "there")
    text = stream.getvalue()
    assert "hello there" in text and "r-1" in text
    if path == "logkit.JsonFormatter":
        data = json.loads(text)
        assert (data["message"], data["request_id"], data["logger"]) == ("hello there", "r-1", "t")
    if path == "logkit.PlainFormatter":
        assert text.startswith("INFO hello there request_id=r-1")


def test_formatter_options_as_keyword_arguments() -> None:
    stream = _dict_config({"()": "logkit.JsonFormatter", "fields": {"service": "shop"},
                           "field_names": {"message": "msg"}})
    logging.getLogger("t").warning("x")
    data = json.loads(stream.getvalue())
    assert data["service"] == "shop" and data["msg"] == "x"
    console = logkit.ConsoleFormatter(fields={"svc": "b"}, use_color=False)
    assert console.format(logging.LogRecord("n", 20, "f", 1, "m", None, None)).endswith("m svc=b")


def test_formatter_without_arguments_has_the_defaults() -> None:
    record = logging.LogRecord("n", logging.INFO, "f", 1, "hi", None, None)
    assert json.loads(logkit.JsonFormatter().format(record))["message"] == "hi"
    assert "] hi" in logkit.PlainFormatter().format(record)  # Celery's default format


@pytest.mark.parametrize("cls", [logkit.JsonFormatter, logkit.ConsoleFormatter,
                                 logkit.PlainFormatter])
def test_a_bad_formatter_option_names_the_valid_ones(cls: Any) -> None:
    with pytest.raises(ConfigError, match=r"unknown option.*'colour'.*valid options: fields"):
        cls(colour=True)


def test_formatters_from_file_config(tmp_path: Path) -> None:
    ini = tmp_path / "logging.ini"
    ini.write_text(
        "[loggers]\nkeys=root\n[handlers]\nkeys=json,plain\n[formatters]\nkeys=json,plain\n"
        "[logger_root]\nlevel=INFO\nhandlers=json,plain\n"
        f"[handler_json]\nclass=FileHandler\nformatter=json\nargs=({str(tmp_path / 'j')!r},)\n"
        f"[handler_plain]\nclass=FileHandler\nformatter=plain\nargs=({str(tmp_path / 'p')!r},)\n"
        "[formatter_json]\nclass=logkit.JsonFormatter\n"
        "[formatter_plain]\nclass=logkit.PlainFormatter\nformat=%(levelname)s: %(message)s\n"
        "datefmt=%H\n"
    )
    logging.config.fileConfig(ini, disable_existing_loggers=False)
    try:
        with logkit.bound(request_id="r-2"):
            logging.getLogger("f").info("from ini")
    finally:
        for handler in logging.getLogger().handlers:
            handler.close()
    assert json.loads((tmp_path / "j").read_text())["request_id"] == "r-2"
    assert (tmp_path / "p").read_text() == "INFO: from ini request_id=r-2\n"


def test_context_filter_for_a_foreign_formatter() -> None:
    stream = _dict_config({"format": "%(task_id)s|%(task_name)s|%(request_id)s|%(message)s"},
                          filters=True)
    log = logging.getLogger("t")
    log.info("outside")  # nothing bound: empty, never a KeyError
    with logkit.bound(task_id="t-1", task_name="shop.greet", request_id="r-3"):
        log.info("inside")
    assert stream.getvalue().splitlines() == ["|||outside", "t-1|shop.greet|r-3|inside"]


def test_context_filter_keeps_extras_and_logkit_json_unchanged() -> None:
    """A ContextFilter on one handler does not add empty fields to logkit's JSON on another."""
    filtered, text = _handler_with(logging.Formatter("%(user)s %(request_id)s"))
    filtered.addFilter(logkit.ContextFilter(defaults={"request_id": "-"}))
    plain_json, out = _handler_with(logkit.JsonFormatter())
    log = logging.getLogger("t2")
    log.handlers[:] = [filtered, plain_json]
    log.propagate = False
    try:
        log.warning("m", extra={"user": "ann"})
    finally:
        log.handlers[:] = []
    assert text.getvalue() == "ann -\n"
    data = json.loads(out.getvalue())
    assert data["user"] == "ann" and "request_id" not in data


# ---------------------------------------------------------------------------
# who owns the root logger
# ---------------------------------------------------------------------------


def test_bad_root_handlers_value_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="'auto', 'replace', 'add'; got 'mine'"):
        LogConfig(root_handlers="mine")
    with pytest.raises(ConfigError, match="root_handlers"):
        LogConfig.resolve(env={"LOGKIT_ROOT_HANDLERS": "nope"})


@pytest.mark.parametrize(
    ("choice", "hijack", "has_handlers", "owner"),
    [
        ("auto", True, True, "logkit"),
        ("auto", False, True, "user"),
        ("auto", False, False, "logkit"),
        ("replace", False, True, "logkit"),
        ("add", False, True, "both"),
        ("add", True, False, "logkit"),
    ],
)
def test_root_owner(choice: str, hijack: bool, has_handlers: bool, owner: str) -> None:
    root = logging.Logger("r")
    if has_handlers:
        root.addHandler(logging.NullHandler())
    assert root_owner(choice, hijack, root) == owner


def _app(**conf: Any) -> Celery:
    app = Celery("logging_config_test", set_as_current=False)
    app.conf.worker_redirect_stdouts = False
    app.conf.update(conf)
    return app


def test_user_root_gets_context_and_task_records(tmp_path: Path) -> None:
    user, stream = _handler_with(logging.Formatter("%(name)s [%(task_id)s] %(message)s"))
    logging.getLogger().addHandler(user)
    active = configure_process(LogConfig(format="json"), loglevel=logging.INFO,
                               logfile=str(tmp_path / "w.log"),
                               app=_app(worker_hijack_root_logger=False))
    assert active.root_owner == "user" and active.handlers == []
    root_handlers = logging.getLogger().handlers
    assert user in root_handlers and not [h for h in root_handlers if getattr(h, "_logkit", 0)]
    assert any(isinstance(f, logkit.ContextFilter) for f in user.filters)
    with logkit.bound(task_id="abc"):
        logging.getLogger("celery.task").info("from the task logger")
    logging.getLogger("lib").info("outside")
    assert stream.getvalue().splitlines() == [
        "celery.task [abc] from the task logger", "lib [] outside"]
    assert not (tmp_path / "w.log").exists() or (tmp_path / "w.log").read_text() == ""


def test_disabled_logkit_loggers_are_enabled_again(tmp_path: Path) -> None:
    logging.config.dictConfig({
        "version": 1, "disable_existing_loggers": True,
        "handlers": {"h": {"class": "logging.NullHandler"}}, "root": {"handlers": ["h"]},
    })
    assert logging.getLogger("logkit.events").disabled
    configure_process(LogConfig(format="json"), logfile=str(tmp_path / "w.log"),
                      app=_app(worker_hijack_root_logger=False))
    assert not logging.getLogger("logkit.events").disabled
    assert not logging.getLogger("logkit").disabled
