"""Lifecycle events (logkit.events): real prefork workers, plus unit tests with caplog."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.app import trace
from workerutil import (
    REPO_ROOT,
    AppModule,
    Worker,
    make_app,
    parse_json_lines,
    start_worker,
    wait_for,
)

import logkit
from logkit import events
from logkit.config import EVENT_NAMES
from logkit.events import prose
from logkit.events import task as task_events

#: Run on every supported Celery minor and Python version by ``nox -s celery``.
pytestmark = pytest.mark.contract

SLEEP = 0.3


EVENTS_BODY = """
import os
import time

import logkit

logkit.install(
    app,
    format="json",
    event_levels={"worker_process_init": "INFO", "worker_process_shutdown": "INFO",
                  "task_started": "INFO"},
)


@app.task
def ok(seconds):
    time.sleep(seconds)
    return {"slept": seconds}


@app.task
def boom():
    raise ValueError("boom happened")


@app.task(bind=True, max_retries=5)
def flaky(self):
    if self.request.retries < 2:
        raise self.retry(countdown=0.1, exc=RuntimeError(f"flaky {self.request.retries}"))
    return "recovered"


@app.task
def slow(path):
    with open(path, "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(30)


@app.task(acks_late=True)
def refuse():
    from celery.exceptions import Reject

    raise Reject("bad", requeue=False)


class _SuccessHandlerFails(app.Task):
    def on_success(self, retval, task_id, args, kwargs):
        raise RuntimeError("on_success broke")


@app.task(base=_SuccessHandlerFails)
def handler_fails():
    return "done"


@app.task
def runs_eagerly():
    # Runs tasks eagerly in the worker, their exceptions raised to it (throw=True): boom
    # fails; handler_fails succeeds, then its on_success raises (an error of Celery's
    # outside the task's body).
    import uuid

    ids = {"raised": str(uuid.uuid4()), "internal": str(uuid.uuid4())}
    for task, key in ((boom, "raised"), (handler_fails, "internal")):
        try:
            task.apply(task_id=ids[key], throw=True)
        except (ValueError, RuntimeError):
            pass
    return ids
"""

# Celery's prose lines that the events replace (none may remain while events are on).
PROSE = ("succeeded in", "raised unexpected", "] received", "retry: Retry in",
         "Received unregistered task", "Discarding revoked task", "Terminating ")


def _events(
    records: list[dict[str, Any]], kind: str, task_id: str | None = None
) -> list[dict[str, Any]]:
    return [
        r for r in records
        if r.get("event") == kind and (task_id is None or r.get("task_id") == task_id)
    ]


def _one(records: list[dict[str, Any]], kind: str, task_id: str | None = None) -> dict[str, Any]:
    found = _events(records, kind, task_id)
    assert len(found) == 1, f"expected exactly one {kind} for {task_id}, got {found}"
    return found[0]


def _log_has_event(worker: Worker, kind: str, task_id: str) -> bool:
    text = worker.read_log()
    return f'"event":"{kind}"' in text and task_id in text and any(
        r.get("event") == kind and r.get("task_id") == task_id
        for r in worker.json_lines()
    )


# --------------------------------------------------------------------------
# One worker run shared by the scenario tests
# --------------------------------------------------------------------------


@dataclass
class Run:
    worker: Worker
    records: list[dict[str, Any]]
    ids: dict[str, str] = field(default_factory=dict)
    elapsed: float = 0.0


@pytest.fixture(scope="module", params=["filesystem", "amqp"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    if request.param == "amqp":  # the same run on a real rabbitmq-server
        from rabbitmqutil import delete_queues

        url = request.getfixturevalue("rabbitmq_server").url
        delete_queues(url, ("celery",))
        appmod = make_app(tmp_path_factory.mktemp("events-amqp"), EVENTS_BODY, broker_url=url)
    else:
        appmod = make_app(tmp_path_factory.mktemp("events"), EVENTS_BODY)
    started = time.monotonic()
    worker = start_worker(appmod, logfile="worker.log")
    try:
        mod = appmod.load()
        ids: dict[str, str] = {}
        flag = appmod.workdir / "slow-running"
        slow = mod.slow.delay(str(flag))
        ok = mod.ok.delay(SLEEP)
        boom = mod.boom.delay()
        flaky = mod.flaky.delay()
        refuse = mod.refuse.delay()
        eager = mod.runs_eagerly.delay()
        timed = mod.ok.apply_async((0.0,), countdown=0.2, expires=600)
        ids.update(ok=ok.id, boom=boom.id, flaky=flaky.id, slow=slow.id, refuse=refuse.id,
                   eager=eager.id, timed=timed.id)
        wait_for(flag.exists, timeout=20, message="slow task never started")
        mod.app.control.revoke(slow.id, terminate=True)
        unknown = mod.app.send_task("nope.missing")
        ids["unknown"] = unknown.id
        assert ok.get(timeout=20) == {"slept": SLEEP}
        assert flaky.get(timeout=20) == "recovered"
        assert timed.get(timeout=20) == {"slept": 0.0}
        boom.get(timeout=20, propagate=False)
        assert boom.failed()
        ids.update({f"eager_{k}": v for k, v in eager.get(timeout=20).items()})
        for kind, key in (
            ("task_revoked", "slow"), ("task_unknown", "unknown"), ("task_rejected", "refuse"),
            ("task_succeeded", "eager"),
        ):
            wait_for(lambda k=kind, i=ids[key]: _log_has_event(worker, k, i), timeout=20,
                     message=lambda k=kind: f"no {k} event\n{worker.describe()}")
        worker.stop(timeout=20)
        result = Run(worker, worker.json_lines(), ids, time.monotonic() - started)
        yield result
    finally:
        worker.stop(timeout=15)
        appmod.unload()


@pytest.mark.worker
def test_succeeded_event(run: Run) -> None:
    task_id = run.ids["ok"]
    for kind in ("task_received", "task_started", "task_succeeded"):
        record = _one(run.records, kind, task_id)
        assert record["level"] == "INFO"
        assert record["logger"] == "logkit.events"
        assert record["task_name"].endswith(".ok")
        assert record["worker"] == run.worker.hostname
    received = _one(run.records, "task_received", task_id)
    assert received["queue"] == "celery"
    # no eta, no expires: left out, not null (#37); nothing else null either
    assert "eta" not in received and "expires" not in received
    assert None not in received.values()
    succeeded = _one(run.records, "task_succeeded", task_id)
    assert SLEEP * 1000 <= succeeded["duration_ms"] < SLEEP * 1000 + 400, succeeded
    assert succeeded["result"] == repr({"slept": SLEEP})
    # the task ran in a pool child; received in the parent: both carry the task context
    assert succeeded["process"] != received["process"] == run.worker.pid


@pytest.mark.worker
def test_received_eta_and_expires_only_when_set(run: Run) -> None:
    """``eta`` and ``expires`` of ``task_received``, ISO 8601, only on a message that has
    them (#37): a countdown and an expiry, a retry's countdown; absent on the others."""
    timed = _one(run.records, "task_received", run.ids["timed"])
    assert timed["eta"].startswith("20") and "T" in timed["eta"], timed
    assert timed["expires"].startswith("20") and timed["expires"] > timed["eta"], timed
    flaky = _events(run.records, "task_received", run.ids["flaky"])
    assert ["eta" in r for r in flaky] == [False, True, True]  # the retries have countdowns
    assert not any("expires" in r for r in flaky)
    for name in ("ok", "boom"):
        received = _one(run.records, "task_received", run.ids[name])
        assert "eta" not in received and "expires" not in received, received
    assert not [r for r in run.records if r.get("event") and None in r.values()]


@pytest.mark.worker
def test_retries_only_after_a_retry(run: Run) -> None:
    """The task context's ``retries``: absent on a first run (it would say 0 on every
    line), the count on each retry's lines, events and the task's own records alike."""
    task_id = run.ids["flaky"]
    for kind, expected in (("task_received", [None, 1, 2]), ("task_started", [None, 1, 2])):
        assert [r.get("retries") for r in _events(run.records, kind, task_id)] == expected, kind
    assert _one(run.records, "task_succeeded", task_id)["retries"] == 2
    assert "retries" not in _one(run.records, "task_succeeded", run.ids["ok"])
    # task_retried's own field: the retries before this one, 0 included (it is the count)
    assert [r["retries"] for r in _events(run.records, "task_retried", task_id)] == [0, 1]


@pytest.mark.worker
def test_failed_event(run: Run) -> None:
    task_id = run.ids["boom"]
    failed = _one(run.records, "task_failed", task_id)
    assert failed["level"] == "ERROR"
    assert failed["expected"] is False
    assert failed["exception"]["type"] == "ValueError"
    assert failed["exception"]["message"] == "boom happened"
    assert 'raise ValueError("boom happened")' in failed["exception"]["traceback"]
    assert 0 <= failed["duration_ms"] < 1000
    assert not _events(run.records, "task_succeeded", task_id)


@pytest.mark.worker
def test_eager_failure_raised_to_the_caller(run: Run) -> None:
    """A task run eagerly with its exception raised to the caller (``apply(throw=True)``,
    ``task_eager_propagates``): Celery sends ``task_internal_error`` for that exception
    and logs nothing. It is the task failing: one ``task_failed``, at INFO and without the
    traceback (the caller has both), ``propagated``; in the worker, where its caller runs."""
    task_id = run.ids["eager_raised"]
    failed = _one(run.records, "task_failed", task_id)
    assert failed["level"] == "INFO"
    assert failed["propagated"] is True and failed["expected"] is False
    assert failed["exception"]["type"] == "ValueError"
    assert failed["exception"]["message"] == "boom happened"
    assert failed["exception"]["traceback"] == "ValueError: boom happened"  # no stack
    assert failed["duration_ms"] >= 0
    assert failed["worker"] == run.worker.hostname  # its caller's worker, not the bare host
    assert [r["event"] for r in run.records if r.get("task_id") == task_id
            and r.get("event")] == ["task_started", "task_failed"]
    assert not _events(run.records, "task_internal_error", task_id)
    # the calling task's own failure events are the worker's ordinary ones
    assert _one(run.records, "task_failed", run.ids["boom"])["propagated"] is False


@pytest.mark.worker
def test_internal_error_after_an_eager_success(run: Run) -> None:
    """An error of Celery's outside the task's body (here the task's ``on_success``
    raising, in an eager run) is still ``task_internal_error``, with its traceback, after
    the task's own ``task_succeeded``."""
    task_id = run.ids["eager_internal"]
    _one(run.records, "task_succeeded", task_id)
    internal = _one(run.records, "task_internal_error", task_id)
    assert internal["level"] == "ERROR"
    assert internal["exception"]["type"] == "RuntimeError"
    assert "on_success broke" in internal["exception"]["traceback"]
    assert not _events(run.records, "task_failed", task_id)


@pytest.mark.worker
def test_retried_events(run: Run) -> None:
    task_id = run.ids["flaky"]
    retried = _events(run.records, "task_retried", task_id)
    assert [r["level"] for r in retried] == ["WARNING", "WARNING"]
    assert [r["retries"] for r in retried] == [0, 1]
    assert [r["error"] for r in retried] == ["RuntimeError('flaky 0')", "RuntimeError('flaky 1')"]
    assert all(r["countdown"] == 0.1 and r["max_retries"] == 5 for r in retried)
    assert retried[0]["reason"] == "Retry in 0.1s: RuntimeError('flaky 0')"
    assert len(_events(run.records, "task_received", task_id)) == 3
    assert len(_events(run.records, "task_started", task_id)) == 3
    assert _one(run.records, "task_succeeded", task_id)["retries"] == 2
    assert not _events(run.records, "task_failed", task_id)


@pytest.mark.worker
def test_revoked_event(run: Run) -> None:
    task_id = run.ids["slow"]
    revoked = _one(run.records, "task_revoked", task_id)
    assert revoked["level"] == "WARNING"
    assert revoked["terminated"] is True and revoked["expired"] is False
    assert revoked["signum"] == 15 and revoked["signame"] == "SIGTERM"
    assert revoked["task_name"].endswith(".slow")
    assert revoked["process"] == run.worker.pid
    _one(run.records, "task_started", task_id)
    for kind in ("task_succeeded", "task_failed"):
        assert not _events(run.records, kind, task_id)


@pytest.mark.worker
def test_unknown_event(run: Run) -> None:
    unknown = _one(run.records, "task_unknown", run.ids["unknown"])
    assert unknown["level"] == "ERROR"
    assert unknown["task_name"] == "nope.missing"
    assert unknown["error"] == "KeyError('nope.missing')"
    assert "exception" not in unknown  # Celery's KeyError traceback is noise here
    assert not _events(run.records, "task_received", run.ids["unknown"])


@pytest.mark.worker
def test_worker_events(run: Run) -> None:
    ready = _one(run.records, "worker_ready")
    assert ready["level"] == "INFO" and ready["worker"] == run.worker.hostname
    assert ready["pool"] == "prefork" and ready["concurrency"] == 2
    down = _one(run.records, "worker_shutting_down")
    assert (down["sig"], down["how"], down["exitcode"]) == ("SIGTERM", "Warm", 0)
    _one(run.records, "worker_shutdown")
    # event_levels={"worker_process_init": "INFO"} in the app: the children's DEBUG event shows
    inits = _events(run.records, "worker_process_init")
    assert len(inits) >= 2 and all(r["level"] == "INFO" for r in inits)
    assert {r["pid"] for r in inits} == {r["process"] for r in inits}
    # every pool child says goodbye: at stop, or when the revoke terminated it
    downs = _events(run.records, "worker_process_shutdown")
    assert downs and all(r["level"] == "INFO" and isinstance(r["exitcode"], int) for r in downs)
    assert len(downs) >= 2 and {r["pid"] for r in downs} <= {r["pid"] for r in inits}
    kinds = [r["event"] for r in run.records if "event" in r]
    assert kinds.index("worker_ready") < kinds.index("task_received")
    assert kinds[-1] == "worker_shutdown"
    assert kinds.index("worker_shutting_down") < kinds.index("worker_shutdown")


@pytest.mark.worker
def test_no_celery_prose_for_events(run: Run) -> None:
    messages = [r["message"] for r in run.records if r["logger"] != "logkit.events"]
    for phrase in (*PROSE, " ready."):
        assert not [m for m in messages if phrase in m], phrase
    assert all(set(r) >= {"timestamp", "level", "logger", "message"} for r in run.records)
    assert set(_events_kinds(run.records)) <= set(EVENT_NAMES)


def _events_kinds(records: list[dict[str, Any]]) -> list[str]:
    return [r["event"] for r in records if "event" in r]


# --------------------------------------------------------------------------
# Options with a real worker: events=False, disabled_events, event_levels
# --------------------------------------------------------------------------

SMALL_BODY = """
import logkit

logkit.install(app, format="json")


@app.task
def ok():
    return 42


@app.task
def boom():
    raise ValueError("no")
"""


def _small_run(tmp_path: Path, env: dict[str, str], body: str = SMALL_BODY,
               extra_args: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    appmod: AppModule = make_app(tmp_path, body)
    worker = start_worker(appmod, logfile="worker.log", env=env, extra_args=extra_args)
    try:
        mod = appmod.load()
        assert mod.ok.delay().get(timeout=20) == 42
        mod.boom.delay().get(timeout=20, propagate=False)
        worker.stop(timeout=20)
        return worker.json_lines()
    finally:
        worker.stop(timeout=15)
        appmod.unload()


@pytest.mark.worker
def test_events_off_keeps_celery_prose(tmp_path: Path) -> None:
    records = _small_run(tmp_path, {"LOGKIT_EVENTS": "false"})
    assert not [r for r in records if "event" in r or r["logger"] == "logkit.events"]
    messages = [r["message"] for r in records]
    for phrase, count in (("] received", 2), ("succeeded in", 1), (" ready.", 1),
                          ("raised unexpected: ValueError('no')", 1)):
        assert len([m for m in messages if phrase in m]) == count, phrase


@pytest.mark.worker
def test_disabled_events_and_levels(tmp_path: Path) -> None:
    records = _small_run(tmp_path, {
        "LOGKIT_DISABLED_EVENTS": "task_succeeded,task_received",
        "LOGKIT_EVENT_LEVELS": "task_started=WARNING,task_failed=CRITICAL",
    })
    kinds = _events_kinds(records)
    assert "task_succeeded" not in kinds and "task_received" not in kinds
    messages = [r["message"] for r in records]
    # a disabled event leaves Celery's own line in place
    assert len([m for m in messages if "succeeded in" in m]) == 1
    assert len([m for m in messages if "] received" in m]) == 2
    assert not [m for m in messages if "raised unexpected" in m]
    assert {r["level"] for r in records if r.get("event") == "task_started"} == {"WARNING"}
    assert [r["level"] for r in records if r.get("event") == "task_failed"] == ["CRITICAL"]


#: A handler of the app's own on Celery's task loggers (as a user's test or alerting
#: hook would put there): every record it is handed, to listened.jsonl.
LISTENER_BODY = SMALL_BODY + """

import json
import logging
import os


class _Listener(logging.Handler):
    def emit(self, record):
        with open(os.path.join(WORKDIR, "listened.jsonl"), "a") as fh:
            row = {"logger": record.name, "level": record.levelname, "msg": record.msg}
            fh.write(json.dumps(row) + "\\n")


for _name in ("celery.app.trace", "celery.worker.strategy"):
    logging.getLogger(_name).addHandler(_Listener())
"""


@pytest.mark.worker
@pytest.mark.parametrize("how", ["default", "--log-celery-lines", "LOGKIT_CELERY_LINES"])
def test_celery_lines_keeps_celerys_task_records(tmp_path: Path, how: str) -> None:
    """``celery_lines`` (#39): Celery's own task records reach their loggers' listeners,
    beside logkit's events; by default (events on) those listeners get none."""
    env = {"LOGKIT_CELERY_LINES": "true"} if how == "LOGKIT_CELERY_LINES" else {}
    args = (how,) if how.startswith("--") else ()
    records = _small_run(tmp_path, env, LISTENER_BODY, args)
    listened_file = next(tmp_path.glob("*/listened.jsonl"), None)
    listened = parse_json_lines(listened_file.read_text()) if listened_file else []
    kinds = _events_kinds(records)
    assert {"task_received", "task_succeeded", "task_failed"} <= set(kinds)  # events, always
    messages = [r["message"] for r in records]
    if how == "default":
        assert listened == []
        assert not [m for m in messages if "succeeded in" in m or "raised unexpected" in m]
        return
    assert [(r["logger"], r["level"]) for r in listened] == [
        ("celery.worker.strategy", "INFO"), ("celery.app.trace", "INFO"),  # received, ok
        ("celery.worker.strategy", "INFO"), ("celery.app.trace", "ERROR"),  # received, boom
    ]
    assert [r["msg"] for r in listened] == [
        trace.LOG_RECEIVED, trace.LOG_SUCCESS, trace.LOG_RECEIVED, trace.LOG_FAILURE.strip()]
    for phrase, count in (("] received", 2), ("succeeded in", 1),
                          ("raised unexpected: ValueError('no')", 1), (" ready.", 1)):
        assert len([m for m in messages if phrase in m]) == count, phrase


# --------------------------------------------------------------------------
# Unit tests (in-process, eager tasks, caplog)
# --------------------------------------------------------------------------


@pytest.fixture
def eager_app() -> Iterator[Celery]:
    # what the tests read is the events logger's own decision: no level or disabled flag
    # left on it by an earlier test of the same process (dictConfig, a worker's setup...)
    events_logger = logging.getLogger(events.EVENTS_LOGGER)
    saved = events_logger.level, events_logger.disabled
    events_logger.setLevel(logging.NOTSET)
    events_logger.disabled = False
    app = Celery("events_unit", set_as_current=False)
    app.conf.update(task_always_eager=True, broker_url="memory://")
    try:
        yield app
    finally:
        logkit.uninstall()
        app.close()
        events_logger.setLevel(saved[0])
        events_logger.disabled = saved[1]


def _tasks(app: Celery) -> tuple[Any, Any]:
    @app.task(name="unit.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="unit.fail", throws=(KeyError,))
    def fail(kind: str) -> None:
        raise (KeyError if kind == "key" else ValueError)(kind)

    return add, fail


def _event_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == events.EVENTS_LOGGER]


def test_unit_default_events(eager_app: Celery, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logkit.install(eager_app)
    add, fail = _tasks(eager_app)
    result = add.apply((2, 3))
    fail.apply(("value",))
    fail.apply(("key",))
    got = [(r.event, r.levelname) for r in _event_records(caplog)]  # type: ignore[attr-defined]
    assert got == [
        ("task_started", "DEBUG"), ("task_succeeded", "INFO"),  # started: DEBUG by default
        ("task_started", "DEBUG"), ("task_failed", "ERROR"),
        ("task_started", "DEBUG"), ("task_failed", "INFO"),  # expected (throws): INFO
    ]
    succeeded = _event_records(caplog)[1]
    assert succeeded.result == "5"  # type: ignore[attr-defined]
    assert succeeded.duration_ms >= 0  # type: ignore[attr-defined]
    unexpected, expected = _event_records(caplog)[3], _event_records(caplog)[5]
    assert unexpected.exc_info and unexpected.exc_info[0] is ValueError
    assert unexpected.exc_text and "raise (KeyError" in unexpected.exc_text
    assert expected.expected is True  # type: ignore[attr-defined]
    assert expected.exc_info and expected.exc_info[2] is None  # no traceback, as Celery does
    # Celery's own lines for these events were dropped
    prose = [r for r in caplog.records if r.name == "celery.app.trace"]
    assert prose == []
    assert result.get() == 5


def test_unit_disabled_levels_and_result_repr(
    eager_app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    logkit.install(
        eager_app,
        disabled_events=["task_started"],
        event_levels={"task_succeeded": "DEBUG"},
        result_repr=False,
    )
    add, _ = _tasks(eager_app)
    add.apply((1, 1))
    records = _event_records(caplog)
    assert [(r.event, r.levelname) for r in records] == [("task_succeeded", "DEBUG")]  # type: ignore[attr-defined]
    assert not hasattr(records[0], "result")
    assert not [r for r in caplog.records if r.name == "celery.app.trace"]


def test_unit_events_off(eager_app: Celery, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logkit.install(eager_app, events=False)
    add, fail = _tasks(eager_app)
    add.apply((1, 1))
    fail.apply(("value",))
    assert _event_records(caplog) == []
    prose = [r.msg for r in caplog.records if r.name == "celery.app.trace"]
    assert trace.LOG_SUCCESS in prose and trace.LOG_FAILURE.strip() in prose


def test_unit_result_repr_is_capped(eager_app: Celery, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logkit.install(eager_app, max_field_length=64)

    @eager_app.task(name="unit.big")
    def big() -> str:
        return "x" * 10_000

    big.apply()
    (succeeded,) = [r for r in _event_records(caplog) if r.event == "task_succeeded"]  # type: ignore[attr-defined]
    assert len(succeeded.result) < 120  # type: ignore[attr-defined]


def test_unit_receivers_never_raise(eager_app: Celery, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logkit.install(eager_app)

    class Broken:
        @property
        def request(self) -> Any:
            raise RuntimeError("broken request")

        name = "broken"

    inst = logkit.receivers.installation()
    assert inst is not None
    task_events._reported.discard("task_succeeded")
    task_events.task_finished(inst, "t1", Broken(), 1, "SUCCESS")  # must not raise
    task_events.task_finished(inst, "t2", Broken(), 1, "SUCCESS")
    task_events.task_started(inst, "t3", Broken())
    task_events.on_task_revoked(sender=None, request=object(), terminated="x", signum="bad")
    task_events.on_task_unknown(sender=None, message=None, exc=None, name=None, id=None)
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len([r for r in failures if "task_succeeded" in r.getMessage()]) == 1


def test_prose_filter_matches_only_celery_constants(
    eager_app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    logkit.install(eager_app, disabled_events=["task_retried"])
    # install() put the filters on Celery's loggers
    flt = next(f for f in logging.getLogger("celery.app.trace").filters
               if isinstance(f, prose.ProseFilter))

    def record(msg: Any, args: Any = ()) -> logging.LogRecord:
        return logging.LogRecord("celery.app.trace", logging.INFO, __file__, 1, msg, args, None)

    assert flt.filter(record(trace.LOG_SUCCESS, ({"id": 1},))) is False
    assert flt.filter(record(trace.LOG_RETRY, ({"id": 1},))) is True  # task_retried disabled
    assert flt.filter(record("Task %s[%s] something else")) is True
    assert flt.filter(record(["unhashable"])) is True
    internal = record(trace.LOG_INTERNAL_ERROR.strip(), ({"description": "INTERNAL ERROR"},))
    assert flt.filter(internal) is False
    request_filter = next(f for f in logging.getLogger("celery.worker.request").filters
                          if isinstance(f, prose.ProseFilter))
    by_header = logging.LogRecord("celery.worker.request", logging.INFO, __file__, 1,
                                  "Discarding revoked task: %s[%s] (revoked by header: {})",
                                  ("t", "id"), None)
    assert request_filter.filter(by_header) is False


def test_every_event_has_a_level_and_message() -> None:
    assert set(events.DEFAULT_LEVELS) == set(events.MESSAGES) == set(EVENT_NAMES)
    assert events.DEFAULT_LEVELS["task_failed"] == logging.ERROR
    assert events.DEFAULT_LEVELS["task_retried"] == logging.WARNING
    assert events.DEFAULT_LEVELS["task_revoked"] == logging.WARNING
    assert events.DEFAULT_LEVELS["worker_process_init"] == logging.DEBUG


# --------------------------------------------------------------------------
# Beat: a real `celery beat` process
# --------------------------------------------------------------------------

BEAT_BODY = """
import logkit

logkit.install(app, format="json")
app.conf.beat_schedule = {"every-0.2s": {"task": "nightly.report", "schedule": 0.2}}
app.conf.beat_max_loop_interval = 0.1
"""


@pytest.mark.worker
def test_beat_events(tmp_path: Path) -> None:
    appmod = make_app(tmp_path, BEAT_BODY)
    log = appmod.workdir / "beat.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), str(appmod.workdir), env.get("PYTHONPATH", "")]
    )
    argv = [sys.executable, "-m", "celery", "-A", appmod.name, "beat", "-l", "INFO",
            "-f", str(log), "-s", str(appmod.workdir / "schedule")]
    with open(appmod.workdir / "beat.out", "wb") as out:
        proc = subprocess.Popen(argv, cwd=appmod.workdir, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def sent() -> list[dict[str, Any]]:
            if proc.poll() is not None:
                raise AssertionError((appmod.workdir / "beat.out").read_text())
            return _events(parse_json_lines(log.read_text()) if log.exists() else [],
                           "beat_task_sent")

        wait_for(lambda: len(sent()) >= 2, timeout=20,
                 message=lambda: (appmod.workdir / "beat.out").read_text())
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    records = parse_json_lines(log.read_text())
    started = _one(records, "beat_started")
    assert started["level"] == "INFO"
    assert started["scheduler"] == "celery.beat.PersistentScheduler"
    assert started["max_interval"] == 0.1
    sends = _events(records, "beat_task_sent")
    first = sends[0]
    assert first["level"] == "INFO" and first["entry"] == "every-0.2s"
    assert first["task_name"] == "nightly.report" and len(first["task_id"]) == 36
    assert first["schedule"].startswith("<freq:")
    assert len({r["task_id"] for r in sends}) == len(sends) >= 2
    messages = [r["message"] for r in records]
    assert not [m for m in messages if "Sending due task" in m or "beat: Starting" in m]


@pytest.mark.worker
def test_rejected_event_for_a_task_raising_reject(run: Run) -> None:
    task_id = run.ids["refuse"]
    rejected = _one(run.records, "task_rejected", task_id)
    assert rejected["level"] == "ERROR"
    assert rejected["reason"] == "bad" and rejected["requeue"] is False
    assert rejected["task_name"].endswith(".refuse")
    assert not _events(run.records, "task_failed", task_id)
    assert not _events(run.records, "task_succeeded", task_id)
