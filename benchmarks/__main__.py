"""``python -m benchmarks [--quick] [--only formatters|tasks|instructions|worker|memory] ...``.

Prints markdown tables; ``--write-results`` also rewrites ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import formatters, instructions, machine, memory, tasks, worker
from .timing import TIMES, Result

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SUITES = ("formatters", "tasks", "instructions", "worker", "memory")
#: Not run unless asked for (--only memory): 4 worker runs of 50,000 tasks. The
#: instruction counts need valgrind and are left out of --quick runs.
DEFAULT_SUITES = ("formatters", "tasks", "instructions", "worker")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="few rounds and few tasks: a smoke run, not figures to quote")
    parser.add_argument("--only", choices=SUITES, action="append",
                        help="run only this benchmark (repeatable)")
    parser.add_argument("--rounds", type=int,
                        help="interleaved rounds per table (default 40, 5 with --quick); for "
                        "tasks: fresh processes per variant (default 15, 2 with --quick)")
    parser.add_argument("--loops", type=int,
                        help="calls per case per round (default 2000 for formatters; 200 with "
                        "--quick); for tasks: calls per fresh process (default 4000, 400 with "
                        "--quick)")
    parser.add_argument("--tasks", type=int,
                        help="tasks per worker run (default: 6000 for the light setup, 20000 "
                        "for the one with results; 300 with --quick; memory: 50000)")
    parser.add_argument("--repeats", type=int,
                        help="worker runs per logging mode, alternated (default 3)")
    parser.add_argument("--broker", choices=("filesystem", "redis"), default="redis",
                        help="broker of the worker benchmark (default: a private redis-server)")
    parser.add_argument("--pool", choices=memory.POOLS, action="append",
                        help="pools of the memory benchmark (repeatable; default both)")
    parser.add_argument("--child-json", help=argparse.SUPPRESS)
    parser.add_argument("--write-results", action="store_true",
                        help=f"rewrite {RESULTS.name} with the machine and these figures")
    return parser.parse_args(argv)


def _run_suite(suite: str, args: argparse.Namespace) -> Any:
    """Run one suite in this process; return its raw results."""
    quick = args.quick
    rounds = args.rounds or (5 if quick else 40)
    if suite == "formatters":
        return formatters.run(rounds=rounds, loops=args.loops or (200 if quick else 2000))
    if suite == "tasks":
        return tasks.run(rounds=args.rounds or (2 if quick else 15),
                         calls=args.loops or (400 if quick else 4000),
                         warmup=30 if quick else 300)
    if suite == "instructions":
        return instructions.run()
    if suite == "memory":
        return memory.run(tasks=args.tasks or (500 if quick else 50_000),
                          pools=tuple(args.pool or memory.POOLS))
    return worker.run(tasks=args.tasks or (300 if quick else None),
                      repeats=args.repeats or (1 if quick else 3), broker=args.broker)


def _dump(results: Any) -> Any:
    if isinstance(results, dict):
        return {title: [dataclasses.asdict(r) for r in rows] for title, rows in results.items()}
    if results and isinstance(results[0], memory.MemoryRun):
        return [dataclasses.asdict(r) for r in results]
    return [{"mode": s.mode, "setup": s.setup, "runs": [dataclasses.asdict(r) for r in s.runs]}
            for s in results]


def _load(suite: str, data: Any) -> Any:
    if suite == "memory":
        return [memory.MemoryRun(r["pool"], r["mode"], r["tasks"],
                                 [tuple(s) for s in r["samples"]]) for r in data]
    if suite == "worker":
        return [worker.Summary(s["mode"], [worker.Run(**r) for r in s["runs"]], s["setup"])
                for s in data]
    if suite == "tasks":
        return {title: [tasks.Variant(**r) for r in rows] for title, rows in data.items()}
    if suite == "instructions":
        return {title: [instructions.Count(**r) for r in rows] for title, rows in data.items()}
    return {title: [Result(**r) for r in rows] for title, rows in data.items()}


def _in_subprocess(suite: str, argv: list[str]) -> Any:
    """Run ``suite`` in a fresh interpreter (each suite configures logging process-wide)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.json"
        passed = [a for a in argv if a != "--write-results"]
        cmd = [sys.executable, "-m", "benchmarks", *_without_only(passed), "--only", suite,
               "--child-json", str(out)]
        subprocess.run(cmd, check=True)
        return _load(suite, json.loads(out.read_text(encoding="utf-8")))


