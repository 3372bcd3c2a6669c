"""Secrets never reach any output: json, console and plain, logkit's lines and Celery's own.

A real prefork worker runs with ``log_args=True`` at DEBUG level (so Celery's
``TaskPool: Apply`` lines with the raw message body are written too) and gets
tasks whose kwargs hold secrets under redacted keys -- top level, nested in dicts
and lists, in exception messages built from ``repr(kwargs)``, in retry reasons and in
an exception class that cannot be copied. Every byte the worker wrote (log file,
stdout, stderr) is searched for the secrets.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from workerutil import Worker, make_app, parse_json_lines, start_worker

from logkit.config import DEFAULT_REDACT_KEYS
from logkit.redaction import REDACTED, RedactFilter, key_pattern, redact_text

MARK = "S3CRET"
SECRET_KWARGS: dict[str, Any] = {
    "password": f"pw-{MARK}-1",
    "api_key": f"ak-{MARK}-2",
    "profile": {
        "name": "alice",
        "Authorization": f"Bearer ab-{MARK}-3",
        "keys": [{"private_key": f"pk-{MARK}-4"}, {"refresh_token": f"rt-{MARK}-5"}],
        "db": {"user": "app", "Credentials": {"pwd": f"db-{MARK}-6"}},
    },
    "session_id": f"ss-{MARK}-7",
}

BODY = """
import logging
import logkit

logkit.install(app, log_args=True)
log = logging.getLogger("secrets")


class LoginFailed(Exception):
    def __init__(self, user, password):  # not copyable by args: exercises the fallback
        super().__init__(f"login failed for user={user} password={password}")


@app.task
def login(user, **kwargs):
    log.info("logging in %s", user)
    return "ok"


@app.task
def explode(**kwargs):
    raise ValueError(f"cannot use {kwargs!r}")


@app.task
def refuse(user, password):
    raise LoginFailed(user, password)


@app.task(bind=True, max_retries=1)
def flaky(self, **kwargs):
    if self.request.retries == 0:
        raise self.retry(exc=RuntimeError(f"retrying with {kwargs!r}"), countdown=0)
    log.info("second attempt")
    return "ok"
