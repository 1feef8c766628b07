"""Celery tasks: thin shells that take primary keys and call the job engine."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="clusters.run_job", acks_late=False, ignore_result=True)
def run_job(job_id: int) -> None:
    """Run a job's stages. Acknowledged on receipt: a running playbook is never delivered twice; a worker that
    dies mid-run leaves the job to the reaper."""
    from .engine.service import job_execute

    job_execute(job_id=job_id)
