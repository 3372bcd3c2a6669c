"""Settings of the test Django project; the logging set-up is chosen by environment variables.

``DJP_LOGGING``: ``absent`` (no ``LOGGING``), ``console`` (cookiecutter-django's: a
console handler with the user's own %-format on the root), ``logkit`` (logkit's
JSON formatter on the root, by dotted path), ``none`` (``LOGGING_CONFIG = None``).
``DJP_HIJACK``: ``CELERY_WORKER_HIJACK_ROOT_LOGGER`` (``1``/``0``).
``DJP_DISABLE_EXISTING``: ``disable_existing_loggers`` (``1``/``0``).
"""

import json
import os

SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["django.contrib.contenttypes", "shop"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "djproj.urls"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

CELERY_BROKER_URL = os.environ.get("DJP_BROKER_URL", "memory://")
CELERY_BROKER_TRANSPORT_OPTIONS = json.loads(os.environ.get("DJP_TRANSPORT_OPTIONS", "{}"))
if CELERY_BROKER_URL.startswith("filesystem://"):
    # tests/fstransport.py: atomic puts (kombu's own can be read half-written)
    from fstransport import FastFilesystemTransport

    CELERY_BROKER_TRANSPORT = FastFilesystemTransport
CELERY_RESULT_BACKEND = os.environ.get("DJP_RESULT_BACKEND") or None
CELERY_WORKER_HIJACK_ROOT_LOGGER = os.environ.get("DJP_HIJACK", "0") == "1"
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    "tick": {"task": "shop.tasks.tick", "schedule": 0.5},
}

_MODE = os.environ.get("DJP_LOGGING", "console")
_DISABLE = os.environ.get("DJP_DISABLE_EXISTING", "0") == "1"
#: The user's own format: logkit's context as record attributes.
USER_FORMAT = os.environ.get(
    "DJP_USER_FORMAT", "USER %(levelname)s %(name)s [%(task_name)s %(task_id)s] %(message)s"
)

if _MODE == "console":
    LOGGING = {
        "version": 1,
        "disable_existing_loggers": _DISABLE,
        "formatters": {"user": {"format": USER_FORMAT}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "user"}},
        "root": {"level": "INFO", "handlers": ["console"]},
    }
elif _MODE == "logkit":
    LOGGING = {
        "version": 1,
        "disable_existing_loggers": _DISABLE,
        "formatters": {"json": {"()": "logkit.JsonFormatter", "fields": {"service": "shop"}}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
        "root": {"level": "INFO", "handlers": ["console"]},
    }
elif _MODE == "none":
    LOGGING_CONFIG = None
