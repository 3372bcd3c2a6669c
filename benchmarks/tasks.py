"""Per-task cost as a user meets it: each variant in a fresh interpreter, alternating.

One child process per variant per round (``python -m benchmarks.tasks VARIANT N``)
sets up its logging exactly as a user's process would, runs ``N`` calls after a
warm-up and reports the CPU time of its own process per call
(``time.process_time``) and the wall time. The parent alternates the variants
(A B C ... then reversed), so a slow spell of the shared machine touches every
variant; figures are medians over the rounds, with min-max spread.

Variants (an empty task; results are not stored):

* **celery logging** -- ``app.log.setup(loglevel="INFO", logfile=/dev/null)``;
  an eager ``apply()`` writes one line at INFO, Celery's "Task x[id] succeeded in
  0.0001s: None" (eager tasks are not *received*, so no "Received task" line);
* **logkit json (context + events)** -- ``logkit.install(app, format="json")`` and
  ``logkit.configure(loglevel="INFO", logfile=/dev/null, format="json", app=app)``:
  context bound in ``task_prerun``/``task_postrun`` and the default events at INFO,
  i.e. one ``task_succeeded`` line (``task_started`` is DEBUG), Celery's success
  line not built;
* **logkit json, context only (events=False)** -- the same with ``events=False``:
  Celery's own success line, with the task context, through logkit's JSON formatter;
* **logkit json + Celery's lines (celery_lines=True)** -- the events *and* Celery's own
  success line (two lines per task): what keeping Celery's records for code that
  listens to ``celery.app.trace`` costs;
* **publish** -- ``task.apply_async()`` to kombu's filesystem transport, without
  logkit, and with logkit installed and a context bound (``request_id``, ``user``:
  propagated in the task's headers by ``before_task_publish``);
* **the floors** -- Celery's own logging with receivers that do nothing connected to
  the signals logkit needs (``task_prerun`` and ``task_postrun``; ``before_task_publish``):
  what any library binding task context through Celery's signals pays before doing
  anything, since Celery skips a signal's dispatch only when nothing is connected.

Why not swap states inside one process (the method this suite used before)? See
``docs/benchmarks.md``: the figures differ from fresh processes for reasons that have
nothing to do with what a user runs.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .timing import TIMES

REPO_ROOT = Path(__file__).resolve().parent.parent

CELERY = "celery logging"
EVENTS = "logkit json (context + events)"
CONTEXT = "logkit json, context only (events=False)"
CELERY_LINES = "logkit json + Celery's lines (celery_lines=True)"
PUBLISH_PLAIN = "apply_async, no logkit"
PUBLISH_LOGKIT = "apply_async, logkit installed, context bound"
#: The floors: what connecting any receiver to the signals logkit uses costs, with
#: Celery's own logging and receivers that do nothing.
SIGNALS_FLOOR = "celery logging + no-op task_prerun/task_postrun receivers"
PUBLISH_FLOOR = "apply_async, no logkit, a no-op before_task_publish receiver"
#: The variants that publish (``apply_async``) instead of running the task (``apply``).
PUBLISHING = (PUBLISH_PLAIN, PUBLISH_LOGKIT, PUBLISH_FLOOR)

#: Groups of variants measured together: (title, variants; the first is the baseline).
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # after the floor: a cost shown, no target (benchmarks/__main__.py's _per_task_targets)
    ("empty task, task.apply()", (CELERY, EVENTS, CONTEXT, SIGNALS_FLOOR, CELERY_LINES)),
    ("publishing, task.apply_async() to the filesystem transport",
     (PUBLISH_PLAIN, PUBLISH_LOGKIT, PUBLISH_FLOOR)),
)


# ---------------------------------------------------------------------------
# The child: one variant, one process
# ---------------------------------------------------------------------------


def make_app(broker: str = "memory://", options: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """An app with one empty task (results are not stored)."""
    from celery import Celery

    app = Celery("bench_tasks", broker=broker, set_as_current=False)
    app.conf.task_ignore_result = True
    app.conf.worker_redirect_stdouts = False  # keep print() on the terminal
    if options:
        app.conf.broker_transport_options = options

    @app.task(name="bench.noop")
    def noop() -> None:
        return None

    return app, noop


def _no_op(**_: Any) -> None:
    """A signal receiver that does nothing (the floor variants)."""


def setup(variant: str, logfile: str = os.devnull, broker: str = "memory://",
          options: dict[str, Any] | None = None) -> Any:
    """Set up a process's logging as ``variant`` does; return the task."""
    app, task = make_app(broker, options)
    if variant in (CELERY, PUBLISH_PLAIN, SIGNALS_FLOOR, PUBLISH_FLOOR):
        app.log.setup(loglevel="INFO", logfile=logfile)
        if variant in (SIGNALS_FLOOR, PUBLISH_FLOOR):
            from celery import signals

            names = ("task_prerun", "task_postrun") if variant == SIGNALS_FLOOR \
                else ("before_task_publish",)
            for name in names:
                getattr(signals, name).connect(_no_op, weak=False, dispatch_uid="bench.no_op")
        return task
    import logkit

    options = {CONTEXT: {"events": False}, CELERY_LINES: {"celery_lines": True}}
    logkit.install(app, format="json", **options.get(variant, {}))
    logkit.configure(loglevel="INFO", logfile=logfile, format="json", app=app)
    if variant == PUBLISH_LOGKIT:
        logkit.bind(request_id="req-5f1c2a", user="alice")
    return task


