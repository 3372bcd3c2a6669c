"""The pytest plugin, as a user meets it: pytest subprocesses on example projects."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "tests" / "example_project"


def _pytest(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=cwd, capture_output=True, text=True, timeout=240,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
    )


@pytest.mark.parametrize("extra", [[], ["-p", "no:logging"]], ids=["logging", "no-logging"])
def test_example_project_passes(extra: list[str]) -> None:
    # -p with the module name works alongside the installed pytest11 entry point
    done = _pytest("tests/example_project", "-p", "logkit.pytest_plugin", *extra, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 passed" in done.stdout


FAILING = '''
import logging

def test_charge_fails_loudly(logkit_records):
    logging.getLogger("shop").info("charged", extra={"amount": 5})
    logkit_records.assert_logged(event="task_failed", exception__type="ValueError")
'''

# runs first (file order): the plugin has imported nothing and changed nothing yet
UNUSED = '''
import logging
import sys

def test_logging_left_alone():
    assert "logkit.testing" not in sys.modules
    assert logging.Logger.callHandlers.__module__ == "logging"
    assert logging.getLogger().level == logging.WARNING
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_failing.py").write_text(FAILING)
    (tmp_path / "test_0_unused.py").write_text(UNUSED)
    return tmp_path


@pytest.mark.parametrize("extra", [[], ["-p", "no:logging"]], ids=["logging", "no-logging"])
def test_failure_is_readable_and_unused_plugin_is_harmless(project: Path, extra: list[str]) -> None:
    done = _pytest(*extra, cwd=project)
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "1 failed, 1 passed" in out
    assert (
        "AssertionError: no record with event='task_failed', exception__type='ValueError' "
        "among 1 captured" in out
    )
    assert "INFO shop 'charged'  [differs: event=<missing>, exception__type=<missing>]" in out
    assert "Captured logkit records" in out


def test_works_under_pytest_django(project: Path) -> None:
    pytest.importorskip("pytest_django")
    (project / "settings.py").write_text(textwrap.dedent('''
        SECRET_KEY = "test"
        INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
        DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
        USE_TZ = True
    '''))
    (project / "pytest.ini").write_text("[pytest]\nDJANGO_SETTINGS_MODULE = settings\n"
                                        "pythonpath = .\n")
    (project / "test_django.py").write_text(textwrap.dedent('''
        import logging
        import pytest
        from django.contrib.auth.models import User

        @pytest.mark.django_db
        def test_records_with_db(settings, logkit_records):
            settings.DEBUG = True
            User.objects.create(username="ann")
            logging.getLogger("shop").info("user created", extra={"user": "ann"})
            assert logkit_records.assert_logged(message="user created")["user"] == "ann"

        def test_after():  # pytest-django runs the django_db tests first
            assert logging.Logger.callHandlers.__module__ == "logging"
            assert logging.getLogger().level == logging.WARNING
    '''))
    done = _pytest("test_django.py", "-p", "django", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
