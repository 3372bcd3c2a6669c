"""The pictures of the docs, made from real output: ``python docs/pictures.py``.

* ``docs/images/demo-console.svg``: ``python -m logkit demo --format console`` (a real
  worker, colour forced), its log as the terminal shows it;
* ``docs/images/view-workers.svg``: ``logkit view`` of the JSON log files of two real
  workers that shared the demo's tasks, merged in time order.

The ANSI output is turned into SVG by rich (``Text.from_ansi`` and
``Console.export_svg``); nothing is drawn by hand. Two things are changed in the text,
both to keep machine details out of the pictures: the path of this checkout and of the
Python installation in tracebacks, and the host name. ``tests/test_docs.py`` checks the
pictures show the events and fields the current code writes.

Needs the ``dev`` extra (rich); takes about half a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
CONSOLE_SVG = IMAGES / "demo-console.svg"
VIEW_SVG = IMAGES / "view-workers.svg"

#: Columns of the pictures' terminal: long lines wrap, as in a terminal this wide.
WIDTH = 120
WORKERS = ("worker1", "worker2")
TIMEOUT = 60.0


def _anonymise(text: str, workdir: Path | None = None) -> str:
    """``text`` without this machine's paths and host name."""
    for path, label in (
        (sysconfig.get_paths()["purelib"], "site-packages"),
        (str(ROOT), "."),
        (sys.prefix, "venv"),
        (str(workdir), "/tmp/demo"),
    ):
        text = text.replace(path, label)
    return text.replace(f"@{socket.gethostname()}", "@host")


def to_svg(ansi: str, title: str, path: Path) -> None:
    """Render ``ansi`` (text with colour escapes) as a terminal window in ``path``."""
    from rich.console import Console
    from rich.text import Text

    console = Console(
        record=True, width=WIDTH, force_terminal=True, color_system="truecolor",
        file=open(os.devnull, "w"),  # noqa: SIM115 - closed with the console below
    )
    with contextlib.closing(console.file):
        console.print(Text.from_ansi(_anonymise(ansi)), soft_wrap=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        # a fixed id: the same output gives the same file
        path.write_text(console.export_svg(title=title, unique_id="logkit"), encoding="utf-8")


def demo_console() -> str:
    """The demo worker's log in colour, as ``python -m logkit demo`` prints it."""
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": str(WIDTH)}
    env.pop("NO_COLOR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "logkit", "demo", "--format", "console"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT * 2,
    )
    if proc.returncode != 0:
        raise SystemExit(f"the demo failed:\n{proc.stderr}")
    return proc.stdout


@contextlib.contextmanager
def _workers(workdir: Path) -> Iterator[list[Path]]:
    """Two real demo workers on one embedded broker, each writing JSON to its own file."""
    env = {**os.environ, "LOGKIT_DEMO_DIR": str(workdir), "PYTHONUNBUFFERED": "1"}
    # as the demo does: no warning about running as root (in a container)
    env["PYTHONWARNINGS"] = "ignore:You're running the worker with superuser privileges"
    logs = [workdir / f"{name}.log" for name in WORKERS]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "logkit.demo_app", "worker",
             "--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO",
             "--hostname", f"{name}@%h", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "--log-format", "json", "--logfile", str(log)],
            env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )
        for name, log in zip(WORKERS, logs, strict=True)
    ]
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(list(workdir.glob("ready-*"))) < len(WORKERS):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit("the workers did not start")
            time.sleep(0.05)
        yield logs
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)  # warm shutdown: its events are logged
        for proc in procs:
            try:
                proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def view_workers() -> str:
    """``logkit view`` of two workers' JSON files, after they ran the demo's tasks."""
    with tempfile.TemporaryDirectory(prefix="logkit-pictures-") as tmp:
        workdir = Path(tmp)
        os.environ["LOGKIT_DEMO_DIR"] = str(workdir)  # before logkit.demo_app is imported
        with _workers(workdir) as logs:
            import celery

            import logkit
            from logkit import demo_app

            with logkit.bound(request_id="req-7f3a"):
                results = [
                    demo_app.greet.delay("ada"),
                    demo_app.fail.delay(1999),
                    celery.chain(demo_app.add.s(2, 2), demo_app.add.s(3)).delay(),
                    demo_app.greet.delay("grace"),
                ]
            for result in results:
                result.get(timeout=TIMEOUT, interval=0.05, propagate=False)
            time.sleep(0.3)  # the task_succeeded records follow the results
        proc = subprocess.run(
            [sys.executable, "-m", "logkit", "view", "--color", *map(str, logs)],
            cwd=workdir, capture_output=True, text=True, timeout=TIMEOUT,
        )
        if proc.returncode != 0:
            raise SystemExit(f"logkit view failed:\n{proc.stderr}")
        command = "logkit view --color " + " ".join(log.name for log in logs)
        return _anonymise(f"$ {command}\n{proc.stdout}", workdir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", nargs="*", help="console, view (default: both)")
    which = set(parser.parse_args(argv).which) or {"console", "view"}
    if not which <= {"console", "view"}:
        parser.error(f"pictures are 'console' and 'view'; got {sorted(which)}")
    if "console" in which:
        to_svg(demo_console(), "python -m logkit demo --format console", CONSOLE_SVG)
        print(f"wrote {CONSOLE_SVG.relative_to(ROOT)}")
    if "view" in which:
        to_svg(view_workers(), "logkit view worker1.log worker2.log", VIEW_SVG)
        print(f"wrote {VIEW_SVG.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