"""

COMBOS = {  # (format, events): events off means Celery's own prose lines are written
    "json-events": ("json", "true"),
    "json-celery-lines": ("json", "false"),
    "console-celery-lines": ("console", "false"),
    "plain-events": ("plain", "true"),
}


@pytest.fixture(scope="module", params=list(COMBOS))
def ran(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    tuple[str, Worker]
]:
    """A worker in one format that ran every secret-carrying task, then stopped."""
    fmt, events = COMBOS[request.param]
    appmod = make_app(tmp_path_factory.mktemp("secrets"), BODY)
    worker = start_worker(
        appmod,
        loglevel="DEBUG",
        logfile="worker.log",
        env={"LOGKIT_FORMAT": fmt, "LOGKIT_EVENTS": events},
    )
    try:
        mod = appmod.load()
        assert mod.login.delay("alice", **SECRET_KWARGS).get(timeout=30) == "ok"
        assert mod.flaky.delay(**SECRET_KWARGS).get(timeout=30) == "ok"
        failing = [
            mod.explode.delay(**SECRET_KWARGS),
            mod.refuse.delay(user="alice", password=SECRET_KWARGS["password"]),
        ]
        for result in failing:
            with pytest.raises(Exception):  # noqa: B017 - the task's own exception
                result.get(timeout=30)
    finally:
        worker.stop(timeout=15)
        appmod.unload()
    yield fmt, worker


def _everything(worker: Worker) -> str:
    return worker.read_log() + worker.stdout() + worker.stderr()


def test_no_secret_in_any_output(ran: tuple[str, Worker]) -> None:
    fmt, worker = ran
    text = _everything(worker)
    leaks = [line for line in text.splitlines() if MARK in line]
    print(f"secrets check [{fmt}]: {len(text.splitlines())} lines, secrets found: {len(leaks)}")
    assert leaks == [], "\n".join(leaks[:5])
    # ... and the lines are there: redacted, not missing
    assert REDACTED in worker.read_log()
    assert "alice" in worker.read_log()
    assert "login failed for user=alice" in worker.read_log()


def test_task_context_args_are_redacted_not_dropped(ran: tuple[str, Worker]) -> None:
    fmt, worker = ran
    if fmt != "json":  # text formats show the context as kwargs="{...}"
        assert "'password': '[REDACTED]'" in worker.read_log()
        assert "'name': 'alice'" in worker.read_log()
        return
    records = parse_json_lines(worker.read_log())
    (line,) = [r for r in records if r.get("message") == "logging in alice"]
    assert line["args"] == "['alice']"
    assert "'password': '[REDACTED]'" in line["kwargs"]
    assert "'name': 'alice'" in line["kwargs"]
    failures = [r for r in records if "exception" in r and "cannot use" in str(r["exception"])]
    assert failures, "the failure was logged with its exception"
    for record in failures:
        assert record["exception"]["type"] == "ValueError"  # the type survives redaction


# --------------------------------------------------------------------------
# in-process: the filter and the text redaction
# --------------------------------------------------------------------------

PATTERN = key_pattern(DEFAULT_REDACT_KEYS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{'password': 'x1', 'ok': 1}", "{'password': '[REDACTED]', 'ok': 1}"),
        ('{"api_key": "x2"}', '{"api_key": "[REDACTED]"}'),
        ("connect(user=bob, passwd=x3)", "connect(user=bob, passwd=[REDACTED])"),
        ("Authorization: Bearer x4 rest", "Authorization: [REDACTED] rest"),
        (
            "{'creds': 1, 'credentials': {'a': ('x5', 'x6')}}",
            "{'creds': 1, 'credentials': [REDACTED]}",
        ),
        ("{'MY_TOKEN': b'x7'}", "{'MY_TOKEN': [REDACTED]}"),
        ("{'password': 'it\\'s x8'}", "{'password': '[REDACTED]'}"),
        ("Task app.rotate_secret[1] succeeded: None", "Task app.rotate_secret[1] succeeded: None"),
        ("password=", "password="),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text, PATTERN) == expected


def _record(name: str, msg: str, args: Any = None, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_filter_redacts_celery_record_message_data_and_exception() -> None:
    data = {"id": "1", "args": "('a',)", "kwargs": "{'token': 'x9'}", "exc": "E('password=x10')"}
    record = _record("celery.app.trace", "Task %(id)s: %(kwargs)s %(exc)s", data, data=data)
    try:
        raise KeyError("no user in {'session': 'x11'}")
    except KeyError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactFilter(DEFAULT_REDACT_KEYS).filter(record) is True
    from logkit.formatters import JsonFormatter

    line = JsonFormatter().format(record)
    assert not re.search(r"x9|x10|x11", line), line
    assert "KeyError" in line
    assert data["kwargs"] == "{'token': 'x9'}", "Celery's own dict is not mutated"


def test_filter_looks_into_every_record_of_a_shape_seen_clean() -> None:
    """A later record of a shape (the same ``extra`` names) first seen with nothing to
    redact is still redacted: a guard for any cache of what a shape needs."""
    redactor = RedactFilter(DEFAULT_REDACT_KEYS)
    clean = _record("logkit.events", "Task succeeded", (), event="e", result="None", ms=1.5)
    redactor.filter(clean)
    assert (clean.result, clean.ms) == ("None", 1.5)
    text = _record("logkit.events", "Task succeeded", (), event="e", result="password=x12", ms=1)
    nested = _record("logkit.events", "Task succeeded", (), event="e",
                     result={"token": "x13"}, ms=None)
    for record in (text, nested):
        redactor.filter(record)
    assert "x12" not in text.result and REDACTED in text.result
    assert nested.result == {"token": REDACTED}
    by_name = _record("logkit.events", "Task succeeded", (), event="e", password="x14", ms=1)
    redactor.filter(by_name)
    assert by_name.password == REDACTED

def test_filter_leaves_user_records_alone() -> None:
    record = _record("myapp", "password=%s", ("mine",))
    RedactFilter(DEFAULT_REDACT_KEYS).filter(record)
    assert record.getMessage() == "password=mine"


def test_no_redact_keys_means_no_filter_work() -> None:
    record = _record("celery.x", "password=%s", ("p",))
    RedactFilter([]).filter(record)
    assert record.getMessage() == "password=p"



# --------------------------------------------------------------------------
# hypothesis: whatever the values look like, a redacted key's value never survives
# --------------------------------------------------------------------------

SECRET_KEYS = st.sampled_from(["password", "API_KEY", "x-auth-token", "db_passwd", "Cookie"])
PLAIN_KEYS = st.sampled_from(["user", "id", "note", "n", "path"])
TRICKY = st.text(
    st.sampled_from(list("ab '\"\\{}[](),:=\n\t")) | st.characters(codec="utf-8"), max_size=12
)


def _secret_value(draw: st.DrawFn) -> Any:
    """A value holding the marker at every leaf: a string, or a container of them."""
    text = st.builds(lambda a, b: f"{a}{MARK}{b}", TRICKY, TRICKY)
    return draw(st.one_of(text, st.lists(text, max_size=3), st.dictionaries(PLAIN_KEYS, text)))


@st.composite
def secret_kwargs(draw: st.DrawFn) -> dict[str, Any]:
    plain = st.recursive(
        st.one_of(TRICKY, st.integers(), st.none()),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(PLAIN_KEYS, inner, max_size=3),
        max_leaves=6,
    )
    out: dict[str, Any] = draw(st.dictionaries(PLAIN_KEYS, plain, max_size=3))
    for key in draw(st.lists(SECRET_KEYS, min_size=1, max_size=3, unique=True)):
        value = _secret_value(draw)
        if draw(st.booleans()):  # nested one level down
            out.setdefault("nested", {})[key] = value
        else:
            out[key] = value
    return out


@settings(max_examples=300, deadline=None)
@given(kwargs=secret_kwargs())
def test_redact_text_hides_values_of_any_shape(kwargs: dict[str, Any]) -> None:
    import json

    for text in (repr(kwargs), f"ValueError({kwargs!r})", json.dumps(kwargs)):
        assert MARK not in redact_text(text, PATTERN), text


def test_an_event_is_born_redacted_and_a_filter_with_other_keys_still_looks(tmp_path: Any) -> None:
    """A lifecycle event's fields are redacted where logkit builds the record (a task's
    ``result``), and the record is marked for filters with the same keys only."""
    import json

    from celery import Celery

    import logkit
    from logkit.redaction import CleanArgs

    app = Celery("secrets_unit", set_as_current=False)
    app.conf.update(task_always_eager=True, broker_url="memory://",
                    worker_redirect_stdouts=False, task_store_eager_result=False)

    @app.task(name="secrets.leaky")
    def leaky() -> str:
        return "connected with password=x21 and token: x22, colour=blue"

    logfile = tmp_path / "events.log"
    logkit.install(app, format="json")
    logkit.configure(loglevel="INFO", logfile=str(logfile), format="json", app=app)
    seen: list[logging.LogRecord] = []
    other = RedactFilter({"colour"})  # other keys: this filter must look for itself

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep()
    keep.addFilter(other)
    events = logging.getLogger("logkit.events")
    events.addHandler(keep)
    try:
        leaky.apply()
    finally:
        events.removeHandler(keep)
    line = next(json.loads(text) for text in logfile.read_text().splitlines()
                if '"task_succeeded"' in text)
    assert "x21" not in line["result"] and "x22" not in line["result"], line
    assert REDACTED in line["result"] and "colour=" in line["result"]
    record = next(r for r in seen if r.__dict__.get("event") == "task_succeeded")
    assert type(record.args) is CleanArgs and record.getMessage() == "Task succeeded"
    assert "blue" not in record.__dict__["result"]  # the other filter redacted its key
