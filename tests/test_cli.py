"""The command line: ``celery`` preload options (real workers, real beat) and ``logkit view``."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from click.testing import CliRunner
from workerutil import REPO_ROOT, AppModule, Worker, make_app, start_worker, stop_all, wait_for

import logkit
from logkit import celery_options, cli

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

CONSOLE_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) +\S+: "
)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *(p for p in [env.get("PYTHONPATH")] if p)]
    )
    env.pop("NO_COLOR", None)
    env.pop("FORCE_COLOR", None)
    env.update(extra)
    return env


def _celery(appmod: AppModule, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(appmod.workdir), env["PYTHONPATH"]])
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", appmod.name, *args],
        cwd=appmod.workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _logkit(
    *args: str, stdin: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "logkit", *args],
        input=stdin,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _view(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Any:
    result = CliRunner().invoke(cli.main, ["view", *args], input=stdin, env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _line(ts: str, message: str, level: str = "INFO", **fields: Any) -> str:
    return json.dumps(
        {"timestamp": ts, "level": level, "logger": "app", "message": message, **fields}
    )


# ---------------------------------------------------------------------------
# Preload options on real workers
# ---------------------------------------------------------------------------

BODY = """
import logging

import logkit

logkit.install(app, format="json", fields={"team": "core"})
app.conf.beat_schedule = {"tick": {"task": f"{app.main}.hello", "schedule": 0.3, "args": ("beat",)}}

log = logging.getLogger("demo.tasks")


@app.task
def hello(who):
    log.warning("hello %s", who, extra={"who": who})
    return who
