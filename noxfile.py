"""The version matrix: ``nox -l`` lists the sessions, ``nox -s lowest`` runs one.

- ``tests-3.11``, ``tests-3.14``: today's newest release of every dependency, the whole
  suite (what the README's two commands do on a fresh machine), on the oldest Python and
  on 3.14.
- ``lowest``: every direct runtime dependency at the lower bound ``pyproject.toml``
  declares (pinned through a constraints file generated from it), the whole suite.
- ``celery-3.11(5.3)`` ... ``celery-3.15(5.7)``: one Celery minor (with the kombu it
  resolves) on one Python version each: the real-worker contract tests (``-m contract``):
  the ``setup_logging`` contract and override, ``after_setup_*`` kwargs, context in
  prefork and threads, lifecycle events. Every pair on Python 3.11 to 3.13; on 3.14 and
  3.15 the newest Celery and 5.6 (``CONTRACT``: the others skip, saying so).
- ``sentry2``: sentry-sdk 2 (the newest 2.x; ``.[dev]`` resolves 3): the tests of logkit
  beside Sentry, whose wire format changed between the two majors.
- ``package``: sdist and wheel build, ``twine check``, the wheel installed alone (no
  checkout on the path) runs ``python -m logkit demo --format json`` and ``logkit view``.
- ``celery_integration`` (not run by a bare ``nox``; ``nox -s celery_integration``):
  Celery's own integration tests (``t/integration`` of the installed Celery's sdist),
  a subset that fits about five minutes, against a real ``redis-server``, once as they
  are and once with ``logkit.install(app, format="json")`` on the suite's app; fails
  naming every test whose outcome differs (``tests/celery_integration/compare.py``).

Sessions use uv to build their virtual environments when it is installed (fast), pip
otherwise. Python 3.12 to 3.15 are found as ``python3.12`` ... ``python3.15`` on ``PATH``
(with pyenv: ``PYENV_VERSION=3.11.7:3.12.1:3.13.0``, as ``.ci/run`` sets it; ``.ci/run``
runs the 3.14 and 3.15 sessions in a Debian sid chroot that has them: ``.ci/sid``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: Celery minors logkit supports: each gets a session (keep in step with the README's table).
CELERY_MINORS = ["5.3", "5.4", "5.5", "5.6", "5.7"]
#: The Python versions logkit supports, the whole suite's first (keep in step with the
#: classifiers in pyproject.toml and the README's table).
PYTHONS = ["3.11", "3.12", "3.13", "3.14", "3.15"]
#: The Pythons the whole suite runs on: the oldest, and 3.14 (Debian sid's, .ci/sid).
WHOLE_SUITE = ["3.11", "3.14"]
#: The ``(Python, Celery minor)`` pairs of the contract tests: every minor on 3.11 to
#: 3.13; on 3.14 and 3.15 the newest and 5.6 (the one Debian sid ships as python3-celery).
CONTRACT = [(python, minor) for python in PYTHONS for minor in CELERY_MINORS
            if python in ("3.11", "3.12", "3.13") or minor in ("5.6", CELERY_MINORS[-1])]

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = True


def lower_bounds(requirements: list[str]) -> list[str]:
    """``name==X`` for every ``name>=X`` in ``requirements`` (the declared lower bounds)."""
    pins = []
    for requirement in requirements:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([^,;\s]+)\s*", requirement)
        if match is None:
            raise ValueError(f"no lower bound to pin in {requirement!r} (expected 'name>=X')")
        pins.append(f"{match[1]}=={match[2]}")
    return pins


@contextlib.contextmanager
def _checkout(session: nox.Session) -> Iterator[None]:
    """Install the checkout one session at a time (``.ci/run`` runs two at once).

    An editable install builds the checkout, which writes its ``.egg-info`` folder in
    place: two at once could read each other's half-written metadata.
    """
    lock = Path(session.create_tmp()).resolve().parent.parent / "install.lock"
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield


def _pytest(session: nox.Session, *args: str) -> None:
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, *session.posargs)


@nox.session(python=WHOLE_SUITE)
def tests(session: nox.Session) -> None:
    """Newest releases of everything, the whole suite."""
    with _checkout(session):
        session.install("-e", ".[dev]")
    _versions(session)
    _pytest(session)


@nox.session(python=PYTHONS[0])
def lowest(session: nox.Session) -> None:
    """Every runtime dependency at its declared lower bound, the whole suite."""
    constraints = Path(session.create_tmp()).resolve() / "lowest-constraints.txt"
    pins = lower_bounds(PYPROJECT["project"]["dependencies"])
    constraints.write_text("\n".join(pins) + "\n")
    session.log("pinned: " + ", ".join(pins))
    with _checkout(session):
        session.install("-e", ".[dev]", "-c", str(constraints))
    _versions(session)
    _pytest(session)


@nox.session(python=PYTHONS)
@nox.parametrize("celery", CELERY_MINORS, ids=CELERY_MINORS)
def celery(session: nox.Session, celery: str) -> None:
    """One Celery minor (and the kombu it resolves): the real-worker contract tests."""
    if (session.python, celery) not in CONTRACT:
        session.skip(f"Celery {celery} is not in the matrix on Python {session.python}: "
                     "there, the newest Celery and 5.6")
    with _checkout(session):
        session.install("-e", ".[dev]", f"celery=={celery}.*")
    _versions(session)
    _pytest(session, "-m", "contract")


@nox.session(python=PYTHONS[0])
def sentry2(session: nox.Session) -> None:
    """sentry-sdk 2 (``.[dev]`` resolves 3): logkit beside Sentry, Sentry's other major."""
    with _checkout(session):
        session.install("-e", ".[dev]", "sentry-sdk<3")
    _versions(session, "sentry-sdk")
    _pytest(session, "tests/test_other_libraries.py", "-k", "sentry")


