"""``python -m logkit demo``, run as a new user would: a subprocess, real worker, real broker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

from celery_versions import SHUTDOWN_NOTICE, SHUTDOWN_NOTICE_ON_STDERR
from workerutil import REPO_ROOT, parse_json_lines

CONSOLE_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) +\S+: "
)
PLAIN_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}: (INFO|WARNING|ERROR)/\w+")


def _demo(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    for var in ("NO_COLOR", "FORCE_COLOR", "LOGKIT_FORMAT"):
        env.pop(var, None)
    return subprocess.run(
        [sys.executable, "-m", "logkit", "demo", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def _task_records(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("task_name") == f"logkit.demo_app.{name}"]


def test_demo_json_runs_end_to_end() -> None:
    result = _demo("--format", "json")  # within _demo's timeout: it ends by itself
    assert result.returncode == 0, result.stderr + result.stdout[-3000:]
    records = parse_json_lines(result.stdout, "demo stdout")  # every line is JSON
    assert "done in" in result.stderr

    greet = _task_records(records, "greet")
    assert any(r["message"] == "greeting ada" and r.get("user") == "ada" for r in greet)
    # Exactly one failure record for the failing task, with the structured exception.
    failures = [r for r in _task_records(records, "fail") if r["level"] == "ERROR"]
    assert len(failures) == 1, failures
    assert failures[0]["exception"]["type"] == "ValueError"
    assert "card declined" in failures[0]["exception"]["traceback"]
    # The retrying task: two retry warnings from the task, then success on retry 2.
    flaky = _task_records(records, "flaky")
    assert len([r for r in flaky if r["message"].startswith("upstream not ready")]) == 2
    assert any(
        r["message"] == "upstream ready after 2 retries" and r["retries"] == 2 for r in flaky
    )
    # The chain: both links share the root and carry the publisher's request_id.
    adds = [r for r in _task_records(records, "add") if r["message"].startswith("adding")]
    assert len(adds) == 2
    # the chain's root: its own id, so no root_id (#37); the second link names it
    assert "root_id" not in adds[0] and adds[1]["root_id"] == adds[0]["task_id"]
    assert adds[1]["parent_id"] == adds[0]["task_id"]
    request_ids = {r.get("request_id") for r in records if "task_id" in r}
    assert len(request_ids) == 1 and next(iter(request_ids)).startswith("req-")
    assert f"request_id={next(iter(request_ids))!r}" in result.stderr


def _without_the_shutdown_notice(lines: list[str]) -> list[str]:
    """The worker's log lines; on Celery 5.3 less its text shutdown notice, once."""
    if SHUTDOWN_NOTICE_ON_STDERR:  # the worker's stderr is the demo's stdout
        assert lines.count(SHUTDOWN_NOTICE) == 1, lines[-5:]
        return [line for line in lines if line != SHUTDOWN_NOTICE]
    return lines


def test_demo_console_with_threads_pool() -> None:
    result = _demo("--format", "console", "--pool", "threads")
    assert result.returncode == 0, result.stderr + result.stdout[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    records = _without_the_shutdown_notice([line for line in lines if not line.startswith("    ")])
    assert records and all(CONSOLE_LINE.match(line) for line in records), records[:3]
    assert "\x1b[" not in result.stdout  # a pipe, not a terminal: no colour
    assert any("[logkit.demo_app.greet " in line and "greeting ada" in line for line in lines)
    assert any(line.strip() == "ValueError: card declined for 1999 cents" for line in lines)
    assert "--pool threads" in result.stderr


def test_demo_plain_on_a_real_redis(redis_url: str) -> None:
    result = _demo("--format", "plain", "--pool", "solo", "--broker", redis_url)
    assert result.returncode == 0, result.stderr + result.stdout[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    records = _without_the_shutdown_notice([line for line in lines if not line.startswith("    ")])
    assert records and all(PLAIN_LINE.match(line) for line in records), records[:3]
    assert any("Connected to redis://" in line for line in lines)
    assert redis_url in result.stderr


def test_demo_unreachable_broker_fails_clearly() -> None:
    # gives up by itself (no endless reconnecting): within the timeout
    result = _demo("--broker", "redis://127.0.0.1:1/0", timeout=60)
    assert result.returncode == 1
    assert "logkit demo: error: cannot connect to the broker redis://127.0.0.1:1/0" in result.stderr
    assert "Traceback" not in result.stderr
