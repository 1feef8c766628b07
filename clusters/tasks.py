"""Celery tasks: thin shells that take primary keys and call the job engine."""

from __future__ import annotations

import logging

from celery import shared_task


@shared_task(name="clusters.run_job", acks_late=False, ignore_result=True)
def run_job(job_id: int) -> None:
    """Run a job's stages. Acknowledged on receipt: a running playbook is never delivered twice; a worker that
    dies mid-run leaves the job to the reaper."""
    from .engine.service import job_execute
    from .services.webhooks import webhooks_notify_job

    try:
        job_execute(job_id=job_id)
    finally:
        try:
            webhooks_notify_job(job_id=job_id)
        except Exception:
            logging.getLogger(__name__).exception("job %s: could not create its webhook deliveries", job_id)


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


@shared_task(name="clusters.deliver_webhook", bind=True, ignore_result=True, max_retries=None, soft_time_limit=120)
def deliver_webhook(self, delivery_id: int) -> None:  # type: ignore[no-untyped-def]
    """Send one webhook delivery; retried with exponential backoff while the receiver does not accept it."""
    from .services.webhooks import webhook_delivery_attempt

    outcome = webhook_delivery_attempt(delivery_id=delivery_id)
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in, max_retries=None)


@shared_task(name="clusters.sweep_webhooks", ignore_result=True, soft_time_limit=120, time_limit=180)
def sweep_webhooks() -> None:
    """Notify the webhooks of jobs that ended outside a worker (reaper, cancel before start) and enqueue overdue
    deliveries again (every minute, from the beat schedule)."""
    from .services.webhooks import webhooks_sweep

    webhooks_sweep()


@shared_task(name="clusters.schedule_etcd_snapshots", ignore_result=True, soft_time_limit=120, time_limit=180)
def schedule_etcd_snapshots() -> None:
    """Request the scheduled etcd snapshot jobs that are due; clusters with an active job wait for the next run
    (every ETCD_SNAPSHOT_SCHEDULE_SECONDS, from the beat schedule)."""
    from .services.snapshots import snapshots_schedule_due

    snapshots_schedule_due()


@shared_task(name="clusters.health_sync", ignore_result=True, soft_time_limit=120, time_limit=180)
def health_sync() -> None:
    """Request a health sync of every installed cluster that has no active job, and delete old syncs (every
    HEALTH_SYNC_INTERVAL_SECONDS, from the beat schedule)."""
    from .services.health import health_sync_run

    health_sync_run()
