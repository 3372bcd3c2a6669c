"""CPU instructions per call, counted by valgrind: the per-task and per-record figures
that a shared machine cannot blur.

Time on a shared 2-core machine spreads by 2x between fresh processes of the same
variant (see the per-task tables); an instruction count does not: the same process
doing the same work executes the same instructions, whatever else runs. Each variant
runs in its own fresh interpreter under ``valgrind --tool=callgrind`` twice, with
``N1`` and ``N2`` calls after the same warm-up; ``(count(N2) - count(N1)) / (N2 - N1)``
is the cost of one call with the interpreter's start-up, imports and set-up
subtracted out. Instructions are not time (a cache miss costs more than an add), so
these tables stand next to the timed ones, not instead of them.

Variants: every per-task variant of :mod:`benchmarks.tasks` (set up by its
``setup()``); a whole ``logger.info()`` through logkit's handler to ``/dev/null``
for logkit's own JSON and each schema (the record of :mod:`benchmarks.formatters`:
two args, three ``extra`` fields, six context fields); the same call next to its
peers (the stdlib's plain text ``Formatter`` on a ``StreamHandler``, ecs-logging's
``StdlibFormatter``, which get the context fields as ``extra``); and ``format()`` of
a prebuilt record, logkit's ``schema="ecs"`` next to ecs-logging's formatter.

Needs ``valgrind`` (``apt-get install valgrind``); without it the suite says so and
is skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .tasks import GROUPS, REPO_ROOT
from .timing import TIMES

#: Calls of each counted pair of runs (per-task; per-record runs do 10x as many).
N1, N2 = 200, 1200
RECORDS = "logger.info() to /dev/null, logkit json and each schema"
PEERS = "logger.info() to /dev/null, next to the stdlib and ecs-logging"
FORMATS = "format() of a prebuilt record, schema=ecs next to ecs-logging"
#: The stdlib's plain text formatter (the floor of the 1.2x JSON target).
STDLIB = "stdlib plain text"
#: ecs-logging's own formatter (``schema="ecs"`` is to be at least 5x faster).
ECS_LOGGING = "ecs-logging StdlibFormatter"


@dataclass
class Count:
    """Instructions per call of one variant."""

    name: str
    per_call: float


def available() -> bool:
    return shutil.which("valgrind") is not None


def _collected(kind: str, variant: str, calls: int) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGKIT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         "-m", "benchmarks.instructions", kind, variant, str(calls)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    match = re.search(r"Collected\s*:\s*(\d+)", proc.stderr)
    if proc.returncode or match is None:
        raise RuntimeError(f"{kind} {variant!r} failed under valgrind:\n{proc.stderr[-2000:]}")
    return int(match.group(1))


def _per_call(kind: str, variant: str) -> Count:
    scale = 1 if kind == "task" else 10
    low = _collected(kind, variant, N1 * scale)
    high = _collected(kind, variant, N2 * scale)
    return Count(variant, (high - low) / ((N2 - N1) * scale))


def run() -> dict[str, list[Count]]:
    """Every variant's count, two valgrind processes at a time (counts do not depend on it)."""
    from .formatters import SCHEMA_NAMES

    jobs: dict[str, list[tuple[str, str]]] = {
        title: [("task", name) for name in names] for title, names in GROUPS
    }
    jobs[RECORDS] = [("record", name) for name in ("logkit", *SCHEMA_NAMES)]
    jobs[PEERS] = [("record", name) for name in (STDLIB, "logkit", "ecs", ECS_LOGGING)]
    jobs[FORMATS] = [("format", name) for name in (ECS_LOGGING, "ecs")]
    with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
        submitted: dict[tuple[str, str], Any] = {}  # a variant in two tables is counted once
        futures = {title: [submitted.get((kind, name)) or submitted.setdefault(
                               (kind, name), pool.submit(_per_call, kind, name))
                           for kind, name in items]
                   for title, items in jobs.items()}
        return {title: [f.result() for f in items] for title, items in futures.items()}


def render(results: dict[str, list[Count]]) -> str:
    """One Markdown table per group: instructions per call, ratio to the first row."""
    out = []
    for title, rows in results.items():
        base = rows[0].per_call
        lines = [f"#### {title} (instructions)", "",
                 "| case | instructions/call | ratio |", "|---|---:|---:|"]
        lines += [f"| {r.name} | {r.per_call:,.0f} | {r.per_call / base:.3f}{TIMES} |"
                  for r in rows]
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


# ---------------------------------------------------------------------------
# The child: one variant, ``calls`` calls, under valgrind
# ---------------------------------------------------------------------------


def _task_child(variant: str, calls: int) -> None:
    from .tasks import call_of

    with tempfile.TemporaryDirectory() as tmp:
        call = call_of(variant, tmp)
        for _ in range(50):
            call()
        for _ in range(calls):
            call()


def _peer_formatter(name: str) -> Any:
    """A peer's formatter (records made with the context fields as ``extra``)."""
    import logging

    from . import formatters as bf

    if name == STDLIB:
        return logging.Formatter(bf.FLOOR_FORMAT)
    import ecs_logging

    return ecs_logging.StdlibFormatter()


def _logkit_formatter(schema: str) -> tuple[Any, Any]:
    from logkit.config import LogConfig
    from logkit.formatters import JsonFormatter

    options: dict[str, Any] = {} if schema == "logkit" else {"schema": schema,
                                                             "fields": {"service": "shop"}}
    config = LogConfig(format="json", **options)
    return JsonFormatter(config), config


def _record_child(variant: str, calls: int) -> None:
    import logging

    import logkit

    from . import formatters as bf

    logkit.configure(format="json", logfile=os.devnull, loglevel="INFO")
    extra = bf.EXTRA
    if variant in (STDLIB, ECS_LOGGING):  # the stdlib's logger, handler and makeRecord
        logging.Logger.makeRecord = bf.STDLIB_MAKE_RECORD  # type: ignore[method-assign]
        info = bf._stdlib_logger(f"ir-{variant}", _peer_formatter(variant)).info
        extra = bf.PEER_EXTRA
    else:
        formatter, config = _logkit_formatter(variant)
        bf._logkit_make_record = logging.Logger.makeRecord
        info = bf._logkit_logger(f"ir-{variant}", formatter, config).info
    with bf.bound_context():
        for _ in range(500):
            info(bf.MESSAGE, *bf.ARGS, extra=extra)
        for _ in range(calls):
            info(bf.MESSAGE, *bf.ARGS, extra=extra)


def _format_child(variant: str, calls: int) -> None:
    """``format()`` of one prebuilt record, ``calls`` times (as the timed table does)."""
    import logkit

    from . import formatters as bf

    logkit.configure(format="json", logfile=os.devnull, loglevel="INFO")
    if variant == ECS_LOGGING:
        formatter, extra = _peer_formatter(variant), bf.PEER_EXTRA
    else:
        formatter, extra = _logkit_formatter(variant)[0], bf.EXTRA
    with bf.bound_context():
        record = bf.make_record(extra)
        fmt = formatter.format
        for _ in range(500):
            fmt(record)
        for _ in range(calls):
            fmt(record)


if __name__ == "__main__":
    kind, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    {"task": _task_child, "record": _record_child, "format": _format_child}[kind](name, n)
