"""Worker throughput and log volume: a real ``celery worker`` (prefork, 2 processes)
draining N tiny tasks.

For each configuration (:data:`SETUPS`) and each of its logging modes (:data:`MODES`:
Celery's own logging at INFO, logkit's defaults at INFO, logkit with each backend schema
at INFO, Celery at WARNING as the floor), in alternating runs, each a fresh worker:

1. write an app module in a fresh temp dir (a private ``redis-server`` as broker and
   result backend, or ``--broker filesystem``: kombu's filesystem transport in that dir);
2. publish N tasks (``bench.tiny(i)``: three ``logger.info`` lines, on a module logger or
   Celery's task logger as the setup says, then one ``os.write`` of a byte to a shared
   ``O_APPEND`` counter file: the completion mark);
3. start ``celery worker -P prefork -c 2 -l LEVEL -f worker.log --without-gossip
   --without-mingle --without-heartbeat``; its ``worker_ready`` receiver writes the
   ready time;
4. wait until the counter file holds N bytes; throughput = N / (time of the last
   write - ready time); CPU time of the main process and of the pool processes (from
   ``/proc``) over the same span; then stop the worker and count the log's lines and
   bytes: what the run would send to a log backend, per line and per task.

At INFO both write 5 lines a task: Celery's "Received task" + the task's 3 lines +
"succeeded", logkit's ``task_received`` + the 3 lines + ``task_succeeded``
(``task_started`` is DEBUG). At WARNING Celery writes none: what the worker costs
without logging.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .timing import TIMES

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The logging modes, in the order of the tables: Celery's own logging at INFO (the
#: baseline), logkit's defaults at INFO, logkit with each backend schema at INFO, and
#: Celery at WARNING (no task lines: the floor).
CELERY = "celery logging, INFO"
LOGKIT = "logkit json, INFO"
SCHEMAS = ("ecs", "gcp", "datadog", "otel")
SCHEMA_MODES = tuple(f"logkit json, schema={name}, INFO" for name in SCHEMAS)
FLOOR = "celery logging, WARNING (floor)"
MODES = (CELERY, LOGKIT, *SCHEMA_MODES, FLOOR)
#: ``celery worker -l`` of each mode.
LEVELS = {mode: "WARNING" if mode == FLOOR else "INFO" for mode in MODES}


def schema_of(mode: str) -> str | None:
    """The ``schema`` option of a logkit mode (``None``: logkit's own keys, or Celery)."""
    return mode.partition("schema=")[2].partition(",")[0] or None


@dataclass(frozen=True)
class Setup:
    """One worker configuration: tasks per run, prefetch multiplier, results stored or not,
    the task's logger, and the logging modes measured."""

    name: str
    tasks: int
    prefetch: int
    ignore_result: bool
    #: ``module``: ``logging.getLogger(__name__)`` (Celery's text line: its worker format,
    #: no task id); ``task``: Celery's ``get_task_logger`` (its task format: name and id).
    logger: str = "task"
    modes: tuple[str, ...] = (CELERY, LOGKIT, FLOOR)

    def describe(self) -> str:
        results = "ignore_result" if self.ignore_result else "results stored in the backend"
        logger = ("a module logger" if self.logger == "module"
                  else "Celery's task logger")
        return f"prefetch multiplier {self.prefetch}, {results}, 3 lines on {logger}"


#: The two configurations measured side by side: issue #37's worker (issue #28's setup:
#: little broker work per task, so the logging cost shows plainly; the task logs on a
#: module logger, so Celery's own lines are its shortest; every logging mode, the backend
#: schemas included) and the suite's usual one (Celery's default prefetch, each task's
#: result stored in the backend, the task logging on Celery's task logger).
SETUPS = (
    Setup("light", 6000, 16, True, logger="module", modes=MODES),
    Setup("results", 20000, 4, False),
)

APP_TEMPLATE = '''
import logging
import os
import time

from celery import Celery
from celery.signals import worker_ready
from celery.utils.log import get_task_logger

WORKDIR = {workdir!r}
MODE = {mode!r}
SCHEMA = {schema!r}
app = Celery("bench_worker_app")
if {broker_url!r} == "filesystem://":
    from kombu.transport import filesystem

    class FastStopTransport(filesystem.Transport):
        """Polls as usual, but notices a warm shutdown within 0.1 s instead of ~4 s."""

        def drain_events(self, connection, timeout=None):
            if timeout is not None and timeout > 0.1:
                timeout = 0.1
            return super().drain_events(connection, timeout=timeout)

    app.conf.broker_transport = FastStopTransport
app.conf.update(
    broker_url={broker_url!r},
    broker_transport_options={transport_options!r},
    result_backend={backend!r},
    task_ignore_result={ignore_result!r},
    worker_prefetch_multiplier={prefetch!r},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
)
if MODE.startswith("logkit"):
    import logkit
    logkit.install(app, format="json", **({{"schema": SCHEMA}} if SCHEMA else {{}}))

logger = get_task_logger(__name__) if {task_logger!r} else logging.getLogger(__name__)
_fd = None


@app.task(name="bench.tiny")
def tiny(i):
    global _fd
    logger.info("tiny task %s started", i)
    logger.info("tiny task %s working on %s", i, "the thing")
    logger.info("tiny task %s done", i)
    if _fd is None:
        _fd = os.open(os.path.join(WORKDIR, "done"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(_fd, b"x")


@worker_ready.connect
def _ready(**_):
    path = os.path.join(WORKDIR, "ready")
    with open(path + ".tmp", "w") as fh:
        fh.write(repr(time.time()))
    os.replace(path + ".tmp", path)
'''


@dataclass
class Run:
    """One worker run: mode, tasks, seconds from ready to the last task, log lines."""

    mode: str
    tasks: int
    seconds: float
    log_lines: int
    #: CPU seconds (user + system) from ready to done: the main process, the pool processes.
    main_cpu: float = float("nan")
    pool_cpu: float = float("nan")
    #: Bytes of the log file (startup and shutdown lines included).
    log_bytes: int = 0
    #: The :class:`Setup`'s name.
    setup: str = "light"

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class Summary:
    mode: str
    runs: list[Run] = field(default_factory=list)
    setup: str = "light"

    @property
    def median_rate(self) -> float:
        return statistics.median(r.rate for r in self.runs)

    def median(self, value: Callable[[Run], float]) -> float:
        return statistics.median(value(r) for r in self.runs)


class Redis:
    """A private ``redis-server`` for ``--broker redis``."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            conn.sendall(b"FLUSHALL\r\n")
            conn.recv(64)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _write_app(workdir: Path, mode: str, setup: Setup, broker_url: str | None) -> None:
    if broker_url is None:
        queue_dir = workdir / "broker"
        queue_dir.mkdir()
        (workdir / "control").mkdir()
        (workdir / "processed").mkdir()
        (workdir / "results").mkdir()
        broker_url = "filesystem://"
        backend = f"file://{workdir / 'results'}"
        transport_options = {
            "data_folder_in": str(queue_dir),
            "data_folder_out": str(queue_dir),
            "control_folder": str(workdir / "control"),
            "processed_folder": str(workdir / "processed"),
            "store_processed": False,
            "polling_interval": 0.01,
        }
    else:
        backend = broker_url
        transport_options = {}
    source = APP_TEMPLATE.format(
        workdir=str(workdir), mode=mode, broker_url=broker_url,
        transport_options=transport_options, backend=None if setup.ignore_result else backend,
        ignore_result=setup.ignore_result, prefetch=setup.prefetch,
        schema=schema_of(mode), task_logger=setup.logger == "task",
    )
    (workdir / "bench_worker_app.py").write_text(textwrap.dedent(source))


def _publish(workdir: Path, tasks: int, env: dict[str, str]) -> None:
    """Publish in a subprocess (the app module is not imported into this process)."""
    code = (
        "import bench_worker_app as m\n"
        "with m.app.producer_or_acquire() as p:\n"
        f"    for i in range({tasks}):\n"
        "        m.tiny.apply_async((i,), producer=p)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, check=True,
                   timeout=600)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from ``/proc`` (``nan`` where unavailable)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
            return [int(p) for p in fh.read().split()]
    except (OSError, ValueError):
        return []


def run_once(mode: str, tasks: int, *, setup: Setup = SETUPS[0], broker: str = "filesystem",
             redis: Redis | None = None, timeout: float = 600, wrap: Sequence[str] = (),
             keep: Path | None = None) -> Run:
    """Publish ``tasks`` tasks, start a worker in ``mode``, time it until all are done.

    ``wrap``: a command the worker runs under (``strace -c -f -o FILE``, for a study);
    ``keep``: a directory to copy the worker's log and output to.
    """
    workdir = Path(tempfile.mkdtemp(prefix="logkit-bench-"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(workdir)])}
    for key in [k for k in env if k.startswith("LOGKIT_")]:
        del env[key]
    broker_url = None
    if broker == "redis":
        assert redis is not None
        redis.flush()
        broker_url = redis.url
    proc = None
    try:
        _write_app(workdir, mode, setup, broker_url)
        _publish(workdir, tasks, env)
        logfile = workdir / "worker.log"
        with open(workdir / "worker.out", "wb") as out:
            proc = subprocess.Popen(
                [*wrap, sys.executable, "-m", "celery", "-A", "bench_worker_app", "worker",
                 "-P", "prefork", "-c", "2", "-l", LEVELS[mode], "-f", str(logfile),
                 "-n", "bench@%h", "--without-gossip", "--without-mingle",
                 "--without-heartbeat"],
                cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        done, ready = workdir / "done", workdir / "ready"
        deadline = time.monotonic() + timeout
        cpu_start: tuple[int, float, list[int], float] | None = None
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{(workdir / 'worker.out').read_text()}")
            if cpu_start is None and ready.exists():
                main = _worker_pid(proc.pid) if wrap else proc.pid
                pool = _children(main)
                cpu_start = (main, _cpu_seconds(main), pool, sum(map(_cpu_seconds, pool)))
            if done.exists() and done.stat().st_size >= tasks and ready.exists():
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {tasks} tasks")
            time.sleep(0.02)
        main_cpu = pool_cpu = float("nan")
        if cpu_start is not None:
            main_cpu = _cpu_seconds(cpu_start[0]) - cpu_start[1]
            pool_cpu = sum(map(_cpu_seconds, cpu_start[2])) - cpu_start[3]
        finished = done.stat().st_mtime_ns / 1e9
        started = float(ready.read_text())
        os.killpg(proc.pid, signal.SIGTERM) if wrap else proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc = None
        with open(logfile, "rb") as fh:
            lines = sum(1 for _ in fh)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for name in ("worker.log", "worker.out"):
                shutil.copy(workdir / name, keep / name)
        return Run(mode, tasks, finished - started, lines, main_cpu, pool_cpu,
                   logfile.stat().st_size, setup.name)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _worker_pid(pid: int) -> int:
    """The worker under a wrapping command (``strace``): the wrapper's only child."""
    children = _children(pid)
    return children[0] if len(children) == 1 else pid


def run(tasks: int | None = None, repeats: int = 2, broker: str = "redis",
        setups: Sequence[Setup] = SETUPS) -> list[Summary]:
    """For each setup, alternate its modes ``repeats`` times; a summary per setup and mode.

    ``tasks``: tasks per run for every setup (default: each setup's own).
    """
    summaries = {(s.name, mode): Summary(mode, setup=s.name) for s in setups for mode in s.modes}
    redis = None
    tmp = Path(tempfile.mkdtemp(prefix="logkit-bench-redis-"))
    try:
        if broker == "redis":
            redis = Redis(tmp)
        for r in range(repeats):
            for s in setups:
                order = s.modes if r % 2 == 0 else tuple(reversed(s.modes))
                for mode in order:
                    summaries[(s.name, mode)].runs.append(
                        run_once(mode, tasks or s.tasks, setup=s, broker=broker, redis=redis))
    finally:
        if redis is not None:
            redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return list(summaries.values())


def _per_task_us(run: Run, cpu: float) -> float:
    return cpu / run.tasks * 1e6


def cpu_per_task(summary: Summary) -> float:
    """CPU µs per task of all the worker's processes (main + pool), median of the runs."""
    return summary.median(lambda r: _per_task_us(r, r.main_cpu + r.pool_cpu))


def bytes_per_task(summary: Summary) -> float:
    """Bytes of the log file per task (startup and shutdown lines included), median."""
    return summary.median(lambda r: r.log_bytes / r.tasks)


def bytes_per_line(summary: Summary) -> float:
    """Bytes of the log file per line, median of the runs (0 for an empty log)."""
    return summary.median(lambda r: r.log_bytes / r.log_lines if r.log_lines else 0.0)


def render(summaries: list[Summary], broker: str = "filesystem") -> str:
    """Markdown tables, one per setup: tasks/s per mode (median of the runs), ratio to
    Celery's logging at INFO, CPU per task of each process kind and of the whole worker
    against Celery's, log lines per task, and the log's bytes per line and per task
    against Celery's own text."""
    out: list[str] = []
    for setup in SETUPS:
        rows = {s.mode: s for s in summaries if s.setup == setup.name and s.runs}
        if CELERY not in rows:
            continue
        base = rows[CELERY]
        tasks = base.runs[0].tasks
        base_bytes = bytes_per_task(base)
        out += [
            f"#### worker throughput, {setup.name}: {tasks} tiny tasks, prefork -c 2, "
            f"{broker} broker, {setup.describe()}",
            "",
            "| logging | tasks/s (median) | runs (tasks/s) | ratio | main process CPU µs/task "
            "| pool CPU µs/task | worker CPU/task ratio | log lines/task | bytes/line "
            "| bytes/task | bytes/task ratio |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for mode in MODES:
            s = rows.get(mode)
            if s is None:
                continue
            runs = ", ".join(f"{r.rate:.0f}" for r in s.runs)
            per_task = statistics.mean(r.log_lines / r.tasks for r in s.runs)
            main = s.median(lambda r: _per_task_us(r, r.main_cpu))
            pool = s.median(lambda r: _per_task_us(r, r.pool_cpu))
            cpu = cpu_per_task(s) / cpu_per_task(base)
            size, volume = bytes_per_line(s), bytes_per_task(s)
            written = per_task >= 0.5  # the floor writes no task lines
            out.append(
                f"| {mode} | {s.median_rate:.0f} | {runs} | "
                f"{s.median_rate / base.median_rate:.2f}{TIMES} | {main:.0f} | {pool:.0f} | "
                f"{cpu:.3f}{TIMES} | {per_task:.1f} | {f'{size:.0f}' if written else '—'} | "
                f"{f'{volume:.0f}' if written else '—'} | "
                f"{f'{volume / base_bytes:.2f}{TIMES}' if written else '—'} |")
        out.append("")
    out += [
        "CPU columns: user + system time of the worker's main process and of its pool "
        "processes from `worker_ready` to the last task, per task (medians of the runs; "
        "clock ticks of 10 ms, so a few µs of resolution at these counts); the worker's "
        "ratio is main + pool against Celery's logging. The main process (reading the "
        "broker, writing `task_received`, feeding the pool) is what limits the rate. "
        "Bytes: the log file's size over its lines and over the tasks (startup and "
        "shutdown lines included: a fraction of a byte per task at these counts), medians "
        "of the runs; the bytes/task ratio is to Celery's own text in the same setup: what "
        "a log backend ingests (and bills) for the same work.",
    ]
    return "\n".join(out) + "\n"
