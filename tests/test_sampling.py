"""Log sampling per workflow that keeps every failure: ``task_sample`` (#38).

In one process (eager tasks): the decision, what a held record becomes, what is put on
the handlers and taken back. With real workers against a real Redis: chains whose
tasks run on two workers of two pools, a share of them failing (every failure's lines
present, each workflow all or nothing, the counts of what was left out adding up);
``celery control logkit_sample`` with a TTL; bad values.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celery_versions import CONTROL_HAS_LIST
from test_hotpath import restore_logging  # noqa: F401  (the fixture)
from workerutil import REPO_ROOT, AppModule, Worker, WorkerStartError, celery_cmd, wait_for

import logkit
from logkit.config import ConfigError, LogConfig

# --------------------------------------------------------------------------
# the decision
# --------------------------------------------------------------------------


def _by_hand(root_id: str, rate: float) -> bool:
    digest = hashlib.blake2b(root_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


def test_the_decision_is_a_stable_hash_of_the_root_id() -> None:
    ids = [str(uuid.UUID(int=i * 7919 + 1)) for i in range(20000)]
    for rate in (0.0, 0.01, 0.1, 0.5, 0.9, 1.0):
        assert [logkit.sampled(i, rate) for i in ids[:2000]] == \
            [_by_hand(i, rate) for i in ids[:2000]]
    share = sum(logkit.sampled(i, 0.1) for i in ids) / len(ids)
    assert 0.09 < share < 0.11, share
    # a workflow in a sample is in every larger one
    assert all(logkit.sampled(i, 0.5) for i in ids[:2000] if logkit.sampled(i, 0.1))
    assert logkit.sampled(None, 0.0) and not logkit.sampled("x", 0.0) and logkit.sampled("x", 1)
    # the same answers in another process with another hash seed (str hashes differ there)
    code = ("import logkit,sys; ids=sys.stdin.read().split();"
            "print(''.join('1' if logkit.sampled(i, 0.1) else '0' for i in ids))")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", code], input="\n".join(ids[:3000]), env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "".join("1" if logkit.sampled(i, 0.1) else "0" for i in ids[:3000])
    for bad in (1.5, -1, "lots", float("nan"), True):
        with pytest.raises(ValueError, match="from 0 to 1"):
            logkit.sampled("x", bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [1.5, -0.1, "lots", float("nan"), True, "2"])
def test_bad_values_are_rejected_naming_the_range(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"'task_sample'.*from 0 to 1.*got"):
        LogConfig.resolve(None, {"task_sample": value})
    with pytest.raises(ConfigError, match=r"LOGKIT_TASK_SAMPLE.*from 0 to 1"):
        LogConfig.resolve(None, env={"LOGKIT_TASK_SAMPLE": str(value)})
    with pytest.raises(ConfigError, match="task_sample"):
        logkit.install(_app(), task_sample=value)


def test_good_values_from_every_source() -> None:
    assert LogConfig().task_sample == 1.0
    app = _app()
    app.conf.logkit_task_sample = "0.5"
    assert LogConfig.resolve(app).task_sample == 0.5
    assert LogConfig.resolve(app, {"task_sample": 0.25}).task_sample == 0.25
    assert LogConfig.resolve(app, {"task_sample": 0.25},
                             env={"LOGKIT_TASK_SAMPLE": "0"}).task_sample == 0.0
    assert LogConfig.resolve(app, env={"LOGKIT_TASK_SAMPLE": "0"},
                             cli={"task_sample": 0.1}).task_sample == 0.1


# --------------------------------------------------------------------------
# one process, eager tasks
# --------------------------------------------------------------------------


def _app(**conf: Any) -> Any:
    from celery import Celery

    app = Celery("sampling_unit", set_as_current=False)
    app.conf.update(task_always_eager=True, broker_url="memory://",
                    worker_redirect_stdouts=False, **conf)
    return app


class _Setup:
    def __init__(self, tmp_path: Path, **options: Any) -> None:
        self.app = _app()
        self.log = logging.getLogger("sampling.lib")
        log = self.log

        @self.app.task(name="sampling.work")  # type: ignore[misc]
        def work(steps: list[str]) -> str:
            values = [1]
            for step in steps:
                if step == "info":
                    log.info("values %s", values)  # rendered now: the list changes below
                    values.append(len(values) + 1)
                elif step == "debug":
                    log.debug("a debug line")
                elif step == "exc":
                    try:
                        raise KeyError("k")
                    except KeyError:
                        log.info("caught", exc_info=True)
                elif step == "warning":
                    log.warning("went wrong")
                elif step == "fail":
                    raise ValueError("boom")
            return "done"

        self.work = work
        self.logfile = tmp_path / f"sampling-{uuid.uuid4().hex[:6]}.log"
        logkit.install(self.app, format="json", **options)
        logkit.configure(loglevel="INFO", logfile=str(self.logfile), app=self.app)

    def run(self, steps: list[str], task_id: str) -> None:
        self.work.apply(args=(steps,), task_id=task_id)

    def lines(self) -> list[dict[str, Any]]:
        from logkit.handlers import flush_queues

        flush_queues()
        return [json.loads(line) for line in self.logfile.read_text().splitlines()]


def _out_id(rate: float) -> str:
    """A root id outside a sample of ``rate``."""
    return next(i for i in (f"out-{n}" for n in range(1000)) if not logkit.sampled(i, rate))


def _in_id(rate: float) -> str:
    return next(i for i in (f"in-{n}" for n in range(1000)) if logkit.sampled(i, rate))


def test_off_puts_nothing_on_and_on_puts_the_filter_on_every_handler(tmp_path: Path) -> None:
    from celery import signals

    from logkit import buffer, dedupe
    from logkit.receivers import installation
    from logkit.sample import Hold

    def holds() -> list[list[str]]:
        handlers = [*logging.getLogger().handlers, *logging.getLogger("celery.task").handlers]
        return [[type(f).__name__ for f in h.filters] for h in handlers]

    def uids() -> set[str]:
        return {str(uid) for sig in (signals.worker_process_shutdown, signals.worker_shutdown)
                for (uid, _), _r in sig.receivers if "sample" in str(uid)}

    _Setup(tmp_path)
    inst = installation()
    assert inst is not None and inst.sampler is not None and not inst.sampler.attached
    assert not any("Hold" in names for names in holds())
    assert not inst.prerun_hooks and not inst.postrun_hooks and not uids()
    logkit.uninstall()

    _Setup(tmp_path, task_sample=0.5, task_buffer=5, dedupe_window=10)
    inst = installation()
    assert inst is not None and inst.sampler is not None and inst.sampler.attached
    # on logkit's handlers (the root's and celery.task's): after the buffer's trigger,
    # before the folds, so a record held is neither counted by a fold nor written
    for names in holds():
        assert names.index("Trigger") < names.index("Hold") < names.index("Fold"), names
    assert len(holds()) == 2
    assert inst.sampler.prerun in inst.prerun_hooks
    assert inst.sampler.postrun in inst.postrun_hooks
    assert uids() == {"logkit.sample.process_shutdown", "logkit.sample.shutdown"}
    logkit.uninstall()
    for handler in [*logging.getLogger().handlers, *logging.getLogger("celery.task").handlers]:
        assert not [f for f in handler.filters if isinstance(f, (Hold, buffer.Trigger,
                                                                 dedupe.Fold))]
    assert not uids()


def test_a_task_outside_the_sample_writes_only_when_it_goes_wrong(tmp_path: Path) -> None:
    setup = _Setup(tmp_path, task_sample=0.5, task_buffer=5)
    out, inside = _out_id(0.5), _in_id(0.5)
    setup.run(["info", "debug", "info", "exc", "info"], out)  # succeeds: nothing written
    setup.run(["info", "info"], inside)  # in the sample: written as usual
    went_wrong = _out_id(0.5) + "-w"
    while logkit.sampled(went_wrong, 0.5):
        went_wrong += "w"
    setup.run(["info", "debug", "exc", "info", "warning", "info", "debug"], went_wrong)
    lines = setup.lines()
    assert not [r for r in lines if r.get("task_id") == out]
    mine = [r for r in lines if r.get("task_id") == inside]
    assert [r["message"] for r in mine] == ["values [1]", "values [1, 2]", "Task succeeded"]
    assert not any("sampled_out" in r for r in mine)

    wrong = [r for r in lines if r.get("task_id") == went_wrong]
    assert [(r["message"], r["level"], r.get("sampled_out")) for r in wrong] == [
        ("values [1]", "INFO", True),  # the list as it was when logged
        ("caught", "INFO", True),  # (a WARNING does not write the buffer's DEBUG lines)
        ("values [1, 2]", "INFO", True),
        ("went wrong", "WARNING", None),  # the line that went wrong
        ("values [1, 2, 3]", "INFO", None),  # the rest of the task, as usual
        ("Task succeeded", "INFO", None),
    ]
    assert [r["timestamp"] for r in wrong] == sorted(r["timestamp"] for r in wrong)
    assert "KeyError" in wrong[1]["exception"]["traceback"]
    assert all(r["task_name"] == "sampling.work" for r in wrong)  # its task context

    # what was left out, when the installation is undone (as at shutdown)
    logkit.uninstall()
    reports = [r for r in json.loads(f"[{','.join(setup.logfile.read_text().splitlines())}]")
               if r.get("event") == "tasks_sampled_out"]
    assert len(reports) == 1
    report = reports[0]
    assert (report["tasks"], report["lines"], report["overflowed"]) == (1, 5, 0)
    assert report["by_task"] == {"sampling.work": {"tasks": 1, "lines": 5}}
    assert report["task_sample"] == 0.5 and report["since"] and report["pid"] == os.getpid()


def test_a_failure_writes_what_the_task_kept_then_the_failure(tmp_path: Path) -> None:
    # nothing in the sample: only what goes wrong; the buffer's DEBUG lines too
    setup = _Setup(tmp_path, task_sample=0.0, task_buffer=5)
    task_id = "fails-1"
    setup.run(["info", "debug", "info", "fail"], task_id)
    mine = [r for r in setup.lines() if r.get("task_id") == task_id]
    assert [(r["message"], r.get("sampled_out")) for r in mine] == [
        ("values [1]", True), ("a debug line", True), ("values [1, 2]", True),
        ("Task failed", None)]
    assert mine[1]["buffered"] is True  # the buffer's, in its place by its time
    assert [r["timestamp"] for r in mine] == sorted(r["timestamp"] for r in mine)
    assert mine[-1]["exception"]["type"] == "ValueError"


def test_what_a_task_kept_is_never_folded(tmp_path: Path) -> None:
    setup = _Setup(tmp_path, task_sample=0.0, dedupe_window=60)
    setup.run(["info", "info", "info", "fail"], "folds-1")
    mine = [r for r in setup.lines() if r.get("task_id") == "folds-1"]
    assert [(r["message"], r.get("sampled_out")) for r in mine] == [
        ("values [1]", True), ("values [1, 2]", True), ("values [1, 2, 3]", True),
        ("Task failed", None)]


def test_a_long_task_overflows_into_the_log_counted(tmp_path: Path) -> None:
    from logkit.receivers import installation

    setup = _Setup(tmp_path, task_sample=0.0)
    inst = installation()
    assert inst is not None and inst.sampler is not None
    inst.sampler.limit = 5
    setup.run(["info"] * 8, "long-1")
    setup.run(["info"] * 3, "short-1")
    lines = setup.lines()
    long = [r for r in lines if r.get("task_id") == "long-1"]
    assert len(long) == 9 and [r.get("sampled_out") for r in long[:5]] == [True] * 5
    assert not any("sampled_out" in r for r in long[5:])
    assert not [r for r in lines if r.get("task_id") == "short-1"]
    report = inst.sampler.take_report()
    assert report is not None and (report["tasks"], report["overflowed"]) == (1, 1)
    assert report["lines"] == 4  # short-1: 3 lines and task_succeeded


def test_reports_come_at_their_interval(tmp_path: Path) -> None:
    from logkit.receivers import installation

    setup = _Setup(tmp_path, task_sample=0.0)
    inst = installation()
    assert inst is not None and inst.sampler is not None
    inst.sampler.interval = 0.0
    inst.sampler.take_report()  # the next one is due at once
    for n in range(3):
        setup.run(["info"], f"each-{n}")
    reports = [r for r in setup.lines() if r.get("event") == "tasks_sampled_out"]
    assert [(r["tasks"], r["lines"]) for r in reports] == [(1, 2)] * 3
    assert reports[0]["level"] == "INFO" and reports[0]["logger"] == "logkit.events"


# --------------------------------------------------------------------------
# real workers: chains across two workers of two pools
# --------------------------------------------------------------------------

BODY = r"""
import logging
import time

