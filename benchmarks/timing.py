"""Interleaved rounds and medians: the one timing method every benchmark uses."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: The multiplication sign of ratios ("1.25x" with a real times sign).
TIMES = "\u00d7"

#: A case runs its operation ``n`` times; the loop lives inside the case.
Runner = Callable[[int], None]


@dataclass
class Case:
    """One row of a table: a name, what it runs and a note shown next to it."""

    name: str
    run: Runner
    note: str = ""
    #: Called after each timed run, untimed (e.g. drain a background queue so its
    #: thread does not compete with the next case).
    after: Callable[[], object] | None = None


@dataclass
class Result:
    """Per-call median and spread (nanoseconds) of one case over all rounds."""

    name: str
    median_ns: float
    low_ns: float
    high_ns: float
    note: str = ""
    #: ns per call of every round, in round order (for paired comparisons).
    samples: list[float] = field(default_factory=list)

    @property
    def us(self) -> float:
        return self.median_ns / 1000


def interleaved(cases: Sequence[Case], *, rounds: int, loops: int) -> list[Result]:
    """Time every case ``rounds`` times, interleaved; medians of ns per call.

    Each round runs every case once (``loops`` calls each), in an order rotated by
    one every round so no case always runs right after the same neighbour. The
    cyclic garbage collector is run before, and paused during, each timed run.
    Quartiles are returned as the spread.
    """
    for case in cases:  # warm up: caches, lazily built state, first-call imports
        case.run(max(1, loops // 10))
        if case.after is not None:
            case.after()
    samples: dict[str, list[float]] = {case.name: [] for case in cases}
    n = len(cases)
    gc_was_enabled = gc.isenabled()
    try:
        for r in range(rounds):
            order = [cases[(i + r) % n] for i in range(n)]
            for case in order:
                # As timeit does: no cyclic GC pass lands inside one case's timing (a
                # full collection would be charged to whichever case happens to run).
                gc.collect()
                gc.disable()
                start = time.perf_counter_ns()
                case.run(loops)
                elapsed = time.perf_counter_ns() - start
                gc.enable()
                samples[case.name].append(elapsed / loops)
                if case.after is not None:
                    case.after()
    finally:
        if gc_was_enabled:
            gc.enable()
        else:
            gc.disable()
    out = []
    for case in cases:
        values = sorted(samples[case.name])
        if len(values) >= 4:
            q = statistics.quantiles(values, n=4)
            low, high = q[0], q[2]
        else:
            low, high = values[0], values[-1]
        out.append(Result(case.name, statistics.median(values), low, high, case.note,
                          samples[case.name]))
    return out


def paired_ratio(case: Result, base: Result) -> float:
    """Median over the rounds of ``case / base`` measured in the same round.

    Both ran back to back in each round, so a slow spell of the machine (another VM
    on the host) raises both: the per-round ratio cancels it, where a ratio of the
    two medians keeps whatever the spell did to one side's median.
    """
    ratios = [c / b for c, b in zip(case.samples, base.samples, strict=True) if b > 0]
    return statistics.median(ratios) if ratios else float("nan")


def table(title: str, results: Sequence[Result], *, floor: Result | None = None,
          unit: str = "µs/record") -> str:
    """A markdown table: median, interquartile range and ratio to ``floor``."""
    floor = floor or results[0]
    lines = [
        f"#### {title}",
        "",
        f"| case | {unit} | IQR | ratio |",
        "|---|---:|---:|---:|",
    ]
    for res in results:
        ratio = res.median_ns / floor.median_ns if floor.median_ns else float("nan")
        name = f"{res.name} ({res.note})" if res.note else res.name
        lines.append(
            f"| {name} | {res.us:.2f} | {res.low_ns / 1000:.2f}-{res.high_ns / 1000:.2f} "
            f"| {ratio:.2f}{TIMES} |"
        )
    return "\n".join(lines) + "\n"
