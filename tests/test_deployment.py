"""How logkit is deployed (#18): ``celery multi``, ``celery beat --detach``, real logrotate.

* ``celery multi start w1 w2 --logfile=%n%I.log --pidfile=%n.pid`` (detached): every
  node and every pool child writes its own file of JSON lines with the task context;
  after detaching nothing reaches the terminal (what ``celery multi`` itself printed
  is only its own ``> w1@host: OK``-style progress lines); ``stopwait`` stops cleanly:
  pidfiles removed, processes gone. The same for ``celery beat --detach``.
* The real ``logrotate`` (``create`` and ``copytruncate`` modes, ``-f`` to force)
  runs several times while two prefork children write numbered lines ``seq=N`` to
  one file: every line parses as JSON, no number is found twice, and no file holds a
  NUL byte (copytruncate + O_APPEND: no hole). In ``create`` mode every number is
  found (logkit reopens the new file); ``copytruncate`` loses what is written between
  logrotate's copy and its truncate -- the test reports how much.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from workerutil import REPO_ROOT, AppModule, Worker, parse_json_lines, wait_for

BODY = """
import logging
import logkit

logkit.install(app, format="json", propagate=["request_id"])
log = logging.getLogger("deploy")


@app.task
def emit(start, count):
    for seq in range(start, start + count):
        log.info("seq=%d", seq, extra={"seq": seq})
    return count


@app.task
def tick():
    log.info("tick")
"""

#: What ``celery multi`` may print itself, before the nodes detach: its banner and
#: progress lines. Anything else (a log record, a traceback) is a leak to the terminal.
MULTI_OUTPUT = re.compile(
    r"celery multi v[\d.]+ \([\w-]+\)"  # the banner (5.3: "emerald-rush")
    r"|> (Starting|Stopping|Restarting|Killing) [\w ]*\.\.\."  # progress
    r"|> Waiting for \d+ nodes? -> [\w, ]+\.+"
    r"|\t?> [\w.@-]+: (OK|DOWN|TERM -> \d+)"  # one node's outcome
    r"|\s*"
)


def _env(appmod: AppModule) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), str(appmod.workdir), env.get("PYTHONPATH", "")]
    )
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def _celery(appmod: AppModule, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "--no-color", *args], cwd=appmod.workdir,
        env=_env(appmod), capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL, check=False,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _check_terminal(outputs: list[str]) -> list[str]:
    """Lines of ``celery multi``'s own output that are not its progress lines."""
    return [
        line for text in outputs for line in text.splitlines() if not MULTI_OUTPUT.fullmatch(line)
    ]


@pytest.mark.worker
def test_celery_multi_detached_per_node_and_child_files(
    app_factory: Callable[..., AppModule],
) -> None:
    appmod = app_factory(BODY)
    work = appmod.workdir
    opts = ["-A", appmod.name, "--logfile=%n%I.log", "--pidfile=%n.pid"]
    worker_opts = ["--pool=prefork", "-c", "2", "-l", "INFO", "--without-gossip",
                   "--without-mingle", "--without-heartbeat"]
    started = _celery(appmod, "multi", "start", "w1", "w2", *opts, *worker_opts)
    pids: dict[str, int] = {}
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        for node in ("w1", "w2"):
            wait_for(lambda n=node: any(work.glob(f"ready-{n}_*")), timeout=60,
                     message=lambda: started.stdout + started.stderr)
            pids[node] = int((work / f"{node}.pid").read_text())
        mod = appmod.load()
        import logkit

        with logkit.bound(request_id="req-multi"):
            results = [mod.emit.delay(i * 50, 50) for i in range(8)]
        assert [r.get(timeout=60) for r in results] == [50] * 8
    finally:
        stopped = _celery(appmod, "multi", "stopwait", "w1", "w2", *opts)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr

    # a clean stop: pidfiles removed, processes gone
    assert not list(work.glob("*.pid"))
    assert not [pid for pid in pids.values() if _alive(pid)]
    # nothing but celery multi's own progress lines reached the terminal
    leaks = _check_terminal([started.stdout, started.stderr, stopped.stdout, stopped.stderr])
    assert leaks == [], leaks

    files = {p.name: p.read_text() for p in work.glob("w*.log")}
    # %I: "" for the main process, "-1", "-2" for the pool children
    assert {"w1.log", "w2.log"} <= set(files), sorted(files)
    assert any(re.fullmatch(r"w[12]-\d+\.log", name) for name in files), sorted(files)
    seqs: Counter[int] = Counter()
    for name, text in files.items():
        records = parse_json_lines(text, source=name)
        # a node's main file always has lines; a pool child that got no task may write none
        assert records or re.fullmatch(r"w[12]-\d+\.log", name), name
        for r in records:
            if r.get("logger") == "deploy":
                assert r["task_id"] and r["request_id"] == "req-multi", r
                assert r["worker"].split("@")[0] == name.split("-")[0].split(".")[0], (name, r)
                seqs[r["seq"]] += 1
    assert sorted(seqs) == list(range(400)) and set(seqs.values()) == {1}
    print(f"\ncelery multi: files {sorted(files)}, task lines {sum(seqs.values())}")


