"""Celery tasks: thin shells that take primary keys and call the job engine."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="clusters.run_job", acks_late=False, ignore_result=True)
def run_job(job_id: int) -> None:
    """Run a job's stages. Acknowledged on receipt: a running playbook is never delivered twice; a worker that
    dies mid-run leaves the job to the reaper."""
    from .engine.service import job_execute

    job_execute(job_id=job_id)


@shared_task(name="clusters.reap_lost_jobs", ignore_result=True, soft_time_limit=120, time_limit=180)
def reap_lost_jobs() -> None:
    """Fail the running jobs whose worker is gone and the pending jobs whose message was lost; remove the files
    of dead workers of this host (every minute, from the beat schedule)."""
    from .engine.reaper import jobs_fail_undelivered, jobs_reap_lost, private_dirs_cleanup, run_markers_cleanup

    jobs_reap_lost()
    jobs_fail_undelivered()
    private_dirs_cleanup()
    run_markers_cleanup()


@shared_task(name="clusters.purge_job_events", ignore_result=True, soft_time_limit=3300, time_limit=3600)
def purge_job_events() -> None:
    """Delete the events of old jobs (nightly, from the beat schedule)."""
    from .engine.reaper import job_events_purge

    job_events_purge()
