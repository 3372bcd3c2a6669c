"""Faults: killed children, failures, time limits, revokes and shutdowns.

One real prefork worker (-c 2) goes through every fault in turn; then probe tasks
show that each task carries only its own context, and the lifecycle events of the
faulty tasks are in the log. Separate workers check that a warm shutdown -- by one
SIGTERM, or two -- writes every buffered record (non-blocking ``queue=True`` mode)
before the processes exit.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from workerutil import AppModule, Worker, make_app, parse_json_lines, start_worker, wait_for

from logkit.config import CONTEXT_FIELDS

BODY = """
import logging
import os
import time

import logkit

app.conf.worker_lost_wait = 1  # report a killed child's job after 1 s, not 10
logkit.install(app, format="json")
log = logging.getLogger("faults")


@app.task
def block(path, seconds):
    logkit.bind(leak="from-block")
    log.info("blocking")
    with open(path, "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(seconds)
    return "done"


@app.task
def boom():
    logkit.bind(leak="from-boom")
    log.info("about to raise")
    raise ValueError("boom")


@app.task
def binder():
    logkit.bind(leak="from-binder")
    log.info("bound and returning")
    return os.getpid()


@app.task
def probe(i):
    time.sleep(0.2)  # so that probes spread over both children
    log.info("probe %d", i, extra={"ctx_keys": sorted(logkit.get_context())})
    return os.getpid()
"""

TASK_KEYS = set(CONTEXT_FIELDS)


def _wait_pid(path: Path) -> int:
    return int(wait_for(lambda: path.exists() and path.read_text(), timeout=20, message=str(path)))


def _expect_failure(result: Any, timeout: float = 30) -> BaseException:
    try:
        result.get(timeout=timeout)
    except Exception as exc:
        return exc
    raise AssertionError(f"{result.id} did not fail")


@pytest.fixture(scope="module")
def faulted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Run every fault on one worker; yield the task ids, the log records and the worker."""
    tmp = tmp_path_factory.mktemp("faults")
    appmod = make_app(tmp, BODY)
    worker = start_worker(appmod, logfile="worker.log")
    ids: dict[str, Any] = {}
    try:
        mod = appmod.load()
        # 1. a child killed with SIGKILL mid-task; the worker replaces it
        before = set(worker.child_pids())
        killed = mod.block.delay(str(tmp / "pid-kill"), 60)
        victim = _wait_pid(tmp / "pid-kill")
        assert victim in before
        os.kill(victim, signal.SIGKILL)
        ids["killed"] = killed.id
        ids["killed_exc"] = type(_expect_failure(killed)).__name__
        wait_for(lambda: len(set(worker.child_pids()) - {victim}) == 2, timeout=20)
        # 2. a task that raises
        failed = mod.boom.delay()
        ids["raised"] = failed.id
        ids["raised_exc"] = type(_expect_failure(failed)).__name__
        # 3. a hard time limit (the pool kills the child)
        timed = mod.block.apply_async((str(tmp / "pid-time"), 60), time_limit=1)
        ids["timed_out"] = timed.id
        ids["timed_out_exc"] = type(_expect_failure(timed)).__name__
        # 4. revoked with terminate while running
        revoked = mod.block.delay(str(tmp / "pid-revoke"), 60)
        _wait_pid(tmp / "pid-revoke")
        mod.app.control.revoke(revoked.id, terminate=True, signal="SIGTERM")
        ids["revoked"] = revoked.id
        ids["revoked_exc"] = type(_expect_failure(revoked)).__name__
        # 5. a task that binds and returns without unbinding
        ids["binder"] = mod.binder.delay().id
        # then: probes, enough to land on both (replaced) children several times
        probes = [mod.probe.delay(i) for i in range(8)]
        ids["probe_pids"] = {r.get(timeout=30) for r in probes}
        ids["probes"] = [r.id for r in probes]
    finally:
        worker.stop(timeout=20)
        appmod.unload()
    ids["records"] = parse_json_lines(worker.read_log())
    ids["worker"] = worker
    yield ids


def _events(records: list[dict[str, Any]], event: str, task_id: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("event") == event and r.get("task_id") == task_id]


def test_faults_fail_the_task_as_celery_does(faulted: dict[str, Any]) -> None:
    assert faulted["killed_exc"] == "WorkerLostError"
    assert faulted["raised_exc"] == "ValueError"
    assert faulted["timed_out_exc"] == "TimeLimitExceeded"
    assert faulted["revoked_exc"] == "TaskRevokedError"
    assert faulted["worker"].returncode == 0


def test_next_tasks_carry_only_their_own_context(faulted: dict[str, Any]) -> None:
    records = faulted["records"]
    probe_lines = [r for r in records if r.get("logger") == "faults" and "ctx_keys" in r]
    assert len(probe_lines) == 8
    assert {r["task_id"] for r in probe_lines} == set(faulted["probes"])
    assert len(faulted["probe_pids"]) == 2, "probes ran on both children"
    for line in probe_lines:
        assert set(line["ctx_keys"]) <= TASK_KEYS, line
        assert "leak" not in line
    # a value bound inside a task never shows up outside that task
    for r in records:
        if "leak" in r:
            owner = {
                "from-block": {faulted["killed"], faulted["timed_out"], faulted["revoked"]},
                "from-boom": {faulted["raised"]},
                "from-binder": {faulted["binder"]},
            }[r["leak"]]
            assert r.get("task_id") in owner, r


def test_fault_events_are_logged(faulted: dict[str, Any]) -> None:
    records = faulted["records"]
    raised = _events(records, "task_failed", faulted["raised"])
    assert len(raised) == 1 and raised[0]["exception"]["type"] == "ValueError"
    killed = _events(records, "task_failed", faulted["killed"])
    assert killed and "WorkerLostError" in killed[0]["exception"]["type"]
    timed = _events(records, "task_failed", faulted["timed_out"])
    assert len(timed) == 1 and "TimeLimitExceeded" in timed[0]["exception"]["type"]
    assert not [
        r for r in records if r.get("event") == "task_failed" and r.get("task_id") is None
    ]
    (revoked,) = _events(records, "task_revoked", faulted["revoked"])
    assert revoked["terminated"] is True and revoked["signame"] == "SIGTERM"
    # the killed/timed-out/revoked tasks never logged a success
    for key in ("killed", "timed_out", "revoked", "raised"):
        assert not _events(records, "task_succeeded", faulted[key]), key
    # lines of other processes about the faults are there too (pool replaced children)
    assert any("SIGKILL" in r["message"] for r in records if r["logger"] == "multiprocessing")


# --------------------------------------------------------------------------
# shutdown flushes buffered records
# --------------------------------------------------------------------------

FLUSH_BODY = """
import logging
import time

import logkit

logkit.install(app, format="json", queue=True)
log = logging.getLogger("flush")


class Slow:
    # formatted by the writer thread (queue mode): 1 ms each, so a backlog builds up

    def __repr__(self):
        time.sleep(0.001)
        return "slow"


@app.task
def chatty(path, slow, burst):
    open(path, "w").close()  # tell the test the task runs
    for n in range(slow):  # while the worker is asked to stop
        log.info("slow %d", n, extra={"n": n})
        time.sleep(0.002)
    for n in range(burst):  # right before the child exits: seconds of work still queued
        log.info("burst %d", n, extra={"n": n, "slow": Slow()})
    return slow + burst
"""


@pytest.mark.parametrize("sigterms", [1, 2])
def test_warm_shutdown_flushes_every_buffered_record(
    sigterms: int, tmp_path: Path, app_factory: Any, worker_factory: Any
) -> None:
    appmod: AppModule = app_factory(FLUSH_BODY)
    worker: Worker = worker_factory(appmod, logfile="worker.log")
    mod = appmod.load()
    slow, burst = 300, 2500
    marker = tmp_path / "running"
    result = mod.chatty.delay(str(marker), slow, burst)
    wait_for(marker.exists, timeout=20, message="task started")
    for _ in range(sigterms):
        os.kill(worker.pid, signal.SIGTERM)
        time.sleep(0.2)
    worker.proc.wait(timeout=30)  # exits by itself: no further signal
    rc = worker.stop()
    assert rc == 0
    assert result.get(timeout=10) == slow + burst  # the running task was finished
    records = parse_json_lines(worker.read_log())
    lines = [r for r in records if r.get("logger") == "flush"]
    print(f"\nshutdown [{sigterms} SIGTERM]: {len(lines)} of {slow + burst} task lines written")
    assert [r["n"] for r in lines if r["message"].startswith("slow")] == list(range(slow))
    assert [r["n"] for r in lines if r["message"].startswith("burst")] == list(range(burst))
    events = [r.get("event") for r in records]
    assert "worker_shutting_down" in events and events[-1] == "worker_shutdown"
