"""Harness for tests that run REAL ``celery worker`` subprocesses.

Plain module (no pytest imports) so it can be used from fixtures, from tests
and from an interactive shell alike::

    from workerutil import make_app, start_worker

    appmod = make_app(tmp_path, '''
    @app.task
    def add(x, y):
        return x + y
    ''')
    worker = start_worker(appmod)
    try:
        assert appmod.load().add.delay(2, 3).get(timeout=30) == 5
    finally:
        worker.stop()

The generated app module uses kombu's filesystem transport (no server
needed) and a ``file://`` result backend, both under the app's work dir,
unless a ``broker_url`` (e.g. a redis URL) is given.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from celery.utils.nodenames import default_nodename, host_format, node_format

__all__ = [
    "DEFAULT_BASE_ARGS",
    "REPO_ROOT",
    "TESTS_DIR",
    "AppModule",
    "Worker",
    "WorkerStartError",
    "expand_nodename",
    "make_app",
    "parse_json_lines",
    "ready_marker",
    "sanitise",
    "start_worker",
    "stop_all",
    "wait_for",
]

T = TypeVar("T")

#: Root of the repository (the directory containing ``tests/``); put on the
#: worker's PYTHONPATH so ``import logkit`` works in the subprocess.
REPO_ROOT: Path = Path(__file__).resolve().parent.parent

#: This folder (``fstransport.py`` lives here).
TESTS_DIR: Path = REPO_ROOT / "tests"

#: Arguments always passed to ``celery worker`` (after the pool/concurrency
#: options) unless ``base_args`` is overridden: they cut startup time and
#: remove broadcast traffic that isn't needed by single-purpose test workers.
DEFAULT_BASE_ARGS: tuple[str, ...] = (
    "--without-gossip",
    "--without-mingle",
    "--without-heartbeat",
)

#: How many characters of output to put into failure messages.
TAIL_CHARS = 6000

_SANITISE_RE = re.compile(r"[^A-Za-z0-9._-]")
_counter = itertools.count(1)


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------


def sanitise(text: str) -> str:
    """Make ``text`` safe to use as (part of) a file name.

    Must stay identical to the expression embedded in ``_BOILERPLATE``.
    """
    return _SANITISE_RE.sub("_", text)


def expand_nodename(nodename: str) -> str:
    """Expand ``%h``/``%n``/``%d`` exactly like ``celery worker -n`` does."""
    return str(host_format(default_nodename(nodename)))


def ready_marker(workdir: Path, hostname: str) -> Path:
    """Path of the file the app touches when node ``hostname`` is ready."""
    return Path(workdir) / f"ready-{sanitise(hostname)}"


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that.

    Raises :class:`AssertionError` with ``message`` (a string or a callable
    producing one, evaluated lazily at failure time) after ``timeout``
    seconds.  The predicate is always evaluated at least once and once more
    after the deadline, so a slow poll cannot cause a spurious failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            result = predicate()
            if result:
                return result
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:.1f}s: {text}")
        time.sleep(interval)


def _read_text(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:  # missing, or under a non-directory (NotADirectoryError)
        return ""


def _tail(text: str, limit: int = TAIL_CHARS) -> str:
    if len(text) <= limit:
        return text
    return "...[truncated]...\n" + text[-limit:]


def parse_json_lines(text: str, source: str = "log") -> list[dict[str, Any]]:
    """Parse every non-blank line of ``text`` as a JSON object.

    Splits on ``\\n`` only (NOT :meth:`str.splitlines`, which would also
    split inside JSON strings containing e.g. U+2028 or ``\\x1c`` emitted
    with ``ensure_ascii=False``).  Raises :class:`AssertionError` naming the
    first offending line (number and content) if a line isn't a JSON object.
    """
    records: list[dict[str, Any]] = []
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise AssertionError(
                f"{source}: line {lineno} is not valid JSON ({exc}): {line!r}"
            ) from None
        if not isinstance(obj, dict):
            raise AssertionError(f"{source}: line {lineno} is JSON but not an object: {line!r}")
        records.append(obj)
    return records


def _proc_ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # "pid (comm) state ppid ..." -- comm may contain spaces and parens.
    try:
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (IndexError, ValueError):
        return None


def _process_exists(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    try:
        state = stat.rsplit(")", 1)[1].split()[0]
    except IndexError:
        return False
    return state not in ("Z", "X")


def _pgroup_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def child_pids_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (sorted), excluding zombies."""
    found: set[int] = set()
    task_dir = Path(f"/proc/{pid}/task")
    used_children_files = False
    try:
        tasks = list(task_dir.iterdir())
    except OSError:
        tasks = []
    for task in tasks:
        try:
            content = (task / "children").read_text()
        except OSError:
            continue
        used_children_files = True
        found.update(int(p) for p in content.split())
    if not used_children_files:
        # Kernel without CONFIG_PROC_CHILDREN: scan the whole process table.
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _proc_ppid(int(entry.name)) == pid:
                found.add(int(entry.name))
    return sorted(p for p in found if _process_exists(p))


