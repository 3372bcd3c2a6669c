"""What a prefork child pays per task to follow levels changed by remote control,
in CPU instructions counted by valgrind (``python -m benchmarks.levels``).

A pool child checks, before each task, whether the main process changed a level
(``Installation.before_task`` = :meth:`logkit.control.LevelSwitch.sync`: one read of
a shared 64-bit counter). Two variants of :mod:`benchmarks.tasks`' "logkit json
(context + events)" task, each in fresh interpreters under
``valgrind --tool=callgrind``, ``N1`` and ``N2`` calls; ``(count(N2) - count(N1)) /
(N2 - N1)`` is one task's cost:

* **without**: no check (the main process, threads/solo pools, or before this change);
* **with the check**: as in a prefork child after ``worker_process_init``, nothing changed;
* **with a change applied each task**: the main process changes a level between every
  two tasks (far more often than any operator): the child reads the page and sets the
  levels each time.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from typing import Any

from .tasks import EVENTS, REPO_ROOT

N1, N2 = 200, 1200
VARIANTS = ("without", "with the check", "with a change applied each task")


def _child(variant: str, calls: int) -> None:
    from logkit import control, receivers

    from .tasks import call_of

    with tempfile.TemporaryDirectory() as tmp:
        call = call_of(EVENTS, tmp)
        flip: Any = None
        if variant != "without":
            switch = control.register()
            switch.share()
            inst = receivers.installation()
            assert inst is not None
            inst.before_task = switch.sync
            if variant == VARIANTS[2]:
                page = switch.page
                assert page is not None
                levels = [{"levels": {"root": 20, "celery.task": 20}},
                          {"levels": {"root": 20, "celery.task": 21}}]

                def flip(i: int) -> None:  # what the main process would write
                    page.write(levels[i % 2])
        for i in range(50):
            if flip is not None:
                flip(i)
            call()
        for i in range(calls):
            if flip is not None:
                flip(i)
            call()
        if flip is not None:  # the task before the last one picked up the last change
            import logging

            assert logging.getLogger("celery.task").level == 20 + (calls - 1) % 2


def _collected(variant: str, calls: int) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGKIT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONHASHSEED"] = "0"  # the same dict/set layouts in every run
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
         "-m", "benchmarks.levels", "child", variant, str(calls)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    match = re.search(r"Collected\s*:\s*(\d+)", proc.stderr)
    if proc.returncode or match is None:
        raise RuntimeError(f"{variant!r} failed under valgrind:\n{proc.stderr[-2000:]}")
    return int(match.group(1))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "child":
        _child(sys.argv[2], int(sys.argv[3]))
        return
    counts = {v: (_collected(v, N2) - _collected(v, N1)) / (N2 - N1) for v in VARIANTS}
    base = counts[VARIANTS[0]]
    print("| per task (empty task, logkit json, events) | instructions/task | ratio |")
    print("|---|---:|---:|")
    for name, count in counts.items():
        print(f"| {name} | {count:,.0f} | {count / base:.4f}x |")


if __name__ == "__main__":
    main()
