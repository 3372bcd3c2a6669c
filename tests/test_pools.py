"""Isolation under real concurrency: many interleaved tasks per process, per pool.

Each pool gets one worker (module scope). Sixteen tasks are published at once, each
with its own publisher ``request_id``; every task binds a value of its own with
``logkit.bind`` and logs ten records with short sleeps in between, so records of
different tasks interleave in one process (threads, gevent, eventlet) or one file
(prefork). Every record must carry exactly its own task's ids; no record of one task
may ever carry another's ``task_id``, ``request_id`` or bound value, and nothing is
left bound in the ``task_postrun`` receivers that follow logkit's.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from workerutil import Worker, make_app, start_worker, wait_for

import logkit

#: Run on every supported Celery minor and Python version by ``nox -s celery``.
pytestmark = pytest.mark.contract

BODY = r"""
import logging
import os
import random
import threading
import time

import structlog
from celery import signals
from celery.utils.log import get_task_logger

import logkit

logkit.install(app, format="json")
std = logging.getLogger("pool.lib")
tlog = get_task_logger("pool.tasks")
slog = structlog.get_logger("pool.sl")


@app.task(bind=True)
def interleave(self, n):
    logkit.bind(own=n)  # a user bind inside the task: must not outlive it
    for step in range(10):
        logger = (std, tlog)[step % 2]
        logger.info("n=%s step=%s", n, step)
        time.sleep(random.uniform(0.005, 0.03))
    slog.info("done", n=n)
    return {"id": self.request.id, "pid": os.getpid(), "thread": threading.get_ident(),
            "context": logkit.get_context()}


@signals.task_postrun.connect(weak=False)
def _after(task_id=None, **kwargs):
    logging.getLogger("pool.probe").info("after", extra={"after_id": task_id,
                                                           "left": logkit.get_context()})
