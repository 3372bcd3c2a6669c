"""The Celery app, set up the usual Django way (plus logkit and a readiness marker)."""

import os

from celery import Celery
from celery.signals import worker_ready

import logkit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djproj.settings")

app = Celery("djproj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
logkit.install(app, format="json", **({"root_handlers": os.environ["DJP_ROOT_HANDLERS"]}
                                      if os.environ.get("DJP_ROOT_HANDLERS") else {}))


@worker_ready.connect(weak=False)
def _mark_ready(sender=None, **kwargs):
    """Touch ``$DJP_WORKDIR/ready-<hostname>`` (what tests/workerutil.py waits for)."""
    workdir = os.environ.get("DJP_WORKDIR")
    if workdir:
        import re

        name = re.sub(r"[^A-Za-z0-9._-]", "_", str(sender.hostname))
        with open(os.path.join(workdir, f"ready-{name}"), "w") as fh:
            fh.write(str(os.getpid()))
