"""The job engine: runs a job's stages as Ansible playbooks through ansible-runner and records every event.

Entry point: :func:`clusters.engine.service.job_execute` (called by the ``clusters.run_job`` Celery task).
"""
