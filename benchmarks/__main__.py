"""``python -m benchmarks [--quick] [--only formatters|tasks|worker] [--rounds N] [--tasks N]``.

Prints markdown tables; ``--write-results`` also rewrites ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

from . import formatters, machine, tasks, worker

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SUITES = ("formatters", "tasks", "worker")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="few rounds and 500 tasks: a smoke run, not figures to quote")
    parser.add_argument("--only", choices=SUITES, action="append",
                        help="run only this benchmark (repeatable)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per table")
    parser.add_argument("--loops", type=int, help="calls per case per round (formatters)")
    parser.add_argument("--tasks", type=int, help="tasks per worker run (default 5000)")
    parser.add_argument("--repeats", type=int,
                        help="worker runs per logging mode, alternated (default 2)")
    parser.add_argument("--broker", choices=("filesystem", "redis"), default="filesystem",
                        help="broker of the worker benchmark (default: kombu filesystem)")
    parser.add_argument("--write-results", action="store_true",
                        help=f"rewrite {RESULTS.name} with the machine and these figures")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks, print their tables; return the exit code."""
    args = parse_args(argv)
    only = args.only or list(SUITES)
    quick = args.quick
    rounds = args.rounds or (5 if quick else 40)
    sections: list[str] = []

    def emit(text: str) -> None:
        print(text, flush=True)
        sections.append(text)

    started = time.monotonic()
    if "formatters" in only:
        loops = args.loops or (200 if quick else 2000)
        emit("### Formatters (same record: 2 args, 3 extra fields, 6 context fields)\n")
        emit(formatters.render(formatters.run(rounds=rounds, loops=loops)))
    if "tasks" in only:
        emit("### Per-task overhead\n")
        emit(tasks.render(tasks.run(rounds=rounds, loops=args.loops or (50 if quick else 300))))
    if "worker" in only:
        n = args.tasks or (500 if quick else 5000)
        repeats = args.repeats or (1 if quick else 2)
        emit("### Worker throughput\n")
        emit(worker.render(worker.run(tasks=n, repeats=repeats, broker=args.broker),
                           args.broker))
    elapsed = time.monotonic() - started
    print(f"(ran in {elapsed:.0f} s)", file=sys.stderr)
    if args.write_results:
        write_results(sections, argv if argv is not None else sys.argv[1:])
    return 0


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
        "Method: every table is measured in one process, all its cases interleaved "
        "(A B C ... A B C ...) for many rounds; figures are medians of the per-call time "
        "over the rounds, with the interquartile range; ratios are to the table's first row. "
        "See `benchmarks/__init__.py`.",
        "",
    ]
    RESULTS.write_text("\n".join(head) + "\n" + "\n".join(sections), encoding="utf-8")
    print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
