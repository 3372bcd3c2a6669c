"""Bytes per task with ``task_sample`` (#38), on the worker of #37, and what they hold.

``python -m benchmarks.sampling [--tasks N] [--repeats R] [--rate 0.1] [--fail-every 10]``

A real ``celery worker -P prefork -c 2 -l INFO -f worker.log`` against a private
``redis-server``, draining ``N`` tasks that each log 3 INFO lines with
``get_task_logger`` (the worker of :mod:`benchmarks.worker`); one task in
``--fail-every`` raises after its lines. Three ways of logging, in alternating runs,
each a fresh worker:

* Celery's own text logging (the baseline);
* ``logkit.install(app, format="json")`` (the defaults);
* the same with ``--log-task-sample RATE``.

For each run: the log file's bytes and lines per task (startup and shutdown lines
included). For the sampled runs, every line is parsed and checked: every failing
task's lines complete (``task_received``, its 3 lines, ``task_failed``), every
workflow in the sample complete, no line of a task outside it that succeeded, and the
``tasks_sampled_out`` events adding up to the tasks left out (and 5 lines each).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .timing import TIMES
from .worker import Redis

REPO_ROOT = Path(__file__).resolve().parent.parent
CELERY = "Celery's own text, INFO"
LOGKIT = "logkit json, INFO"
SAMPLED = "logkit json, INFO, task_sample={rate}"

APP = '''
import os

from celery import Celery
from celery.signals import worker_ready
from celery.utils.log import get_task_logger

WORKDIR = {workdir!r}
app = Celery("bench_sampling_app")
app.conf.update(broker_url={broker!r}, result_backend=None, task_ignore_result=True,
                worker_prefetch_multiplier=16, broker_connection_retry_on_startup=True)
if {logkit!r}:
    import logkit
    logkit.install(app, format="json")

logger = get_task_logger(__name__)
_fd = None


@app.task(name="bench.work")
def work(i):
    global _fd
    logger.info("task %s started", i)
    logger.info("task %s working on %s", i, "the thing")
    logger.info("task %s done", i)
    if _fd is None:
        _fd = os.open(os.path.join(WORKDIR, "done"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(_fd, b"x")
    if i % {fail_every} == 0:
        raise ValueError(f"task {{i}} failed")


@worker_ready.connect
def _ready(**_):
    with open(os.path.join(WORKDIR, "ready"), "w") as fh:
        fh.write("1")
'''


@dataclass
class Run:
    mode: str
    tasks: int
    log_bytes: int
    log_lines: int
    #: Checks of a sampled run: name -> (passed, detail).
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)

    @property
    def bytes_per_task(self) -> float:
        return self.log_bytes / self.tasks


def _publish(workdir: Path, tasks: int, env: dict[str, str]) -> list[str]:
    code = (
        "import json, bench_sampling_app as m\n"
        "ids = []\n"
        "with m.app.producer_or_acquire() as p:\n"
        f"    for i in range({tasks}):\n"
        "        ids.append(m.work.apply_async((i,), producer=p).id)\n"
        "open('ids.json', 'w').write(json.dumps(ids))\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, check=True, timeout=600)
    ids: list[str] = json.loads((workdir / "ids.json").read_text())
    return ids


def run_once(mode: str, tasks: int, rate: float, fail_every: int, redis: Redis,
             keep: Path | None = None) -> Run:
    """Publish ``tasks`` tasks, run a fresh worker until all are done, stop it, count."""
    workdir = Path(tempfile.mkdtemp(prefix="logkit-sampling-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGKIT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(workdir)])
    redis.flush()
    proc = None
    try:
        (workdir / "bench_sampling_app.py").write_text(textwrap.dedent(APP.format(
            workdir=str(workdir), broker=redis.url, logkit=mode != CELERY,
            fail_every=fail_every)))
        ids = _publish(workdir, tasks, env)
        logfile = workdir / "worker.log"
        extra = ["--log-task-sample", str(rate)] if mode.startswith("logkit") and \
            mode != LOGKIT else []
        with open(workdir / "worker.out", "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "bench_sampling_app", "worker",
                 "-P", "prefork", "-c", "2", "-l", "INFO", "-f", str(logfile),
                 "-n", "bench@%h", "--without-gossip", "--without-mingle",
                 "--without-heartbeat", *extra],
                cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        done = workdir / "done"
        deadline = time.monotonic() + 600
        while not (done.exists() and done.stat().st_size >= tasks):
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited:\n{(workdir / 'worker.out').read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {tasks} tasks")
            time.sleep(0.02)
        time.sleep(0.5)  # the last task's own last lines (task_failed/succeeded)
        proc.send_signal(signal.SIGTERM)  # warm shutdown: the children report what they left out
        proc.wait(timeout=60)
        proc = None
        text = logfile.read_text()
        run = Run(mode, tasks, len(text.encode()), text.count("\n"))
        if mode not in (CELERY, LOGKIT):
            run.checks = check(text, ids, rate, fail_every)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            slug = "".join(c if c.isalnum() or c in "._=" else "-" for c in mode)
            shutil.copy(logfile, keep / f"{slug}.log")
        return run
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def check(text: str, ids: list[str], rate: float, fail_every: int) -> dict[str, tuple[bool, str]]:
    """What a sampled run's log holds, against what it must."""
    sys.path.insert(0, str(REPO_ROOT))
    import logkit

    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in lines:
        if r.get("task_id"):
            by_task[r["task_id"]].append(r)
    failing_ok = sampled_ok = dropped_ok = 0
    failing = sampled = dropped = 0
    for i, task_id in enumerate(ids):
        mine = by_task.get(task_id, [])
        events = [r.get("event") for r in mine]
        own = [r for r in mine if r.get("logger") != "logkit.events"]
        if logkit.sampled(task_id, rate):  # a root task: its own id is its workflow's
            sampled += 1
            end = "task_failed" if i % fail_every == 0 else "task_succeeded"
            sampled_ok += events.count("task_received") == 1 and len(own) == 3 and \
                events[-1] == end and not any("sampled_out" in r for r in mine)
        elif i % fail_every == 0:
            failing += 1
            failing_ok += events[:1] == ["task_received"] and len(own) == 3 and \
                events[-1] == "task_failed" and all(r.get("sampled_out") for r in mine[:-1])
        else:
            dropped += 1
            dropped_ok += not mine
    reports = [r for r in lines if r.get("event") == "tasks_sampled_out"]
    left_tasks = sum(r["tasks"] for r in reports)
    left_lines = sum(r["lines"] for r in reports)
    return {
        "every failing task outside the sample: received, 3 lines, task_failed":
            (failing_ok == failing, f"{failing_ok}/{failing}"),
        "every task in the sample complete": (sampled_ok == sampled, f"{sampled_ok}/{sampled}"),
        "no line of a task left out": (dropped_ok == dropped, f"{dropped_ok}/{dropped}"),
        "tasks_sampled_out adds up (tasks, 5 lines each)":
            (left_tasks == dropped and left_lines == 5 * dropped,
             f"{left_tasks} tasks, {left_lines} lines in {len(reports)} events"),
    }


