"""logkit.django.RequestContextMiddleware with Django's test client and under uvicorn (#14).

Django is configured once per process (``settings.configure``), so each check runs in a
fresh interpreter with tests/web/django_site.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")

WEB = Path(__file__).parent / "web"

CLIENT_SCRIPT = r'''
import asyncio, json, logging, sys
import django_site  # settings, URLs
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import AsyncClient, Client
import logkit

events = []
class H(logging.Handler):
    def emit(self, record):
        events.append({"event": getattr(record, "event", None),
                       "status": getattr(record, "status", None), **logkit.get_context()})
logging.getLogger("logkit.events").addHandler(H())
logging.getLogger("logkit.events").setLevel(logging.INFO)

call_command("migrate", verbosity=0)
user = User.objects.create_user("alice", "alice@example.com", "pw")
client = Client()
out = {}
r = client.get("/sync?token=x", HTTP_X_REQUEST_ID="dj-1")
out["anon"] = {"header": r["X-Request-ID"], "ctx": r.json()}
client.force_login(user)
r = client.get("/sync", HTTP_X_REQUEST_ID="dj-2", HTTP_X_FORWARDED_FOR="6.6.6.6")
out["user"] = {"header": r["X-Request-ID"], "ctx": r.json()}
r = client.get("/sync", HTTP_X_REQUEST_ID="bad\x1b[31m" + "z" * 200)
out["forged"] = {"header": r["X-Request-ID"], "ctx": r.json()}
r = client.get("/stream", HTTP_X_REQUEST_ID="dj-stream")
out["stream"] = {"header": r["X-Request-ID"], "body": b"".join(r.streaming_content).decode()}
r.close()

async def run_async():
    aclient = AsyncClient()
    r = await aclient.get("/async", headers={"X-Request-ID": "dj-async"})
    return {"header": r["X-Request-ID"], "ctx": json.loads(r.content)}
out["async"] = asyncio.run(run_async())
out["after"] = logkit.get_context()
out["events"] = events
out["user_pk"] = user.pk
print(json.dumps(out))
'''


def _run(code: str, env: dict[str, str] | None = None) -> Any:
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=WEB, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(WEB), os.getcwd()]),
             **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_django_test_client_sync_async_streaming_user() -> None:
    out = _run(CLIENT_SCRIPT)
    anon = out["anon"]
    assert anon["header"] == "dj-1"
    assert anon["ctx"] == {"request_id": "dj-1", "http_method": "GET", "http_path": "/sync",
                           "client_ip": "127.0.0.1"}
    user = out["user"]["ctx"]
    assert user["user_id"] == out["user_pk"] and user["client_ip"] == "127.0.0.1"
    assert "alice" not in json.dumps(out["user"])
    forged = out["forged"]
    assert len(forged["header"]) == 32 and forged["ctx"]["request_id"] == forged["header"]
    assert out["stream"] == {"header": "dj-stream", "body": "dj-stream\n" * 3}
    assert out["async"]["header"] == "dj-async"
    assert out["async"]["ctx"]["request_id"] == "dj-async"
    assert out["after"] == {}
    events = out["events"]
    assert [e["request_id"] for e in events] == [
        "dj-1", "dj-2", forged["header"], "dj-stream", "dj-async"
    ]
    assert all(e["event"] == "request_finished" and e["status"] == 200 for e in events)
    assert events[1]["user_id"] == out["user_pk"]
    assert "\x1b" not in json.dumps(out["events"])


def test_bad_django_setting_is_a_clear_error() -> None:
    code = (
        "from django.conf import settings; settings.configure(LOGKIT_REQUEST={'bogus': 1})\n"
        "import logkit.django\n"
        "try:\n"
        "    logkit.django.RequestContextMiddleware(lambda r: None)\n"
        "except Exception as exc:\n"
        "    import json; print(json.dumps(str(exc)))\n"
    )
    message = _run(code)
    assert "'bogus'" in message and "settings.LOGKIT_REQUEST" in message
    assert "request_id_header" in message


@pytest.mark.timeout(120)
def test_django_under_uvicorn_concurrent_requests(tmp_path: Path) -> None:
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from test_web_servers import _free_port, _serve, _stop

    port = _free_port()
    log = tmp_path / "django.log"
    env = {**os.environ, "DJANGO_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(WEB), os.getcwd()])}
    proc = _serve([sys.executable, "-m", "uvicorn", "django_site:application", "--port",
                   str(port), "--no-access-log", "--log-level", "warning"],
                  WEB, env, port, tmp_path / "uvicorn.out")
    try:
        async def hammer() -> list[Any]:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                         timeout=60) as client:
                return await asyncio.gather(*(
                    client.get("/async" if n % 2 else "/sync",
                               headers={"X-Request-ID": f"uv-{n}"})
                    for n in range(100)
                ))

        responses = asyncio.run(hammer())
        stream = httpx.get(f"http://127.0.0.1:{port}/stream", headers={"X-Request-ID": "uv-s"})
    finally:
        _stop(proc)
    for n, response in enumerate(responses):
        assert response.status_code == 200
        assert response.headers["x-request-id"] == f"uv-{n}"
        assert response.json()["request_id"] == f"uv-{n}"
    assert stream.text == "uv-s\n" * 3
    from workerutil import parse_json_lines

    records = parse_json_lines(log.read_text(), "django log")
    views = [r for r in records if r.get("message") in ("sync view", "async view")]
    assert len(views) == 100 and all(r["request_id"].startswith("uv-") for r in views)
    finished = [r for r in records if r.get("event") == "request_finished"]
    assert sorted(r["request_id"] for r in finished) == sorted(
        [f"uv-{n}" for n in range(100)] + ["uv-s"]
    )
