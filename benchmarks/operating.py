"""What ``task_buffer`` and ``dedupe_window`` cost (#29), side by side, in one run.

``python -m benchmarks.operating [--rounds R] [--calls N] [--no-valgrind] [--only TEXT]``

Every variant runs in a fresh interpreter (the buffer and the folds are per-process
state), set up as a user's process is: ``logkit.install(app, format="json", ...)`` and
``logkit.configure(loglevel="INFO", logfile=/dev/null, ...)``. Two measures:

* **CPU time** of the child's own process (``time.process_time``), best of 20 blocks,
  median over ``R`` alternating rounds (A B C ... then reversed);
* **instructions** counted by ``valgrind --tool=callgrind``: two runs with ``N1`` and
  ``N2`` calls after the same warm-up, ``(count(N2) - count(N1)) / (N2 - N1)`` per call
  (start-up and set-up subtracted out); exact on a noisy machine.

Per task (``task.apply()``, eager, -l INFO):

* a task logging 10 DEBUG lines, buffer off (the baseline: 10 level checks), and the
  same with ``task_buffer=50`` (10 records made and kept, then dropped: it succeeds);
* an empty task, buffer off, and with ``task_buffer=50`` (what the buffer costs a task
  that logs nothing below the level).

Per task with ``task_sample`` (#38; a task logging 3 INFO lines and 2 DEBUG lines,
``task_buffer=50``, its id chosen in or outside a sample of 0.1):

* the buffer alone (the baseline), with ``task_sample=1`` said outright (off: nothing
  is put on), and with ``task_sample=0.1`` for a workflow in the sample (the decision
  and the filter, every line written) and for one outside it (its lines held, then
  dropped: it succeeds).

Per record (``logger.warning()`` through logkit's JSON handler to ``/dev/null``):

* folding off (the baseline), on with every record written (a window so short each
  repeat opens a new one: the whole bookkeeping, no saving), and on with repeats folded
  (a 60 s window: counted, not written).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMES = "\u00d7"

TASK_DEBUG_OFF = "task logging 10 DEBUG lines, -l INFO, buffer off"
TASK_DEBUG_ON = "task logging 10 DEBUG lines, -l INFO, task_buffer=50"
TASK_EMPTY_OFF = "empty task, buffer off"
TASK_EMPTY_ON = "empty task, task_buffer=50"
RECORD_OFF = "logger.warning(), dedupe off"
RECORD_ON = "logger.warning(), dedupe_window on, every record written"
RECORD_FOLDED = "logger.warning(), dedupe_window=60, repeats folded (not written)"
RECORD_NEW = ("logger.warning(), dedupe_window=60, a new message every record "
              "(10,000 windows open, the oldest closed early)")

SAMPLE_BUFFER = "task logging 3 INFO + 2 DEBUG lines, task_buffer=50 (sampling off)"
SAMPLE_ONE = "the same, task_sample=1 (off)"
SAMPLE_IN = "the same, task_sample=0.1, a workflow in the sample (every line written)"
SAMPLE_OUT = "the same, task_sample=0.1, a workflow outside it (held, then dropped)"

GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("per task, task.apply()", (TASK_DEBUG_OFF, TASK_DEBUG_ON, TASK_EMPTY_OFF, TASK_EMPTY_ON)),
    ("per task with task_sample, task.apply()",
     (SAMPLE_BUFFER, SAMPLE_ONE, SAMPLE_IN, SAMPLE_OUT)),
    ("per record, JSON to /dev/null", (RECORD_OFF, RECORD_ON, RECORD_FOLDED, RECORD_NEW)),
)
_OPTIONS: dict[str, dict[str, Any]] = {
    TASK_DEBUG_OFF: {}, TASK_DEBUG_ON: {"task_buffer": 50},
    TASK_EMPTY_OFF: {}, TASK_EMPTY_ON: {"task_buffer": 50},
    SAMPLE_BUFFER: {"task_buffer": 50}, SAMPLE_ONE: {"task_buffer": 50, "task_sample": 1.0},
    SAMPLE_IN: {"task_buffer": 50, "task_sample": 0.1},
    SAMPLE_OUT: {"task_buffer": 50, "task_sample": 0.1},
    RECORD_OFF: {}, RECORD_ON: {"dedupe_window": 1e-9}, RECORD_FOLDED: {"dedupe_window": 60},
    RECORD_NEW: {"dedupe_window": 60},
}
#: Each row's ratio is against this row (default: the first of its group).
_BASE = {TASK_EMPTY_OFF: TASK_EMPTY_OFF, TASK_EMPTY_ON: TASK_EMPTY_OFF}
N1, N2 = 100, 600


# ---------------------------------------------------------------------------
# The child: one variant, one process
# ---------------------------------------------------------------------------


def call_of(variant: str) -> Any:
    """Set this process up as ``variant``; return the call it measures."""
    import logging

    from celery import Celery

    import logkit

    app = Celery("bench_operating", broker="memory://")
    app.conf.task_ignore_result = True
    app.conf.task_store_eager_result = False
    lib = logging.getLogger("bench.lib")

    @app.task(name="bench.debug")  # type: ignore[misc]
    def debug_task() -> None:
        for i in range(10):
            lib.debug("step %d of the work", i)

    @app.task(name="bench.empty")  # type: ignore[misc]
    def empty_task() -> None:
        return None

    @app.task(name="bench.sampled")  # type: ignore[misc]
    def sampled_task(n: int) -> None:
        lib.info("order %s: charging", n)
        lib.debug("card %s", "4242")
        lib.info("order %s: charged %s", n, 12.5)
        lib.debug("receipt queued")
        lib.info("order %s: done", n)

    logkit.install(app, format="json", **_OPTIONS[variant])
    logkit.configure(loglevel="INFO", logfile=os.devnull, format="json", app=app)
    if variant in (TASK_DEBUG_OFF, TASK_DEBUG_ON):
        return debug_task.apply
    if variant in (TASK_EMPTY_OFF, TASK_EMPTY_ON):
        return empty_task.apply
    if variant in (SAMPLE_BUFFER, SAMPLE_ONE, SAMPLE_IN, SAMPLE_OUT):
        # root ids in (or, for SAMPLE_OUT, outside) a sample of 0.1: every variant runs
        # the same ids-given call; the ids differ only in where they fall
        inside = variant != SAMPLE_OUT
        ids = [i for i in (f"bench-{n:08d}" for n in range(200000))
               if logkit.sampled(i, 0.1) == inside][:1000]
        turn = iter(range(1 << 62))
        apply = sampled_task.apply

        def sampled() -> None:
            n = next(turn)
            apply((n,), task_id=ids[n % 1000])

        return sampled
    warning = lib.warning
    if variant == RECORD_NEW:  # 20,000 templates in turn: each record opens a window
        templates = [f"connection {i} to %s refused" for i in range(20000)]
        turn = iter(range(1 << 62))

        def new_record() -> None:
            warning(templates[next(turn) % 20000], "db-1", extra={"attempt": 3})

        for _ in range(10000):  # set up: every window open, as after a while
            new_record()
        return new_record

    def record() -> None:
        warning("connection to %s refused", "db-1", extra={"attempt": 3})

    return record


def child(variant: str, calls: int, warmup: int = 300, blocks: int = 20) -> float:
    """CPU µs per call of this process, best of ``blocks`` blocks."""
    import gc

    call = call_of(variant)
    for _ in range(warmup):
        call()
    gc.collect()
    per_block = max(1, calls // blocks)
    best = float("inf")
    for _ in range(blocks):
        cpu0 = time.process_time()
        for _ in range(per_block):
            call()
        best = min(best, time.process_time() - cpu0)
    return best / per_block * 1e6


def counted_child(variant: str, calls: int) -> None:
    call = call_of(variant)
    for _ in range(50 + calls):
        call()


# ---------------------------------------------------------------------------
# The parent
# ---------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGKIT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
    env["PYTHONHASHSEED"] = "0"  # the same dict/set layouts in every run (exact counts)
    return env


def _spawn(variant: str, calls: int) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.operating", "--child", variant, str(calls)],
        cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, check=True, timeout=900,
    ).stdout
    return float(out.strip().splitlines()[-1])


def _instructions(variant: str, calls: int) -> int:
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         "-m", "benchmarks.operating", "--counted", variant, str(calls)],
        cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=1800,
    )
    match = re.search(r"Collected\s*:\s*(\d+)", proc.stderr)
    if proc.returncode or match is None:
        raise RuntimeError(f"{variant!r} failed under valgrind:\n{proc.stderr[-2000:]}")
    return int(match.group(1))


def _groups(only: list[str] | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The tables whose title contains one of ``only`` (every table: ``None``)."""
    return tuple(g for g in GROUPS if not only or any(o in g[0] for o in only))