def run(tasks: int, repeats: int, rate: float, fail_every: int,
        keep: Path | None = None) -> list[Run]:
    modes = (CELERY, LOGKIT, SAMPLED.format(rate=rate))
    runs: list[Run] = []
    tmp = Path(tempfile.mkdtemp(prefix="logkit-sampling-redis-"))
    redis = Redis(tmp)
    try:
        for r in range(repeats):
            for mode in modes if r % 2 == 0 else tuple(reversed(modes)):
                runs.append(run_once(mode, tasks, rate, fail_every, redis, keep))
    finally:
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return runs


def render(runs: list[Run], rate: float, fail_every: int) -> str:
    modes = list(dict.fromkeys(r.mode for r in runs))
    tasks = runs[0].tasks
    base = statistics.median(r.bytes_per_task for r in runs if r.mode == CELERY)
    out = [f"#### bytes per task, task_sample={rate}: {tasks} tasks of 3 INFO lines, one in "
           f"{fail_every} failing, prefork -c 2, redis", "",
           "| logging | bytes/task (median) | runs | vs Celery's text | lines/task |",
           "|---|---:|---|---:|---:|"]
    for mode in modes:
        mine = [r for r in runs if r.mode == mode]
        per_task = statistics.median(r.bytes_per_task for r in mine)
        out.append(f"| {mode} | {per_task:.0f} | "
                   f"{', '.join(f'{r.bytes_per_task:.0f}' for r in mine)} | "
                   f"{per_task / base:.2f}{TIMES} | "
                   f"{statistics.median(r.log_lines / r.tasks for r in mine):.2f} |")
    out.append("")
    checked = [r for r in runs if r.checks]
    if checked:
        out += ["| check (every sampled run) | result |", "|---|---|"]
        for name in checked[0].checks:
            results = [r.checks[name] for r in checked]
            passed = all(ok for ok, _ in results)
            out.append(f"| {name} | {'yes' if passed else 'NO'}: "
                       f"{'; '.join(detail for _, detail in results)} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sampling", description=__doc__)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--fail-every", type=int, default=10)
    parser.add_argument("--keep", type=Path, help="copy each mode's last log file here")
    args = parser.parse_args(argv)
    runs = run(args.tasks, args.repeats, args.rate, args.fail_every, args.keep)
    print(render(runs, args.rate, args.fail_every))
    if any(not ok for r in runs for ok, _ in r.checks.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