import logkit

logkit.install(app, format="json")
lib = logging.getLogger("wf.lib")


@app.task
def step(tag, n, fail_at=-1):
    lib.info("%s step %d start", tag, n)
    lib.debug("%s step %d debug", tag, n)
    time.sleep(0.01)
    if n == fail_at:
        raise ValueError(f"{tag} failed at {n}")
    lib.info("%s step %d done", tag, n)
    return n


@app.task
def probe(tag, sleep=0.0):
    lib.info("probe %s", tag)
    time.sleep(sleep)
    import os
    return os.getpid()
"""

RATE = 0.3
CHAINS = 36


def _ids(result: Any) -> list[Any]:
    """The results of a chain's tasks, first to last."""
    out = [result]
    while out[0].parent is not None:
        out.insert(0, out[0].parent)
    return out


@pytest.mark.redis
def test_chains_across_workers_and_pools_keep_every_failure_and_whole_workflows(
    app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker],
    redis_url: str,
) -> None:
    from celery import chain

    appmod = app_factory(BODY, broker_url=redis_url)
    # the rate from the command line on one worker, from the environment on the other;
    # steps 0 and 2 run on the prefork worker, step 1 on the threads worker
    prefork = worker_factory(appmod, pool="prefork", concurrency=2, logfile="prefork.log",
                             nodename="pre@%h", extra_args=["-Q", "a", "--log-task-sample",
                                                             str(RATE), "--log-task-buffer",
                                                             "5"])
    threads = worker_factory(appmod, pool="threads", concurrency=2, logfile="threads.log",
                             nodename="thr@%h", extra_args=["-Q", "b"],
                             env={"LOGKIT_TASK_SAMPLE": str(RATE)})
    mod = appmod.load()
    fail_at = {i: (1 if i % 5 == 0 else 2 if i % 7 == 0 else -1) for i in range(CHAINS)}
    chains = [chain(mod.step.si(f"wf{i}", 0, fail_at[i]).set(queue="a"),
                    mod.step.si(f"wf{i}", 1, fail_at[i]).set(queue="b"),
                    mod.step.si(f"wf{i}", 2, fail_at[i]).set(queue="a")).apply_async()
              for i in range(CHAINS)]
    ran: dict[str, tuple[str, str, int]] = {}  # task id -> (root id, state, step)
    for i, result in enumerate(chains):
        steps = _ids(result)
        last = 2 if fail_at[i] == -1 else fail_at[i]  # the steps after a failure never run
        steps[last].get(timeout=120, propagate=False)
        for n in range(last + 1):
            ran[steps[n].id] = (steps[0].id, "FAILURE" if n == fail_at[i] else "SUCCESS", n)
    for worker in (prefork, threads):
        assert worker.stop(timeout=60) == 0, worker.describe()
    logs = {"prefork": prefork.json_lines(), "threads": threads.json_lines()}
    by_task: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for name, records in logs.items():
        for r in records:
            if r.get("task_id"):
                by_task[r["task_id"]].append((name, r))

    kept = {root for root, _, _ in ran.values() if logkit.sampled(root, RATE)}
    assert 0 < len(kept) < CHAINS  # some workflows in the sample, some not
    left_out = 0
    for task_id, (root, state, n) in ran.items():
        lines = [r for _, r in by_task.get(task_id, [])]
        events = [r.get("event") for r in lines]
        messages = [r["message"] for r in lines]
        where = {name for name, _ in by_task.get(task_id, [])}
        tag = f"step {n} of workflow {root} ({state})"
        if root in kept:  # in the sample: every line, none marked
            assert events.count("task_received") == 1, tag
            assert any(m.endswith(f"step {n} start") for m in messages), tag
            assert ("task_succeeded" if state == "SUCCESS" else "task_failed") in events, tag
            assert not any("sampled_out" in r for r in lines), tag
        elif state == "FAILURE":  # outside it, failed: its kept lines first, then the failure
            assert events[0] == "task_received" and lines[0]["sampled_out"] is True, tag
            assert lines[0]["process"] != lines[1]["process"] or n == 1, tag
            assert any(m.endswith(f"step {n} start") and r.get("sampled_out")
                       for m, r in zip(messages, lines, strict=True)), tag
            assert events[-1] == "task_failed" and "sampled_out" not in lines[-1], tag
            if n != 1:  # the prefork worker's buffer: its DEBUG line, in its place
                assert any(r.get("buffered") and r.get("sampled_out") for r in lines), tag
        else:  # outside it, succeeded: nothing at all
            assert lines == [], (tag, lines)
            left_out += 1
        assert where <= {"prefork" if n != 1 else "threads"}, tag
    # the chains ran on both workers; each workflow is all or nothing across them
    assert {name for entries in by_task.values() for name, _ in entries} == {"prefork",
                                                                            "threads"}
    # what was left out adds up: each task left out had 4 lines (received, 2 INFO, succeeded)
    reports = [r for records in logs.values() for r in records
               if r.get("event") == "tasks_sampled_out"]
    assert sum(r["tasks"] for r in reports) == left_out
    assert sum(r["lines"] for r in reports) == 4 * left_out
    name = f"{appmod.name}.step"
    assert sum(r["by_task"].get(name, {}).get("tasks", 0) for r in reports) == left_out
    assert {r["worker"] for r in reports} <= {prefork.hostname, threads.hostname}
    # written = ran - left out: volumes and error rates computable from the log alone
    finished = [r for records in logs.values() for r in records
                if r.get("event") in ("task_succeeded", "task_failed")]
    assert len(finished) + left_out == len(ran)