"""


@dataclass
class Runs:
    console: Worker  # --log-format console --log-field service=billing --log-field env=test
    json_beat: Worker  # --log-format json --no-log-events --log-field service=x -B
    console_id: str
    json_id: str
    apps: tuple[AppModule, AppModule]


def _wait_log(worker: Worker, needle: str, timeout: float = 20) -> str:
    return wait_for(
        lambda: needle in worker.read_log() and worker.read_log(),
        timeout=timeout,
        message=lambda: f"{needle!r} not in the log of {worker!r}\n{worker.describe()}",
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    base = tmp_path_factory.mktemp("cli")
    app_a = make_app(base, BODY, name="cli_console")
    app_b = make_app(base, BODY, name="cli_json")
    env = {"LOGKIT_FORMAT": "plain"}  # the command line wins over env, kwargs and app.conf
    with ThreadPoolExecutor(2) as pool:
        fut_a = pool.submit(
            start_worker,
            app_a,
            logfile="a.log",
            env=env,
            nodename="a@%h",
            extra_args=[
                "--log-format",
                "console",
                "--log-field",
                "service=billing",
                "--log-field",
                "env=test",
            ],
        )
        fut_b = pool.submit(
            start_worker,
            app_b,
            logfile="b.log",
            env=env,
            nodename="b@%h",
            extra_args=[
                "--log-format",
                "json",
                "--no-log-events",
                "--log-field",
                "service=x",
                "-B",
                "-s",
                str(app_b.workdir / "beat-schedule"),
            ],
        )
        workers = [fut_a.result(), fut_b.result()]
    try:
        ids = []
        for appmod in (app_a, app_b):
            result = appmod.load().hello.delay("cli")
            assert result.get(timeout=20) == "cli"
            ids.append(result.id)
        _wait_log(workers[0], ids[0])
        _wait_log(workers[1], "beat: Starting")
        yield Runs(workers[0], workers[1], ids[0], ids[1], (app_a, app_b))
    finally:
        stop_all(workers, timeout=15)
        for appmod in (app_a, app_b):
            appmod.unload()


def test_log_format_console_changes_a_running_workers_output(runs: Runs) -> None:
    text = runs.console.read_log()
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines
    # Every record is a console line (install said json, LOGKIT_FORMAT said plain).
    records = [line for line in lines if not line.startswith("    ")]
    bad = [line for line in records if not CONSOLE_LINE.match(line)]
    assert not bad, bad[:3]
    assert not any(line.lstrip().startswith("{") for line in lines)
    task_lines = [line for line in lines if "hello cli" in line]
    assert len(task_lines) == 1, text
    line = task_lines[0]
    assert f"[{runs.apps[0].name}.hello {runs.console_id}]" in line
    # --log-field values are added to the fields given to install().
    for pair in ("team=core", "service=billing", "env=test", "who=cli"):
        assert pair in line
    # Lifecycle events are on by default.
    assert "event=task_succeeded" in text


def test_json_no_log_events_and_fields_with_embedded_beat(runs: Runs) -> None:
    worker = runs.json_beat
    records = worker.json_lines()  # every line is a JSON object
    assert records
    assert all(r.get("service") == "x" and r.get("team") == "core" for r in records)
    assert not [r for r in records if "event" in r], "--no-log-events must switch events off"
    # Without events, Celery's own line for the success is kept.
    assert any("succeeded in" in r["message"] and runs.json_id in r["message"] for r in records)
    # The embedded beat (-B, a separate process) logs with the same options.
    starting = [r for r in records if r["logger"] == "celery.beat" and "Starting" in r["message"]]
    assert starting and all(r["process"] != worker.pid for r in starting)


def test_celery_beat_takes_the_options(tmp_path: Path) -> None:
    appmod = make_app(tmp_path, BODY, name="cli_beat")
    env = _env(LOGKIT_FORMAT="json")
    env["PYTHONPATH"] = os.pathsep.join([str(appmod.workdir), env["PYTHONPATH"]])
    err_path = appmod.workdir / "beat.err"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                appmod.name,
                "beat",
                "-l",
                "INFO",
                "-s",
                str(appmod.workdir / "schedule"),
                "--log-format",
                "console",
                "--log-field",
                "service=beat",
            ],
            cwd=appmod.workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: err_path.read_text().count("tick") >= 2,
            timeout=20,
            message=lambda: err_path.read_text(),
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines = [line for line in err_path.read_text().splitlines() if line.strip()]
    # Every line is a console line (LOGKIT_FORMAT and install() said otherwise), with the field.
    bad = [line for line in lines if not (CONSOLE_LINE.match(line) and "service=beat" in line)]
    assert not bad, bad[:3]
    assert any("tick" in line for line in lines)


@pytest.mark.parametrize("command", ["worker", "beat"])
def test_help_lists_the_options(tmp_path: Path, command: str) -> None:
    appmod = make_app(tmp_path, "import logkit\nlogkit.install(app)\n", name="cli_help")
    result = _celery(appmod, command, "--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert celery_options.HELP_GROUP in out
    assert "--log-format [auto|json|console|plain]" in out
    assert "--log-field KEY=VALUE" in out
    assert "--log-events / --no-log-events" in out
    assert "--log-task-buffer N" in out and "--log-dedupe-window SECONDS" in out


def test_help_without_install_has_no_options(tmp_path: Path) -> None:
    appmod = make_app(tmp_path, "", name="cli_noinstall")
    result = _celery(appmod, "worker", "--help")
    assert result.returncode == 0, result.stderr
    assert "--log-format" not in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--log-format", "jsn"], "'jsn' is not one of 'auto', 'json', 'console', 'plain'"),
        (
            ["--log-field", "nokey"],
            "Invalid value for '--log-field': expected KEY=VALUE; got 'nokey'",
        ),
        (["--log-field", "=v"], "expected KEY=VALUE; got '=v'"),
        # the option's own parser, as for LOGKIT_TASK_BUFFER (the option table)
        (["--log-task-buffer", "lots"],
         "Invalid value for '--log-task-buffer': must be an integer >= 0 (0 = off); got 'lots'"),
    ],
)
def test_bad_values_are_usage_errors(tmp_path: Path, args: list[str], expected: str) -> None:
    appmod = make_app(tmp_path, "import logkit\nlogkit.install(app)\n", name="cli_bad")
    result = _celery(appmod, "worker", *args)
    assert result.returncode == 2
    assert expected in result.stderr


# ---------------------------------------------------------------------------
# Preload receiver (unit)
# ---------------------------------------------------------------------------


@pytest.fixture
def fresh_app() -> Iterator[Celery]:
    app = Celery("cli_unit", set_as_current=False)
    yield app
    logkit.uninstall()


def test_preload_values_reach_a_config_resolved_earlier(
    fresh_app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOGKIT_FORMAT", raising=False)
    monkeypatch.delenv("LOGKIT_FIELDS", raising=False)
    inst = logkit.install(fresh_app, format="json", fields={"team": "core"})
    assert inst.config.format == "json"  # resolved before the command line is parsed
    celery_options.on_user_preload_options(
        app=fresh_app,
        options={
            "log_format": "console",
            "log_field": {"service": "x"},
            "log_events": False,
            "other_option": 1,
        },
    )
    config = inst.config
    assert config.format == "console"
    assert dict(config.fields) == {"team": "core", "service": "x"}
    assert config.events is False
    assert inst.task_context.config is config


def test_preload_ignores_unset_options_and_other_apps(fresh_app: Celery) -> None:
    inst = logkit.install(fresh_app, format="json")
    celery_options.on_user_preload_options(
        app=fresh_app, options={"log_format": None, "log_field": None, "log_events": None}
    )
    celery_options.on_user_preload_options(
        app=Celery("other", set_as_current=False), options={"log_format": "plain"}
    )
    assert inst.cli == {}
    assert inst.config.format == "json"


def test_install_twice_adds_the_options_once(fresh_app: Celery) -> None:
    logkit.install(fresh_app)
    logkit.install(fresh_app, format="json")
    names = sorted(o.name for o in fresh_app.user_options["preload"])
    assert names == ["log_celery_lines", "log_dedupe_window", "log_events", "log_field",
                     "log_format", "log_schema", "log_task_buffer", "log_task_sample"]


# ---------------------------------------------------------------------------
# logkit view: two real workers, one workflow across both
# ---------------------------------------------------------------------------

FLOW_BODY = """
import logging

