"""Shared fixtures for logkit's tests, incl. real Celery worker subprocesses.

Fixtures:

* ``app_factory(body, *, name=None, broker_url=None)`` -> ``AppModule``
  (``workerutil.make_app`` bound to ``tmp_path``; loaded modules are
  unloaded/closed at teardown).
* ``worker_factory(appmod, **start_worker_kwargs)`` -> ``Worker``
  (``workerutil.start_worker``; every worker is stopped -- killed if need
  be -- at teardown, and its output is printed if the test failed).
* ``redis_server`` (session) -> object with ``.url``/``.port``/``.client()``.
* ``redis_url`` -> ``redis_server.url`` after FLUSHALL.
* ``rabbitmq_server`` (session) -> ``rabbitmqutil.RabbitMQServer`` (``.url``, ``.ctl()``).
* ``amqp_url`` -> ``rabbitmq_server.url`` after deleting the queues earlier tests used.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
for _p in (str(REPO_ROOT), str(TESTS_DIR)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from workerutil import (  # noqa: E402
    AppModule,
    Worker,
    make_app,
    start_worker,
    stop_all,
    wait_for,
)

#: A user's project with its own pytest.ini and conftest (which enables celery.contrib.pytest,
#: allowed only in a top-level conftest): run in its own pytest by test_testing_plugin.py.
collect_ignore = ["example_project"]

WORKER_FIXTURES = {"worker_factory"}
REDIS_FIXTURES = {"redis_server", "redis_url"}
RABBITMQ_FIXTURES = {"rabbitmq_server", "amqp_url"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "worker: starts real `celery worker` subprocesses (slow-ish)"
    )
    config.addinivalue_line("markers", "redis: needs a real redis-server (started by a fixture)")
    config.addinivalue_line(
        "markers", "rabbitmq: needs a real rabbitmq-server (started by a fixture)"
    )
    # Tests define tasks of the same name in several throwaway apps, on purpose. The
    # warning class exists from Celery 5.4 on (the matrix runs 5.3 too).
    import celery.exceptions

    if hasattr(celery.exceptions, "DuplicateTaskNameWarning"):
        config.addinivalue_line(
            "filterwarnings", "ignore::celery.exceptions.DuplicateTaskNameWarning"
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Auto-apply ``worker``/``redis`` markers based on fixtures used."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & WORKER_FIXTURES:
            item.add_marker(pytest.mark.worker)
        if names & REDIS_FIXTURES:
            item.add_marker(pytest.mark.redis)
        if names & RABBITMQ_FIXTURES:
            item.add_marker(pytest.mark.rabbitmq)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Remember each phase's report so fixtures can tell whether the test failed.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _test_failed(request: pytest.FixtureRequest) -> bool:
    for when in ("setup", "call"):
        rep = getattr(request.node, f"rep_{when}", None)
        if rep is not None and rep.failed:
            return True
    return False


@pytest.fixture(autouse=True)
def _uninstalled() -> Iterator[None]:
    """What a test's install()/configure() changed is undone through the public
    ``logkit.uninstall()``; each test starts with Celery's task loggers at their default
    level (NOTSET), as a fresh process has them."""
    import logging

    import logkit
    from logkit.events import prose

    names = tuple(prose.QUIETED_LOGGERS)
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.NOTSET)
    try:
        yield
    finally:
        logkit.uninstall()
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


# --------------------------------------------------------------------------
# apps and workers
# --------------------------------------------------------------------------


@pytest.fixture
def app_factory(tmp_path: Path) -> Iterator[Callable[..., AppModule]]:
    """``app_factory(body, *, name=None, broker_url=None, result_backend=None)``."""
    created: list[AppModule] = []

    def factory(body: str, **kwargs: Any) -> AppModule:
        appmod = make_app(tmp_path, body, **kwargs)
        created.append(appmod)
        return appmod

    yield factory
    for appmod in created:
        appmod.unload()


@pytest.fixture
def worker_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., Worker]]:
    """``worker_factory(appmod, **start_worker_kwargs) -> Worker``.

    All workers are stopped at teardown (warm shutdown, SIGKILL of the whole
    process group after 15 s) -- also when the test failed.
    """
    workers: list[Worker] = []

    def factory(appmod: AppModule, **kwargs: Any) -> Worker:
        worker = start_worker(appmod, **kwargs)
        workers.append(worker)
        return worker

    yield factory

    failed = _test_failed(request)
    for worker, result in stop_all(workers, timeout=15).items():
        if isinstance(result, BaseException):
            print(f"error stopping {worker!r}: {result!r}")
        if failed:
            print(worker.describe())


# --------------------------------------------------------------------------
# redis
# --------------------------------------------------------------------------


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]
    dir: Path
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def log(self) -> str:
        try:
            return (self.dir / "redis.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _find_redis_server() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )


def _stop_proc(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _start_redis(binary: str, workdir: Path) -> RedisServer:
    last_error = ""
    for _attempt in range(5):  # the free port may be grabbed in between
        port = _free_port()
        with open(workdir / "redis.log", "wb") as log:
            proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(workdir),
                    "--daemonize",
                    "no",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = RedisServer(port=port, proc=proc, dir=workdir)

        def pings(server: RedisServer = server) -> bool:
            if server.proc.poll() is not None:
                raise RuntimeError("redis-server exited")
            try:
                return bool(server.client().ping())
            except Exception:
                return False

        try:
            wait_for(pings, timeout=15, interval=0.05, message="redis-server PING")
            return server
        except (RuntimeError, AssertionError) as exc:
            last_error = f"{exc}\n{server.log()}"
            _stop_proc(proc)
            time.sleep(0.1)
    raise RuntimeError(f"could not start redis-server: {last_error}")


@pytest.fixture(scope="session")
def redis_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RedisServer]:
    binary = _find_redis_server()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server not found: .ci/run must apt-get install redis-server")
        pytest.skip("redis-server binary not found")
    server = _start_redis(binary, tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        _stop_proc(server.proc)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session's redis (db 0), FLUSHALLed before the test."""
    client = redis_server.client()
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


# --------------------------------------------------------------------------
# rabbitmq
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[Any]:
    """A node of our own (free AMQP/distribution/epmd ports, own dirs and cookie);
    see ``tests/rabbitmqutil.py``. Takes ~10 s to start, so once per session."""
    import tempfile

    from rabbitmqutil import find_rabbitmq, start_rabbitmq

    bindir = find_rabbitmq()
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail("rabbitmq-server not found: .ci/run must apt-get install rabbitmq-server")
        pytest.skip("rabbitmq-server not installed (Debian: apt-get install rabbitmq-server)")
    # Not under tmp_path_factory: pytest's base dir is 0700, and the node runs as `rabbitmq`.
    workdir = Path(tempfile.mkdtemp(prefix="logkit-rabbitmq-"))
    server = start_rabbitmq(bindir, workdir)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


#: Queues the tests' workers declare; deleted before each test so nothing is left over.
AMQP_QUEUES = ("celery", "a", "b")


@pytest.fixture
def amqp_url(rabbitmq_server: Any) -> str:
    """URL of the session's RabbitMQ, with the queues of earlier tests deleted."""
    from rabbitmqutil import delete_queues

    delete_queues(rabbitmq_server.url, AMQP_QUEUES)
    return str(rabbitmq_server.url)