# --------------------------------------------------------------------------
# real workers: logkit_sample over remote control
# --------------------------------------------------------------------------


def _probe_lines(worker: Worker, tag: str) -> list[dict[str, Any]]:
    return [r for r in worker.json_lines() if r.get("message", "").startswith(f"probe {tag}")]


def _sample_events(worker: Worker) -> list[dict[str, Any]]:
    return [r for r in worker.json_lines() if r.get("event") == "task_sample_changed"]


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_logkit_sample_changes_running_workers_for_a_while(
    pool: str, app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker],
) -> None:
    appmod = app_factory(BODY.replace('logkit.install(app, format="json")',
                                      'app.conf.logkit_task_sample = 0.0\n'
                                      'logkit.install(app, format="json")'))
    worker = worker_factory(appmod, pool=pool, concurrency=2, logfile="worker.log")
    mod = appmod.load()

    def run(tag: str, count: int = 4) -> set[int]:
        pids = {mod.probe.delay(f"{tag}-{i}", 0.3).get(timeout=60) for i in range(count)}
        mod.probe.delay("marker-" + tag).get(timeout=60)
        return pids

    run("before")
    # 0: nothing below WARNING is written (the marker neither: wait for its task's end)
    assert _probe_lines(worker, "before") == []

    proc = celery_cmd(appmod, "control", "-t", "10", "-j", "logkit_sample", "1.0", "6")
    assert proc.returncode == 0, proc.stderr
    replies = json.loads(proc.stdout)  # one {node: reply} per node (a list)
    reply = {k: v for r in replies for k, v in r.items()}[worker.hostname]["ok"]
    assert reply["task_sample"] == 1.0 and reply["previous"] == 0.0 and reply["default"] == 0.0
    assert reply["ttl"] == 6 and reply["until"]
    pids = run("window")
    wait_for(lambda: len(_probe_lines(worker, "window")) == 4, timeout=30,
             message=worker.describe)
    if pool == "prefork":  # both children took the change before their next task
        assert len(pids) == 2
        assert {r["process"] for r in _probe_lines(worker, "window")} == pids
    events = _sample_events(worker)
    assert events[0]["task_sample"] == 1.0 and events[0]["reason"] == "control"
    assert events[0]["ttl"] == 6 and events[0]["level"] == "WARNING"

    # back by itself when the TTL ends, in every process before its next task
    wait_for(lambda: len(_sample_events(worker)) == 2, timeout=60, message=worker.describe)
    revert = _sample_events(worker)[1]
    assert (revert["task_sample"], revert["previous"], revert["reason"]) == (0.0, 1.0,
                                                                            "expired")
    run("after")
    assert _probe_lines(worker, "after") == []
    proc = celery_cmd(appmod, "inspect", "-t", "10", "-j", "logkit_levels")
    sample = json.loads(proc.stdout)[worker.hostname]["task_sample"]
    assert sample == {"rate": 0.0, "default": 0.0, "until": None}


