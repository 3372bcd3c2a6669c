"""The Celery app that ``python -m logkit demo`` runs a real worker for.

It is an ordinary Celery app with logkit installed; the demo starts
``celery -A logkit.demo_app worker`` on it. Where its broker lives comes from
environment variables set by the demo:

* ``LOGKIT_DEMO_DIR``: work dir for the embedded broker (kombu's filesystem
  transport: no server) and the ``file://`` result backend;
* ``LOGKIT_DEMO_BROKER``: a broker URL (e.g. ``redis://localhost:6379/0``) to use
  instead; the result backend is the same URL for Redis.

The tasks show what logkit adds to a worker's logs: one succeeds, one fails, one
retries and then succeeds, and a small chain carries the publisher's bound
``request_id`` to every task of the workflow.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import uuid
from pathlib import Path
from time import monotonic
from typing import Any

from celery import Celery, Task
from celery.signals import worker_ready
from kombu.transport import filesystem
from kombu.utils.json import dumps

import logkit

__all__ = ["READY_PREFIX", "add", "app", "fail", "flaky", "greet", "workdir"]

logger = logging.getLogger(__name__)

#: The worker touches ``<workdir>/<READY_PREFIX><hostname>`` when it is consuming.
READY_PREFIX = "ready-"


def workdir() -> Path:
    """The demo's work dir (``LOGKIT_DEMO_DIR``, or ``<tmp>/logkit-demo``)."""
    path = os.environ.get("LOGKIT_DEMO_DIR") or os.path.join(tempfile.gettempdir(), "logkit-demo")
    return Path(path).resolve()


class _DemoChannel(filesystem.Channel):
    """kombu writes a message file in place: a consumer polling at that moment can read
    half a message (and the worker dies on a JSONDecodeError). Write, then rename.
    The temporary name holds no ``.<queue>.msg``: kombu before 5.6 (Celery 5.5's) takes
    every file whose name contains it, a half-written one too.
    """

    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        tmp = os.path.join(self.data_folder_out, f"part-{uuid.uuid4()}")
        with open(tmp, "wb") as fh:
            fh.write(dumps(payload).encode())  # type: ignore[no-untyped-call]
        os.replace(tmp, os.path.join(self.data_folder_out, name))


class _DemoTransport(filesystem.Transport):
    """kombu's filesystem transport, waiting at most 0.1 s per poll, with atomic puts.

    Celery drains a non-async transport with a 2 s timeout, so a warm shutdown
    would wait seconds for nothing; the demo should stop in about one.
    """

    Channel = _DemoChannel
    #: Keep the URL as given, so the worker logs ``Connected to filesystem://localhost//``.
    can_parse_url = True

    def drain_events(self, connection: Any, timeout: Any = None) -> Any:  # type: ignore[override]
        if timeout is not None and timeout > 0.1:
            timeout = 0.1
        return super().drain_events(connection, timeout=timeout)  # type: ignore[no-untyped-call]


def _broker_settings() -> dict[str, Any]:
    url = os.environ.get("LOGKIT_DEMO_BROKER")
    if url:
        backend = url if url.startswith(("redis://", "rediss://")) else "rpc://"
        return {"broker_url": url, "result_backend": backend}
    base = workdir()
    folders = {name: base / "broker" / name for name in ("queue", "processed", "control")}
    for folder in (*folders.values(), base / "results"):
        folder.mkdir(parents=True, exist_ok=True)
    return {
        "broker_url": "filesystem://localhost//",
        "broker_transport": _DemoTransport,
        "broker_transport_options": {
            "data_folder_in": str(folders["queue"]),
            "data_folder_out": str(folders["queue"]),
            "processed_folder": str(folders["processed"]),
            "control_folder": str(folders["control"]),
            "store_processed": False,
            "polling_interval": 0.05,
        },
        "result_backend": f"file://{base / 'results'}",
    }


app: Any = Celery("logkit_demo")
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    **_broker_settings(),
)
logkit.install(app)


@worker_ready.connect(weak=False)  # type: ignore[untyped-decorator]
def _mark_ready(sender: Any = None, **_: Any) -> None:
    """Tell the demo (which waits for this file) that the worker is consuming."""
    if getattr(sender, "app", None) is not app:
        return
    name = re.sub(r"[^A-Za-z0-9._-]", "_", str(sender.hostname))
    path = workdir() / f"{READY_PREFIX}{name}"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, path)


@app.task  # type: ignore[untyped-decorator]
def greet(name: str) -> str:
    """Succeeds: logs one line with an ``extra`` field."""
    logger.info("greeting %s", name, extra={"user": name})
    return f"hello {name}"


@app.task  # type: ignore[untyped-decorator]
def fail(amount: int) -> None:
    """Fails: the traceback is logged as a structured ``exception`` field."""
    logger.info("charging %d cents", amount)
    raise ValueError(f"card declined for {amount} cents")


@app.task(bind=True, max_retries=3)  # type: ignore[untyped-decorator]
def flaky(self: Task, succeed_on: int = 2) -> str:
    """Raises ``Retry`` until its ``succeed_on``-th retry, then succeeds."""
    attempt = self.request.retries
    if attempt < succeed_on:
        logger.warning("upstream not ready (attempt %d), retrying", attempt + 1)
        raise self.retry(countdown=0.2)
    logger.info("upstream ready after %d retries", attempt)
    return "ok"


@app.task  # type: ignore[untyped-decorator]
def add(x: int, y: int) -> int:
    """A chain link: its records carry the workflow's ``root_id`` and ``request_id``."""
    logger.info("adding %d + %d", x, y)
    return x + y
