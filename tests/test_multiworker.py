"""Real broker, many workers, shared log files, log rotation: nothing lost, nothing torn.

* Two worker nodes (``w1@%h`` on queue ``a``, ``w2@%h`` on queue ``b``, prefork -c 2
  each) on a real ``redis-server`` run 30 workflows of 8 tasks (chain -> chord ->
  task) whose steps alternate between the queues, so every workflow hops between
  the nodes. From the combined log files every task's lines are found by
  ``root_id``, every task id appears, every line parses, no line carries another
  line's text, and the number of task lines is exactly what the tasks logged.
* All children of one worker append 10,000+ lines to one file within seconds
  (direct and non-blocking ``queue=True`` mode).
* The log file is renamed (logrotate-style) twice while the worker writes; the
  watched file is reopened and the files together hold every line.
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from workerutil import AppModule, Worker, parse_json_lines, stop_all, wait_for

LINES_PER_TASK = 5
WORKFLOWS = 30
LEAVES = 5

MW_BODY = f"""
import logging
import logkit

logkit.install(app, format="json")
log = logging.getLogger("mw")


def _lines(label):
    tid = logkit.get_context().get("task_id")
    for n in range({LINES_PER_TASK}):
        # the message repeats the task id and line number: an interleaved or torn line
        # cannot carry a message that matches its own fields
        log.info("%s %s line %d", label, tid, n, extra={{"n": n, "label": label}})


@app.task
def step(wf, k):
    _lines(f"wf{{wf}}-s{{k}}")
    return k


@app.task
def leaf(wf, j):
    _lines(f"wf{{wf}}-l{{j}}")
    return j


@app.task
def collect(results, wf):
    _lines(f"wf{{wf}}-c")
    return sorted(results)
"""


def _workflow(mod: Any, wf: int) -> tuple[Any, dict[str, str]]:
    """chain(step a, step b, chord(leaves a/b alternating, collect a), step b).

    Returns the signature and ``{task_id: queue}`` for every task in it (ids are
    chosen here, so the test knows them all before anything runs).
    """
    from celery import chain, chord

    ids: dict[str, str] = {}

    def sig(task: Any, args: tuple[Any, ...], tid: str, queue: str) -> Any:
        ids[tid] = queue
        return task.si(*args).set(task_id=tid, queue=queue)

    leaves = [
        sig(mod.leaf, (wf, j), f"wf{wf}-l{j}", "a" if j % 2 else "b") for j in range(LEAVES)
    ]
    body = mod.collect.s(wf).set(task_id=f"wf{wf}-c", queue="a")
    ids[f"wf{wf}-c"] = "a"
    flow = chain(
        sig(mod.step, (wf, 0), f"wf{wf}-s0", "a"),
        sig(mod.step, (wf, 1), f"wf{wf}-s1", "b"),
        chord(leaves, body),
        sig(mod.step, (wf, 2), f"wf{wf}-s2", "b"),
    )
    return flow, ids


def _read_all(paths: list[Path]) -> tuple[int, list[dict[str, Any]]]:
    lines = 0
    records: list[dict[str, Any]] = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        lines += text.count("\n")
        records.extend(parse_json_lines(text, source=str(path)))
    return lines, records


def _check_task_lines(records: list[dict[str, Any]], logger: str = "mw") -> dict[str, list[Any]]:
    """Group task lines by task id; each line's message must match its own fields."""
    by_task: dict[str, list[Any]] = defaultdict(list)
    for r in records:
        if r.get("logger") != logger:
            continue
        assert r["message"] == f"{r['label']} {r['task_id']} line {r['n']}", r
        by_task[r["task_id"]].append(r)
    return by_task


@pytest.mark.redis
@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_two_nodes_on_redis_run_200_tasks_and_lose_no_line(
    broker: str,
    redis_url: str,
    request: pytest.FixtureRequest,
    app_factory: Callable[..., AppModule],
    worker_factory: Callable[..., Worker],
) -> None:
    # amqp: RabbitMQ as the broker, Redis as the result backend (native chord counting)
    url = redis_url if broker == "redis" else request.getfixturevalue("amqp_url")
    appmod = app_factory(MW_BODY, broker_url=url, result_backend=redis_url)
    logs = appmod.workdir / "logs"
    logs.mkdir()
    w1, w2 = (
        worker_factory(
            appmod, nodename=f"{node}@%h", logfile=logs / "%n-%i.log", extra_args=["-Q", queue]
        )
        for node, queue in (("w1", "a"), ("w2", "b"))
    )
    mod = appmod.load()

    started = time.monotonic()
    expected: dict[str, str] = {}  # task id -> queue
    roots: dict[str, str] = {}  # task id -> expected root id
    results = []
    for wf in range(WORKFLOWS):
        flow, ids = _workflow(mod, wf)
        expected.update(ids)
        roots.update(dict.fromkeys(ids, f"wf{wf}-s0"))
        results.append(flow.apply_async())
    for wf, result in enumerate(results):
        assert result.get(timeout=90) == 2, f"workflow {wf}"
    elapsed = time.monotonic() - started
    stop_all([w1, w2], timeout=20)
    assert w1.returncode == 0 and w2.returncode == 0

    files = sorted(logs.glob("*.log"))
    assert {f.name.split("-")[0] for f in files} == {"w1", "w2"}
    written, records = _read_all(files)  # every line parses as JSON
    by_task = _check_task_lines(records)

    assert len(expected) >= 200
    assert set(by_task) == set(expected), "every task id appears, and only those"
    lost = 0
    for tid, lines in by_task.items():
        numbers = Counter(line["n"] for line in lines)
        lost += sum(1 for n in range(LINES_PER_TASK) if numbers[n] == 0)
        assert sorted(numbers.elements()) == list(range(LINES_PER_TASK)), (tid, numbers)
        # a root task's lines leave root_id out (it is the task id, #37)
        assert {line.get("root_id", line["task_id"]) for line in lines} == {roots[tid]}, tid
        node = "w1" if expected[tid] == "a" else "w2"
        assert {line["worker"].split("@")[0] for line in lines} == {node}, tid
    task_lines = sum(len(v) for v in by_task.values())
    assert task_lines == len(expected) * LINES_PER_TASK

    # by root_id, a workflow's lines are found across both nodes
    per_root: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.get("logger") == "mw":
            per_root[r.get("root_id", r["task_id"])].add(r["worker"].split("@")[0])
    assert len(per_root) == WORKFLOWS
    assert all(nodes == {"w1", "w2"} for nodes in per_root.values())
    # tasks of the chord hopped between nodes and were logged with their parent
    assert all(
        line["parent_id"] for lines in by_task.values() for line in lines
        if not line["task_id"].endswith("-s0")
    )
    print(
        f"\nmulti-worker: tasks run {len(expected)} in {elapsed:.1f}s, lines written {written}, "
        f"lines parsed {len(records)}, task lines {task_lines}, lines lost {lost}"
    )