def test_a_revoked_task_outside_the_sample_writes_its_received_line_first(
    app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker],
) -> None:
    appmod = app_factory(BODY)
    worker = worker_factory(appmod, pool="prefork", concurrency=1, logfile="worker.log",
                            env={"LOGKIT_TASK_SAMPLE": "0"})
    mod = appmod.load()
    result = mod.probe.apply_async(("revoked",), countdown=4)
    # received (its task_received held: no line), waiting for its eta in the main process
    wait_for(lambda: any(r["request"]["id"] == result.id for node in
                         (mod.app.control.inspect(timeout=5).scheduled() or {}).values()
                         for r in node), timeout=30, message=worker.describe)
    mod.app.control.revoke(result.id)
    wait_for(lambda: [r for r in worker.json_lines() if r.get("event") == "task_revoked"],
             timeout=60, message=worker.describe)
    mine = [r for r in worker.json_lines() if r.get("task_id") == result.id]
    assert [(r["event"], r.get("sampled_out")) for r in mine] == [
        ("task_received", True), ("task_revoked", None)]
    assert mine[0]["timestamp"] < mine[1]["timestamp"] and mine[0]["eta"]
    assert (mine[1]["reason"], mine[1]["terminated"]) == ("revoked", False)
    assert mine[0]["process"] == worker.pid  # the main process, where it was received


