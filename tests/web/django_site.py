"""A one-module Django project for the tests: settings, views, URLs and the ASGI app.

``DJANGO_LOG`` (optional): logkit writes this process's JSON records there.
"""

from __future__ import annotations

import asyncio
import logging
import os

import django
from django.conf import settings

import logkit

settings.configure(
    DEBUG=False,
    SECRET_KEY="test",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth",
                    "django.contrib.sessions"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    MIDDLEWARE=[
        "logkit.django.RequestContextMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
    ],
    LOGKIT_REQUEST={"client_ip": True},
    LOGGING_CONFIG=None,
)
django.setup()
if os.environ.get("DJANGO_LOG"):
    logkit.configure(format="json", logfile=os.environ["DJANGO_LOG"], loglevel="INFO")

from django.http import JsonResponse, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

log = logging.getLogger("djangoapp")


def sync_view(request):  # type: ignore[no-untyped-def]
    log.info("sync view")
    return JsonResponse(logkit.get_context())


async def async_view(request):  # type: ignore[no-untyped-def]
    await asyncio.sleep(0.01)
    log.info("async view")
    return JsonResponse(logkit.get_context())


def stream_view(request):  # type: ignore[no-untyped-def]
    def body():  # type: ignore[no-untyped-def]
        for _ in range(3):
            yield str(logkit.get_context().get("request_id")) + "\n"

    return StreamingHttpResponse(body())


urlpatterns = [
    path("sync", sync_view),
    path("async", async_view),
    path("stream", stream_view),
]


from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