# --------------------------------------------------------------------------
# one worker, its children appending to one file
# --------------------------------------------------------------------------

LOAD_BODY = """
import logging
import time
import logkit

logkit.install(app)
log = logging.getLogger("mw")
PAD = "p" * 150


@app.task
def burst(label, lines, sleep=0.0):
    tid = logkit.get_context().get("task_id")
    for n in range(lines):
        log.info("%s %s line %d", label, tid, n, extra={"n": n, "label": label, "pad": PAD})
        if sleep:
            time.sleep(sleep)
    return lines
"""


@pytest.mark.parametrize("mode", ["direct", "queue"])
def test_shared_file_under_load(
    mode: str, app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker]
) -> None:
    appmod = app_factory(LOAD_BODY)
    env = {"LOGKIT_FORMAT": "json", "LOGKIT_QUEUE": "true" if mode == "queue" else "false"}
    worker = worker_factory(appmod, logfile="shared.log", env=env)
    mod = appmod.load()
    tasks, per_task = 8, 1500
    started = time.monotonic()
    results = [mod.burst.delay(f"b{i}", per_task) for i in range(tasks)]
    assert [r.get(timeout=60) for r in results] == [per_task] * tasks
    elapsed = time.monotonic() - started
    worker.stop(timeout=20)
    assert worker.returncode == 0
    assert worker.logfile is not None
    written, records = _read_all([worker.logfile])
    by_task = _check_task_lines(records)
    task_lines = sum(len(v) for v in by_task.values())
    pids = {r["process"] for lines in by_task.values() for r in lines}
    print(
        f"\nshared file [{mode}]: {task_lines} task lines from {len(pids)} processes "
        f"in {elapsed:.1f}s; lines written {written}, parsed {len(records)}, "
        f"lost {tasks * per_task - task_lines}"
    )
    assert written == len(records)
    assert len(pids) == 2, "both pool children wrote to the one file"
    assert len(by_task) == tasks
    for lines in by_task.values():
        assert sorted(line["n"] for line in lines) == list(range(per_task))
    assert task_lines == tasks * per_task >= 10_000


def test_log_rotation_by_rename(
    app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker]
) -> None:
    appmod = app_factory(LOAD_BODY)
    worker = worker_factory(appmod, logfile="app.log", env={"LOGKIT_FORMAT": "json"})
    path = worker.logfile
    assert path is not None
    mod = appmod.load()
    tasks, per_task = 4, 400
    results = [mod.burst.delay(f"r{i}", per_task, 0.004) for i in range(tasks)]

    def task_lines_in(p: Path) -> int:
        try:
            return p.read_text().count('"logger":"mw"')
        except FileNotFoundError:
            return 0

    rotated = [path.with_name("app.log.1"), path.with_name("app.log.2")]
    # rotate twice while both children are writing (like logrotate without copytruncate)
    wait_for(lambda: task_lines_in(path) > 300, timeout=30, message="first lines")
    os.rename(path, rotated[0])
    wait_for(lambda: task_lines_in(path) > 300, timeout=30, message="lines after 1st rotation")
    os.rename(path, rotated[1])
    assert [r.get(timeout=60) for r in results] == [per_task] * tasks
    worker.stop(timeout=20)

    files = [*rotated, path]
    counts = [task_lines_in(p) for p in files]
    _, records = _read_all(files)
    by_task = _check_task_lines(records)
    print(f"\nrotation: task lines per file {counts}, total {sum(counts)} of {tasks * per_task}")
    assert all(c > 0 for c in counts), counts  # every generation got lines
    assert sum(counts) == tasks * per_task
    for lines in by_task.values():
        assert sorted(line["n"] for line in lines) == list(range(per_task))
    # the newest file has the end of the run (nothing kept going to a renamed file)
    last = parse_json_lines(path.read_text())
    assert any(r.get("logger") == "mw" and r["n"] == per_task - 1 for r in last)
