"""Requesting and cancelling jobs. A worker runs them (``clusters.tasks.run_job``)."""

from __future__ import annotations

import logging
import re
import uuid
from functools import partial
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from .. import validators
from ..choices import (
    ACTIVE_JOB_STATUSES,
    INSTALL_STAGES,
    LIVE_NODE_STATUSES,
    REACHABILITY_STAGE,
    SERVER_ROLES,
    ClusterStatus,
    InstallationStage,
    JobKind,
    JobStatus,
    NodeStatus,
)
from ..exceptions import InvalidState, JobConflict, QueueUnavailable
from ..integrity import integrity_error_messages, integrity_refusal
from ..models import Cluster, Job
from . import snapshots
from .artifacts import AirgapArtifactsError, airgap_enabled, check_airgap_artifacts
from .audit import audit_record
from .clusters import cluster_install_problems
from .health import health_sync_yield

__all__ = ["job_request", "job_cancel", "job_dispatch", "plan_stages", "JOB_QUEUE"]

logger = logging.getLogger(__name__)

# Playbook jobs run on their own queue, one at a time per worker process.
JOB_QUEUE = "playbooks"
# The database rule behind "one active job per cluster" (clusters.models.Job.Meta.constraints).
ONE_ACTIVE_JOB_CONSTRAINT = "clusters_job_one_active_per_cluster"


def _require_credential(cluster: Cluster) -> None:
    if cluster.ssh_credential_id is None:
        raise InvalidState("The cluster has no SSH credential: set one before running jobs on its hosts.")


def _require_bootstrapped(cluster: Cluster, kind: str) -> None:
    if not cluster.is_bootstrapped:
        raise InvalidState(
            f"The cluster is not installed yet: {JobKind(kind).label.lower()} needs an installed cluster."
        )


def install_resume_stage(job: Job) -> str | None:
    """The install stage a failed or canceled install resumes from: the stage it stopped in or, when it stopped in
    its reachability check, the first install stage it was to run next (None: it cannot be resumed)."""
    if job.kind != JobKind.INSTALL or job.status not in (JobStatus.FAILED, JobStatus.CANCELED):
        return None
    if job.stage in INSTALL_STAGES:
        return job.stage
    if job.stage == REACHABILITY_STAGE:
        return next((str(stage) for stage in job.stages or [] if stage in INSTALL_STAGES), None)
    return None


def _last_failed_install_stage(cluster: Cluster) -> str | None:
    last = _last_install(cluster)
    return install_resume_stage(last) if last else None


def _with_reachability(params: dict[str, Any], stages: list[str]) -> list[str]:
    """An install's or a scale-out's stages, after the reachability check unless the request turned it off."""
    return [REACHABILITY_STAGE, *stages] if params.get("check_reachability", True) else stages


_WORKERS_BATCH_RE = re.compile(r"^([1-9][0-9]*|([1-9][0-9]?|100)%)$")

# Jobs that write config.yaml or restart RKE2: refused on an imported cluster until it is adopted.
ADOPTION_GUARDED_KINDS = frozenset({JobKind.INSTALL, JobKind.SCALE_ADD, JobKind.SCALE_REMOVE, JobKind.UPGRADE})


def _validate_common_params(params: dict[str, Any]) -> None:
    """Options any job may carry: how many workers change at once, how long a drain may take, and whether an install
    or a scale-out checks reachability first."""
    errors: dict[str, list[str]] = {}
    if "workers_batch" in params:
        batch = params["workers_batch"]
        if isinstance(batch, bool) or not _WORKERS_BATCH_RE.match(str(batch)):
            errors["workers_batch"] = ["Enter a number of workers (at least 1) or a percentage such as '25%'."]
    if "drain_timeout" in params:
        timeout = params["drain_timeout"]
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0:
            errors["drain_timeout"] = ["Enter a whole number of seconds (0 or more)."]
    if "check_reachability" in params and not isinstance(params["check_reachability"], bool):
        errors["check_reachability"] = ["Enter true or false."]
    if errors:
        raise ValidationError(errors)


def _require_airgap_artifacts(cluster: Cluster, version: str, field: str) -> None:
    """With the air-gap install method, the artifacts of ``version`` must be on the worker before a job that
    installs it is queued: a missing version folder (or CNI archive) is refused naming the field."""
    if not airgap_enabled():
        return
    try:
        check_airgap_artifacts(version, str(cluster.cni))
    except AirgapArtifactsError as exc:
        raise ValidationError({field: [exc.message]}) from None


