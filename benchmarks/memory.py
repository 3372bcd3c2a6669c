"""Memory over time: a real worker's RSS while it drains N tiny tasks (#18).

For each pool (prefork -c 2, threads -c 2) and each logging mode (Celery's default
logging, logkit json), in its own worker process on a private ``redis-server``
(the app and task of :mod:`benchmarks.worker`: one ``logger.info`` line per task):

1. publish N tasks; start ``celery worker -P POOL -c 2 -l INFO -f worker.log``;
2. from ``worker_ready`` on, sample the RSS (``/proc/PID/status`` ``VmRSS``) of the
   main process and of its pool processes every 0.2 s, with the tasks done so far;
3. when all N are done, stop the worker.

Reported per run: RSS (main + pool, MiB) at ready and after 25/50/75/100 % of the
tasks, and the growth from ready to the end. logkit's growth should stay within
Celery's own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .worker import CELERY, LOGKIT, REPO_ROOT, SETUPS, Redis, _children, _publish, _write_app

#: Celery's own logging and logkit's, side by side (the floor has no lines to keep).
MODES = (CELERY, LOGKIT)
#: The suite's usual worker configuration (Celery's default prefetch, results stored).
SETUP = next(s for s in SETUPS if s.name == "results")

POOLS = ("prefork", "threads")
MARKS = (0.25, 0.5, 0.75, 1.0)


@dataclass
class MemoryRun:
    pool: str
    mode: str
    tasks: int
    #: ``[(tasks done, RSS MiB main + pool)]``, from ready to the end.
    samples: list[tuple[int, float]] = field(default_factory=list)

    def at(self, fraction: float) -> float:
        """RSS (MiB) at the first sample with ``fraction`` of the tasks done."""
        goal = self.tasks * fraction
        return next((rss for done, rss in self.samples if done >= goal), self.samples[-1][1])

    @property
    def growth(self) -> float:
        return self.samples[-1][1] - self.samples[0][1]


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def run_once(pool: str, mode: str, tasks: int, redis: Redis, timeout: float = 1800) -> MemoryRun:
    """One worker run in ``mode`` on ``pool``; RSS sampled until ``tasks`` are done."""
    workdir = Path(tempfile.mkdtemp(prefix="logkit-bench-mem-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGKIT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(workdir)])
    redis.flush()
    proc = None
    result = MemoryRun(pool, mode, tasks)
    try:
        _write_app(workdir, mode, SETUP, redis.url)
        _publish(workdir, tasks, env)
        with open(workdir / "worker.out", "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "bench_worker_app", "worker",
                 "-P", pool, "-c", "2", "-l", "INFO", "-f", str(workdir / "worker.log"),
                 "-n", "mem@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        done, ready = workdir / "done", workdir / "ready"
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{(workdir / 'worker.out').read_text()}")
            if ready.exists():
                count = done.stat().st_size if done.exists() else 0
                rss = _rss_mib(proc.pid) + sum(_rss_mib(p) for p in _children(proc.pid))
                result.samples.append((count, rss))
                if count >= tasks:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {tasks} tasks")
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc = None
        return result
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def run(tasks: int = 50_000, pools: tuple[str, ...] = POOLS) -> list[MemoryRun]:
    """Every pool x mode once, on a private redis-server."""
    tmp = Path(tempfile.mkdtemp(prefix="logkit-bench-redis-"))
    redis = Redis(tmp)
    try:
        return [run_once(pool, mode, tasks, redis) for pool in pools for mode in MODES]
    finally:
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def render(runs: list[MemoryRun]) -> str:
    """Markdown table: RSS over time per pool and mode, side by side."""
    tasks = runs[0].tasks if runs else 0
    marks = " | ".join(f"{int(m * 100)}%" for m in MARKS)
    lines = [
        f"#### worker memory: {tasks} tiny tasks, -c 2, redis broker",
        "",
        f"| pool | logging | RSS at ready (MiB) | {marks} | growth (MiB) |",
        "|---|---|---:|" + "---:|" * len(MARKS) + "---:|",
    ]
    for r in runs:
        cells = " | ".join(f"{r.at(m):.1f}" for m in MARKS)
        lines.append(f"| {r.pool} | {r.mode} | {r.samples[0][1]:.1f} | {cells} | "
                     f"{r.growth:+.1f} |")
    lines += ["", "RSS of the main process plus its pool processes (prefork: 2 children; "
              "threads: none), from `/proc/PID/status`, sampled every 0.2 s."]
    return "\n".join(lines) + "\n"
