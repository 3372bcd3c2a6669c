"""JSON, console and plain formatters: the documented output (unit, in-process).

Hostile input (cycles, broken ``__repr__``, huge values...) is covered by
``test_bad_input.py``; this module pins down the normal shape of each format.
"""

from __future__ import annotations

import calendar
import io
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

import logkit
from logkit.config import LogConfig
from logkit.formatters import ConsoleFormatter, JsonFormatter, PlainFormatter

ESC = "\x1b["


def make_record(
    msg: str = "hello %s",
    args: Any = ("world",),
    level: int = logging.INFO,
    name: str = "app.module",
    exc_info: Any = None,
    **extra: Any,
) -> logging.LogRecord:
    record = logging.LogRecord(name, level, "/src/app/module.py", 42, msg, args, exc_info)
    record.__dict__.update(extra)
    return record


def _exc_info() -> Any:
    try:
        raise KeyError("missing")
    except KeyError:
        return sys.exc_info()


# ---------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------


def test_json_base_fields() -> None:
    record = make_record()
    record.created = 1700000000.123456
    record.msecs = 123.456
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert list(data)[:4] == ["timestamp", "level", "logger", "message"]
    assert data["timestamp"] == "2023-11-14T22:13:20.123Z"  # ISO 8601, UTC, milliseconds
    assert data["level"] == "INFO"
    assert data["logger"] == "app.module"
    assert data["message"] == "hello world"
    assert data["process"] == record.process
    assert "thread" not in data  # the main thread's id: said by its absence (#37)
    # no noise from LogRecord internals
    for internal in ("args", "msg", "pathname", "lineno", "created", "msecs", "levelno"):
        assert internal not in data