@pytest.mark.worker
def test_celery_beat_detached(app_factory: Callable[..., AppModule]) -> None:
    appmod = app_factory(
        BODY + '\napp.conf.beat_schedule = {"tick": {"task": app.main + ".tick", '
        '"schedule": 0.5}}\n'
    )
    work = appmod.workdir
    started = _celery(
        appmod, "-A", appmod.name, "beat", "--detach", "--logfile=beat.log",
        "--pidfile=beat.pid", f"--schedule={work / 'schedule'}", "-l", "INFO",
    )
    assert started.returncode == 0, started.stdout + started.stderr
    pidfile, log = work / "beat.pid", work / "beat.log"
    wait_for(pidfile.exists, timeout=30, message="no beat pidfile")
    pid = int(pidfile.read_text())
    try:
        wait_for(lambda: log.exists() and log.read_text().count('"beat_task_sent"') >= 2,
                 timeout=30, message=lambda: log.read_text() if log.exists() else "no log")
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not _alive(pid), timeout=30, message="beat still running")
    wait_for(lambda: not pidfile.exists(), timeout=10, message="beat pidfile left behind")
    assert (started.stdout + started.stderr).strip() == ""  # detached: nothing on the terminal
    records = parse_json_lines(log.read_text(), source="beat.log")
    assert {"beat_started", "beat_task_sent"} <= {r.get("event") for r in records}


# --------------------------------------------------------------------------
# logrotate
# --------------------------------------------------------------------------

ROTATE_MODES = {
    "create": "create",
    "copytruncate": "copytruncate",
}


@pytest.mark.worker
@pytest.mark.parametrize("mode", list(ROTATE_MODES))
def test_real_logrotate_loses_no_line(
    mode: str,
    tmp_path: Path,
    app_factory: Callable[..., AppModule],
    worker_factory: Callable[..., Worker],
) -> None:
    logrotate = shutil.which("logrotate") or (
        "/usr/sbin/logrotate" if os.access("/usr/sbin/logrotate", os.X_OK) else None
    )
    if logrotate is None:
        if os.environ.get("CI") == "true":
            pytest.fail("logrotate not found: .ci/run must apt-get install logrotate")
        pytest.skip("logrotate not installed (Debian: apt-get install logrotate)")
    appmod = app_factory(BODY)
    worker = worker_factory(appmod, logfile="worker.log", concurrency=2)
    path = worker.logfile
    assert path is not None
    conf, state = tmp_path / "logrotate.conf", tmp_path / "logrotate.state"
    conf.write_text(
        f"{path} {{\n  rotate 5\n  size 1\n  {ROTATE_MODES[mode]}\n  missingok\n"
        "  nocompress\n}\n"
    )
    mod = appmod.load()
    tasks, per_task = 20, 300  # two children at once, 6,000 lines
    results = [mod.emit.delay(i * per_task, per_task) for i in range(tasks)]
    rotations = 0
    def grown() -> bool:
        return path.exists() and path.stat().st_size > 20_000

    for _ in range(4):  # rotate 5: all generations are kept
        wait_for(lambda: grown() or all(r.ready() for r in results), timeout=30,
                 message=lambda: worker.describe())
        if not grown():  # the tasks were done before the file grew again
            break
        done = subprocess.run([logrotate, "-f", "-s", str(state), str(conf)],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        rotations += 1
        if all(r.ready() for r in results):
            break
    assert [r.get(timeout=60) for r in results] == [per_task] * tasks
    assert rotations >= 1, "the tasks were done before the log grew: nothing was rotated"
    worker.stop(timeout=20)

    files = sorted(path.parent.glob("worker.log*"))
    assert len(files) == rotations + 1, files
    seqs: Counter[int] = Counter()
    written = parsed = cut = 0
    for f in files:
        data = f.read_bytes()
        assert b"\x00" not in data, f"NUL bytes in {f.name}"
        if mode == "copytruncate" and f.name != "worker.log" and not data.endswith(b"\n"):
            # logrotate copied the file while a line was being written: the copy ends with
            # the part it read, and the truncate then takes the whole line away. That line
            # is among copytruncate's lost ones; it is never completed in another file.
            data, cut = data[: data.rfind(b"\n") + 1], cut + 1
        assert mode == "copytruncate" or data.endswith(b"\n") or not data, f.name
        text = data.decode()
        written += text.count("\n")
        records = parse_json_lines(text, source=f.name)  # no line split between two files
        parsed += len(records)
        seqs.update(r["seq"] for r in records if r.get("logger") == "deploy")
    expected = tasks * per_task
    lost = sum(1 for n in range(expected) if seqs[n] == 0)
    print(f"\nlogrotate {mode}: rotations {rotations}, files {len(files)}, lines written "
          f"{written}, parsed {parsed}, seq lines {sum(seqs.values())} of {expected}, "
          f"lost {lost}, duplicated {sum(1 for c in seqs.values() if c > 1)}, "
          f"cut at the copy {cut}")
    assert written == parsed
    assert set(seqs.values()) == {1}  # nothing written twice
    if mode == "create":
        assert lost == 0 and len(seqs) == expected and cut == 0
    # copytruncate: what is written between logrotate's copy and its truncate is lost
    # (logrotate(8) says so); it cannot be 0 under load. Not torn, not padded: checked above.
    if mode == "create":  # logkit reopened the new file: every generation got lines
        assert all(f.stat().st_size > 0 for f in files), files
