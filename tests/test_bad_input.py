"""Bad input never breaks a log call, a task or the log file.

In-process (hypothesis, bounded examples): every formatter and the sink get
messages, ``%``-args and ``extra`` values built from nasty pieces -- unserialisable
objects, raising ``__repr__``/``__str__``, cycles, bytes, lone surrogates, NUL, ANSI
escapes and newlines, huge ints, non-string and reserved ``extra`` keys. Properties:
no exception escapes, JSON output is one parseable line per record, console/plain
output has no raw control character (no forged line, no terminal escape), nothing
is lost. A real prefork worker then runs a representative set through tasks.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from workerutil import AppModule, Worker, make_app, parse_json_lines, start_worker

from logkit._changes import Changes
from logkit.config import LogConfig
from logkit.formatters import ConsoleFormatter, JsonFormatter, PlainFormatter
from logkit.handlers import Sink, SinkHandler
from logkit.setup import DEFAULT_TASK_LOG_FORMAT, _make_record, tolerate_clashing_extra

#: Counted across the module and printed at the end (figure for the closing note).
TRIED = {"records": 0}

# --------------------------------------------------------------------------
# nasty values
# --------------------------------------------------------------------------


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")


class BadStr:
    def __str__(self) -> str:
        raise ValueError("str exploded")

    def __repr__(self) -> str:
        raise ValueError("repr exploded too")


class BadEq:
    """Unhashable and un-comparable: breaks naive ``in``/set logic."""

    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        raise TypeError("no comparisons")


class BadException(Exception):
    def __str__(self) -> str:
        raise RuntimeError("exception str exploded")


def _cyclic_dict() -> dict[str, Any]:
    d: dict[str, Any] = {"name": "cycle"}
    d["self"] = d
    return d


def _cyclic_list() -> list[Any]:
    items: list[Any] = [1, "two"]
    items.append(items)
    return items


NASTY_CHARS = [
    "\x00", "\x1b[31m", "\x1b]0;title\x07", "\n", "\r\n", "\r", "\t", "\x08", "\x7f", "\x85",
    "\u2028", "\u2029", "\ud800", "\udfff", "\ufeff", '"', "\\", "}", "%", "%s", "%(x)s", "é",
    "😀", "\U0010ffff",
]

nasty_text = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(NASTY_CHARS) | st.text(max_size=5), max_size=12).map("".join),
)

atoms = st.one_of(
    nasty_text,
    st.binary(max_size=30),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.booleans(),
    st.sampled_from(
        [BadRepr, BadStr, BadEq, object, _cyclic_dict, _cyclic_list, set, bytearray]
    ).map(lambda factory: factory()),
    st.just(BadException("boom")),
    st.just(type),
    st.just(math.pi),
)

keys = st.one_of(
    st.text(max_size=10),
    st.integers(),
    st.tuples(st.integers(), st.integers()),
    st.none(),
    st.binary(max_size=5),
    st.sampled_from(["msg", "args", "message", "asctime", "levelname", "timestamp", "level"]),
)

values = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(keys, inner, max_size=4),
        st.tuples(inner, inner),
    ),
    max_leaves=12,
)

extra_keys = st.one_of(
    st.text(min_size=1, max_size=12),
    # every LogRecord attribute and the names logkit outputs itself
    st.sampled_from(
        [
            *sorted(logging.LogRecord("", 0, "", 0, "", None, None).__dict__),
            *("message", "asctime", "timestamp", "level", "logger", "task_id", "_logkit_ctx"),
        ]
    ),
)


@st.composite
def records(draw: st.DrawFn) -> logging.LogRecord:
    """A LogRecord as a log call with nasty message, args and extra would build it."""
    msg = draw(st.one_of(nasty_text, values))
    args = draw(st.one_of(st.just(()), st.tuples(values), st.tuples(values, values)))
    if isinstance(msg, str) and args and draw(st.booleans()):
        msg = msg + " %s" * len(args)  # sometimes a format that matches, sometimes not
    extra: dict[Any, Any] = draw(st.dictionaries(extra_keys, values, max_size=5))
    if draw(st.booleans()):
        extra[draw(st.integers())] = draw(values)  # a non-string key
    # what a log call builds: logkit's makeRecord renames keys that clash with attributes
    record = _make_record(
        logging.getLogger("bad.input"), "bad.input", logging.WARNING, __file__, 1, msg, args,
        None, extra=extra,
    )
    if draw(st.booleans()):
        try:
            raise draw(st.sampled_from([BadException("x"), ValueError(BadStr())]))
        except Exception:
            record.exc_info = sys.exc_info()
    return record


CONFIG = LogConfig(format="json", max_field_length=2000, fields={"service": "bad\ninput"})
FORMATTERS = {
    "json": JsonFormatter(CONFIG),
    "console": ConsoleFormatter(CONFIG, use_color=False),
    "console-color": ConsoleFormatter(CONFIG, use_color=True),
    "plain": PlainFormatter(DEFAULT_TASK_LOG_FORMAT, None, CONFIG),
}
BAD_SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _check_text_line(name: str, out: str, record: logging.LogRecord) -> None:
    first, *rest = out.split("\n")
    for ch in ("\r", "\x00", "\x85", "\u2028", "\u2029", "\x08"):
        assert ch not in first, (name, first)
    if name != "console-color":
        assert "\x1b" not in out, (name, out)
    for line in rest:  # only an indented traceback may follow
        assert line.startswith("    "), (name, out)
    if not (record.exc_info or record.exc_text):
        assert rest == [], (name, out)


@pytest.mark.parametrize("name", list(FORMATTERS))
@BAD_SETTINGS
@given(record=records())
def test_formatters_never_raise_nor_forge_lines(name: str, record: logging.LogRecord) -> None:
    TRIED["records"] += 1
    out = FORMATTERS[name].format(record)
    assert isinstance(out, str)
    out.encode("utf-8", "backslashreplace")
    if name == "json":
        assert "\n" not in out and "\r" not in out
        data = json.loads(out)
        assert data["level"] == "WARNING" and data["logger"] == "bad.input"
        assert isinstance(data["message"], str)
        if "service" not in record.__dict__:  # a record's own field replaces a static one
            assert data["service"] == "bad\ninput"
    else:
        _check_text_line(name, out, record)


def test_plain_task_format_cleans_task_fields_given_as_extra() -> None:
    """Outside a task, ``%(task_id)s`` comes from the record: an ``extra`` value is cleaned."""
    record = _make_record(
        logging.getLogger("bad.input"), "bad.input", logging.WARNING, __file__, 1, "m", (),
        None, extra={"task_id": "\x00\nforged", "task_name": "\x1b[31mred"},
    )
    out = FORMATTERS["plain"].format(record)
    _check_text_line("plain", out, record)
    assert "forged" in out and "red" in out


@settings(BAD_SETTINGS, max_examples=40)
@given(batch=st.lists(records(), min_size=1, max_size=8))
def test_sink_writes_one_parseable_line_per_record(tmp_path_factory: Any, batch: list[Any]) -> None:
    path = tmp_path_factory.mktemp("sink") / "bad.log"
    sink = Sink(str(path), watch=True)
    handler = SinkHandler(sink, FORMATTERS["json"])
    try:
        for record in batch:
            TRIED["records"] += 1
            handler.handle(record)
    finally:
        sink.close()
    lines = parse_json_lines(path.read_text(encoding="utf-8"))
    assert len(lines) == len(batch)


CLOBBERED = [
    ("created", "soon"), ("msecs", None), ("levelname", BadRepr()), ("name", BadStr()),
    ("process", BadRepr()), ("exc_info", ("x",)), ("exc_text", 5), ("stack_info", 7),
    ("args", BadRepr()), ("msg", BadStr()), ("thread", object()),
]


@pytest.mark.parametrize("name", list(FORMATTERS))
@pytest.mark.parametrize(("attr", "value"), CLOBBERED, ids=[a for a, _ in CLOBBERED])
def test_record_attributes_overwritten_by_other_code(name: str, attr: str, value: Any) -> None:
    """A filter or adapter elsewhere may overwrite record attributes with anything."""
    TRIED["records"] += 1
    record = logging.LogRecord("n", logging.INFO, "f", 1, "m %s", ("a",), None)
    setattr(record, attr, value)
    out = FORMATTERS[name].format(record)
    if name == "json":
        assert isinstance(json.loads(out), dict)
    else:
        assert "\n" not in out.split("\n    ")[0]


# --------------------------------------------------------------------------
# the log call itself (stdlib and structlog front ends)
# --------------------------------------------------------------------------


class Captured:
    """The logger ``bad.calls`` writing through logkit's JSON handler alone, to ``path``.

    :meth:`logger` is called in the test body: a test runner may attach handlers of its
    own to loggers when the test starts (pytest 9.2 attaches its capture handler, which
    re-raises formatting errors, to every non-propagating logger). What these tests prove
    is that logkit's handler never raises and never loses a record, so it is the only one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sink = Sink(str(path))
        self.handler = SinkHandler(self.sink, JsonFormatter(CONFIG))

    def logger(self) -> logging.Logger:
        log = logging.getLogger("bad.calls")
        log.handlers[:] = [self.handler]
        log.propagate, log.level = False, logging.DEBUG
        return log