def test_json_timestamp_is_utc_now() -> None:
    data = json.loads(JsonFormatter().format(make_record()))
    stamp = calendar.timegm(time.strptime(data["timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert abs(stamp - time.time()) < 5
    assert data["timestamp"].endswith("Z") and len(data["timestamp"]) == 24


def test_json_static_fields_context_and_extras() -> None:
    formatter = JsonFormatter(LogConfig(fields={"service": "billing", "env": "prod"}))
    record = make_record(user_id=7, payload={"a": [1, 2]}, flag=None)
    with logkit.bound(request_id="r-1"):
        data = json.loads(formatter.format(record))
    assert data["service"] == "billing" and data["env"] == "prod"
    assert data["request_id"] == "r-1"
    assert data["user_id"] == 7 and data["payload"] == {"a": [1, 2]} and data["flag"] is None


def test_json_unserialisable_values_become_repr() -> None:
    class Thing:
        def __repr__(self) -> str:
            return "<Thing 1>"

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    record = make_record(
        thing=Thing(), broken=Broken(), raw=b"\xffbytes", items={3, 4}, kind=KeyError
    )
    data = json.loads(JsonFormatter().format(record))
    assert data["thing"] == "<Thing 1>"
    assert data["broken"].startswith("<unrepresentable ")
    assert "Broken object: RuntimeError>" in data["broken"]
    assert data["raw"] == "\\xffbytes"
    assert sorted(data["items"]) == ["3", "4"]
    assert data["kind"] == "builtins.KeyError"


def test_json_structured_exception_and_stack() -> None:
    record = make_record("failed", (), level=logging.ERROR, exc_info=_exc_info())
    data = json.loads(JsonFormatter().format(record))
    exc = data["exception"]
    assert exc["type"] == "KeyError"
    assert exc["message"] == "'missing'"
    assert exc["traceback"].startswith("Traceback (most recent call last)")
    assert "raise KeyError" in exc["traceback"]
    stacked = make_record("here", ())
    stacked.stack_info = "Stack (most recent call last):\n  File x"
    assert json.loads(JsonFormatter().format(stacked))["stack"].startswith("Stack")


def test_json_exception_type_of_a_library_is_qualified() -> None:
    from json import JSONDecodeError

    try:
        json.loads("{")
    except JSONDecodeError:
        record = make_record("bad", (), exc_info=sys.exc_info())
    data = json.loads(JsonFormatter().format(record))
    assert data["exception"]["type"] == "json.decoder.JSONDecodeError"


def test_json_renamed_fields_and_colliding_keys() -> None:
    config = LogConfig(field_names={"timestamp": "@timestamp", "message": "msg", "level": "lvl"})
    record = make_record(logger="spoof")
    with logkit.bound(msg="not the message", lvl="DEBUG"):
        data = json.loads(JsonFormatter(config).format(record))
    assert data["@timestamp"].endswith("Z")
    assert data["msg"] == "hello world"  # a bound key can't replace a base field
    assert data["lvl"] == "INFO"
    assert data["_logger"] == "spoof"  # an extra named like a base field is prefixed
    assert data["logger"] == "app.module"


def test_json_message_formatting_error_is_a_record_not_an_exception() -> None:
    data = json.loads(JsonFormatter().format(make_record("%d items", ("many",))))
    assert "%d items" in data["message"] and "formatting failed" in data["message"]


def test_json_long_values_are_capped() -> None:
    config = LogConfig(max_field_length=10)
    data = json.loads(JsonFormatter(config).format(make_record("x" * 50, (), big="y" * 50)))
    assert data["message"] == "x" * 10 + "…[truncated 40 chars]"
    assert data["big"] == "y" * 10 + "…[truncated 40 chars]"



class _Text(str):
    """A ``str`` subclass: not capped (only exact ``str`` values are)."""


def test_json_extras_of_a_known_shape_are_capped_and_renamed_as_the_first() -> None:
    """Every record of a shape (the same ``extra`` names) is capped value by value, not
    only the first one seen (a long one, an exact ``str`` only): a guard for any cache
    of what a shape writes."""
    formatter = JsonFormatter(LogConfig(max_field_length=10))
    first = json.loads(formatter.format(make_record(a="short", b=1, c=None)))
    assert (first["a"], first["b"], first["c"]) == ("short", 1, None)
    data = json.loads(formatter.format(make_record(a="y" * 50, b=2, c=_Text("z" * 50))))
    assert data["a"] == "y" * 10 + "…[truncated 40 chars]"
    assert (data["b"], data["c"]) == (2, "z" * 50)
    for _ in range(2):  # the shape with a base field's name: renamed every time
        renamed = json.loads(formatter.format(make_record(a="1", logger="x", c=3)))
        assert renamed["_logger"] == "x" and renamed["logger"] == "app.module"
        assert list(renamed)[4:7] == ["a", "_logger", "c"]

# ---------------------------------------------------------------------------
# python-json-logger's hooks, overridden by a subclass
# ---------------------------------------------------------------------------


class PjlStyle(JsonFormatter):
    """What a python-json-logger user writes: ``add_fields`` adds fields after the
    formatter's own, ``process_log_record`` renames one before serialisation."""

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data["app"] = "shop"
        log_data["logger_name"] = record.name

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        log_data["severity"] = log_data.pop("level")
        return super().process_log_record(log_data)


class OnlyProcess(JsonFormatter):
    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {k.upper(): v for k, v in log_data.items()}


class BrokenHook(JsonFormatter):
    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        raise RuntimeError("a bug in the hook")


def test_python_json_logger_subclass_hooks_are_called() -> None:
    from pythonjsonlogger.orjson import OrjsonFormatter

    formatter = PjlStyle(fields={"svc": "x"})
    assert isinstance(formatter, OrjsonFormatter)  # it is a python-json-logger formatter
    with logkit.bound(task_id="t-1"):
        data = json.loads(formatter.format(make_record(user_id=7)))
    assert data["app"] == "shop" and data["logger_name"] == "app.module"
    assert data["severity"] == "INFO" and "level" not in data
    # logkit's own fields are all there, in logkit's order, before the hook's
    assert list(data)[:3] == ["timestamp", "logger", "message"]
    assert (data["svc"], data["task_id"], data["user_id"]) == ("x", "t-1", 7)
    assert list(data)[-3:] == ["app", "logger_name", "severity"]
    only = json.loads(OnlyProcess().format(make_record()))
    assert only["MESSAGE"] == "hello world" and only["LEVEL"] == "INFO"


def test_python_json_logger_hooks_through_handlers_and_dict_config(tmp_path: Any) -> None:
    """The subclass named in ``dictConfig`` (``"()"``), on a stdlib handler and on
    logkit's own sink handler (which writes ``format()``'s line for a subclass)."""
    import logging.config

    from logkit.handlers import Sink, SinkHandler

    path = tmp_path / "pjl.log"
    logging.config.dictConfig({
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"pjl": {"()": f"{__name__}.PjlStyle", "fields": {"svc": "y"}}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(path),
                              "formatter": "pjl"}},
        "loggers": {"pjl.app": {"handlers": ["file"], "level": "INFO", "propagate": False}},
    })
    log = logging.getLogger("pjl.app")
    sink = Sink(str(tmp_path / "sink.log"))
    sink_handler = SinkHandler(sink, PjlStyle())
    log.addHandler(sink_handler)
    try:
        log.info("paid %s", "A-1", extra={"amount": 3})
    finally:
        log.removeHandler(sink_handler)
        for handler in list(log.handlers):
            log.removeHandler(handler)
            handler.close()
        sink.close()
    via_config = json.loads(path.read_text())
    via_sink = json.loads((tmp_path / "sink.log").read_text())
    for data in (via_config, via_sink):
        assert data["message"] == "paid A-1" and data["amount"] == 3
        assert data["app"] == "shop" and data["severity"] == "INFO"
    assert via_config["svc"] == "y"


def test_a_failing_hook_loses_no_record() -> None:
    data = json.loads(BrokenHook().format(make_record(user_id=1)))
    assert data["message"] == "hello world" and data["user_id"] == 1




# ---------------------------------------------------------------------------
# console
# ---------------------------------------------------------------------------


def test_console_without_colour() -> None:
    formatter = ConsoleFormatter(LogConfig(fields={"svc": "b"}), use_color=False)
    with logkit.bound(task_id="t-1", task_name="app.add", root_id="t-0", request_id="r 1"):
        line = formatter.format(make_record(user=3))
    assert ESC not in line
    stamp, rest = line[:23], line[24:]
    time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")
    assert rest == "INFO     app.module: [app.add t-1] hello world request_id='r 1' user=3 svc=b"


def test_console_colour_codes_only_when_asked() -> None:
    record = make_record(level=logging.ERROR)
    coloured = ConsoleFormatter(use_color=True).format(record)
    assert ESC in coloured and "\x1b[31m" in coloured  # red ERROR
    assert ESC not in ConsoleFormatter(use_color=False).format(record)


def test_console_escapes_control_characters_and_indents_tracebacks() -> None:
    record = make_record(
        "line1\nFAKE 2020-01-01 ERROR forged \x1b[31mred", (), exc_info=_exc_info()
    )
    text = ConsoleFormatter(use_color=False).format(record)
    first, *rest = text.split("\n")
    assert "line1\\nFAKE" in first and "\\x1b[31m" in first
    assert rest and all(ln.startswith("    ") for ln in rest)
    assert ESC not in text


# ---------------------------------------------------------------------------
# plain (Celery's formats)
# ---------------------------------------------------------------------------

CELERY_LOG = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
CELERY_TASK_LOG = (
    "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s"
)


def test_plain_is_celerys_format() -> None:
    line = PlainFormatter(CELERY_LOG).format(make_record())
    assert line.startswith("[") and line.endswith("/MainProcess] hello world")
    assert ESC not in line


def test_plain_task_prefix_and_task_format() -> None:
    with logkit.bound(task_id="t-1", task_name="app.add", request_id="r"):
        root_line = PlainFormatter(CELERY_LOG).format(make_record())
        task_line = PlainFormatter(CELERY_TASK_LOG).format(make_record())
    assert root_line.endswith("/MainProcess] [app.add t-1] hello world request_id=r")
    assert task_line.endswith("/MainProcess] app.add[t-1]: hello world request_id=r")
    outside = PlainFormatter(CELERY_TASK_LOG).format(make_record())
    assert outside.endswith("/MainProcess] ???[???]: hello world")  # as Celery outside tasks


def test_plain_datefmt_and_multiline() -> None:
    formatter = PlainFormatter("%(asctime)s %(message)s", datefmt="%Y")
    text = formatter.format(make_record("a\nb", (), exc_info=_exc_info()))
    first, *rest = text.split("\n")
    assert first == f"{time.strftime('%Y')} a\\nb"
    assert rest and all(ln.startswith("    ") for ln in rest)


# ---------------------------------------------------------------------------
# structlog loggers go through the same handlers
# ---------------------------------------------------------------------------


@pytest.fixture
def json_capture() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    from logkit._changes import Changes
    from logkit._structlog import configure_structlog

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(LogConfig(fields={"svc": "x"})))
    logger = logging.getLogger("sl.test")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    changes = Changes()
    configure_structlog(changes)  # nobody configured structlog: logkit's own configuration
    try:
        yield stream, logger
    finally:
        logger.removeHandler(handler)
        assert changes.undo() == []


def test_structlog_writes_through_the_same_formatter(
    json_capture: tuple[io.StringIO, logging.Logger],
) -> None:
    stream, _ = json_capture
    log = structlog.get_logger("sl.test")
    with logkit.bound(task_id="t-9"):
        log.info("user %s logged in", "bob", user_id=3, process="spoof")
    log.bind(order=5).warning("plain event")
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed")
    lines = [json.loads(ln) for ln in stream.getvalue().splitlines()]
    assert len(lines) == 3
    first, second, third = lines
    assert first["message"] == "user bob logged in"
    assert first["logger"] == "sl.test" and first["level"] == "INFO"
    assert first["user_id"] == 3 and first["task_id"] == "t-9" and first["svc"] == "x"
    assert first["process_"] == "spoof"  # a key named like a LogRecord attribute is kept
    assert second["order"] == 5 and second["level"] == "WARNING" and "task_id" not in second
    assert third["exception"]["type"] == "ValueError" and third["level"] == "ERROR"