def test_bad_rates_and_ttls_get_an_error_reply(
    app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker],
) -> None:
    appmod = app_factory(BODY)
    worker = worker_factory(appmod, pool="solo", concurrency=1, logfile="worker.log")
    for args, words in ((["2"], "rate must be a number from 0 to 1"),
                        (["lots"], "rate must be a number from 0 to 1"),
                        (["0.5", "soon"], "ttl must be a number of seconds")):
        proc = celery_cmd(appmod, "control", "-t", "10", "logkit_sample", *args)
        assert proc.returncode == 0, proc.stderr
        assert "ERROR" in proc.stdout and words in proc.stdout, proc.stdout
    assert "'default'" in celery_cmd(appmod, "control", "-t", "10", "logkit_sample",
                                     "2").stdout
    mod = appmod.load()
    mod.probe.delay("still").get(timeout=60)
    wait_for(lambda: _probe_lines(worker, "still"), timeout=30, message=worker.describe)
    assert _sample_events(worker) == [] and worker.alive  # nothing changed
    with pytest.raises(ValueError, match=r"rate must be .*got '2'"):
        logkit.set_sample(mod.app, "2")
    with pytest.raises(ValueError, match="ttl"):
        logkit.set_sample(mod.app, 0.5, ttl=-1)
    if CONTROL_HAS_LIST:
        proc = celery_cmd(appmod, "control", "--list")
        assert "logkit_sample RATE [TTL_SECONDS]" in proc.stdout, proc.stdout