def plan_stages(cluster: Cluster, kind: str, params: dict[str, Any]) -> list[str]:
    """The ordered stages a job of ``kind`` runs, after checking that the cluster's state allows it.

    Raises :class:`InvalidState` or :class:`ValidationError` (naming the parameter) when it does not.
    """
    stages = _plan_stages(cluster, kind, params)
    if kind in (JobKind.INSTALL, JobKind.SCALE_ADD):
        _require_airgap_artifacts(cluster, str(cluster.rke2_version), "rke2_version")
    elif kind == JobKind.UPGRADE:
        _require_airgap_artifacts(cluster, str(params.get("target_version") or ""), "target_version")
    return stages


def _plan_stages(cluster: Cluster, kind: str, params: dict[str, Any]) -> list[str]:
    _validate_common_params(params)
    nodes = list(cluster.cluster_nodes.all())
    live = [node for node in nodes if node.status in LIVE_NODE_STATUSES]
    if cluster.status == ClusterStatus.UNINSTALLED and kind not in (JobKind.INSTALL, JobKind.PREFLIGHT):
        raise InvalidState("The cluster has been uninstalled; only preflight and install are possible.")
    if cluster.adoption_required and kind in ADOPTION_GUARDED_KINDS:
        raise InvalidState(
            f"The cluster was imported and is not adopted yet: {JobKind(kind).label.lower()} would rewrite RKE2's "
            "configuration or restart it with values the portal has not read from the nodes (a wrong token stops "
            "the servers). Run the adopt job first."
        )
    snapshot_stages = snapshots.plan_snapshot_job(cluster, kind, params, nodes)
    if snapshot_stages is not None:
        return snapshot_stages
    if kind == JobKind.ADOPT:
        _require_credential(cluster)
        _require_bootstrapped(cluster, kind)
        if not any(node.status == NodeStatus.ACTIVE and node.role in SERVER_ROLES for node in live):
            raise InvalidState("The cluster has no active server to read the token from.")
        return ["adopt"]
    if kind == JobKind.PREFLIGHT:
        _require_credential(cluster)
        if not live:
            raise InvalidState("The cluster has no nodes to check.")
        return ["preflight"]
    if kind == JobKind.INSTALL:
        problems = cluster_install_problems(cluster, live)
        if problems:
            raise InvalidState(" ".join(problems))
        stages = list(INSTALL_STAGES)
        if params.get("resume"):
            failed_stage = _last_failed_install_stage(cluster)
            if failed_stage is None:
                raise ValidationError({"resume": ["There is no failed install to resume."]})
            stages = stages[stages.index(failed_stage) :]
        elif cluster.installation_stage == InstallationStage.COMPLETE and all(
            n.status == NodeStatus.ACTIVE for n in live
        ):
            raise InvalidState("The cluster is already installed; add nodes with a scale job.")
        return _with_reachability(params, [str(stage) for stage in stages])
    if kind == JobKind.SCALE_ADD:
        _require_credential(cluster)
        _require_bootstrapped(cluster, kind)
        pending = [node for node in live if node.status in (NodeStatus.PENDING, NodeStatus.FAILED)]
        if not pending:
            raise InvalidState("There are no pending nodes to add.")
        stages = []
        if any(node.role in SERVER_ROLES for node in pending):
            stages.append(str(InstallationStage.JOINING_MASTERS))
        if any(node.role not in SERVER_ROLES for node in pending):
            stages.append(str(InstallationStage.WORKERS))
        return _with_reachability(params, stages)
    if kind == JobKind.SCALE_REMOVE:
        _require_credential(cluster)
        _require_bootstrapped(cluster, kind)
        if not any(node.status == NodeStatus.DRAINING for node in nodes):
            raise InvalidState("No node is marked for removal.")
        return [*snapshots.pre_snapshot_stages(cluster, kind, params, nodes), "scale_remove"]
    if kind == JobKind.UPGRADE:
        _require_credential(cluster)
        _require_bootstrapped(cluster, kind)
        target = str(params.get("target_version") or "")
        try:
            validators.validate_rke2_version(target)
        except ValidationError as exc:
            raise ValidationError({"target_version": exc.messages}) from None
        current = validators.parse_rke2_version(cluster.rke2_version)
        wanted = validators.parse_rke2_version(target)
        if wanted < current and not params.get("allow_downgrade"):
            raise ValidationError(
                {"target_version": [f"{target} is older than {cluster.rke2_version}: downgrades are refused."]}
            )
        if (
            wanted[:2] > current[:2]
            and (wanted[0], wanted[1]) != (current[0], current[1] + 1)
            and not params.get("allow_minor_skip")
        ):
            raise ValidationError(
                {
                    "target_version": [
                        f"{target} skips a minor version after {cluster.rke2_version}: upgrade one minor at a time."
                    ]
                }
            )
        if wanted == current and all(node.installed_version == target for node in live):
            raise InvalidState(f"Every node already runs {target}.")
        return [*snapshots.pre_snapshot_stages(cluster, kind, params, nodes), "upgrade"]
    if kind == JobKind.UNINSTALL:
        _require_credential(cluster)
        if params.get("confirm") != cluster.name:
            raise ValidationError({"confirm": [f"Type the cluster's name ({cluster.name}) to confirm the uninstall."]})
        return ["uninstall"]
    if kind == JobKind.FETCH_KUBECONFIG:
        _require_credential(cluster)
        _require_bootstrapped(cluster, kind)
        return ["fetch_kubeconfig"]
    if kind in (JobKind.HEALTH, JobKind.HEALTH_SYNC):
        _require_credential(cluster)
        _require_bootstrapped(cluster, kind)
        return [str(kind)]
    if kind == JobKind.CERT_ROTATE:
        _require_credential(cluster)
        _require_bootstrapped(cluster, kind)
        if cluster.adoption_required:
            raise InvalidState("The cluster was imported and is not adopted yet: run the adopt job first.")
        return ["cert_rotate"]
    if kind == JobKind.NODE_LABELS:
        from .node_labels import node_labels_plan

        _require_credential(cluster)
        _require_bootstrapped(cluster, kind)
        node_labels_plan(cluster, params)
        return ["node_labels"]
    raise ValidationError({"kind": [f"Unknown job kind {kind!r}."]})