"""

POOLS = {"prefork": 2, "threads": 4, "gevent": 8, "eventlet": 8}
TASKS = 16


class Outcome:
    def __init__(self, pool: str, worker: Worker, results: list[dict[str, Any]]) -> None:
        self.pool = pool
        self.worker = worker
        self.results = results
        self.records = worker.json_lines()


@pytest.fixture(scope="module", params=list(POOLS))
def outcome(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Outcome]:
    pool = request.param
    if pool in ("gevent", "eventlet") and importlib.util.find_spec(pool) is None:
        pytest.skip(f"the {pool} pool needs the {pool!r} package (pip install {pool})")
    appmod = make_app(tmp_path_factory.mktemp(f"pool-{pool}"), BODY)
    worker = start_worker(appmod, pool=pool, concurrency=POOLS[pool], logfile="worker.log")
    try:
        mod = appmod.load()
        pending = []
        for n in range(TASKS):
            with logkit.bound(request_id=f"req-{n}"):
                pending.append(mod.interleave.delay(n))
        # the same task id delivered twice at once (as after a redis visibility timeout)
        dup_id = f"dup-{pool}"
        for n in (100, 101):
            with logkit.bound(request_id=f"req-{n}"):
                pending.append(mod.interleave.apply_async((n,), task_id=dup_id))
        results = [r.get(timeout=60) for r in pending[:TASKS]]
        ids = {r["id"] for r in results}

        def all_done() -> bool:
            after = [r.get("after_id") for r in worker.json_lines()]
            return ids <= set(after) and after.count(dup_id) == 2

        wait_for(all_done, timeout=20, message=worker.describe)
        yield Outcome(pool, worker, results)
    finally:
        worker.stop(timeout=15)
        appmod.unload()


@pytest.mark.worker
def test_tasks_really_interleave(outcome: Outcome) -> None:
    per_process = Counter(r["pid"] for r in outcome.results)
    if outcome.pool == "prefork":
        assert len(per_process) == 2  # both children worked
        return
    # one process; threads: several OS threads; gevent/eventlet: one thread, many greenlets
    assert set(per_process) == {outcome.worker.pid}
    task_lines = [r for r in outcome.records if r["logger"] in ("pool.lib", "pool.tasks")]
    switches = sum(1 for a, b in itertools.pairwise(task_lines) if a["task_id"] != b["task_id"])
    assert switches >= TASKS * 3, f"records of different tasks barely interleaved ({switches})"
    if outcome.pool == "threads":
        assert len({r["thread"] for r in outcome.results}) > 1


@pytest.mark.worker
def test_every_record_carries_only_its_own_task(outcome: Outcome) -> None:
    by_n = {n: res for n, res in enumerate(outcome.results)}
    by_n[100] = by_n[101] = {"id": f"dup-{outcome.pool}"}
    lines = [r for r in outcome.records if r["logger"] in ("pool.lib", "pool.tasks")]
    assert len(lines) == (TASKS + 2) * 10
    for rec in lines:
        n = int(rec["message"].split()[0].split("=")[1])
        assert rec["task_id"] == by_n[n]["id"], rec
        assert rec["request_id"] == f"req-{n}", rec
        assert rec["own"] == n, rec
    done = [r for r in outcome.records if r["logger"] == "pool.sl"]
    assert len(done) == TASKS + 2
    assert all(r["task_id"] == by_n[r["n"]]["id"] and r["own"] == r["n"] for r in done)
    assert all(r["request_id"] == f"req-{r['n']}" for r in done)
    # what the task itself saw through logkit.get_context()
    for n, res in enumerate(outcome.results):
        assert res["context"]["task_id"] == res["id"]
        assert res["context"]["request_id"] == f"req-{n}" and res["context"]["own"] == n


@pytest.mark.worker
def test_nothing_is_left_bound_after_a_task(outcome: Outcome) -> None:
    after = [r for r in outcome.records if r["logger"] == "pool.probe"]
    assert len(after) == TASKS + 2
    for rec in after:
        assert rec["left"] == {}, rec
        assert "task_id" not in rec and "request_id" not in rec and "own" not in rec, rec
    # logkit's lifecycle events are about one task and carry that task's identity by design
    events = [r for r in outcome.records if r["logger"] == "logkit.events"]
    n_of = {res["id"]: n for n, res in enumerate(outcome.results)}
    for rec in events:
        if rec.get("task_id") in n_of:
            assert rec.get("request_id") == f"req-{n_of[rec['task_id']]}", rec
    outside = [r for r in outcome.records if not r["logger"].startswith(("pool.", "logkit."))]
    assert [r for r in outside if r["message"].startswith("Connected to")]
    for rec in outside:
        if "task_id" not in rec:
            assert "own" not in rec and "request_id" not in rec, rec


@pytest.mark.worker
def test_thread_only_where_a_process_runs_tasks_in_several_threads(outcome: Outcome) -> None:
    """#37: a line carries ``thread`` when it comes from a thread other than its process's
    main thread: each task line of the threads pool (and of a gevent/eventlet greenlet:
    the id ``threading`` gives there), the task's own thread; none in a prefork child,
    whose tasks run in its main thread, nor on ``task_received`` in the main process
    (in its main thread but with eventlet)."""
    thread_of = {res["id"]: res["thread"] for res in outcome.results}
    lines = [r for r in outcome.records
             if r["logger"] in ("pool.lib", "pool.tasks") and r["task_id"] in thread_of]
    assert len(lines) == TASKS * 10
    for rec in lines:
        if outcome.pool == "prefork":
            assert "thread" not in rec, rec
        else:
            assert rec["thread"] == thread_of[rec["task_id"]], rec
    received = [r for r in outcome.records if r.get("event") == "task_received"]
    assert len(received) == TASKS + 2
    if outcome.pool in ("prefork", "threads"):  # eventlet's consumer runs in a green thread
        assert not [r for r in received if "thread" in r]
    assert not [r for r in outcome.records if r.get("thread") is None and "thread" in r]
