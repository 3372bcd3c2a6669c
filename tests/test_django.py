"""logkit inside a Django project's own logging config (#13), with real processes.

The project is ``tests/django_project`` (``djproj`` settings and Celery app set up the
usual Django way, ``shop`` app with tasks and a view); its settings pick the logging
set-up from ``DJP_*`` environment variables. Workers run on the filesystem broker (one
on Redis); every task line is counted in everything the worker wrote.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from workerutil import REPO_ROOT, TESTS_DIR, AppModule, start_worker, wait_for

pytest.importorskip("django")

PROJECT = Path(__file__).resolve().parent / "django_project"
TASKS = 3
USER_LINE = re.compile(r"^USER (\w+) (\S+) \[(\S*) (\S*)\] (.*)$")


def _env(workdir: Path, logging_mode: str, hijack: bool, **extra: str) -> dict[str, str]:
    env = {
        "DJANGO_SETTINGS_MODULE": "djproj.settings",
        "DJP_LOGGING": logging_mode,
        "DJP_HIJACK": "1" if hijack else "0",
        "DJP_WORKDIR": str(workdir),
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(PROJECT), str(TESTS_DIR)]),
        **extra,
    }
    if "DJP_BROKER_URL" not in env:
        folders = {name: workdir / "broker" / name for name in ("queue", "processed", "control")}
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        env["DJP_BROKER_URL"] = "filesystem://"
        env["DJP_TRANSPORT_OPTIONS"] = json.dumps({
            "data_folder_in": str(folders["queue"]),
            "data_folder_out": str(folders["queue"]),
            "processed_folder": str(folders["processed"]),
            "control_folder": str(folders["control"]),
            "store_processed": False,
            "polling_interval": 0.05,
        })
    return env


def _send(env: dict[str, str], numbers: list[int]) -> None:
    """Publish ``greet(n)`` from a fresh interpreter (the publisher is a Django process too)."""
    code = (
        "import djproj.celery_app, sys\n"
        "from shop.tasks import greet\n"
        "for n in sys.argv[1:]:\n"
        "    greet.delay(int(n))\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, *map(str, numbers)],
        env={**os.environ, **env}, cwd=PROJECT, check=True, timeout=60,
    )


def _run_worker(
    tmp_path: Path, logging_mode: str, hijack: bool, pool: str = "solo", **extra: str
) -> str:
    """Start a worker of the Django project, run ``TASKS`` tasks, stop it; its output."""
    workdir = tmp_path / "w"
    workdir.mkdir()
    env = _env(workdir, logging_mode, hijack, **extra)
    appmod = AppModule("djproj.celery_app", workdir / "unused.py", workdir)
    worker = start_worker(appmod, env=env, pool=pool, concurrency=1)
    try:
        numbers = [1000 + i for i in range(TASKS)]
        _send(env, numbers)
        wait_for(lambda: all(f"greeting {n}" in worker.output() for n in numbers), 60,
                 message=worker.describe)
        # the lines after the task's own line (task_succeeded) have been written too
        wait_for(lambda: worker.output().count("ucceeded") >= TASKS, 30, message=worker.describe)
    finally:
        worker.stop()
    return worker.output()


def _lines_of(output: str, number: int) -> list[str]:
    """Every line that is the task's line ``greeting <number>`` (JSON or text)."""
    return [line for line in output.splitlines()
            if re.search(rf'greeting {number}("|$)', line)]