@pytest.fixture
def captured(tmp_path: Path) -> Iterator[Captured]:
    changes = Changes()
    tolerate_clashing_extra(changes)  # what logkit's setup does in every process it configures
    cap = Captured(tmp_path / "calls.log")
    yield cap
    logging.getLogger("bad.calls").handlers.clear()
    cap.sink.close()
    assert changes.undo() == []


@pytest.mark.parametrize(
    "key", ["msg", "args", "message", "asctime", "levelname", "name", "exc_info", "process"]
)
def test_extra_key_colliding_with_record_attribute(
    captured: Captured, key: str
) -> None:
    log, path = captured.logger(), captured.path
    log.info("collide", extra={key: "user value", "ok": 1})  # stdlib alone raises KeyError
    (line,) = parse_json_lines(path.read_text())
    assert line["message"] == "collide" and line["ok"] == 1
    assert "user value" in line.values(), line


def test_non_string_extra_keys(captured: Captured) -> None:
    log, path = captured.logger(), captured.path
    log.info("keys", extra={1: "one", (2, 3): "tuple", None: "none"})  # type: ignore[dict-item]
    (line,) = parse_json_lines(path.read_text())
    assert line["1"] == "one" and line["None"] == "none"
    assert "tuple" in line.values()


def test_structlog_calls_with_bad_values(captured: Captured) -> None:
    import structlog

    from logkit._structlog import configure_structlog

    changes = Changes()
    configure_structlog(changes)
    captured.logger()
    path = captured.path
    slog = structlog.get_logger("bad.calls")
    try:
        slog.info("event", msg="m", args=BadRepr(), cyc=_cyclic_dict(), levelname="x",
                  created="y")
        slog.warning(BadRepr(), data=b"\xff\x00")
        slog.error("with %s", "args", extra={"nested": BadStr()})
    finally:
        changes.undo()
    lines = parse_json_lines(path.read_text())
    assert [line["level"] for line in lines] == ["INFO", "WARNING", "ERROR"]
    assert lines[0]["msg_"] == "m" and lines[0]["cyc"]