def test_worker_refuses_a_bad_rate(tmp_path: Path) -> None:
    from workerutil import make_app, start_worker

    appmod = make_app(tmp_path, "import logkit\nlogkit.install(app, format='json')\n")
    with pytest.raises(WorkerStartError) as info:
        start_worker(appmod, pool="solo", concurrency=1, logfile="w.log",
                     env={"LOGKIT_TASK_SAMPLE": "1.5"}, ready_timeout=60)
    output = info.value.worker.output() + info.value.worker.read_log()
    assert "LOGKIT_TASK_SAMPLE" in output and "from 0 to 1" in output, output
    with pytest.raises(WorkerStartError) as info:
        start_worker(appmod, pool="solo", concurrency=1,
                     extra_args=["--log-task-sample", "2"], ready_timeout=60)
    output = info.value.worker.output()
    assert "--log-task-sample" in output and "from 0 to 1" in output, output


def test_sampled_follows_this_process_rate() -> None:
    app = _app()
    logkit.install(app, task_sample=0.1)
    ids = [f"wf-{n}" for n in range(200)]
    assert [logkit.sampled(i) for i in ids] == [logkit.sampled(i, 0.1) for i in ids]
    logkit.uninstall()
    assert all(logkit.sampled(i) for i in ids)  # not installed: every workflow