# --------------------------------------------------------------------------
# app modules
# --------------------------------------------------------------------------

_BOILERPLATE = """\
# Generated by tests/workerutil.py -- boilerplate, then the test's body.
import os as _wu_os
import re as _wu_re

from celery import Celery
from celery.signals import worker_ready as _wu_worker_ready

WORKDIR = {workdir!r}

{transport_code}
app = Celery({name!r})
app.conf.update(
    broker_url={broker_url!r},{broker_transport}
    broker_transport_options={transport_options!r},
    result_backend={result_backend!r},
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
)


@_wu_worker_ready.connect(weak=False)
def _wu_mark_ready(sender=None, **kwargs):
    # Touch <workdir>/ready-<sanitised hostname> so the harness knows the
    # node is consuming.  Only for *this* app (receivers are global).
    if getattr(sender, "app", None) is not app:
        return
    hostname = _wu_re.sub(r"[^A-Za-z0-9._-]", "_", str(sender.hostname))
    path = _wu_os.path.join(WORKDIR, "ready-" + hostname)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(str(_wu_os.getpid()))
    _wu_os.replace(tmp, path)


# ---- test body ----------------------------------------------------------
"""

#: ``tests/fstransport.py``, copied into each generated app module (so the module runs
#: with any PYTHONPATH: under ``celery multi``, ``beat``, ``python -c``, ...).
_FAST_FS_TRANSPORT = (
    (TESTS_DIR / "fstransport.py").read_text(encoding="utf-8")
    + "\n_WuFilesystemTransport = FastFilesystemTransport\n"
)


