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
``setup()``), and a whole ``logger.info()`` through logkit's handler to ``/dev/null``
for logkit's own JSON and each schema (the record of :mod:`benchmarks.formatters`:
two args, three ``extra`` fields, six context fields).

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
    scale = 10 if kind == "record" else 1
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
    with ThreadPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1))) as pool:
        futures = {title: [pool.submit(_per_call, kind, name) for kind, name in items]
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


def _record_child(schema: str, calls: int) -> None:
    import logging

    import logkit
    from logkit.config import LogConfig
    from logkit.formatters import JsonFormatter

    from . import formatters as bf

    logkit.configure(format="json", logfile=os.devnull, loglevel="INFO")
    options: dict[str, Any] = {} if schema == "logkit" else {"schema": schema,
                                                             "fields": {"service": "shop"}}
    config = LogConfig(format="json", **options)
    formatter = JsonFormatter(config)
    bf._logkit_make_record = logging.Logger.makeRecord
    info = bf._logkit_logger(f"ir-{schema}", formatter, config).info
    with bf.bound_context():
        for _ in range(500):
            info(bf.MESSAGE, *bf.ARGS, extra=bf.EXTRA)
        for _ in range(calls):
            info(bf.MESSAGE, *bf.ARGS, extra=bf.EXTRA)


if __name__ == "__main__":
    kind, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    (_task_child if kind == "task" else _record_child)(name, n)
