"""The Celery application. Configuration comes from Django settings prefixed ``CELERY_``."""

import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rke2portal.settings")

app = Celery("rke2portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def _reap_jobs_of_previous_worker(**_kwargs: object) -> None:
    """A worker that starts fails the jobs a crashed worker left running on this host and removes their files."""
    from django.db import connections

    from clusters.engine.reaper import worker_started

    try:
        worker_started()
    finally:
        connections.close_all()