class AppModule:
    """A generated Celery app module living in its own work dir."""

    def __init__(self, name: str, path: Path, workdir: Path) -> None:
        self.name = name
        self.path = path
        self.workdir = workdir
        self._module: ModuleType | None = None

    def __repr__(self) -> str:
        return f"AppModule(name={self.name!r}, path={str(self.path)!r})"

    def load(self) -> ModuleType:
        """Import the module into the test process (cached) and return it.

        Registered in :data:`sys.modules` under :attr:`name`, so pickling by
        reference and ``celery -A`` style lookups agree with the worker.
        """
        if self._module is not None:
            return self._module
        existing = sys.modules.get(self.name)
        if existing is not None and getattr(existing, "__file__", None) == str(self.path):
            self._module = existing
            return existing
        spec = importlib.util.spec_from_file_location(self.name, self.path)
        if spec is None or spec.loader is None:  # pragma: no cover
            raise ImportError(f"cannot import {self.path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[self.name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(self.name, None)
            raise
        self._module = module
        return module

    def unload(self) -> None:
        """Close the app's connections, disconnect the receivers the module connected to
        Celery's signals, and forget the module (idempotent)."""
        module, self._module = self._module, None
        if module is None:
            return
        _disconnect_receivers_of(self.name)
        if sys.modules.get(self.name) is module:
            del sys.modules[self.name]
        app = getattr(module, "app", None)
        if app is not None:
            with contextlib.suppress(Exception):  # best effort cleanup
                app.close()


def _disconnect_receivers_of(module_name: str) -> None:
    """Disconnect from every Celery signal the receivers defined in ``module_name``.

    An app body's ``@signals.setup_logging.connect(weak=False)`` would otherwise stay in
    the test process after its test, and a later test in that process (pytest-xdist gives
    a process several files, in an order that varies with the load) would see "a user's
    own setup_logging receiver" and logkit would rightly configure nothing.
    """
    import weakref

    from celery import signals
    from celery.utils.dispatch import Signal

    for sig in vars(signals).values():
        if not isinstance(sig, Signal):
            continue
        with sig.lock:
            kept = []
            for key, receiver in sig.receivers:
                target = receiver() if isinstance(receiver, weakref.ReferenceType) else receiver
                if getattr(target, "__module__", None) != module_name:
                    kept.append((key, receiver))
            if len(kept) != len(sig.receivers):
                sig.receivers[:] = kept
                sig.sender_receivers_cache.clear()


def celery_cmd(appmod: AppModule, *args: str) -> subprocess.CompletedProcess[str]:
    """``celery -A <app> <args>`` as an operator runs it (in the app's directory)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), str(appmod.workdir), env.get("PYTHONPATH")])
    )
    env.pop("PYTEST_CURRENT_TEST", None)
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", appmod.name, *args],
        cwd=appmod.workdir, env=env, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL,
    )



def make_app(
    tmp_path: Path | str,
    body: str,
    *,
    name: str | None = None,
    broker_url: str | None = None,
    result_backend: str | None = None,
    fast_shutdown: bool = True,
) -> AppModule:
    """Write ``<name>.py`` (boilerplate + ``body``) into a fresh work dir.

    * ``name`` defaults to ``app_<hex8>``; the work dir is
      ``tmp_path/<name>``.
    * Without ``broker_url``: kombu filesystem transport with all folders
      (in/out shared, processed, control) as absolute paths under
      ``<workdir>/broker``; result backend ``file://<workdir>/results``.
    * With ``broker_url`` (e.g. ``redis://127.0.0.1:P/0``): that broker; the
      result backend defaults to the same URL for ``redis://`` brokers and to
      the ``file://`` backend otherwise.
    * ``fast_shutdown`` (filesystem broker only): use ``tests/fstransport.py``'s
      subclass of kombu's filesystem transport: atomic puts, and ``drain_events``
      blocks at most 0.1 s, so a warm shutdown takes ~1 s instead of ~5 s.
    """
    name = name or f"app_{uuid.uuid4().hex[:8]}"
    if not name.isidentifier():
        raise ValueError(f"app module name must be an identifier: {name!r}")
    workdir = Path(tmp_path).resolve() / name
    workdir.mkdir(parents=True, exist_ok=False)
    results = workdir / "results"
    results.mkdir()

    transport_options: dict[str, Any]
    transport_code = ""
    broker_transport = ""
    if broker_url is None:
        broker = workdir / "broker"
        queue_dir = broker / "queue"
        processed = broker / "processed"
        control = broker / "control"
        for folder in (queue_dir, processed, control):
            folder.mkdir(parents=True)
        broker_url = "filesystem://"
        transport_options = {
            "data_folder_in": str(queue_dir),
            "data_folder_out": str(queue_dir),
            "processed_folder": str(processed),
            # The default is a *relative* "control" dir, i.e. relative to
            # each process's cwd -- the test process and the worker would
            # disagree about exchange bindings.
            "control_folder": str(control),
            "store_processed": False,
            # virtual transports poll; the default 1 s makes tests slow.
            "polling_interval": 0.05,
        }
        if fast_shutdown:
            transport_code = _FAST_FS_TRANSPORT
            broker_transport = "\n    broker_transport=_WuFilesystemTransport,"
    else:
        transport_options = {}
    if result_backend is None:
        if broker_url.startswith(("redis://", "rediss://")):
            result_backend = broker_url
        else:
            result_backend = f"file://{results}"

    source = (
        _BOILERPLATE.format(
            workdir=str(workdir),
            transport_code=transport_code,
            broker_transport=broker_transport,
            name=name,
            broker_url=broker_url,
            transport_options=transport_options,
            result_backend=result_backend,
        )
        + textwrap.dedent(body).strip("\n")
        + "\n"
    )
    path = workdir / f"{name}.py"
    path.write_text(source, encoding="utf-8")
    return AppModule(name=name, path=path, workdir=workdir)


# --------------------------------------------------------------------------
# workers
# --------------------------------------------------------------------------


class WorkerStartError(AssertionError):
    """The worker died or never became ready; ``.worker`` has its output."""

    def __init__(self, message: str, worker: Worker) -> None:
        super().__init__(message)
        self.worker = worker


class Worker:
    """A running (or finished) ``celery worker`` subprocess."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        *,
        workdir: Path,
        hostname: str,
        stdout_path: Path,
        stderr_path: Path,
        logfile: Path | None,
        argv: Sequence[str],
    ) -> None:
        self.proc = proc
        self.pid: int = proc.pid
        self.workdir = workdir
        self.hostname = hostname
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self.logfile = logfile
        self.argv = list(argv)
        self.returncode: int | None = None
        self._signalled: int | None = None

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited {self.proc.returncode}"
        return f"<Worker {self.hostname} pid={self.pid} {state}>"

    # -- state ------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def child_pids(self) -> list[int]:
        """Pids of the worker's direct children (the prefork pool)."""
        if not self.alive:
            return []
        return child_pids_of(self.pid)

    @property
    def ready_marker(self) -> Path:
        return ready_marker(self.workdir, self.hostname)

    # -- output -----------------------------------------------------------

    def stdout(self) -> str:
        return _read_text(self.stdout_path)

    def stderr(self) -> str:
        return _read_text(self.stderr_path)

    def output(self) -> str:
        return self.stdout() + self.stderr()

    def read_log(self) -> str:
        """The ``-f`` log file's text, or stderr when no log file was set."""
        if self.logfile is not None:
            return _read_text(self.logfile)
        return self.stderr()

    def json_lines(self) -> list[dict[str, Any]]:
        """Every non-blank line of :meth:`read_log` parsed as a JSON object."""
        source = str(self.logfile) if self.logfile else f"{self.hostname} stderr"
        return parse_json_lines(self.read_log(), source=source)

    def describe(self, limit: int = TAIL_CHARS) -> str:
        """Human readable summary (exit code + output tails) for failures."""
        rc = self.proc.poll()
        parts = [
            f"worker {self.hostname} pid={self.pid} "
            f"{'running' if rc is None else f'exit code {rc}'}",
            f"argv: {' '.join(self.argv)}",
            f"--- stdout ({self.stdout_path}) ---",
            _tail(self.stdout(), limit),
            f"--- stderr ({self.stderr_path}) ---",
            _tail(self.stderr(), limit),
        ]
        if self.logfile is not None:
            parts += [f"--- logfile ({self.logfile}) ---", _tail(self.read_log(), limit)]
        return "\n".join(parts)

    # -- shutdown ---------------------------------------------------------

    def kill(self) -> int:
        """SIGKILL the whole process group right away."""
        return self.stop(sig=signal.SIGKILL, timeout=5)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Stop the worker; return its exit code (negative = killed by signal).

        Sends ``sig`` to the main process only (SIGTERM = Celery's warm
        shutdown: it stops consuming, waits for running tasks and terminates
        its pool), waits up to ``timeout`` s, then SIGKILLs the whole process
        group.  Any group members left behind after the main process exited
        (e.g. orphaned pool children) get a short grace period and are then
        SIGKILLed too.  Idempotent: later calls just return the exit code.
        """
        if self.returncode is not None:
            return self.returncode
        if self.proc.poll() is None:
            if self._signalled != sig:
                self.signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._killpg()
                self.proc.wait(timeout=30)
        # The worker is its own session/group leader: pgid == pid.
        try:
            wait_for(lambda: not _pgroup_alive(self.pid), timeout=2, interval=0.02)
        except AssertionError:
            self._killpg()
            with contextlib.suppress(AssertionError):  # zombies not ours
                wait_for(
                    lambda: not _pgroup_alive(self.pid),
                    timeout=10,
                    interval=0.02,
                    message=f"process group {self.pid} survived SIGKILL",
                )
        rc = self.proc.returncode
        assert rc is not None
        self.returncode = rc
        return rc

    def signal(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to the main process without waiting (see stop_all)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # just exited
                self.proc.send_signal(sig)
            self._signalled = sig

    def _killpg(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


def stop_all(
    workers: Iterable[Worker], sig: int = signal.SIGTERM, timeout: float = 30
) -> dict[Worker, int | BaseException]:
    """Stop several workers concurrently; never raises.

    Signals all of them first, then waits for each (so N warm shutdowns take
    about as long as one).  Returns each worker's exit code, or the
    exception raised while stopping it (after which it was SIGKILLed).
    """
    workers = list(workers)
    for worker in workers:
        if worker.returncode is None:
            worker.signal(sig)
    results: dict[Worker, int | BaseException] = {}
    for worker in workers:
        try:
            results[worker] = worker.stop(sig=sig, timeout=timeout)
        except BaseException as exc:  # never leak a worker
            worker._killpg()
            results[worker] = exc
    return results


def start_worker(
    appmod: AppModule,
    *,
    pool: str = "prefork",
    concurrency: int = 2,
    loglevel: str = "INFO",
    logfile: str | os.PathLike[str] | None = None,
    nodename: str = "w1@%h",
    extra_args: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 60,
    global_args: Iterable[str] = (),
    base_args: Iterable[str] = DEFAULT_BASE_ARGS,
    launcher: Sequence[str] = (),
) -> Worker:
    """Start ``celery -A <app> worker`` in ``appmod.workdir``; wait until ready.

    Command line (after ``launcher``, e.g. ``["ddtrace-run"]``, if given)::

        python -m celery *global_args -A <name> worker --pool <pool>
            -c <concurrency> -l <loglevel> -n <nodename> [-f <logfile>]
            *base_args *extra_args

    ``logfile`` may be relative (to the work dir).  The child runs in its own
    session (process group) with stdout/stderr redirected to files in the
    work dir; PYTHONPATH gets the repo root and the work dir prepended; then
    ``env`` is applied on top.  Readiness = the app's ``worker_ready``
    receiver created ``ready-<sanitised hostname>``.  If the process exits
    or ``ready_timeout`` elapses first, the process group is killed and
    :class:`WorkerStartError` (an AssertionError) is raised with the
    output tails.
    """
    workdir = appmod.workdir
    hostname = expand_nodename(nodename)
    marker = ready_marker(workdir, hostname)
    marker.unlink(missing_ok=True)  # stale marker from an earlier run

    logpath: Path | None = None
    if logfile is not None:
        logpath = Path(logfile)
        if not logpath.is_absolute():
            logpath = workdir / logpath
        logpath = Path(node_format(str(logpath), hostname))

    argv: list[str] = [
        *launcher,
        sys.executable,
        "-m",
        "celery",
        *global_args,
        "-A",
        appmod.name,
        "worker",
        "--pool",
        pool,
        "-c",
        str(concurrency),
        "-l",
        loglevel,
        "-n",
        nodename,
    ]
    if logfile is not None:
        raw = Path(logfile)
        argv += ["-f", str(raw if raw.is_absolute() else workdir / raw)]
    argv += [*base_args, *extra_args]

    child_env = dict(os.environ)
    pythonpath = [str(REPO_ROOT), str(workdir)]
    if child_env.get("PYTHONPATH"):
        pythonpath.append(child_env["PYTHONPATH"])
    child_env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    # So the output tail in failure messages is complete even after SIGKILL.
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    # pytest's own bookkeeping variable would only confuse the child.
    child_env.pop("PYTEST_CURRENT_TEST", None)
    if env:
        child_env.update(env)

    seq = next(_counter)
    stem = f"worker{seq}-{sanitise(hostname)}"
    stdout_path = workdir / f"{stem}.stdout"
    stderr_path = workdir / f"{stem}.stderr"
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    worker = Worker(
        proc,
        workdir=workdir,
        hostname=hostname,
        stdout_path=stdout_path,
        stderr_path=stderr_path,
        logfile=logpath,
        argv=argv,
    )

    deadline = time.monotonic() + ready_timeout
    while not marker.exists():
        if proc.poll() is not None:
            # Might have died right after becoming ready (racy but harmless).
            if marker.exists():
                break
            worker.stop(timeout=1)
            raise WorkerStartError(
                f"celery worker {hostname} exited with code {proc.returncode} "
                f"before it was ready\n{worker.describe()}",
                worker,
            )
        if time.monotonic() >= deadline:
            worker.stop(sig=signal.SIGKILL, timeout=5)
            raise WorkerStartError(
                f"celery worker {hostname} not ready after {ready_timeout}s "
                f"(killed)\n{worker.describe()}",
                worker,
            )
        time.sleep(0.05)
    return worker
