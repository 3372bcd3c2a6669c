"""#20: with JSON output, a worker's and beat's stdout and stderr hold nothing but JSON lines.

The real-process tests run ``celery worker`` / ``celery beat`` with their stdout and
stderr on files (like a container runtime's pipes: not a terminal) and no ``-f``, as
the current user and, when the machine allows it, as ``nobody``.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celery
import pytest
from workerutil import REPO_ROOT, AppModule, make_app, parse_json_lines, wait_for

from logkit import early
from logkit._changes import Changes
from logkit.banner import adds_fields, replaces_text
from logkit.config import ConfigError, LogConfig

BODY = """
import logkit

app.conf.broker_url = "filesystem://logkit:s3cret@localhost//"
logkit.install(app)


@app.task
def add(x, y):
    return x + y
"""

#: What the started process writes (in any format) once its start event is out.
STARTED = {"worker": ("worker_ready", "Worker ready"), "beat": ("beat_started", "Beat started")}


SETPRIV = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _nobody() -> tuple[int, int] | None:
    """nobody's ``(uid, gid)`` if this machine lets the tests run this Python as nobody."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    try:
        entry = pwd.getpwnam("nobody")
        probe = subprocess.run([*SETPRIV, sys.executable, "-c", "import celery"], cwd="/",
                               capture_output=True, timeout=60, check=False)
    except (KeyError, OSError, subprocess.SubprocessError):
        return None
    if probe.returncode != 0:
        return None
    return entry.pw_uid, entry.pw_gid


USERS = [
    pytest.param(None, id="current-user"),
    pytest.param(
        "nobody",
        id="nobody",
        marks=pytest.mark.skipif(
            _nobody() is None,
            reason="running this Python as 'nobody' needs root, setpriv and a 'nobody' user "
            "who can read the interpreter",
        ),
    ),
]


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="logkit-banner-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _give_to(path: Path, ids: tuple[int, int]) -> None:
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), *ids)
    os.chown(path, *ids)


class Run:
    """A finished ``celery`` process: its exit code, stdout and stderr."""

    def __init__(self, returncode: int | None, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr

    def all_json(self) -> list[dict[str, Any]]:
        """Every line of both streams, parsed (fails naming the first line that is not JSON)."""
        return parse_json_lines(self.stdout, "stdout") + parse_json_lines(self.stderr, "stderr")

    def event(self, name: str) -> dict[str, Any]:
        found = [r for r in self.all_json() if r.get("event") == name]
        assert found, f"no {name} event in:\n{self.stderr}"
        return found[0]


def run_celery(
    appmod: AppModule,
    program: str,
    *args: str,
    user: str | None = None,
    env: dict[str, str] | None = None,
    wait_for_start: bool = True,
    timeout: float = 40,
) -> Run:
    """Run ``celery -A app <program> -l INFO``, SIGTERM it once started; return its output."""
    workdir = appmod.workdir
    out_path, err_path = workdir / "stdout.txt", workdir / "stderr.txt"
    prefix: list[str] = []
    if user == "nobody":
        ids = _nobody()
        assert ids is not None
        _give_to(workdir, ids)
        prefix = SETPRIV  # os.setuid in preexec_fn cannot exec an interpreter under /root here

    cmd = [*prefix, sys.executable, "-m", "celery", "-A", appmod.name, program, "-l", "INFO", *args]
    if program == "worker":
        cmd += ["-P", "solo", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    else:
        cmd += ["-s", str(workdir / "schedule")]
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith("LOGKIT_") and k not in ("C_FORCE_ROOT", "FORCE_COLOR")}
    full_env.update(PYTHONPATH=f"{REPO_ROOT}{os.pathsep}{workdir}", HOME=str(workdir),
                    **(env or {}))
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=workdir, env=full_env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err)
    try:
        if wait_for_start:
            wait_for(lambda: proc.poll() is not None
                     or any(m in err_path.read_text(errors="replace") for m in STARTED[program]),
                     timeout, message=lambda: err_path.read_text(errors="replace"))
            if proc.poll() is None:
                time.sleep(0.3)
                proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Run(proc.returncode, out_path.read_text(errors="replace"),
               err_path.read_text(errors="replace"))


# ---------------------------------------------------------------------------
# Real processes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("user", USERS)
def test_worker_streams_are_json_only_and_the_banner_is_in_worker_ready(
    workdir: Path, user: str | None
) -> None:
    appmod = make_app(workdir, BODY)
    run = run_celery(appmod, "worker", user=user, env={"LOGKIT_FORMAT": "json"})

    records = run.all_json()  # every line of stdout and stderr is JSON
    assert run.stdout.strip() == ""  # the banner and "worker: Warm shutdown" are gone
    ready = run.event("worker_ready")
    assert ready["worker"].startswith("celery@")
    assert ready["celery_version"] == celery.__version__
    assert ready["transport"].endswith("://logkit:**@localhost//")
    assert ready["results"].startswith("file://")
    assert (ready["pool"], ready["concurrency"]) == ("solo", os.cpu_count() or 1)
    assert ready["queues"] == ["celery"]
    assert ready["tasks"] == [f"{appmod.name}.add"]
    assert ready["app"] == appmod.name
    assert "s3cret" not in run.stdout + run.stderr
    assert run.event("worker_shutting_down")["how"] == "Warm"

    security = [r for r in records if r["logger"] == "py.warnings"
                and "SecurityWarning" in r["message"]]
    if user is None and os.geteuid() == 0:  # Celery's check_privileges warns root
        assert len(security) == 1, run.stderr
        assert security[0]["level"] == "WARNING"
        assert "superuser privileges" in security[0]["message"]
    else:
        assert security == []