# Jobs that write RKE2's config.yaml on nodes (from the cluster's and the nodes' extra configuration).
CONFIG_RENDERING_KINDS = frozenset({JobKind.INSTALL, JobKind.SCALE_ADD, JobKind.UPGRADE})


def _refuse_weakening_config(cluster: Cluster, kind: str) -> None:
    """Refuse a job that would write extra configuration that is refused today (stored before it was: imported,
    or saved by an older version) into config.yaml; each error names the field, the node and the key."""
    if kind not in CONFIG_RENDERING_KINDS:
        return
    errors: dict[str, list[str]] = {}
    advice = (
        "stored before such values were refused; remove it from the {} extra configuration, then request the job again."
    )
    problems = validators.weakening_config_errors(cluster.cluster_vars)
    if problems:
        where = advice.format(f"cluster {cluster.name}'s")
        errors["cluster_vars"] = [f"{problem} It was {where}" for problem in problems]
    nodes = cluster.cluster_nodes.filter(status__in=LIVE_NODE_STATUSES)
    if kind == JobKind.SCALE_ADD:
        nodes = nodes.filter(status__in=(NodeStatus.PENDING, NodeStatus.FAILED))
    for node in nodes.order_by("hostname"):
        problems = validators.weakening_config_errors(node.node_vars)
        if problems:
            where = advice.format(f"node {node.hostname}'s")
            errors[f"nodes[{node.hostname}].node_vars"] = [f"{problem} It was {where}" for problem in problems]
    if errors:
        raise ValidationError(errors)


def _last_install(cluster: Cluster) -> Job | None:
    """The cluster's last install job that ran (jobs that never started changed nothing on the cluster)."""
    return (
        cluster.jobs.filter(kind=JobKind.INSTALL, started_at__isnull=False)
        .exclude(status__in=ACTIVE_JOB_STATUSES)
        .first()
    )


# Publishing a task message: a few quick tries, so that a request never hangs on a broker that is down.
_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


