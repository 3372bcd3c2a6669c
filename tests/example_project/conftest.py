import pytest

import logkit

pytest_plugins = ("celery.contrib.pytest",)


@pytest.fixture(scope="session")
def celery_config():
    return {
        "broker_url": "memory://",
        "result_backend": "cache+memory://",
        "logkit_log_args": True,
    }


@pytest.fixture
def celery_app(celery_app):
    """celery.contrib.pytest's test app, with logkit installed like the project's app;
    what logkit changed is put back after the test."""
    logkit.install(celery_app)
    celery_app.set_current()  # shared tasks resolve to it (the fixture restores the old one)
    yield celery_app
    logkit.uninstall()
