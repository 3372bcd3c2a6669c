"""Web requests under real servers, publishing to a real worker on Redis (#14).

A Starlette app (tests/web/starlette_app.py) under uvicorn takes 200 concurrent
requests from httpx; each publishes tasks (plain, chain, group, a retry, a subtask
from the task) to a ``celery worker``; every task record in the worker's JSON log
carries its own request's id and no other.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from workerutil import parse_json_lines, wait_for

from logkit import cli

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

WEB = Path(__file__).parent / "web"
REQUESTS = 200

TASKS = """
import logging
import logkit

logkit.install(app, format="json")
log = logging.getLogger("webtask")


@app.task(bind=True, max_retries=1)
def work(self, n):
    log.info("task ran", extra={"n": n, "try": self.request.retries})
    if n % 10 == 0:
        child.delay(n)
    if n % 25 == 0 and self.request.retries == 0:
        raise self.retry(countdown=0)
    return n


@app.task
def child(n):
    log.info("child ran", extra={"n": n})
    return n
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(cmd: list[str], cwd: Path, env: dict[str, str], port: int,
           log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"server exited:\n{log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    wait_for(up, timeout=60)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture
def served(
    app_factory: Callable[..., Any], worker_factory: Callable[..., Any], redis_url: str,
    tmp_path: Path,
) -> Iterator[dict[str, Any]]:
    appmod = app_factory(TASKS, broker_url=redis_url)
    worker_log = tmp_path / "worker.log"
    worker = worker_factory(appmod, logfile=worker_log, concurrency=2)
    port = _free_port()
    web_log = tmp_path / "web.log"
    env = {
        **os.environ,
        "WEB_LOG": str(web_log),
        "CELERY_APP": appmod.name,
        "PYTHONPATH": os.pathsep.join([str(appmod.workdir), str(WEB), os.getcwd()]),
    }
    proc = _serve(
        [sys.executable, "-m", "uvicorn", "starlette_app:app", "--port", str(port),
         "--no-access-log", "--log-level", "warning"],
        appmod.workdir, env, port, tmp_path / "uvicorn.out",
    )
    try:
        yield {"url": f"http://127.0.0.1:{port}", "worker": worker, "worker_log": worker_log,
               "web_log": web_log, "out": tmp_path / "uvicorn.out"}
    finally:
        _stop(proc)


async def _hammer(url: str) -> dict[int, httpx.Response]:
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def one(n: int) -> tuple[int, httpx.Response]:
            # even n: the client's own id; odd n: the server makes one
            headers = {"X-Request-ID": f"client-{n}"} if n % 2 == 0 else {}
            return n, await client.get(f"/work/{n}", headers=headers)

        return dict(await asyncio.gather(*(one(n) for n in range(REQUESTS))))


def _expected_task_records(n: int) -> int:
    """Task records (``task ran``/``child ran``) one request ``n`` causes."""
    if n % 20 == 5:
        count = 2  # chain: work, then child
    elif n % 20 == 15:
        return 2  # group of two children
    else:
        count = 1
    if n % 10 == 0:
        count += 1  # work publishes a child
    if n % 25 == 0:
        count += 1 + (1 if n % 10 == 0 else 0)  # retried once (and publishes again)
    return count


@pytest.mark.timeout(240)
def test_200_concurrent_requests_each_task_carries_its_own_request_id(
    served: dict[str, Any],
) -> None:
    responses = asyncio.run(_hammer(served["url"]))
    ids: dict[int, str] = {}
    for n, response in responses.items():
        assert response.status_code == 200, response.text
        rid = response.headers["x-request-id"]
        body = response.json()
        assert body == {"seen": rid, "after": rid}
        if n % 2 == 0:
            assert rid == f"client-{n}"
        else:
            assert len(rid) == 32 and int(rid, 16) >= 0
        ids[n] = rid
    assert len(set(ids.values())) == REQUESTS

    expected = sum(_expected_task_records(n) for n in range(REQUESTS))

    def task_records() -> list[dict[str, Any]]:
        text = served["worker_log"].read_text() if served["worker_log"].exists() else ""
        return [r for r in parse_json_lines(text, "worker log")
                if r.get("message") in ("task ran", "child ran")]

    wait_for(lambda: len(task_records()) >= expected, timeout=120)
    records = task_records()
    mismatched = [r for r in records if r.get("request_id") != ids[r["n"]]]
    print(f"task records checked: {len(records)}; mismatched request ids: {len(mismatched)}")
    assert len(records) == expected
    assert mismatched == []
    # the http_* keys stay in the web process under propagate="*"
    assert not any("http_path" in r or "http_method" in r for r in records)
    assert any(r.get("try") == 1 for r in records)  # the retry kept it too

    web = parse_json_lines(served["web_log"].read_text(), "web log")
    finished = [r for r in web if r.get("event") == "request_finished"]
    assert len(finished) == REQUESTS
    assert {r["request_id"] for r in finished} == set(ids.values())
    assert all(r["status"] == 200 and r["duration_ms"] >= 0 and r["http_path"].startswith(
        "/work/") for r in finished)
    published = [r for r in web if r.get("message") == "published"]
    assert all(r["request_id"] == ids[r["n"]] for r in published)

    # logkit view --request: the web process's and the tasks' records, merged by time
    rid = ids[50]
    result = CliRunner().invoke(cli.main, [
        "view", "--no-color", "--request", rid, str(served["web_log"]), str(served["worker_log"])
    ])
    assert result.exit_code == 0, result.output
    text = result.output
    assert text.count("task ran") == 2 and text.count("child ran") == 2  # retried, 2 children
    assert "published" in text and "Request finished" in text
    # merged by time (the web's "published" line is written after the publish returns, so
    # under load the worker's lines may come first: the order is the clock's, not the story's)
    stamps = re.findall(r"(?m)^(?:\S+ +)?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) ", text)
    assert len(stamps) >= 6 and stamps == sorted(stamps), text


FORGED = {
    "ansi": "x\x1b[2J\x1b[31mFORGED",
    "10KB": "A" * 10_000,
    "unsafe-chars": "ok?<script>",
    "unicode-separator": "x\u2028y",
}


def _raw_get(url: str, request_id: bytes) -> tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(b"GET /work/3 HTTP/1.1\r\nHost: x\r\nX-Request-ID: " + request_id
                     + b"\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return head, body


def test_streaming_and_forged_ids_over_http(served: dict[str, Any]) -> None:
    response = httpx.get(served["url"] + "/stream", headers={"X-Request-ID": "stream-9"})
    assert response.headers["x-request-id"] == "stream-9"
    assert response.text.splitlines() == ["stream-9"] * 3

    ids: list[bytes] = []
    for name, value in FORGED.items():
        raw = value.encode("utf-8")
        head, body = _raw_get(served["url"], raw)
        assert head.startswith(b"HTTP/1.1 200"), (name, head[:200])
        echoed = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                  if line.lower().startswith(b"x-request-id:")]
        assert len(echoed) == 1 and len(echoed[0]) == 32 and echoed[0] != raw, name
        assert json.loads(body)["seen"] == echoed[0].decode()
        wait_for(lambda e=echoed[0]: e in served["web_log"].read_bytes(), timeout=10)
        ids.append(echoed[0])
    # the tasks' records (they carry the request's id) are written: then nothing forged is
    wait_for(lambda: all(e in served["worker_log"].read_bytes() for e in ids), timeout=60,
             message=lambda: served["worker_log"].read_text())
    for path in (served["web_log"], served["worker_log"], served["out"]):
        text = path.read_bytes() if path.exists() else b""
        for name, value in FORGED.items():
            assert value.encode() not in text, (name, path)
            assert json.dumps(value)[1:-1].encode() not in text, (name, path)
        assert b"\x1b" not in text
    web = parse_json_lines(served["web_log"].read_text(), "web log")
    rejected = [r for r in web if "rejected_request_id_length" in r]
    assert sorted(r["rejected_request_id_length"] for r in rejected) == sorted(
        len(v.encode()) for v in FORGED.values()  # servers decode header bytes as latin-1
    )