@nox.session(python=PYTHONS[0])
def package(session: nox.Session) -> None:
    """Build, check and run the wheel with no checkout on the path."""
    dist = Path(session.create_tmp()).resolve() / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.install("build", "twine")
    with _checkout(session):
        session.run("python", "-m", "build", "--outdir", str(dist), str(ROOT))
    files = sorted(str(p) for p in dist.iterdir())
    name = re.sub(r"[-_.]+", "_", PYPROJECT["project"]["name"]).lower()  # as in file names
    if sorted(Path(f).name.split("-")[0] for f in files) != [name, name]:
        session.error(f"the sdist and the wheel are not named {name}: {files}")
    session.run("python", "-m", "twine", "check", "--strict", *files)
    wheel = next(f for f in files if f.endswith(".whl"))
    session.install(wheel)
    work = Path(session.create_tmp()).resolve() / "outside"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    session.chdir(work)  # nothing of the checkout importable from here
    session.run("python", "-c", "import logkit, sys; assert 'site-packages' in logkit.__file__, "
                "logkit.__file__; print(logkit.__file__)")
    log = work / "demo.log"
    with log.open("w") as out, (work / "demo.err").open("w") as err:
        session.run("python", "-m", "logkit", "demo", "--format", "json", stdout=out, stderr=err)
    records = [json.loads(line) for line in log.read_text().splitlines()]  # all JSON
    events = {r.get("event") for r in records}
    if not {"worker_ready", "task_succeeded", "task_failed"} <= events:
        session.error(f"the wheel's demo wrote no task events: {sorted(map(str, events))}")
    session.log(f"the wheel's demo wrote {len(records)} JSON lines")
    view = session.run("logkit", "view", "--no-color", str(log), silent=True)
    if not isinstance(view, str) or "task_succeeded" not in view:
        session.error(f"logkit view did not show the demo's events: {view!r}")


@nox.session(python=PYTHONS[0], default=False)
def celery_integration(session: nox.Session) -> None:
    """Celery's own integration tests with and without logkit: the same outcomes (#39)."""
    with _checkout(session):
        session.install("-e", ".[dev]")
    # what Celery's integration suite imports and its markers need (requirements/test*.txt);
    # pip downloads its sdist (a uv environment has no pip)
    session.install("pip", "pydantic", "pytest-rerunfailures", "pytest-timeout", "redis")
    _versions(session, "redis")
    work = Path(session.create_tmp()).resolve() / "celery-integration"
    session.run("python", str(ROOT / "tests" / "celery_integration" / "compare.py"),
                "--work", str(work), *session.posargs)


def _versions(session: nox.Session, *more: str) -> None:
    """Print the versions this session resolved (the matrix's evidence)."""
    names = ["celery", "kombu", "structlog", "python-json-logger", "orjson", "colorama", "pytest",
             *more]
    session.run("python", "-c", "import importlib.metadata as m, sys; print(sys.version.split()[0],"
                f" *(n + '==' + m.version(n) for n in {names!r}))")