@pytest.mark.parametrize("user", USERS)
def test_beat_streams_are_json_only_and_the_banner_is_in_beat_started(
    workdir: Path, user: str | None
) -> None:
    appmod = make_app(workdir, BODY)
    run = run_celery(appmod, "beat", user=user, env={"LOGKIT_FORMAT": "json"})

    run.all_json()
    assert run.stdout.strip() == ""
    started = run.event("beat_started")
    assert started["celery_version"] == celery.__version__
    assert started["transport"].endswith("://logkit:**@localhost//")
    assert started["scheduler"] == "celery.beat.PersistentScheduler"
    assert started["schedule_file"] == str(appmod.workdir / "schedule")
    assert started["max_interval"] == 300
    assert started["loader"] == "celery.loaders.app.AppLoader"
    assert "s3cret" not in run.stdout + run.stderr


@pytest.mark.parametrize(
    ("program", "env", "banner_text"),
    [
        ("worker", {"LOGKIT_FORMAT": "console"}, "[tasks]"),
        ("beat", {"LOGKIT_FORMAT": "plain"}, "celery beat v"),
        ("worker", {"LOGKIT_FORMAT": "json", "LOGKIT_BANNER": "text"}, "[tasks]"),
    ],
    ids=["worker-console", "beat-plain", "worker-json-banner-text"],
)
def test_the_text_banner_stays_where_asked(
    workdir: Path, program: str, env: dict[str, str], banner_text: str
) -> None:
    appmod = make_app(workdir, BODY)
    run = run_celery(appmod, program, env=env)
    assert banner_text in run.stdout
    assert any(marker in run.stderr for marker in STARTED[program])
    assert "celery_version" not in run.stderr  # the facts are added only when they replace it
    if env["LOGKIT_FORMAT"] == "json":
        parse_json_lines(run.stderr, "stderr")  # stderr is still all JSON


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ((), {"LOGKIT_MAX_FIELD_LENGTH": "abc"}, "'max_field_length'"),
        (("-f", "/proc/no/such/dir/worker.log"), {}, "cannot open log file"),
    ],
    ids=["bad-env-value", "unwritable-logfile"],
)
@pytest.mark.parametrize("program", ["worker", "beat"])
def test_a_fatal_config_error_is_one_json_line(
    workdir: Path, program: str, args: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    appmod = make_app(workdir, BODY)
    run = run_celery(appmod, program, *args, env={"LOGKIT_FORMAT": "json", **env},
                     wait_for_start=False)
    assert run.returncode == 1
    records = run.all_json()
    assert run.stdout.strip() == ""
    assert records[-1]["level"] == "CRITICAL"
    assert records[-1]["logger"] == "logkit"
    assert expected in records[-1]["message"]
    assert all(r["logger"] in ("logkit", "py.warnings") for r in records), records


# ---------------------------------------------------------------------------
# Units
# ---------------------------------------------------------------------------


def test_banner_option_names_its_choices() -> None:
    assert LogConfig().banner == "auto"
    assert LogConfig.resolve(env={"LOGKIT_BANNER": "Event"}).banner == "event"
    with pytest.raises(ConfigError, match="'auto', 'text', 'event', 'off'; got 'loud'"):
        LogConfig(banner="loud")


@pytest.mark.parametrize(
    ("mode", "fmt", "replaced", "fields"),
    [
        ("auto", "json", True, True),
        ("auto", "console", False, False),
        ("auto", "plain", False, False),
        ("text", "json", False, False),
        ("event", "console", True, True),
        ("off", "json", True, False),
    ],
)
def test_banner_modes(mode: str, fmt: str, replaced: bool, fields: bool) -> None:
    assert replaces_text(mode, fmt) is replaced
    assert adds_fields(mode, fmt) is fields


def test_held_warnings_are_replayed_as_py_warnings_records(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(early, "MAX_HELD", 3)
    before = warnings.showwarning
    changes = Changes()
    hold = early.WarningHold()
    hold.hold(changes)
    assert warnings.showwarning != before
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        for i in range(5):
            warnings.warn(f"early {i}", DeprecationWarning, stacklevel=1)
    assert caplog.records == []
    with caplog.at_level(logging.WARNING, logger="py.warnings"):
        try:
            hold.capture(changes)
        finally:
            failures = changes.undo()  # captureWarnings off, the atexit hook removed
    assert failures == []
    messages = [r.getMessage() for r in caplog.records if r.name == "py.warnings"]
    assert [m for m in messages if "DeprecationWarning: early" in m] == [
        m for m in messages[:3]
    ]
    assert len(messages) == 4
    assert "2 more warning(s)" in messages[3]
    assert warnings.showwarning is before


def test_intended_format_skips_invalid_values() -> None:
    env = {"LOGKIT_FORMAT": "jsn"}
    assert early.intended_format(None, {"format": "json"}, {}, env) == "json"
    assert early.intended_format(None, {}, {"format": "plain"}, env) == "plain"
    assert early.intended_format(None, {}, {}, {}) == "auto"