def job_dispatch(job: Job) -> str:
    """Hand a pending job's task message to the broker and record when (``dispatched_at``). When the broker
    cannot take it, the job is failed at once with an explanation (it never runs, and its cluster is free again)
    and the explanation is returned; an empty string means the message was sent."""
    from ..tasks import run_job as run_job_task

    try:
        run_job_task.apply_async(
            args=[job.pk], task_id=job.celery_task_id, queue=JOB_QUEUE, retry_policy=_PUBLISH_RETRY_POLICY
        )
    except Exception as exc:  # noqa: BLE001 - any publishing failure means the job will not run
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        explanation = f"Not queued: the task queue (broker) cannot be reached ({reason}). Request the job again."
        logger.warning("job %s: %s", job.pk, explanation)
        Job.objects.filter(pk=job.pk, status=JobStatus.PENDING).update(
            status=JobStatus.FAILED, finished_at=timezone.now(), explanation=explanation
        )
        return explanation
    Job.objects.filter(pk=job.pk, dispatched_at__isnull=True).update(dispatched_at=timezone.now())
    return ""


def job_request(*, cluster: Cluster, kind: str, params: dict[str, Any] | None = None, actor: Any = None) -> Job:
    """Create a pending job after checking the cluster's state, and enqueue it once the transaction commits.

    Raises :class:`JobConflict` when the cluster already has an active job (one per cluster, enforced by the
    database), :class:`InvalidState` or :class:`ValidationError` when the request does not fit the cluster, and
    :class:`QueueUnavailable` when the broker cannot take the message: the job is then failed at once with an
    explanation, so that nothing stays pending and the cluster is free. Called inside a transaction, the message
    goes when it commits, and a broker that is down fails the job the same way (without raising).
    """
    if kind not in JobKind.values:
        raise ValidationError({"kind": [f"Unknown job kind {kind!r}."]})
    params = dict(params or {})
    active = cluster.jobs.filter(status__in=ACTIVE_JOB_STATUSES).first()
    if active is not None and not health_sync_yield(active):
        raise JobConflict(active)
    stages = plan_stages(cluster, kind, params)
    _refuse_weakening_config(cluster, kind)
    resume_of = None
    if kind == JobKind.INSTALL and params.get("resume"):
        resume_of = _last_install(cluster)
    params.pop("confirm", None)
    try:
        with transaction.atomic():
            job = Job.objects.create(
                cluster=cluster,
                kind=kind,
                params=params,
                stages=stages,
                requested_by=_user(actor),
                celery_task_id=str(uuid.uuid4()),
                resume_of=resume_of,
            )
            audit_record(action=f"job.request.{kind}", actor=actor, cluster=cluster, detail={"job_id": job.pk})
    except IntegrityError as exc:
        refusal = integrity_refusal(exc, Job)
        if refusal.constraint == ONE_ACTIVE_JOB_CONSTRAINT:
            # Another request created its job between the check above and this one.
            raise JobConflict(cluster.jobs.filter(status__in=ACTIVE_JOB_STATUSES).first()) from None
        # Any other rule is reported as the rule it is, next to the field it guards: never as a conflict.
        raise ValidationError(integrity_error_messages(exc, Job)) from exc
    if transaction.get_connection().in_atomic_block:
        # The caller's transaction commits later: the message goes then; a broker that is down fails the job.
        transaction.on_commit(partial(job_dispatch, job), robust=True)
        return job
    problem = job_dispatch(job)
    if problem:
        raise QueueUnavailable(
            f"The job could not be queued: the task queue (broker) cannot be reached. Nothing was started and "
            f"the cluster is free; try again when the broker is back. Job #{job.pk} records the attempt.",
            extra={"job_id": job.pk},
        )
    return job


def job_cancel(*, job: Job, actor: Any = None) -> Job:
    """Ask for a job to stop. A job that has not started is canceled at once; a running one is stopped by its
    worker within seconds (its status changes when the playbook has stopped)."""
    now = timezone.now()
    with transaction.atomic():
        started = (
            Job.objects.filter(pk=job.pk, status=JobStatus.PENDING).update(
                status=JobStatus.CANCELED,
                cancel_requested=True,
                cancel_requested_at=now,
                cancel_requested_by=_user(actor),
                finished_at=now,
                explanation="Canceled before it started.",
            )
            == 0
        )
        if started:
            updated = Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, cancel_requested=False).update(
                cancel_requested=True, cancel_requested_at=now, cancel_requested_by=_user(actor)
            )
            if not updated:
                job.refresh_from_db()
                if not job.is_active:
                    raise InvalidState(f"The job has already finished ({job.status}).")
        audit_record(action="job.cancel", actor=actor, cluster=job.cluster, detail={"job_id": job.pk})
    job.refresh_from_db()
    return job


def _user(actor: Any) -> Any:
    return actor if actor is not None and getattr(actor, "is_authenticated", False) else None
