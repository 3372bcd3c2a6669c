"""The project's Celery app, with logkit owning its workers' logging."""

from celery import Celery

import logkit

app = Celery("shop", include=["shop.tasks"])
app.conf.update(
    broker_url="memory://",
    result_backend="cache+memory://",
    logkit_log_args=True,  # the task's args/kwargs in its context (secrets redacted)
)
logkit.install(app)
