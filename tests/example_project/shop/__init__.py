"""An example project using logkit: a Celery app and its tasks."""