def _without_only(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--only":
            skip = True
        elif not arg.startswith("--only="):
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks, print their tables; return the exit code.

    Each suite runs in its own interpreter: the formatter suite configures logkit
    process-wide, which must not leak into the per-task suite's "Celery only" state.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    only = args.only or list(DEFAULT_SUITES)
    if args.child_json:
        (suite,) = only
        Path(args.child_json).write_text(json.dumps(_dump(_run_suite(suite, args))),
                                         encoding="utf-8")
        return 0
    sections: list[str] = []

    def emit(text: str) -> None:
        print(text, flush=True)
        sections.append(text)

    started = time.monotonic()
    fmt_results = task_results = worker_results = None
    if "formatters" in only:
        fmt_results = _in_subprocess("formatters", argv)
        emit("### Formatters (same record: 2 args, 3 extra fields, 6 context fields)\n")
        emit(formatters.render(fmt_results))
    if "tasks" in only:
        task_results = _in_subprocess("tasks", argv)
        emit("### Per-task cost (fresh processes)\n")
        emit(tasks.render(task_results))
    counts = None
    if "instructions" in only:
        if args.quick and not args.only:
            print("(instruction counts: left out of --quick; --only instructions runs them)",
                  file=sys.stderr)
        elif not instructions.available():
            print("(instruction counts: skipped, valgrind is not installed)", file=sys.stderr)
        else:
            counts = _in_subprocess("instructions", argv)
            emit("### CPU instructions per call (valgrind; fresh processes)\n")
            emit(instructions.render(counts))
    if "worker" in only:
        worker_results = _in_subprocess("worker", argv)
        emit("### Worker throughput\n")
        emit(worker.render(worker_results, args.broker))
    if "memory" in only:
        emit("### Worker memory over time\n")
        emit(memory.render(_in_subprocess("memory", argv)))
    summary = targets(fmt_results, task_results, worker_results, counts)
    if summary:
        sections.insert(0, summary)
        print(summary, flush=True)
    elapsed = time.monotonic() - started
    print(f"(ran in {elapsed:.0f} s)", file=sys.stderr)
    if args.write_results:
        write_results(sections, argv)
    return 0


def _median(rows: list[Result], name: str) -> float:
    return next(r.median_ns for r in rows if r.name == name)


def _per_task_targets(groups: dict[str, list[Any]], measure: str, value: Callable[[Any], float],
                      digits: int, how: str) -> list[tuple[str, str, float, bool]]:
    """The per-task and publish targets of :mod:`benchmarks.tasks`'s groups, measured by
    ``value`` (CPU µs, instructions), each row naming its group's floor."""
    lines = []
    for (title, _), goals in zip(tasks.GROUPS, ((1.02, 1.02), (1.02,)), strict=True):
        base, *measured = groups[title]
        floor = measured[len(goals)] if len(measured) > len(goals) else None
        note = (f"; floor, {floor.name}: {value(floor) / value(base):.{digits}f}{TIMES}"
                if floor is not None else "")
        kind = "per-task" if title == tasks.GROUPS[0][0] else "publish"
        for row, goal in zip(measured, goals, strict=False):
            ratio = value(row) / value(base)
            lines.append((f"{kind} {measure}, {row.name} / {base.name}{how}{note}",
                          f"≤ {goal:.2f}{TIMES}", ratio, ratio <= goal))
    return lines


def _worker_targets(setup: worker.Setup, summaries: list[worker.Summary]
                    ) -> list[tuple[str, str, float, bool | None]]:
    """The worker's targets in one setup: tasks/s against Celery's logging (#28), bytes per
    task against Celery's own text (#37) and, in #37's worker (``light``), parity of the
    whole worker's CPU per task and tasks/s (#37)."""
    rows = {s.mode: s for s in summaries}
    celery, logkit = rows.get(worker.CELERY), rows.get(worker.LOGKIT)
    if celery is None or logkit is None:
        return []
    lines: list[tuple[str, str, float, bool | None]] = []
    ratio = logkit.median_rate / celery.median_rate
    floor = rows.get(worker.FLOOR)
    note = (f"; floor, Celery at WARNING: {floor.median_rate / celery.median_rate:.2f}{TIMES}"
            if floor else "")
    what = f"{setup.name} ({setup.describe()})"
    for goal, kind in ((1.0, "required"), (1.25, "the goal")):
        lines.append((f"worker tasks/s, {what}, logkit json / Celery's logging, both at INFO "
                      f"({kind}, #28){note}", f"≥ {goal:g}{TIMES}", ratio, ratio >= goal))
    volume = worker.bytes_per_task(logkit) / worker.bytes_per_task(celery)
    for goal, kind in ((3.0, "required"), (2.5, "the goal")):
        lines.append((f"log bytes per task, {setup.name}, logkit json / Celery's text, both at "
                      f"INFO ({kind}, #37)", f"≤ {goal:g}{TIMES}", volume, volume <= goal))
    if setup.name == "light":
        cpu = worker.cpu_per_task(logkit) / worker.cpu_per_task(celery)
        runs = len(logkit.runs)
        lines.append((f"worker CPU per task (main + pool), light, logkit json / Celery's "
                      f"logging, median of {runs} alternating runs (#37)", f"≤ 1.03{TIMES}",
                      cpu, cpu <= 1.03))
        lines.append((f"worker tasks/s, light, logkit json / Celery's logging, median of "
                      f"{runs} alternating runs (#37)", f"≥ 0.95{TIMES}", ratio, ratio >= 0.95))
    return lines


def _schema_goal(name: str, ratio: float) -> bool | None:
    """A schema's 1.1x of logkit's own JSON; ``None`` (withdrawn) for ``ecs``: #27 set its
    goal against ecs-logging's own formatter instead (at least 5x faster)."""
    return None if name.endswith("ecs") else ratio <= 1.1


def targets(fmt: dict[str, list[Result]] | None, task: dict[str, list[Result]] | None,
            work: list[worker.Summary] | None,
            counts: dict[str, list[instructions.Count]] | None = None) -> str:
    """The issue's targets as ratios from this run, each marked met or not."""
    lines: list[tuple[str, str, float, bool | None]] = []
    if fmt:
        floor, json, pjl = "stdlib Formatter (floor)", "logkit json", \
            "python-json-logger JsonFormatter"
        for title in ("format() of a prebuilt record", "logger.info() to /dev/null"):
            rows = fmt[title]
            ratio = _median(rows, json) / _median(rows, floor)
            lines.append((f"logkit json / stdlib floor, {title}", f"≤ 1.5{TIMES}", ratio,
                          ratio <= 1.5))
            speedup = _median(rows, pjl) / _median(rows, json)
            lines.append((f"python-json-logger JsonFormatter / logkit json, {title}", f"≥ 2{TIMES}",
                          speedup, speedup >= 2))
        rows = fmt["format() of a prebuilt record"]
        if any(r.name == formatters.ECS_LOGGING for r in rows):
            speedup = _median(rows, formatters.ECS_LOGGING) / _median(rows, "logkit json, "
                                                                      "schema=ecs")
            lines.append(("ecs-logging StdlibFormatter / logkit json, schema=ecs, format() of a "
                          "prebuilt record", f"≥ 5{TIMES}", speedup, speedup >= 5))
        rows = fmt["logger.info() to /dev/null"]
        for row in rows:
            if row.name.startswith("logkit json, schema="):
                ratio = row.median_ns / _median(rows, json)
                lines.append((f"{row.name} / logkit json, logger.info() to /dev/null",
                              f"≤ 1.1{TIMES}", ratio, _schema_goal(row.name, ratio)))
        trace_rows = fmt.get("trace lookup (opentelemetry-api installed)") or []
        for row in trace_rows:
            if row.name == "trace lookup, no span current":
                lines.append(("trace lookup, opentelemetry-api installed, no span current "
                              "(µs)", "≤ 0.3 µs", row.median_ns / 1000, row.median_ns <= 300))
        rows = fmt["disabled call (logger.debug at level INFO)"]
        plain = _median(rows, "stdlib logger.debug, plain stdlib (floor)")
        ratio = _median(rows, "stdlib logger.debug, logkit installed") / plain
        noisy = f"≤ 1{TIMES} (±5% noise)"
        lines.append(("disabled stdlib call with logkit / plain stdlib", noisy,
                      ratio, ratio <= 1.05))
        via_logkit = _median(rows, "structlog via logkit")
        lines.append(("disabled structlog call via logkit / plain stdlib call", noisy,
                      via_logkit / plain, via_logkit / plain <= 1.05))
        native = _median(rows, "structlog native filtering bound logger")
        lines.append(("disabled structlog call via logkit / structlog's native filtering logger",
                      noisy, via_logkit / native, via_logkit / native <= 1.05))
    if task:
        lines += _per_task_targets(task, "CPU", lambda v: v.cpu, 2,
                                   " (fresh processes, median of best blocks)")
    if counts:
        lines += _per_task_targets(counts, "instructions", lambda c: c.per_call, 3, "")
        json_i, *schemas_i = counts[instructions.RECORDS]
        for row_i in schemas_i:
            ratio = row_i.per_call / json_i.per_call
            lines.append((f"logger.info() instructions, schema={row_i.name} / logkit json",
                          f"≤ 1.1{TIMES}", ratio, _schema_goal(row_i.name, ratio)))
        peers = {c.name: c.per_call for c in counts.get(instructions.PEERS, [])}
        if peers:
            ratio = peers["logkit"] / peers[instructions.STDLIB]
            lines.append(("logger.info() instructions, logkit json / stdlib plain text",
                          f"≤ 1.2{TIMES}", ratio, ratio <= 1.2))
        formats = {c.name: c.per_call for c in counts.get(instructions.FORMATS, [])}
        if formats:
            speedup = formats[instructions.ECS_LOGGING] / formats["ecs"]
            lines.append(("format() instructions, ecs-logging StdlibFormatter / logkit "
                          "schema=ecs", f"≥ 5{TIMES}", speedup, speedup >= 5))
    for setup in worker.SETUPS if work else ():
        lines += _worker_targets(setup, [s for s in work or ()
                                         if s.setup == setup.name and s.runs])
    if not lines:
        return ""
    out = ["### Targets (ratios from this run)", "",
           "| target | goal | this run | met |", "|---|---|---:|---|"]
    for name, goal, value, met in lines:
        unit = "%" if goal.endswith("%") else (" µs" if goal.endswith("µs") else TIMES)
        verdict = "withdrawn (#27)" if met is None else "yes" if met else "**no**"
        out.append(f"| {name} | {goal} | {value:.2f}{unit} | {verdict} |")
    return "\n".join(out) + "\n"


NOTES = (
    "Reading the targets: the `logger.info()` rows include what every stdlib-based "
    "formatter shares (`LogRecord` creation, caller lookup, handler lock, one write: "
    "about 9-10 µs here), so a formatter 3x faster in `format()` cannot be 2x faster on "
    "the whole call. No structlog logger can match a disabled stdlib call on this call "
    "shape (three keyword arguments to pack): structlog's own no-op filtering logger is "
    "itself above it, so that row is shown next to the stdlib one.",
    "",
    "The per-task tables run each variant in a fresh interpreter (one child process per "
    "variant per round, alternating), as a user's process runs: CPU time of the process "
    "(`time.process_time`) per call in its best block of 200 calls, medians over the "
    "processes, min-max. Like for like at INFO: Celery writes one line per eager `apply()` "
    "(its success line), logkit with events one (`task_succeeded`; `task_started` is DEBUG; "
    "Celery's success line is not built), logkit with `events=False` Celery's line as JSON "
    "with the context (plus its JSON formatting and secret redaction: what that row pays "
    "for). See docs/benchmarks.md for why the in-process method of earlier versions "
    "read lower.",
)


def write_results(sections: list[str], argv: list[str]) -> None:
    """Rewrite RESULTS.md: machine description, command line, the tables."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        "# logkit benchmark results",
        "",
        f"Last run: {now}, `python -m benchmarks {' '.join(argv)}`.",
        "",
        "Machine:",
        "",
        *machine.describe(),
        "",
        "Method: each formatter table is measured in one process, all its cases interleaved "
        "(A B C ... A B C ...) for many rounds; figures are medians of the per-call time "
        "over the rounds, with the interquartile range; ratios are to the table's first row. "
        "Each suite runs in its own interpreter; the per-task suite runs every variant in "
        "fresh interpreters (below). The machine is shared: other work ran during the run, "
        "so absolute µs are higher than on an idle machine; compare within a table. "
        "See `benchmarks/__init__.py` and docs/benchmarks.md.",
        "",
        *NOTES,
        "",
    ]
    RESULTS.write_text("\n".join(head) + "\n" + "\n".join(sections), encoding="utf-8")
    print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