import logkit

logkit.install(app, format="json")
log = logging.getLogger("flow")


@app.task
def step(n):
    if n == 3:
        log.warning("step %d is slow", n)
    else:
        log.info("step %d", n)
    return n
"""


@dataclass
class Flow:
    files: list[Path]
    root_id: str
    step_ids: list[str]
    other_id: str


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory, redis_server: Any) -> Iterator[Flow]:
    url = redis_server.url.rsplit("/", 1)[0] + "/7"
    client = redis_server.client()
    client.execute_command("SELECT", 7)
    appmod = make_app(tmp_path_factory.mktemp("flow"), FLOW_BODY, name="cli_flow", broker_url=url)
    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(
                start_worker,
                appmod,
                logfile=f"{q}.log",
                nodename=f"{q}@%h",
                concurrency=1,
                extra_args=["-Q", f"flow_{q}"],
            )
            for q in ("w1", "w2")
        ]
        workers = [f.result() for f in futures]
    try:
        mod = appmod.load()
        from celery import chain

        with logkit.bound(request_id="req-flow"):
            sig = chain(
                *(mod.step.si(n).set(queue="flow_w1" if n % 2 else "flow_w2") for n in range(1, 7))
            )
            result = sig.apply_async()
            other = mod.step.apply_async((99,), queue="flow_w2")
        assert result.get(timeout=30) == 6
        assert other.get(timeout=30) == 99
        ids = []
        node = result
        while node is not None:
            ids.append(node.id)
            node = node.parent
        ids.reverse()
        root_id = ids[0]
        def succeeded() -> set[str]:
            return {r.get("task_id", "") for w in workers for r in w.json_lines()
                    if r.get("event") == "task_succeeded"}

        # each task's task_succeeded line (the last it writes) is in the files
        wait_for(lambda: {*ids, other.id} <= succeeded(), timeout=30,
                 message=lambda: "\n".join(w.describe() for w in workers))
        files = [w.logfile for w in workers]
        assert all(f is not None for f in files)
        yield Flow([Path(str(f)) for f in files], root_id, ids, other.id)
    finally:
        stop_all(workers, timeout=15)
        appmod.unload()
        client.flushdb()
        client.close()


def test_view_merges_two_workers_into_one_story(flow: Flow) -> None:
    result = _logkit("view", "--root", flow.root_id, "--no-color", *map(str, flow.files))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    steps = [m.group(1) for line in lines if (m := re.search(r"\] step (\d)", line))]
    # Every step's own line, in workflow order, although the steps alternate between files.
    ordered = [int(n) for n in steps]
    assert ordered == sorted(ordered) and set(ordered) == {1, 2, 3, 4, 5, 6}, lines
    labels = {line.split()[0] for line in lines}
    assert labels == {"w1.log", "w2.log"}
    assert all(flow.other_id not in line for line in lines)
    # Time order across files.
    stamps = [" ".join(line.split()[1:3]) for line in lines if not line.startswith(" ")]
    assert stamps == sorted(stamps)


def test_view_filters_task_level_and_event(flow: Flow) -> None:
    files = [str(f) for f in flow.files]
    third = flow.step_ids[2]
    by_task = _logkit("view", "--no-color", "--task", third[:8], *files)
    assert by_task.returncode == 0
    assert by_task.stdout and all(third in line for line in by_task.stdout.splitlines())
    warnings = _logkit("view", "--no-color", "--level", "warning", *files).stdout.splitlines()
    # As root, Celery's SecurityWarning (given before logging is configured) is in the files too.
    warnings = [line for line in warnings if "py.warnings" not in line]
    assert len(warnings) == 1 and "step 3 is slow" in warnings[0]
    done = _logkit("view", "--no-color", "--event", "task_succ*", "--root", flow.root_id, *files)
    assert len(done.stdout.splitlines()) == 6
    assert all("Task succeeded" in line for line in done.stdout.splitlines())


def test_view_reads_stdin(flow: Flow) -> None:
    text = flow.files[0].read_text()
    result = _logkit("view", "--no-color", "--event", "task_received", stdin=text)
    assert result.returncode == 0
    received = result.stdout.splitlines()
    assert len(received) == 3 and all("Task received" in line for line in received)


# ---------------------------------------------------------------------------
# logkit view: edge cases on small files
# ---------------------------------------------------------------------------


def test_view_merges_out_of_order_and_keeps_non_json(tmp_path: Path) -> None:
    a = tmp_path / "a.log"
    b = tmp_path / "b.log"
    a.write_text(
        "\n".join(
            [
                _line("2024-01-01T00:00:01.000Z", "a1"),
                _line("2024-01-01T00:00:04.000Z", "a4"),
                _line("2024-01-01T00:00:03.500Z", "a3.5"),  # slightly out of order in its file
                "not json at all",
                "[1, 2]",
            ]
        )
        + "\n"
    )
    b.write_bytes(
        (_line("2024-01-01T00:00:02.000Z", "b2") + "\n").encode()
        + b'{"timestamp": "2024-01-01T00:00:05Z", "message": "b5 \xff"}\n'
        + (_line("2024-01-01T00:00:03.000Z", "b3", time="x")).encode()  # no final newline
    )
    result = _view("--no-color", str(a), str(b))
    assert result.exit_code == 0
    out = result.stdout.splitlines()
    order = [m.group(0) for line in out if (m := re.search(r"\b[ab]\d(\.5)?\b", line))]
    assert order == ["a1", "b2", "b3", "a3.5", "a4", "b5"], out
    # Non-JSON lines are kept after the record before them, shown as they are.
    assert [line.split(None, 1)[1] for line in out if "json" in line or "[1, 2]" in line] == [
        "not json at all",
        "[1, 2]",
    ]
    assert "b5 \ufffd" in result.stdout  # bad UTF-8 replaced, not a crash
    assert "2 line(s) were not JSON objects" in result.stderr


def test_view_filters_skip_non_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_text(
        "garbage\n"
        + _line("2024-01-01T00:00:01Z", "warn", level="WARNING", task_id="abc-1")
        + "\n"
        + _line("2024-01-01T00:00:02Z", "info", task_id="abc-2")
        + "\n"
    )
    result = _view("--no-color", "--level", "WARNING", str(path))
    assert result.stdout.count("\n") == 1 and "warn" in result.stdout
    none = _view("--no-color", "--task", "zzz", str(path))
    assert none.stdout == ""
    assert "no record matched the filters (2 records read)" in none.stderr


def test_view_escapes_control_characters(tmp_path: Path) -> None:
    path = tmp_path / "evil.log"
    evil = "ok\n2024-01-01 00:00:00.000 CRITICAL forged: \x1b[31mred\x1b[0m \r\x07"
    path.write_text(_line("2024-01-01T00:00:01Z", evil, **{"k\x1b]0;title\x07": "v\nw"}) + "\n")
    for flag in ("--no-color", "--color"):
        out = _view(flag, str(path)).stdout
        assert out.count("\n") == 1
        assert "\r" not in out and "\x07" not in out
        assert "\x1b[31m" not in out and "\x1b]0" not in out
        assert "\\x1b[31mred" in out and "\\n2024" in out


def test_view_colour_choice(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    path.write_text(_line("2024-01-01T00:00:01Z", "hi", level="ERROR") + "\n")
    assert "\x1b[" in _view("--color", str(path)).stdout
    assert "\x1b[" not in _view(str(path)).stdout  # not a terminal
    assert "\x1b[" in _view(str(path), env={"FORCE_COLOR": "1"}).stdout
    assert "\x1b[" not in _view(str(path), env={"FORCE_COLOR": "1", "NO_COLOR": "1"}).stdout


def test_view_renders_exceptions_and_renamed_fields(tmp_path: Path) -> None:
    record = {
        "@timestamp": "2024-01-01T00:00:01+00:00",
        "severity": "error",
        "name": "svc",
        "msg": "boom",
        "task_id": "t-1",
        "task_name": "proj.charge",
        "order": 42,
        "process": 1,
        "thread": 2,
        "exception": {
            "type": "ValueError",
            "message": "bad",
            "traceback": "Traceback (most recent call last):\nValueError: bad",
        },
    }
    line = cli.render(record)
    first, *rest = line.split("\n")
    assert re.match(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.000 ERROR +svc: \[proj.charge t-1\] boom order=42$",
        first,
    ), first
    assert rest == ["    Traceback (most recent call last):", "    ValueError: bad"]
    assert "process=" not in line


def test_view_missing_file_is_an_error(tmp_path: Path) -> None:
    result = _view(str(tmp_path / "nope.log"))
    assert result.exit_code == 1
    assert "nope.log" in result.stderr


def test_view_streams_big_files(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    with open(path, "w") as fh:
        for i in range(30000):
            fh.write(
                _line(f"2024-01-01T00:{i // 6000:02d}:{i % 60:02d}.{i % 1000:03d}Z", f"m{i}") + "\n"
            )
    source = cli._Source(str(path), 0, "big")
    try:
        stream = cli.merged([source])
        next(stream)
        # The merge is lazy: a bounded window, not the whole file, was read.
        assert source.fh.tell() < path.stat().st_size / 2
    finally:
        source.close()


def test_view_follow_tails_appends_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "live.log"
    path.write_text(_line("2024-01-01T00:00:01Z", "first") + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "logkit", "view", "-f", "--no-color", str(path)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout or ()], daemon=True)
    reader.start()

    def next_line() -> str:
        try:
            return lines.get(timeout=15)
        except queue.Empty:
            raise AssertionError("logkit view -f printed nothing within 15 s") from None

    try:
        assert "first" in next_line()
        with open(path, "a") as fh:
            fh.write(_line("2024-01-01T00:00:02Z", "second") + "\n")
            fh.write('{"message": "partial')  # completed later
            fh.flush()
            assert "second" in next_line()
            fh.write(' line"}\n')
            fh.flush()
            assert "partial line" in next_line()
            fh.write(_line("2024-01-01T00:00:03Z", "just before rotation") + "\n")
        path.rename(tmp_path / "live.log.1")  # logrotate
        path.write_text(_line("2024-01-01T00:00:04Z", "after rotation") + "\n")
        assert "just before rotation" in next_line()
        assert "after rotation" in next_line()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    assert proc.returncode == 0
    assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")


def test_view_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    path = tmp_path / "many.log"
    path.write_text(
        "".join(_line(f"2024-01-01T00:00:{i % 60:02d}Z", f"m{i}") + "\n" for i in range(20000))
    )
    result = subprocess.run(
        f"{sys.executable} -m logkit view {path} | head -n 1",
        shell=True,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.count("\n") == 1
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