def run(rounds: int, calls: int, valgrind: bool,
        only: list[str] | None = None) -> dict[str, dict[str, float]]:
    """``{variant: {"cpu_us": median, "cpu_min": .., "cpu_max": .., "instructions": ..}}``."""
    variants = [v for _, names in _groups(only) for v in names]
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(rounds):
        for v in variants if r % 2 == 0 else list(reversed(variants)):
            scale = 10 if v.startswith("logger") else 1
            cpu[v].append(_spawn(v, calls * scale))
    out: dict[str, dict[str, float]] = {
        v: {"cpu_us": statistics.median(c), "cpu_min": min(c), "cpu_max": max(c)}
        for v, c in cpu.items()
    }
    if valgrind and shutil.which("valgrind"):
        from concurrent.futures import ThreadPoolExecutor

        def per_call(v: str) -> float:
            scale = 10 if v.startswith("logger") else 1
            low = _instructions(v, N1 * scale)
            high = _instructions(v, N2 * scale)
            return (high - low) / ((N2 - N1) * scale)

        with ThreadPoolExecutor(max_workers=2) as pool:  # counts do not depend on it
            for v, count in zip(variants, pool.map(per_call, variants), strict=True):
                out[v]["instructions"] = count
    return out


def render(results: dict[str, dict[str, float]]) -> str:
    lines = []
    for title, names in GROUPS:
        if not all(name in results for name in names):
            continue
        lines += [f"#### {title}", "",
                  "| case | instructions/call | ratio | CPU µs/call (median, min-max) | ratio |",
                  "|---|---:|---:|---:|---:|"]
        for name in names:
            base = _BASE.get(name, names[0])
            r, b = results[name], results[base]
            ins = r.get("instructions")
            ins_text = f"{ins:,.0f}" if ins is not None else "n/a"
            ins_ratio = (f"{ins / b['instructions']:.3f}{TIMES}"
                         if ins is not None and b.get("instructions") else "n/a")
            cpu_ratio = r["cpu_us"] / b["cpu_us"]
            lines.append(
                f"| {name} | {ins_text} | {ins_ratio} | {r['cpu_us']:.1f} "
                f"({r['cpu_min']:.1f}-{r['cpu_max']:.1f}) | {cpu_ratio:.3f}{TIMES} |"
            )
        lines.append("")
    lines.append("Ratios: each row against the first of its table (the empty task with the "
                 "buffer against the empty task with it off).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.operating", description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--no-valgrind", action="store_true")
    parser.add_argument("--only", action="append", metavar="TEXT",
                        help="only the tables whose title contains TEXT (repeatable), e.g. "
                        "--only task_sample")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--counted", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = child(args.child[0], int(args.child[1]))
        os.write(1, f"{result}\n".encode())  # sys.stdout is redirected to the log (Celery's way)
        return
    if args.counted:
        counted_child(args.counted[0], int(args.counted[1]))
        return
    print(render(run(args.rounds, args.calls, not args.no_valgrind, args.only)))


if __name__ == "__main__":
    main()
