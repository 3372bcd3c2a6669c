"""The app's own structlog configuration stays the app's (#27).

An app that configured structlog itself (its processors, ending in
``ProcessorFormatter.wrap_for_formatter``, as django-structlog's docs advise) keeps its
processors: logkit changes only the final step, so its event dicts come out through
logkit's formatter, one line per call with ``event`` as the message and the task context
on it. When the app's own handlers write the records (``worker_hijack_root_logger`` off
with a ``LOGGING`` of its own), its final step stays and logkit only adds the task context
before it. ``uninstall()`` puts the app's configuration back.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from celery import Celery
from workerutil import AppModule, Worker, wait_for

import logkit

APP_STRUCTLOG = r"""
import structlog


def add_tenant(logger, method_name, event_dict):
    event_dict["tenant"] = "acme"
    return event_dict


structlog.configure(
    processors=[
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.filter_by_level,
        add_tenant,
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ],
    logger_factory=structlog.stdlib.LoggerFactory(),
    wrapper_class=structlog.stdlib.BoundLogger,
    cache_logger_on_first_use=True,
)
"""

BODY = APP_STRUCTLOG + r"""
import logkit

logkit.install(app, format="json")
slog = structlog.get_logger("tenant.tasks")


@app.task
def work(n):
    slog.info("working", n=n)
    structlog.get_logger("tenant.other").warning("second", k="v")
    return n


@app.task
def steps():
    for i in range(3):
        slog.debug("step", i=i)  # below -l INFO: kept by task_buffer (#34)
    slog.error("went wrong")
    return "ok"


@app.task
def marker():
    return "done"
"""


@pytest.mark.worker
def test_worker_keeps_the_apps_structlog_processors(
    app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker]
) -> None:
    appmod = app_factory(BODY)
    worker = worker_factory(appmod, concurrency=1, logfile="worker.log",
                            env={"LOGKIT_TASK_BUFFER": "5"})
    mod = appmod.load()
    task_id = mod.work.delay(7).id
    steps = mod.steps.delay()
    assert mod.marker.delay().get(timeout=30) == "done"
    wait_for(lambda: '"second"' in worker.read_log(), timeout=15, message=worker.describe)
    records = worker.json_lines()
    (working,) = [r for r in records if r.get("message") == "working"]  # one line per call
    (second,) = [r for r in records if r.get("message") == "second"]
    for record in (working, second):
        assert record["task_id"] == task_id, record  # logkit's task context
        assert record["task_name"].endswith(".work")
        assert record["tenant"] == "acme", record  # the app's own processor
    assert working["n"] == 7 and working["level"] == "INFO"
    assert working["logger"] == "tenant.tasks"
    assert second["k"] == "v" and second["level"] == "WARNING"
    # the app's filter_by_level lets a task's DEBUG calls reach the buffer: an ERROR writes them
    assert steps.get(timeout=30) == "ok"
    mine = [(r["level"], r["message"], r.get("i"), r.get("buffered"), r.get("tenant"))
            for r in worker.json_lines()
            if r.get("task_id") == steps.id and r["logger"] == "tenant.tasks"]
    assert mine == [*(("DEBUG", "step", i, True, "acme") for i in range(3)),
                    ("ERROR", "went wrong", None, None, "acme")]


# ---------------------------------------------------------------------------
# In-process: the app's handlers write (hijack off), and uninstall()
# ---------------------------------------------------------------------------


def _add_tenant(logger: Any, method_name: str, event_dict: Any) -> Any:
    event_dict["tenant"] = "acme"
    return event_dict


@pytest.fixture
def app_structlog() -> Iterator[dict[str, Any]]:
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, _add_tenant,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    try:
        yield structlog.get_config()
    finally:
        structlog.reset_defaults()


def test_apps_own_handlers_get_the_task_context_before_their_renderer(
    app_structlog: dict[str, Any],
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processor=structlog.processors.JSONRenderer()
    ))
    root = logging.getLogger()
    root.addHandler(handler)
    app = Celery("sl_user", set_as_current=False)
    app.conf.worker_hijack_root_logger = False  # the app's LOGGING writes the records
    try:
        logkit.install(app, format="json")
        active = logkit.configure(loglevel="INFO", app=app)
        assert active.root_owner == "user"
        processors = structlog.get_config()["processors"]
        assert processors[-1] is structlog.stdlib.ProcessorFormatter.wrap_for_formatter
        assert _add_tenant in processors
        with logkit.bound(task_id="t-1", task_name="proj.work"):
            structlog.get_logger("tenant").info("hello", n=1)
        (line,) = [json.loads(x) for x in stream.getvalue().splitlines() if '"hello"' in x]
        assert line["event"] == "hello" and line["tenant"] == "acme" and line["n"] == 1
        assert line["task_id"] == "t-1" and line["task_name"] == "proj.work"
        logkit.uninstall()
        # the app's configuration, exactly (its own list of processors)
        assert structlog.get_config()["processors"] is app_structlog["processors"]
        assert structlog.is_configured()
    finally:
        logkit.uninstall()
        root.removeHandler(handler)


def test_structlog_configured_by_logkit_only_when_nobody_did() -> None:
    structlog.reset_defaults()
    app = Celery("sl_none", set_as_current=False)
    logkit.install(app, format="json")
    logkit.configure(loglevel="INFO", app=app, logfile="/dev/null")
    assert structlog.is_configured()
    names = [getattr(p, "__name__", "") for p in structlog.get_config()["processors"]]
    assert names[-1] == "to_stdlib_call"
    logkit.uninstall()
    assert not structlog.is_configured()  # structlog's defaults again
