"""Per-task overhead: an empty task run with ``apply()``, without and with logkit.

Both states live in one process and are swapped between measurements (signal
receivers, logger handlers and filters, logkit's installation), so the rounds
interleave:

* **celery logging** -- ``app.log.setup(loglevel="INFO", logfile=/dev/null)``:
  Celery's own handlers and formats, no logkit receivers connected;
* **logkit json** -- ``logkit.install(app, format="json")`` and
  ``logkit.configure(loglevel="INFO", logfile=/dev/null)``: context binding in
  ``task_prerun``/``task_postrun`` plus the lifecycle events (``task_started``,
  ``task_succeeded``) written as JSON records, Celery's prose lines dropped.

The task body is empty, so the difference is logkit's whole per-task cost.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from celery import Celery, signals

import logkit
from logkit import receivers
from logkit import setup as logkit_setup

from .timing import Case, Result, interleaved, paired_ratio, table

_LOGGERS = ("", "celery", "celery.task", "celery.app.trace", "celery.worker.strategy",
            "celery.redirected", "logkit", "logkit.events")


class _State:
    """Signal receivers, logger handlers/filters/levels and logkit's installation."""

    def __init__(self) -> None:
        self.signals = {
            name: (list(sig.receivers))
            for name, sig in vars(signals).items()
            if hasattr(sig, "receivers") and hasattr(sig, "sender_receivers_cache")
        }
        self.loggers = {}
        for name in _LOGGERS:
            log = logging.getLogger(name)
            self.loggers[name] = (list(log.handlers), list(log.filters), log.level, log.propagate)
        self.installation = receivers._installation
        # logkit.configure() swaps Logger.makeRecord process-wide (clashing extra keys)
        self.make_record = logging.Logger.makeRecord

    def restore(self) -> None:
        for name, saved in self.signals.items():
            sig = getattr(signals, name)
            sig.receivers = list(saved)
            sig.sender_receivers_cache.clear()
        for name, (handlers, filters, level, propagate) in self.loggers.items():
            log = logging.getLogger(name)
            log.handlers = list(handlers)
            log.filters = list(filters)
            log.level = level
            log.propagate = propagate
        logging.Logger.manager._clear_cache()
        logging.Logger.makeRecord = self.make_record  # type: ignore[method-assign]
        receivers._installation = self.installation


def make_app() -> tuple[Celery, Any]:
    """An app with one empty task (results are not stored)."""
    app = Celery("bench_tasks", broker="memory://", set_as_current=False)
    app.conf.task_ignore_result = True
    app.conf.worker_redirect_stdouts = False  # keep print() on the terminal

    @app.task(name="bench.noop")
    def noop() -> None:
        return None

    return app, noop


def states(app: Celery) -> dict[str, _State]:
    """Set up both states once; return them by name."""
    app.log.setup(loglevel="INFO", logfile=os.devnull)
    celery_state = _State()
    logkit.install(app, format="json", events=False)
    logkit.configure(loglevel="INFO", logfile=os.devnull, app=app)
    context_state = _State()
    logkit_setup._active = None  # keep that state's sink open: configure() closes the last one
    logkit.install(app, format="json", redact_keys=())
    logkit.configure(loglevel="INFO", logfile=os.devnull, app=app)
    unredacted_state = _State()
    logkit_setup._active = None
    logkit.install(app, format="json")
    logkit.configure(loglevel="INFO", logfile=os.devnull, app=app)
    logkit_state = _State()
    return {
        "celery logging": celery_state,
        "logkit json, context only (events=False)": context_state,
        "logkit json, context + events, no redaction (redact_keys=())": unredacted_state,
        "logkit json (context + events)": logkit_state,
    }


def _runner(state: _State, task: Any) -> Callable[[int], None]:
    apply = task.apply

    def run(n: int) -> None:
        state.restore()
        for _ in range(n):
            apply()
    return run


def run(rounds: int = 30, loops: int = 300) -> dict[str, list[Result]]:
    """Median µs per ``apply()`` of an empty task without and with logkit."""
    app, task = make_app()
    all_states = states(app)
    try:
        cases = [Case(name, _runner(state, task)) for name, state in all_states.items()]
        return {"empty task, task.apply()": interleaved(cases, rounds=rounds, loops=loops)}
    finally:
        next(iter(all_states.values())).restore()


def render(results: dict[str, list[Result]]) -> str:
    """Markdown table, with the overhead in µs and in % of the plain ``apply()``."""
    out = []
    for title, rows in results.items():
        text = table(title, rows, unit="µs/task")
        base = rows[0]
        extra = [
            f"- {row.name}: {(row.median_ns - base.median_ns) / 1000:+.2f} µs/task "
            f"({(row.median_ns / base.median_ns - 1) * 100:+.1f}% of an empty apply(); "
            f"paired per round: {(paired_ratio(row, base) - 1) * 100:+.1f}%)"
            for row in rows[1:]
        ]
        out.append(text + "\n" + "\n".join(extra) + "\n")
    return "\n".join(out)


def sample_output() -> list[str]:
    """What one ``apply()`` writes in the measured logkit state: the same options and
    path (no extra handler), a temporary file instead of ``/dev/null``."""
    import tempfile

    app, task = make_app()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sample.log")
        logkit.install(app, format="json")
        logkit.configure(loglevel="INFO", logfile=path, app=app)
        task.apply()
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
