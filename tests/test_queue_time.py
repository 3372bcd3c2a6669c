"""Queue time on task events: ``queued_ms`` (publish to start, the countdown/eta left
out) and ``wait_ms`` (``task_received`` in the worker's main process to start), with
real workers: a prefork child (the receive time crosses processes) and solo.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from workerutil import REPO_ROOT, AppModule, Worker, wait_for

BODY = r"""
import os
import time

import logkit

if not os.environ.get("NO_LOGKIT"):  # a publisher without logkit
    logkit.install(app, format="json", event_levels={"task_started": "INFO"})


@app.task
def slow(seconds):
    start = time.time()
    time.sleep(seconds)
    return {"start": start, "end": time.time()}


@app.task
def quick(tag):
    return {"start": time.time()}


@app.task
def boom():
    raise ValueError("boom")


@app.task(bind=True, max_retries=1)
def flaky(self):
    if self.request.retries == 0:
        raise self.retry(countdown=0.5)
    return "ok"
"""

SLOW = 3.0
QUEUE_EVENTS = ("task_started", "task_succeeded", "task_failed", "task_retried")


def _events(worker: Worker, task_id: str) -> dict[str, dict[str, Any]]:
    return {
        r["event"]: r for r in worker.json_lines()
        if r.get("task_id") == task_id and r.get("event") in QUEUE_EVENTS
    }


def _finished(worker: Worker, task_id: str, event: str = "task_succeeded") -> dict[str, Any]:
    return wait_for(lambda: _events(worker, task_id).get(event) and _events(worker, task_id),
                    timeout=60, message=lambda: worker.describe())


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_tasks_waiting_behind_a_slow_one(
    pool: str, app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker]
) -> None:
    appmod = app_factory(BODY)
    worker = worker_factory(appmod, pool=pool, concurrency=1, logfile="worker.log")
    mod = appmod.load()
    alone = mod.quick.delay("alone")  # on an idle worker
    alone.get(timeout=60)
    baseline = _finished(worker, alone.id)["task_succeeded"]["queued_ms"]

    slow = mod.slow.delay(SLOW)
    # The quick ones are published once the slow one runs (the filesystem transport does
    # not keep the order of messages published within one millisecond).
    wait_for(lambda: _events(worker, slow.id).get("task_started"), timeout=60,
             message=lambda: worker.describe())
    sent = []
    for i in range(3):
        before = time.time()
        result = mod.quick.delay(i)
        sent.append((result, before, time.time()))
    slow_times = slow.get(timeout=60)
    waits = []
    for result, before, after in sent:
        start = result.get(timeout=60)["start"]
        events = _finished(worker, result.id)
        started, succeeded = events["task_started"], events["task_succeeded"]
        queued, wait = succeeded["queued_ms"], succeeded["wait_ms"]
        # the same figures on both events of the run
        assert (started["queued_ms"], started["wait_ms"]) == (queued, wait)
        # published between `before` and `after`; started after the slow task ended,
        # before its own body ran
        assert (slow_times["end"] - after) * 1000 - 1 <= queued <= (start - before) * 1000 + 1
        assert queued > baseline
        assert 0 <= wait <= queued + 5  # received after it was published
        waits.append(wait)
    if pool == "prefork":  # the first quick one was received (prefetched) while slow ran
        assert max(waits) >= 1000, waits
    # solo: the main process runs the task, and receives the next message after it


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_countdown_retry_failure_and_a_publisher_without_logkit(
    pool: str, app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker]
) -> None:
    appmod = app_factory(BODY)
    worker = worker_factory(appmod, pool=pool, concurrency=1, logfile="worker.log")
    mod = appmod.load()

    # A countdown is not queue time.
    before = time.time()
    later = mod.quick.apply_async((0,), countdown=2)
    start = later.get(timeout=60)["start"]
    succeeded = _finished(worker, later.id)["task_succeeded"]
    assert start - before >= 2  # Celery held it for the countdown
    assert -50 <= succeeded["queued_ms"] <= (start - before - 2) * 1000 + 1
    assert succeeded["wait_ms"] <= (start - before - 2) * 1000 + 5

    # Failed and retried tasks carry them too.
    failed = mod.boom.delay()
    events = _finished(worker, failed.id, "task_failed")
    assert isinstance(events["task_failed"]["queued_ms"], float)
    assert isinstance(events["task_failed"]["wait_ms"], float)
    retried = mod.flaky.delay()
    assert retried.get(timeout=60) == "ok"
    events = _finished(worker, retried.id)
    assert isinstance(events["task_retried"]["queued_ms"], float)
    assert isinstance(events["task_retried"]["wait_ms"], float)
    # the retry's own countdown (0.5 s) is left out of the second run's queue time
    assert -50 <= events["task_succeeded"]["queued_ms"] < 500

    # A publisher without logkit: no publish time, so no queued_ms; wait_ms still.
    env = dict(os.environ, NO_LOGKIT="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(appmod.workdir)])
    proc = subprocess.run(
        [sys.executable, "-c", f"import {appmod.name} as m; print(m.quick.delay('plain').id)"],
        cwd=appmod.workdir, env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    plain = _finished(worker, proc.stdout.strip())["task_succeeded"]
    assert "queued_ms" not in plain  # unknown: left out, not null (#37)
    assert isinstance(plain["wait_ms"], float) and plain["wait_ms"] >= 0
