"""Tests for the real-worker harness itself (plain Celery, no logkit)."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery_versions import SHUTDOWN_NOTICE, SHUTDOWN_NOTICE_ON_STDERR
from workerutil import (
    AppModule,
    Worker,
    WorkerStartError,
    make_app,
    parse_json_lines,
    start_worker,
    stop_all,
    wait_for,
)

PLAIN_BODY = """
import os
import time


@app.task
def add(x, y):
    return x + y


@app.task
def pid():
    return os.getpid()


@app.task
def block(path, seconds):
    with open(path, "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(seconds)
    return "done"
"""


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


# --------------------------------------------------------------------------
# one shared filesystem-broker worker for the read-only checks
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fs_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppModule]:
    appmod = make_app(tmp_path_factory.mktemp("fs"), PLAIN_BODY)
    yield appmod
    appmod.unload()


@pytest.fixture(scope="module")
def fs_worker(fs_app: AppModule) -> Iterator[Worker]:
    worker = start_worker(fs_app, logfile="worker.log", global_args=["--no-color"])
    try:
        yield worker
    finally:
        worker.stop(timeout=15)


@pytest.mark.worker
def test_generated_module_layout(fs_app: AppModule) -> None:
    assert fs_app.name.startswith("app_") and len(fs_app.name) == 12
    assert fs_app.path == fs_app.workdir / f"{fs_app.name}.py"
    mod = fs_app.load()
    assert fs_app.load() is mod
    conf = mod.app.conf
    assert conf.broker_url == "filesystem://"
    opts = conf.broker_transport_options
    assert opts["data_folder_in"] == opts["data_folder_out"]
    for key in ("data_folder_in", "processed_folder", "control_folder"):
        assert Path(opts[key]).is_absolute() and Path(opts[key]).is_dir()
    assert conf.result_backend == f"file://{fs_app.workdir / 'results'}"
    assert conf.task_serializer == conf.result_serializer == "json"
    assert conf.worker_prefetch_multiplier == 1


@pytest.mark.worker
def test_prefork_worker_runs_tasks(fs_app: AppModule, fs_worker: Worker) -> None:
    mod = fs_app.load()
    assert mod.add.delay(2, 3).get(timeout=30) == 5
    results = [mod.add.delay(i, i) for i in range(6)]
    assert [r.get(timeout=30) for r in results] == [2 * i for i in range(6)]


@pytest.mark.worker
def test_child_pids(fs_app: AppModule, fs_worker: Worker) -> None:
    children = fs_worker.child_pids()
    assert len(children) == 2, children
    assert fs_worker.pid not in children
    for child in children:
        stat = Path(f"/proc/{child}/stat").read_text()
        assert int(stat.rsplit(")", 1)[1].split()[1]) == fs_worker.pid
    # tasks really execute in those children
    executed = fs_app.load().pid.delay().get(timeout=30)
    assert executed in children


@pytest.mark.worker
def test_logfile_and_output(fs_worker: Worker) -> None:
    assert fs_worker.logfile == fs_worker.workdir / "worker.log"
    assert fs_worker.ready_marker.exists()
    # worker_ready fires just *before* Celery logs "<hostname> ready."
    wait_for(
        lambda: f"{fs_worker.hostname} ready." in fs_worker.read_log(),
        timeout=10,
        message=lambda: fs_worker.read_log(),
    )
    # the startup banner goes to stdout, not to the log file
    assert "[tasks]" in fs_worker.stdout()
    assert "[tasks]" not in fs_worker.read_log()
    assert "\x1b[" not in fs_worker.output()  # --no-color global arg applied
    with pytest.raises(AssertionError, match=r"worker\.log: line 1 is not valid JSON"):
        fs_worker.json_lines()


# --------------------------------------------------------------------------
# lifecycle
# --------------------------------------------------------------------------


@pytest.mark.worker
def test_stop_warm_shutdown(
    app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker]
) -> None:
    appmod = app_factory(PLAIN_BODY)
    worker = worker_factory(appmod)
    assert appmod.load().add.delay(1, 1).get(timeout=30) == 2
    children = worker.child_pids()
    assert len(children) == 2
    t0 = time.monotonic()
    assert worker.stop() == 0
    assert time.monotonic() - t0 < 5  # fast_shutdown transport: ~1.5 s
    assert worker.proc.poll() == 0
    assert _gone(worker.pid)
    assert all(_gone(c) for c in children)
    assert worker.stop() == 0  # idempotent
    assert worker.child_pids() == []
    # Celery prints the shutdown notice to stdout (5.3: stderr), as text
    notice_stream = worker.stderr() if SHUTDOWN_NOTICE_ON_STDERR else worker.stdout()
    assert SHUTDOWN_NOTICE in notice_stream
    # stderr is the log when there is no -f
    assert worker.read_log() == worker.stderr()
    assert f"Task {appmod.name}.add[" in worker.read_log()


@pytest.mark.worker
def test_stop_escalates_to_sigkill(
    app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker]
) -> None:
    appmod = app_factory(PLAIN_BODY)
    worker = worker_factory(appmod)
    started = appmod.workdir / "block-started"
    appmod.load().block.delay(str(started), 120)
    wait_for(started.exists, timeout=20, message="blocking task did not start")
    children = worker.child_pids()
    t0 = time.monotonic()
    # warm shutdown waits for the running task -> timeout -> SIGKILL group
    assert worker.stop(timeout=1.5) == -signal.SIGKILL
    assert time.monotonic() - t0 < 10
    assert _gone(worker.pid)
    assert all(_gone(c) for c in children)
    assert _gone(int(started.read_text()))


@pytest.mark.worker
def test_broken_app_fails_fast_with_output(
    app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker]
) -> None:
    appmod = app_factory("def oops(:\n    pass\n")
    t0 = time.monotonic()
    with pytest.raises(WorkerStartError) as excinfo:
        worker_factory(appmod, ready_timeout=30)
    assert time.monotonic() - t0 < 20
    message = str(excinfo.value)
    assert "exited with code" in message
    assert "SyntaxError" in message
    assert excinfo.value.worker.proc.poll() not in (None, 0)


@pytest.mark.worker
def test_ready_timeout_kills_worker(
    app_factory: Callable[..., AppModule], worker_factory: Callable[..., Worker]
) -> None:
    # Nothing listens on this port; with broker_connection_retry_on_startup
    # the worker retries forever, so only the harness's timeout ends it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    appmod = app_factory(PLAIN_BODY, broker_url=f"redis://127.0.0.1:{port}/0")
    with pytest.raises(WorkerStartError, match="not ready after 3s") as excinfo:
        worker_factory(appmod, ready_timeout=3)
    worker = excinfo.value.worker
    assert worker.proc.poll() == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.killpg(worker.pid, 0)


# --------------------------------------------------------------------------
# redis
# --------------------------------------------------------------------------


@pytest.mark.worker
@pytest.mark.redis
def test_redis_workers(
    redis_url: str,
    app_factory: Callable[..., AppModule],
    worker_factory: Callable[..., Worker],
) -> None:
    appmod = app_factory(PLAIN_BODY, broker_url=redis_url)
    conf = appmod.load().app.conf
    assert conf.broker_url == conf.result_backend == redis_url
    w1 = worker_factory(appmod, nodename="w1@%h", concurrency=1)
    w2 = worker_factory(appmod, nodename="w2@%h", concurrency=1)
    assert w1.hostname != w2.hostname
    mod = appmod.load()
    assert mod.add.delay(2, 3).get(timeout=30) == 5
    pids = {mod.pid.delay().get(timeout=30) for _ in range(8)}
    assert pids <= set(w1.child_pids()) | set(w2.child_pids())
    t0 = time.monotonic()
    assert stop_all([w1, w2]) == {w1: 0, w2: 0}
    assert time.monotonic() - t0 < 8  # concurrent, not sequential


# --------------------------------------------------------------------------
# pure helpers
# --------------------------------------------------------------------------


def test_parse_json_lines() -> None:
    # U+2028 and NEL are legal raw inside JSON strings but str.splitlines()
    # would split on them.
    text = '{"a": 1}\n\n  \r\n{"msg": "x\u2028y\x85z"}\r\n'
    assert parse_json_lines(text) == [{"a": 1}, {"msg": "x\u2028y\x85z"}]
    with pytest.raises(AssertionError, match=r"src: line 2 is not valid JSON.*'oops'"):
        parse_json_lines('{"a": 1}\noops\n', source="src")
    with pytest.raises(AssertionError, match="not an object"):
        parse_json_lines("[1, 2]\n")


def test_wait_for() -> None:
    calls: list[int] = []

    def predicate() -> Any:
        calls.append(1)
        return len(calls) >= 3 and "value"

    assert wait_for(predicate, timeout=5, interval=0.001) == "value"
    with pytest.raises(AssertionError, match=r"timed out after 0\.1s: nope"):
        wait_for(lambda: False, timeout=0.1, message=lambda: "nope")