BIG_PLACES = ["message", "arg", "extra", "bytes-extra", "nested-extra", "exception"]


@pytest.mark.parametrize("where", BIG_PLACES)
def test_ten_megabyte_values_are_capped_and_marked(
    captured: Captured, where: str
) -> None:
    log, path = captured.logger(), captured.path
    _log_big(log, where)
    text = path.read_text()
    assert len(text) < 4 * CONFIG.max_field_length + 10_000, len(text)
    (line,) = parse_json_lines(text)
    assert "truncated" in json.dumps(line)


@pytest.mark.parametrize("name", ["console", "plain"])
@pytest.mark.parametrize("where", BIG_PLACES)
def test_ten_megabyte_values_are_capped_in_text_formats(name: str, where: str) -> None:
    records: list[logging.LogRecord] = []
    log = logging.getLogger(f"bad.big.{name}")
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    log.handlers[:] = [handler]
    log.propagate, log.level = False, logging.DEBUG
    _log_big(log, where)
    out = FORMATTERS[name].format(records[0])
    first = out.split("\n")[0]
    assert len(first) < 4 * CONFIG.max_field_length + 10_000, len(first)
    assert len(out) < 8 * CONFIG.max_field_length + 10_000, len(out)


def _log_big(log: logging.Logger, where: str) -> None:
    big = "A" * (10 * 1024 * 1024)
    if where == "message":
        log.info(big)
    elif where == "arg":
        log.info("big %s", big)
    elif where == "extra":
        log.info("big", extra={"payload": big})
    elif where == "bytes-extra":
        log.info("big", extra={"payload": big.encode()})
    elif where == "nested-extra":
        log.info("big", extra={"payload": {"inner": [big]}})
    else:
        try:
            raise ValueError(big)
        except ValueError:
            log.exception("big")


# --------------------------------------------------------------------------
# a real worker: bad input inside tasks never fails the task nor loses a line
# --------------------------------------------------------------------------

