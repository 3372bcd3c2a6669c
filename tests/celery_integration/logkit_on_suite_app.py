"""pytest plugin (``-p logkit_on_suite_app``): ``logkit.install(app, format="json")`` on
the app of Celery's own integration suite, as a user installs it next to their app.

The suite's worker (``celery.contrib.pytest``'s ``celery_session_worker``, an embedded
``start_worker``) runs tasks of its session app, ``celery_session_app``; an autouse fixture
of the same scope installs logkit on it before any test asks for the worker, so the
worker's ``setup_logging`` is logkit's. Tests publish from their own test app: logkit's
publisher receivers are process-wide, so they see those messages too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session", autouse=True)
def _logkit_on_suite_app(celery_session_app: Any) -> Iterator[None]:
    import logkit

    logkit.install(celery_session_app, format="json")
    yield
    logkit.uninstall()