def _json(line: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(line)
    return data


# logging mode, hijack, what writes the task lines
COMBINATIONS = [
    ("console", False, "user"),  # cookiecutter-django: the doubled lines
    ("console", True, "logkit"),  # Celery's hijack: logkit's handler replaces the user's
    ("absent", False, "logkit"),
    ("absent", True, "logkit"),
    ("none", False, "logkit"),  # LOGGING_CONFIG = None
    ("logkit", False, "user-json"),  # LOGGING with logkit.JsonFormatter by dotted path
]


@pytest.mark.parametrize(("logging_mode", "hijack", "writer"), COMBINATIONS)
def test_each_task_line_once_with_context(
    tmp_path: Path, logging_mode: str, hijack: bool, writer: str
) -> None:
    output = _run_worker(tmp_path, logging_mode, hijack)
    for number in range(1000, 1000 + TASKS):
        lines = _lines_of(output, number)
        assert len(lines) == 1, f"greeting {number} written {len(lines)} times:\n{output}"
        line = lines[0]
        if writer == "user":  # the user's own format, with logkit's context filled in
            match = USER_LINE.match(line)
            assert match, line
            assert match.group(3) == "shop.tasks.greet"
            assert re.fullmatch(r"[0-9a-f-]{36}", match.group(4))
        else:
            data = _json(line)
            assert data["task_name"] == "shop.tasks.greet"
            assert data["logger"] == "shop.tasks"
            assert ("service" in data) is (writer == "user-json")  # the user's formatter options
    if writer == "user":
        # lifecycle events reach the user's handlers, once each, with the task context
        succeeded = [ln for ln in output.splitlines() if ln.endswith("] Task succeeded")]
        assert len(succeeded) == TASKS
        assert all(USER_LINE.match(ln).group(2) == "logkit.events" for ln in succeeded)  # type: ignore[union-attr]
        assert "Worker ready" in output
        assert not [ln for ln in output.splitlines() if ln.startswith("{")], "a logkit sink wrote"
        assert "Traceback" not in output and "KeyError" not in output
    else:
        events = [_json(ln) for ln in output.splitlines() if ln.startswith("{")]
        succeeded = [e for e in events if e.get("event") == "task_succeeded"]
        assert len(succeeded) == TASKS
        assert not [ln for ln in output.splitlines() if ln.startswith("USER ")]


@pytest.mark.parametrize("disable_existing", [True, False])
def test_disable_existing_loggers_loses_no_event(tmp_path: Path, disable_existing: bool) -> None:
    output = _run_worker(tmp_path, "console", False,
                         DJP_DISABLE_EXISTING="1" if disable_existing else "0")
    # (task_started is at DEBUG by default, below the worker's -l INFO)
    for event in ("Worker ready", "Task received", "Task succeeded"):
        assert event in output, f"{event!r} lost:\n{output}"
    assert len(_lines_of(output, 1000)) == 1


@pytest.mark.parametrize(("choice", "copies"), [("add", 2), ("replace", 1)])
def test_root_handlers_choice(tmp_path: Path, choice: str, copies: int) -> None:
    output = _run_worker(tmp_path, "console", False, DJP_ROOT_HANDLERS=choice)
    lines = _lines_of(output, 1000)
    assert len(lines) == copies, output
    assert any(line.startswith("{") for line in lines)


def test_prefork_on_redis(tmp_path: Path, redis_url: str) -> None:
    output = _run_worker(tmp_path, "console", False, pool="prefork",
                         DJP_BROKER_URL=redis_url, DJP_RESULT_BACKEND=redis_url)
    for number in range(1000, 1000 + TASKS):
        lines = _lines_of(output, number)
        assert len(lines) == 1, output
        assert USER_LINE.match(lines[0])


# ---------------------------------------------------------------------------
# beat, and worker -B
# ---------------------------------------------------------------------------


def _beat_sent(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if "Beat sent due task" in ln
            or "Sending due task" in ln]


def test_beat_writes_each_line_once(tmp_path: Path) -> None:
    workdir = tmp_path / "b"
    workdir.mkdir()
    env = {**os.environ, **_env(workdir, "console", False)}
    out_path = workdir / "beat.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "djproj.celery_app", "beat", "-l", "INFO",
             "-s", str(workdir / "schedule")],
            cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_for(lambda: len(_beat_sent(out_path.read_text())) >= 2, 60,
                 message=lambda: out_path.read_text())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    output = out_path.read_text()
    sent = _beat_sent(output)
    assert all(USER_LINE.match(ln) for ln in sent), output  # the user's handler, only
    assert "Beat started" in output and "{" not in output


def test_worker_with_embedded_beat(tmp_path: Path, redis_url: str) -> None:
    workdir = tmp_path / "wb"
    workdir.mkdir()
    env = _env(workdir, "console", False, DJP_BROKER_URL=redis_url, DJP_RESULT_BACKEND=redis_url)
    appmod = AppModule("djproj.celery_app", workdir / "unused.py", workdir)
    worker = start_worker(appmod, env=env, pool="solo", concurrency=1,
                          extra_args=["-B", "-s", str(workdir / "schedule")])
    try:
        wait_for(lambda: worker.output().count("Task succeeded") >= 2, 60,
                 message=worker.describe)
    finally:
        worker.stop()
    output = worker.output()
    ticks = [ln for ln in output.splitlines() if ln.endswith(" tick")]
    assert ticks and all(USER_LINE.match(ln) for ln in ticks), output
    assert all("shop.tasks.tick" in ln for ln in ticks)
    assert not [ln for ln in output.splitlines() if ln.startswith("{")]


# ---------------------------------------------------------------------------
# the web process: LOGGING alone, under a real server
# ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    pytest.importorskip("gunicorn")
    port = _free_port()
    env = {**os.environ, **_env(tmp_path, "logkit", False)}
    log = tmp_path / "gunicorn.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "djproj.wsgi", "-b", f"127.0.0.1:{port}",
             "-w", "1", "--access-logfile", "-"],
            cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        def up() -> bool:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        wait_for(up, 60, message=lambda: log.read_text())
        yield f"http://127.0.0.1:{port}", log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_web_process_writes_json_with_the_request_context(web: tuple[str, Path]) -> None:
    httpx = pytest.importorskip("httpx")
    base, log = web
    for number in (7, 8):
        response = httpx.get(f"{base}/order/{number}/", headers={"X-Request-ID": f"req-{number}"})
        assert response.status_code == 200

    def lines() -> list[dict[str, Any]]:
        return [_json(ln) for ln in log.read_text().splitlines()
                if ln.startswith("{") and '"order ' in ln]

    found = wait_for(lambda: len(lines()) >= 2 and lines(), 10, message=lambda: log.read_text())
    assert [(r["message"], r["request_id"], r["service"]) for r in found] == [
        ("order 7 viewed", "req-7", "shop"),
        ("order 8 viewed", "req-8", "shop"),
    ]
    assert all(r["logger"] == "shop.views" for r in found)
    # once each: a later request's line is written, and still one line each for 7 and 8
    assert httpx.get(f"{base}/order/9/", headers={"X-Request-ID": "req-9"}).status_code == 200
    wait_for(lambda: any(r["message"] == "order 9 viewed" for r in lines()), 10,
             message=lambda: log.read_text())
    assert [r["message"] for r in lines()] == ["order 7 viewed", "order 8 viewed",
                                               "order 9 viewed"]
