"""The JSON examples of the docs, made by logkit's own formatter.

Each example in a page is a ```` ```json ```` block right after a marker line
``<!-- example: NAME -->``. ``python docs/examples.py`` rewrites every such block with
the record below of that name, formatted by the current :class:`logkit.JsonFormatter`
and pretty-printed; ``tests/test_docs.py`` checks the pages are current (and compares
the lifecycle events' fields with a real demo worker's output).

The inputs are fixed (time, process and thread ids, task ids), so the output is the
same on every machine. A traceback is trimmed to its first and last lines, and the
page says so.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python docs/examples.py` from a checkout
    sys.path.insert(0, str(ROOT))

from logkit import JsonFormatter, LogConfig, bound  # noqa: E402

#: Where the examples are: the pages (relative to the repository root) to rewrite.
PAGES = (
    "README.md",
    "docs/index.md",
    "docs/quickstart.md",
    "docs/records.md",
    "docs/events.md",
    "docs/how-it-works.md",
    "docs/django.md",
    "docs/configuration.md",
)

MARKER = re.compile(r"^<!-- example: ([\w-]+) -->\n```json\n(.*?)^```$", re.M | re.S)

TASK_ID = "549b196b-40be-48a3-aec7-a861ca38d423"
FAILED_ID = "3237b17b-48f6-46e2-9a60-6af866a2723e"
CHILD_ID = "0c5d3a1e-8f1b-4f6e-9b7a-2d6c4e9f1a33"
DEMO_ID = "e01ac828-33ab-4931-9ae4-3009b29502d4"


def _task(task_id: str, name: str, worker: str = "celery@vm", **request: Any
          ) -> dict[str, Any]:
    """The task context a worker binds while ``name`` runs: by default a task without a
    parent on its first try (``root_id`` and ``correlation_id`` are its own id, ``retries``
    0), ``request`` changes its request (``parent_id=``, ``root_id=``, ``retries=``)."""
    from logkit.receivers import TaskContext

    class Request:
        id = correlation_id = root_id = task_id
        parent_id = None
        retries = 0
        hostname = worker
        delivery_info = {"routing_key": "celery"}

    for key, value in request.items():
        setattr(Request, key, value)

    class Task:
        pass

    task = Task()
    task.name, task.request = name, Request()  # type: ignore[attr-defined]
    return TaskContext(LogConfig()).for_task(task)


def _time(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def record(
    *,
    logger: str,
    message: str,
    level: int = logging.INFO,
    at: str = "2026-11-25T02:09:45.080",
    context: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    config: LogConfig | None = None,
    error: Callable[[], object] | None = None,
    process: int = 11042,
    thread: int | None = None,
) -> dict[str, Any]:
    """One record as ``JsonFormatter(config)`` writes it, from fixed inputs; ``thread``
    ``None``: made in the process's main thread (a prefork child's task: no ``thread``)."""
    log = logging.getLogger(logger)
    exc_info = None
    if error is not None:
        try:
            error()
        except Exception:
            exc_info = sys.exc_info()
    rec = log.makeRecord(logger, level, "tasks.py", 1, message, (), exc_info, extra=extra)
    rec.created = _time(at)
    rec.msecs = round(rec.created % 1 * 1000)
    if thread is not None:
        rec.thread = thread
    with bound(**(context or {})):  # made in this process (its main thread is known)...
        out: dict[str, Any] = json.loads(JsonFormatter(config or LogConfig()).format(rec))
    out["process"] = process  # ... shown with a fixed pid, in the same place
    exception = out.get("exception")
    if isinstance(exception, dict) and "traceback" in exception:
        lines = exception["traceback"].splitlines()
        exception["traceback"] = f"{lines[0]}\n  ...\n{lines[-1]}"  # trimmed, the page says so
    return out


def without(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    """``data`` less ``keys``: for an example trimmed to the fields that matter (the page
    says which are left out)."""
    return {k: v for k, v in data.items() if k not in keys}


def _zero_division() -> object:
    return 1 / 0


BILLING = LogConfig(fields={"service": "billing"})

#: Every example, by the name its marker gives.
EXAMPLES: dict[str, Callable[[], dict[str, Any]]] = {
    # quickstart, records: an app record in a task, with a publisher's request_id
    "task-record": lambda: record(
        logger="proj", message="charging alice", config=BILLING,
        context={"request_id": "r-42", **_task(TASK_ID, "proj.charge")},
        extra={"amount": 12.5},
    ),
    # records: a chain's second link, on its second try
    "task-record-child": lambda: record(
        logger="proj", message="shipping order 7", at="2026-11-25T02:09:46.212",
        config=BILLING,
        context={"request_id": "r-42", **_task(CHILD_ID, "proj.ship", parent_id=TASK_ID,
                                                root_id=TASK_ID, retries=1)},
        process=11043,
    ),
    "task-record-readme": lambda: record(
        logger="proj", message="charging alice",
        context={"request_id": "r-42", **_task(TASK_ID, "proj.charge")},
        extra={"amount": 12.5},
    ),
    "task-error": lambda: record(
        logger="proj.tasks", message="charge failed", level=logging.ERROR, config=BILLING,
        at="2026-11-25T02:08:31.301",
        context={"request_id": "r-1", **_task(FAILED_ID, "proj.tasks.charge", "celery@web-1")},
        error=_zero_division, process=9180,
    ),
    "exception-record": lambda: record(
        logger="app", message="failed", level=logging.ERROR, at="2026-11-25T02:08:31.301",
        context=_task(FAILED_ID, "app.boom"), error=_zero_division, process=9180,
    ),
    # lifecycle events: checked against the demo worker's own (tests/test_docs.py)
    "task_succeeded": lambda: record(
        logger="logkit.events", message="Task succeeded", at="2026-11-25T02:12:22.944",
        context={"request_id": "req-f7fb0b85", **_task(DEMO_ID, "logkit.demo_app.greet",
                                                        "demo@vm")},
        extra={
            "event": "task_succeeded", "duration_ms": 14.599, "queued_ms": 63.81,
            "wait_ms": 4.206, "result": "'hello ada'",
        },
        process=16229,
    ),
    "worker_ready": lambda: record(
        logger="logkit.events", message="Worker ready", at="2026-11-29T19:19:25.543",
        context={"worker": "celery@vm"},
        extra={
            "event": "worker_ready", "pid": 18508, "pool": "prefork", "concurrency": 2,
            "celery_version": "5.7.0", "app": "proj", "transport": "redis://:**@redis:6379/0",
            "results": "redis://:**@redis:6379/1", "task_events": False,
            "queues": ["celery"], "tasks": ["proj.add"],
            "platform": "Linux-6.18.44-x86_64-with-glibc2.36",
        },
        process=18508,
    ),
    # the message (119 characters) is given in the page's text
    "log_records_dropped": lambda: without(record(
        logger="logkit", level=logging.WARNING, at="2026-11-29T19:06:41.513",
        message="290000 log record(s) dropped between 2026-11-29T19:06:34.552Z and "
        "2026-11-29T19:06:41.510Z (queue full)",
        extra={
            "event": "log_records_dropped", "count": 290000,
            "first_dropped_at": "2026-11-29T19:06:34.552Z",
            "last_dropped_at": "2026-11-29T19:06:41.510Z", "reason": "queue full",
        },
        process=4711, thread=140095281494912,
    ), "message"),
    "django-view": lambda: record(
        logger="shop.views", message="order 7 viewed", at="2025-01-10T12:00:01.234",
        config=LogConfig(fields={"service": "shop"}), context={"request_id": "req-7"},
        process=4242, thread=1402,
    ),
    "field-names": lambda: record(
        logger="billing", message="hi", at="2026-11-25T02:09:34.336",
        config=LogConfig(
            field_names={"timestamp": "@timestamp", "level": "severity", "message": "msg"}
        ),
        process=4242,
    ),
}


def render(data: Mapping[str, Any]) -> str:
    """Pretty-printed JSON: two spaces, one field a line, short lists on one line."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    # ["celery"] rather than three lines for a list of a few strings
    return re.sub(
        r"\[\n\s+((?:\"[^\"\n]*\",?\n\s+)*\"[^\"\n]*\")\n\s+\]",
        lambda m: "[" + re.sub(r",\n\s+", ", ", m.group(1)) + "]",
        text,
    )


def rewrite(text: str) -> str:
    """``text`` (a page) with each marked example made anew."""

    def block(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in EXAMPLES:
            raise KeyError(f"unknown example {name!r}; known: {', '.join(EXAMPLES)}")
        return f"<!-- example: {name} -->\n```json\n{render(EXAMPLES[name]())}\n```"

    return MARKER.sub(block, text)


def main() -> int:
    changed = []
    for page in PAGES:
        path = ROOT / page
        old = path.read_text(encoding="utf-8")
        new = rewrite(old)
        if new != old:
            path.write_text(new, encoding="utf-8")
            changed.append(page)
    print("rewrote " + ", ".join(changed) if changed else "every example is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
