"""``python -m logkit demo``: a real worker, a few tasks, and its logs on your terminal.

The demo starts ``celery -A logkit.demo_app worker`` as a subprocess (prefork, two
processes, on an embedded broker: kombu's filesystem transport in a temporary
directory, so no server is needed), sends tasks that succeed, fail and retry, plus
a chain published inside ``logkit.bound(request_id=...)``, waits for them, stops
the worker with a warm shutdown and exits.

The worker's log (its stderr) is copied to the demo's **stdout**, so
``python -m logkit demo --format json > demo.log`` gives a file of JSON lines;
the demo's own narration goes to **stderr**.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = ["DemoError", "run_demo"]

#: How long the worker may take to start consuming, and the tasks to finish.
READY_TIMEOUT = 30.0
TASKS_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
_ROOT_WARNING = "You're running the worker with superuser privileges"


class DemoError(RuntimeError):
    """The demo could not run; the message says what went wrong and what to check."""


@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    pumps: list[threading.Thread] = field(default_factory=list)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """Warm shutdown (SIGTERM); SIGKILL the process group if it takes too long."""
        proc = self.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # Pool children that outlived the main process must not linger.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pump in self.pumps:
            pump.join(timeout=5)
        return proc.returncode


def _pump(source: IO[bytes], target: IO[str]) -> None:
    """Copy ``source`` to ``target`` line by line until EOF (a daemon thread)."""
    for raw in iter(source.readline, b""):
        with contextlib.suppress(Exception):  # a closed terminal must not kill the demo
            target.write(raw.decode("utf-8", "replace"))
            target.flush()
    source.close()


def _check_broker(url: str) -> None:
    from kombu.connection import Connection

    try:
        with Connection(url, connect_timeout=3) as conn:  # type: ignore[no-untyped-call]
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:
        raise DemoError(f"cannot connect to the broker {url}: {exc}") from None


def _worker_argv(fmt: str, pool: str, concurrency: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "--quiet",
        "-A",
        "logkit.demo_app",
        "worker",
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "INFO",
        "--hostname",
        "demo@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--log-format",
        fmt,
    ]


def _wait_ready(worker: _Worker, workdir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not any(workdir.glob("ready-*")):
        code = worker.proc.poll()
        if code is not None:
            raise DemoError(f"the worker exited with code {code} before it was ready (see above)")
        if time.monotonic() > deadline:
            raise DemoError(f"the worker was not ready after {timeout:.0f} s (see above)")
        time.sleep(0.05)


def _send_and_wait(say: Callable[[str], None], timeout: float) -> list[str]:
    """Send the demo's tasks, wait for them; return one summary line per task."""
    import celery

    import logkit

    from . import demo_app

    request_id = f"req-{uuid.uuid4().hex[:8]}"
    with logkit.bound(request_id=request_id):
        sent = {
            "greet": demo_app.greet.delay("ada"),
            "fail": demo_app.fail.delay(1999),
            "flaky": demo_app.flaky.delay(2),
            "chain": celery.chain(demo_app.add.s(2, 2), demo_app.add.s(3)).delay(),
        }
    say(
        f"sent greet (succeeds), fail (fails), flaky (retries twice) and a chain "
        f"add(2, 2) | add(3), all inside logkit.bound(request_id={request_id!r})"
    )
    deadline = time.monotonic() + timeout
    lines = []
    for name, result in sent.items():
        remaining = max(deadline - time.monotonic(), 0.1)
        try:
            value = result.get(timeout=remaining, interval=0.05, propagate=False)
        except Exception as exc:
            raise DemoError(f"task {name} did not finish within {timeout:.0f} s: {exc!r}") from None
        lines.append(f"{name}: {result.state} ({value!r})")
    expected = {"greet": "SUCCESS", "fail": "FAILURE", "flaky": "SUCCESS", "chain": "SUCCESS"}
    wrong = [n for n, r in sent.items() if r.state != expected[n]]
    if wrong:
        raise DemoError(f"unexpected task states: {'; '.join(lines)}")
    return lines


def run_demo(
    fmt: str = "console",
    pool: str = "prefork",
    *,
    concurrency: int = 2,
    broker: str | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    """Run the demo; return the exit status (0 when every task ended as expected).

    Raises :class:`DemoError` with a readable message when something fails.
    """
    out = out or sys.stdout
    err = err or sys.stderr

    def say(message: str) -> None:
        err.write(f"logkit demo: {message}\n")
        err.flush()

    if broker:
        _check_broker(broker)  # before making anything that would need cleaning up
    workdir = Path(tempfile.mkdtemp(prefix="logkit-demo-"))
    env = dict(os.environ, LOGKIT_DEMO_DIR=str(workdir), PYTHONUNBUFFERED="1")
    # Celery warns (before logging is set up) when run as root, e.g. in a container.
    env["PYTHONWARNINGS"] = ",".join(
        filter(None, [env.get("PYTHONWARNINGS"), f"ignore:{_ROOT_WARNING}"])
    )
    env.pop("LOGKIT_DEMO_BROKER", None)
    if broker:
        env["LOGKIT_DEMO_BROKER"] = broker
    if fmt in ("console", "auto") and _isatty(out) and not env.get("NO_COLOR"):
        env.setdefault("FORCE_COLOR", "1")  # the worker writes to a pipe, we to a terminal
    # This process publishes the tasks: it imports the same app with the same settings.
    os.environ.update({k: env[k] for k in ("LOGKIT_DEMO_DIR",)})
    if broker:
        os.environ["LOGKIT_DEMO_BROKER"] = broker

    argv = _worker_argv(fmt, pool, concurrency)
    where = broker or f"kombu filesystem transport in {workdir}"
    say(f"starting a real worker ({pool}, concurrency {concurrency}) on {where}")
    say("$ " + " ".join(["celery", *argv[3:]]))
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    worker = _Worker(proc)
    assert proc.stdout is not None and proc.stderr is not None
    for source, target in ((proc.stderr, out), (proc.stdout, err)):
        thread = threading.Thread(target=_pump, args=(source, target), daemon=True)
        thread.start()
        worker.pumps.append(thread)
    try:
        _wait_ready(worker, workdir, READY_TIMEOUT)
        summary = _send_and_wait(say, TASKS_TIMEOUT)
        time.sleep(0.3)  # let the last lifecycle records reach the log
    finally:
        code = worker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if code != 0:
        raise DemoError(f"the worker exited with code {code} (see above)")
    say(f"done in {time.monotonic() - started:.1f} s: " + "; ".join(summary))
    say("try --format json|console|plain, and `logkit view FILE` to read JSON logs")
    return 0


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:
        return False