def call_of(variant: str, tmp: str) -> Any:
    """The call ``variant`` measures, set up: ``task.apply`` (in-memory broker), or
    ``task.apply_async`` to kombu's filesystem transport, every folder of it in ``tmp``."""
    if variant not in PUBLISHING:
        return setup(variant).apply
    options = {"data_folder_in": tmp, "data_folder_out": tmp, "control_folder": tmp,
               "store_processed": False}
    return setup(variant, broker="filesystem://", options=options).apply_async


def child(variant: str, calls: int, warmup: int, blocks: int = 20) -> dict[str, float]:
    """Run ``calls`` calls of ``variant`` in this process, in ``blocks`` timed blocks.

    Returns the CPU µs per call of this process (``time.process_time``) in its best
    block (as ``timeit`` advises: on a shared machine a spell of contention -- another
    process on the sibling core, cache thrash -- slows a block, never speeds one up)
    and over all calls, and the wall µs per call over all calls.
    """
    per_block = max(1, calls // blocks)
    with tempfile.TemporaryDirectory() as tmp:
        call = call_of(variant, tmp)
        for _ in range(warmup):
            call()
        gc.collect()  # the collector stays on: a user's process has it on
        cpu: list[float] = []
        wall0 = time.perf_counter()
        for _ in range(blocks):
            cpu0 = time.process_time()
            for _ in range(per_block):
                call()
            cpu.append(time.process_time() - cpu0)
        wall = time.perf_counter() - wall0
    n = per_block * blocks
    return {"cpu_us": min(cpu) / per_block * 1e6, "cpu_all_us": sum(cpu) / n * 1e6,
            "wall_us": wall / n * 1e6}


# ---------------------------------------------------------------------------
# The parent: alternating fresh processes
# ---------------------------------------------------------------------------


@dataclass
class Variant:
    """µs per call of one variant, one sample per round (fresh process): CPU in the
    process's best block, CPU over all its calls, wall time over all its calls."""

    name: str
    cpu_us: list[float] = field(default_factory=list)
    cpu_all_us: list[float] = field(default_factory=list)
    wall_us: list[float] = field(default_factory=list)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpu_us)

    @property
    def cpu_all(self) -> float:
        return statistics.median(self.cpu_all_us)

    @property
    def wall(self) -> float:
        return statistics.median(self.wall_us)


def _spawn(variant: str, calls: int, warmup: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGKIT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.tasks", variant, str(calls), str(warmup)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode:
        raise RuntimeError(f"{variant!r} failed:\n{proc.stderr}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run(rounds: int = 9, calls: int = 4000, warmup: int = 300) -> dict[str, list[Variant]]:
    """Every group's variants, one fresh process each per round, alternating order."""
    out: dict[str, list[Variant]] = {}
    for title, names in GROUPS:
        variants = [Variant(name) for name in names]
        for r in range(rounds):
            for v in variants if r % 2 == 0 else variants[::-1]:
                sample = _spawn(v.name, calls, warmup)
                v.cpu_us.append(sample["cpu_us"])
                v.cpu_all_us.append(sample["cpu_all_us"])
                v.wall_us.append(sample["wall_us"])
        out[title] = variants
    return out


def paired(v: Variant, base: Variant) -> float:
    """Median over the rounds of ``v / base`` (CPU), the two measured back to back."""
    return statistics.median(a / b for a, b in zip(v.cpu_us, base.cpu_us, strict=True))


def render(results: dict[str, list[Variant]]) -> str:
    """Markdown tables: CPU µs per call (median over the processes, min-max), ratios."""
    out = []
    for title, variants in results.items():
        base = variants[0]
        lines = [
            f"#### {title}",
            "",
            f"{len(base.cpu_us)} fresh processes per variant, alternating. CPU: the process's "
            "own CPU time per call in its best block of calls, median over the processes "
            "(min-max); all calls: CPU per call over all its timed calls; wall: wall time "
            "per call over all its timed calls.",
            "",
            "| case | CPU µs/call | min-max | CPU all calls | wall µs/call | ratio (CPU) "
            "| paired ratio |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for v in variants:
            lines.append(
                f"| {v.name} | {v.cpu:.1f} | {min(v.cpu_us):.1f}-{max(v.cpu_us):.1f} | "
                f"{v.cpu_all:.1f} | {v.wall:.1f} | {v.cpu / base.cpu:.3f}{TIMES} | "
                f"{paired(v, base):.3f}{TIMES} |"
            )
        extra = [f"- {v.name}: {v.cpu - base.cpu:+.1f} µs/call "
                 f"({(v.cpu / base.cpu - 1) * 100:+.1f}% of {base.name}; all calls: "
                 f"{(v.cpu_all / base.cpu_all - 1) * 100:+.1f}%)" for v in variants[1:]]
        out.append("\n".join(lines) + "\n\n" + "\n".join(extra) + "\n")
    return "\n".join(out)


def sample_output(variant: str = EVENTS) -> list[str]:
    """What one ``apply()`` writes in a measured state (a temporary file, not /dev/null)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sample.log")
        setup(variant, logfile=path).apply()
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()


if __name__ == "__main__":
    name, n, warm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(child(name, n, warm)))