BODY = r"""
import logging
import logkit

logkit.install(app, max_field_length=4096)
log = logging.getLogger("badtask")


class BadRepr:
    def __repr__(self):
        raise RuntimeError("repr exploded")

    __str__ = __repr__


def cyclic():
    d = {"a": 1}
    d["self"] = d
    return d


CASES = {
    "bad-repr": lambda: log.info("obj %s %r", BadRepr(), BadRepr(), extra={"obj": BadRepr()}),
    "cycle": lambda: log.info("cycle %s", cyclic(), extra={"cycle": cyclic()}),
    "bytes": lambda: log.info(b"raw \xff\xfe bytes", extra={"b": b"\x00\xff"}),
    "surrogate": lambda: log.info("lone \ud800 surrogate", extra={"s": "\udfff"}),
    "control": lambda: log.info("nul \x00 ansi \x1b[31m red\nforged line", extra={"k\n": "v\r"}),
    "huge": lambda: log.info("x" * (10 * 1024 * 1024)),
    "bad-format": lambda: log.info("%d %s", "not a number"),
    "non-str-key": lambda: log.info("keys", extra={1: "one", None: "none"}),
    "reserved-key": lambda: log.info("reserved", extra={"msg": "mine", "levelname": "mine"}),
    "exception": lambda: log.exception("caught", exc_info=ValueError(BadRepr())),
}


@app.task
def bad(case):
    CASES[case]()
    log.info("after %s", case)
    return case
"""


@pytest.fixture(scope="module")
def bad_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AppModule, Worker]]:
    appmod = make_app(tmp_path_factory.mktemp("badinput"), BODY)
    worker = start_worker(appmod, logfile="worker.log", env={"LOGKIT_FORMAT": "json"})
    try:
        yield appmod, worker
    finally:
        worker.stop(timeout=15)
        appmod.unload()


def test_real_worker_survives_bad_input(bad_worker: tuple[AppModule, Worker]) -> None:
    appmod, worker = bad_worker
    mod = appmod.load()
    cases = list(mod.CASES)
    results = {case: mod.bad.delay(case) for case in cases}
    assert {case: r.get(timeout=30) for case, r in results.items()} == {c: c for c in cases}
    TRIED["records"] += len(cases)
    worker.stop(timeout=15)
    records = parse_json_lines(worker.read_log())  # every line parses
    by_task = [r for r in records if r.get("logger") == "badtask"]
    assert sorted(r["message"] for r in by_task if r["message"].startswith("after ")) == sorted(
        f"after {c}" for c in cases
    )
    assert len(by_task) == 2 * len(cases)  # the bad line and the "after" line of each task
    huge = [r for r in by_task if r["message"].startswith("xxx")]
    assert len(huge) == 1 and "truncated" in huge[0]["message"]
    assert len(huge[0]["message"]) < 4200
    assert "Traceback" not in worker.stderr()


LINE_START = {
    "console": re.compile(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) +[^ ]+: "
    ),
    "plain": re.compile(
        r"^\[\d{4}-\d\d-\d\d [^\]]*: (DEBUG|INFO|WARNING|ERROR|CRITICAL)/[^\]]+\] "
    ),
}


@pytest.mark.parametrize("fmt", ["console", "plain"])
def test_real_worker_text_formats_cannot_be_forged(
    fmt: str, tmp_path: Path, app_factory: Any, worker_factory: Any
) -> None:
    """User-controlled newlines and escapes never start a line that looks like a record."""
    appmod = app_factory(BODY)
    worker = worker_factory(appmod, logfile="worker.log", env={"LOGKIT_FORMAT": fmt})
    mod = appmod.load()
    cases = ["control", "bad-repr", "bytes", "surrogate", "exception", "reserved-key"]
    results = [mod.bad.delay(case) for case in cases]
    assert [r.get(timeout=30) for r in results] == cases
    TRIED["records"] += len(cases)
    worker.stop(timeout=15)
    text = worker.read_log()
    assert "\x1b" not in text and "\x00" not in text and "\r" not in text
    starts = LINE_START[fmt]
    for line in text.split("\n"):
        if line:
            assert starts.match(line) or line.startswith("    "), line  # or an indented traceback
    assert "forged line" in text and not any(
        line.startswith("forged") for line in text.split("\n")
    )
    task_records = [ln for ln in text.split("\n") if starts.match(ln) and "after " in ln]
    assert len(task_records) == len(cases)


def test_zz_report_bad_inputs_tried() -> None:
    print(f"bad inputs tried: {TRIED['records']} records")
    assert TRIED["records"] > 0


def test_a_time_is_iso_8601_text_whatever_its_type() -> None:
    """One ``iso()`` for the control replies, the dropped-records report and the events'
    ``eta``/``expires`` (#35): never raises."""
    from datetime import UTC, datetime

    from logkit._safe import iso

    assert iso(None) is None
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso(1.5) == "1970-01-01T00:00:01.500Z"
    assert iso(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05+00:00"
    assert iso("2026-01-02T03:04:05") == "2026-01-02T03:04:05"  # Celery's eta header: text
    assert iso(float("nan")) == "nan"  # out of datetime's range: its text
    assert iso(1e300) == "1e+300"
