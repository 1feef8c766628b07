"""StageOrchestrator: runs a claimed job's stages in order, one playbook each, and records what they did.

Job kind → stages → playbook (``job.stages`` was planned when the job was requested):

- preflight → [preflight] → ``preflight.yml``
- install → [reachability, initial_master, joining_masters, workers, all] (a resumed install starts at the stage
  that failed, after the reachability check) → ``<stage>.yml``; ``all.yml`` also writes the kubeconfig, which is
  stored encrypted on the cluster
- scale_add → [reachability, joining_masters?, workers?] → ``joining_masters.yml``/``workers.yml`` with the
  scale-out inventory (only the new nodes in the stage groups)
- reachability (unless the request turned it off) → ``reachability.yml``: the hosts not active yet are prepared,
  then every live node probes the peers it must reach; a failure ends the job before anything is installed
- scale_remove → [scale_remove] → ``scale_remove.yml``; upgrade → ``upgrade.yml``; uninstall → ``uninstall.yml``;
  fetch_kubeconfig → ``kubeconfig.yml``; health → ``health.yml``

The first stage that does not succeed ends the job: ``failed`` (with the failing hosts and messages), or
``canceled`` when a cancel was requested. Every event is stored by the :class:`~clusters.engine.events.EventWriter`
before the job's final status is written, so a finished job's events are complete.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from inventory.renderers import InventoryRenderer, RenderedInventory

from ..choices import (
    INSTALL_STAGES,
    REACHABILITY_STAGE,
    ClusterStatus,
    InstallationStage,
    JobKind,
    JobStatus,
    NodeStatus,
)
from ..exceptions import ApplicationError
from ..fields import reveal
from ..models import Cluster, Job, JobHostSummary, Node, Registry
from ..registries import registry_secrets
from ..services import adoption, artifacts, node_labels, preflight
from ..services.health import health_record
from ..services.snapshots import PLAYBOOKS as SNAPSHOT_PLAYBOOKS
from ..services.snapshots import SNAPSHOT_STAGES, snapshots_record, stage_inventory_nodes, stage_vars
from . import state
from .events import EventWriter
from .redaction import Redactor
from .runner import JobControl, PlaybookRun, PlaybookRunner, RunOutcome, SSHAccess

__all__ = ["PLAYBOOKS", "StageOrchestrator", "StageError"]

logger = logging.getLogger(__name__)

PLAYBOOKS: Mapping[str, str] = {
    "preflight": "preflight.yml",
    REACHABILITY_STAGE: "reachability.yml",
    "initial_master": "initial_master.yml",
    "joining_masters": "joining_masters.yml",
    "workers": "workers.yml",
    "all": "all.yml",
    "scale_remove": "scale_remove.yml",
    "upgrade": "upgrade.yml",
    "uninstall": "uninstall.yml",
    "fetch_kubeconfig": "kubeconfig.yml",
    "health": "health.yml",
    "adopt": "adopt.yml",
    "health_sync": "health.yml",
    "cert_rotate": "cert_rotate.yml",
    "node_labels": "node_labels.yml",
    **SNAPSHOT_PLAYBOOKS,
}
# Stages that install RKE2 on the hosts of their stage group (their nodes go through ``installing``).
INSTALLING_STAGES = frozenset({"initial_master", "joining_masters", "workers"})
# Inventory groups holding the hosts each stage acts on.
STAGE_GROUPS: Mapping[str, tuple[str, ...]] = {
    "initial_master": ("initial_master",),
    "joining_masters": ("joining_masters",),
    "workers": ("workers",),
    "scale_remove": ("remove",),
}
ALL_STAGE_GROUPS = ("initial_master", "joining_masters", "workers")
# Stages whose playbooks render RKE2's config.yaml or registries.yaml: the only ones given the secret variables (join
# token, registry credentials). Every other stage runs without them, so they are not in its private folder either.
SECRET_STAGES = frozenset({*INSTALLING_STAGES, "all", "upgrade"})
# Cluster status while a job of a kind runs (kinds not listed leave it alone).
RUNNING_CLUSTER_STATUS: Mapping[str, str] = {
    JobKind.INSTALL: ClusterStatus.INSTALLING,
    JobKind.SCALE_ADD: ClusterStatus.SCALING,
    JobKind.SCALE_REMOVE: ClusterStatus.SCALING,
    JobKind.UPGRADE: ClusterStatus.UPGRADING,
    JobKind.UNINSTALL: ClusterStatus.UNINSTALLING,
}
_WORKERS_BATCH_RE = re.compile(r"^(100|[1-9][0-9]?)%$")


class StageError(Exception):
    """A stage cannot start (its inventory cannot be rendered, a parameter is invalid): the job fails."""


@dataclass
class StageResult:
    stage: str
    outcome: RunOutcome
    node_ids: dict[str, int]  # hostname -> node id of the hosts the stage acted on


class StageOrchestrator:
    """Runs the stages of one running job (already claimed by this worker)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.cluster: Cluster = job.cluster
        credential = self.cluster.ssh_credential
        self.ssh = SSHAccess(
            private_key=reveal(credential.private_key) if credential else "",
            passphrase=reveal(credential.passphrase) if credential else "",
            known_hosts=credential.known_hosts if credential else "",
        )
        self.redactor = Redactor(
            [
                reveal(self.cluster.token),
                self.ssh.private_key,
                self.ssh.passphrase,
                *_kubeconfig_secrets(reveal(self.cluster.kubeconfig)),
                *registry_secrets(Registry.objects.filter(cluster_id=self.cluster.pk)),
            ]
        )
        self.writer = EventWriter(
            job_id=job.pk,
            redactor=self.redactor,
            batch_size=settings.JOB_EVENT_BATCH_SIZE,
            flush_seconds=settings.JOB_EVENT_FLUSH_SECONDS,
            queue_size=settings.JOB_EVENT_QUEUE_SIZE,
        )
        self.control = JobControl(
            job.pk, poll_seconds=settings.JOB_CANCEL_POLL_SECONDS, heartbeat_seconds=settings.JOB_HEARTBEAT_SECONDS
        )
        self.runner = PlaybookRunner(
            job_id=job.pk, writer=self.writer, control=self.control, redactor=self.redactor, ssh=self.ssh
        )
        self.timeout = job.timeout_seconds or settings.JOB_TIMEOUT_SECONDS
        self.idle_timeout = job.idle_timeout_seconds or settings.JOB_IDLE_TIMEOUT_SECONDS
        self.started = time.monotonic()
        self.results: list[StageResult] = []
        self.facts: dict[str, Any] = {}
        self.host_totals: dict[str, dict[str, int]] = {}
        # Nodes a scale-out installs, fixed when the job starts.
        self.new_node_ids: list[int] = []
        # Hosts this run's reachability check prepared (firewall, NetworkManager, SELinux check): the stages that
        # install them do not prepare them again.
        self.prepared_hosts: list[str] = []

    # Entry point.

    def run(self) -> str:
        """Run the stages; returns the job's final status."""
        self.writer.start()
        status, explanation = JobStatus.FAILED, ""
        try:
            self._job_started()
            status, explanation = self._run_stages()
        except Exception as exc:
            logger.exception("job %s failed unexpectedly", self.job.pk)
            status, explanation = (
                JobStatus.FAILED,
                f"Internal error: {self.redactor.text(str(exc)) or type(exc).__name__}.",
            )
            self._emit(self.job.stage or "job", explanation)
            self._abort(explanation)
        finally:
            self.writer.close()
        self._finish(status, explanation)
        return status

    def _run_stages(self) -> tuple[str, str]:
        stages = [str(stage) for stage in self.job.stages or []]
        if not stages:
            return JobStatus.FAILED, "The job has no stages to run."
        for index, stage in enumerate(stages):
            remaining = self.timeout - (time.monotonic() - self.started) if self.timeout else None
            if remaining is not None and remaining <= 0:
                explanation = f"Timed out before stage {stage}: the job may run for {self.timeout} s at most."
                self._abort(explanation)
                return JobStatus.FAILED, explanation
            if Job.objects.filter(pk=self.job.pk, cancel_requested=True).exists():
                # Canceled between two stages: the next one does not start.
                self._abort("Canceled.")
                return JobStatus.CANCELED, self._cancel_explanation(self.job.stage, next_stage=stage)
            self._set_job(stage=stage)
            try:
                result = self._run_stage(stage, remaining)
            except (StageError, ApplicationError, ValueError) as exc:
                explanation = f"Stage {stage} could not start: {exc}"
                self._emit(stage, explanation)
                self._stage_failed(stage, RunOutcome(status="error", explanation=explanation), {})
                return JobStatus.FAILED, explanation
            self.results.append(result)
            outcome = result.outcome
            if outcome.succeeded:
                self._stage_succeeded(stage, result)
                self._set_job(stages_completed=index + 1)
                continue
            if outcome.status == "canceled" and self.control.lost and not self.control.cancel_requested:
                # Someone else (a reaper) ended the job: leave its state as they recorded it.
                return JobStatus.FAILED, outcome.explanation
            self._stage_failed(stage, outcome, result.node_ids)
            if outcome.status == "canceled":
                return JobStatus.CANCELED, self._cancel_explanation(stage)
            return JobStatus.FAILED, f"Stage {stage} failed: {outcome.explanation}".strip() + self._findings_text()
        return JobStatus.SUCCESSFUL, self._success_explanation() + self._findings_text()

    # One stage.

    def _run_stage(self, stage: str, remaining: float | None) -> StageResult:
        playbook = PLAYBOOKS.get(stage)
        if playbook is None:
            raise StageError(f"no playbook for stage {stage!r}.")
        rendered = self._inventory(stage)
        node_ids = self._stage_nodes(stage, rendered)
        secret_vars = rendered.secret_vars if stage in SECRET_STAGES else {}
        extravars = {**self._job_vars(), **stage_vars(self.job, stage), **secret_vars}
        if self.prepared_hosts:
            extravars["rke2_prepared_hosts"] = self.prepared_hosts
        fetch_kubeconfig = stage in ("fetch_kubeconfig", "cert_rotate") or (
            self.job.kind == JobKind.INSTALL and stage == "all"
        )
        if stage in INSTALLING_STAGES and not node_ids:
            # Nothing to install in this stage (a cluster without joining masters, say).
            self._emit(stage, f"STAGE [{stage}] no hosts to act on; nothing to do")
            outcome = RunOutcome(status="successful", rc=0, explanation="No hosts.")
            self._record_stage(stage, playbook, outcome)
            return StageResult(stage=stage, outcome=outcome, node_ids={})
        self._emit(stage, f"STAGE [{stage}] {playbook} on {', '.join(node_ids) or 'no hosts'}")
        if stage in INSTALLING_STAGES:
            state.nodes_start_install(list(node_ids.values()), self.job)
        else:
            state.nodes_touch(list(node_ids.values()), self.job)
        if self.job.kind == JobKind.INSTALL and stage in INSTALL_STAGES:
            state.cluster_update(self.cluster.pk, installation_stage=stage, status=ClusterStatus.INSTALLING)
        # Adopt: the playbook writes each node's findings (token included) into a private folder on the controller.
        adopt_dir = adoption.adoption_workdir(self.job.pk) if stage == adoption.ADOPT_STAGE else None
        if adopt_dir is not None:
            extravars["rke2_adopt_dest"] = str(adopt_dir)
        outcome = self.runner.run(
            PlaybookRun(
                stage=stage,
                playbook=playbook,
                inventory=rendered.inventory,
                extravars=extravars,
                timeout=remaining,
                job_timeout=self.timeout,
                idle_timeout=self.idle_timeout,
                fetch_kubeconfig=fetch_kubeconfig,
            )
        )
        if adopt_dir is not None:
            outcome = adoption.adoption_finish(self.cluster, self.job, adopt_dir, outcome, self.redactor)
        self._take_facts(outcome)
        self._record_host_summaries(outcome)
        self._record_stage(stage, playbook, outcome)
        if stage == REACHABILITY_STAGE and outcome.succeeded:
            self.prepared_hosts = rendered.hosts("prepare")
        return StageResult(stage=stage, outcome=outcome, node_ids=node_ids)

    def _inventory(self, stage: str) -> RenderedInventory:
        snapshot_nodes = stage_inventory_nodes(self.cluster, stage)
        if snapshot_nodes is not None:
            if not snapshot_nodes:
                raise StageError("the cluster has no active server to take or list etcd snapshots on.")
            return InventoryRenderer.render_for_operation(self.cluster, snapshot_nodes)
        kind = self.job.kind
        if stage == REACHABILITY_STAGE:
            return InventoryRenderer.render_for_reachability(self.cluster)
        if kind == JobKind.INSTALL:
            return InventoryRenderer.render_for_stage(self.cluster, stage)
        if kind == JobKind.SCALE_ADD:
            if not self.new_node_ids:
                raise StageError("there are no new nodes to add.")
            return InventoryRenderer.render_for_scale_add(self.cluster, self.new_node_ids)
        if kind == JobKind.SCALE_REMOVE:
            targets = list(
                Node.objects.filter(cluster_id=self.cluster.pk, status=NodeStatus.DRAINING).values_list("pk", flat=True)
            )
            if not targets:
                raise StageError("no node is marked for removal.")
            return InventoryRenderer.render_for_scale_remove(self.cluster, targets)
        if kind == JobKind.ADOPT:
            return InventoryRenderer.render_for_operation(self.cluster, adoption.adoption_node_ids(self.cluster))
        return InventoryRenderer.render_for_operation(self.cluster)

    def _stage_nodes(self, stage: str, rendered: RenderedInventory) -> dict[str, int]:
        """{hostname: node id} of the hosts the stage acts on, in inventory order."""
        names: list[str] = []
        for group in STAGE_GROUPS.get(stage, ALL_STAGE_GROUPS):
            names.extend(name for name in rendered.hosts(group) if name not in names)
        if not names:
            return {}
        ids = dict(
            Node.objects.filter(cluster_id=self.cluster.pk, hostname__in=names)
            .exclude(status=NodeStatus.REMOVED)
            .values_list("hostname", "pk")
        )
        return {name: ids[name] for name in names if name in ids}

    def _job_vars(self) -> dict[str, Any]:
        params = self.job.params or {}
        version = str(self.cluster.rke2_version)
        if self.job.kind == JobKind.UPGRADE:
            version = str(params.get("target_version") or version)
        variables: dict[str, Any] = {
            "rke2_install_method": settings.RKE2_INSTALL_METHOD,
            "rke2_install_script_url": settings.RKE2_INSTALL_SCRIPT_URL,
            "rke2_install_artifact_url": settings.RKE2_INSTALL_ARTIFACT_URL,
            "rke2_install_script_sha256": settings.RKE2_INSTALL_SCRIPT_SHA256,
            "rke2_start_timeout": int(settings.RKE2_START_TIMEOUT_SECONDS),
            "rke2_unsafe_show_logs": False,
        }
        if settings.RKE2_INSTALL_METHOD == "airgap":
            variables.update(self._airgap_vars(version))
        if self.job.kind == JobKind.UPGRADE:
            variables["rke2_version"] = version
            variables["rke2_allow_downgrade"] = bool(params.get("allow_downgrade", False))
            variables["rke2_allow_minor_skip"] = bool(params.get("allow_minor_skip", False))
        if self.job.kind == JobKind.SCALE_REMOVE:
            variables["rke2_ungraceful"] = bool(params.get("ungraceful", False))
        if self.job.kind == JobKind.NODE_LABELS:
            variables.update(node_labels.node_labels_job_vars(params))
        if "workers_batch" in params:
            variables["rke2_workers_batch"] = _workers_batch(params["workers_batch"])
        if "drain_timeout" in params:
            variables["rke2_drain_timeout"] = _positive_int(params["drain_timeout"], "drain_timeout")
        return variables

    def _airgap_vars(self, version: str) -> dict[str, Any]:
        """The version's artifact folder and install script. Jobs that install RKE2 fail here, before any playbook
        runs, when the folder is missing or incomplete for the cluster's CNI; the playbooks then check each node's
        architecture and the checksums on the controller."""
        if self.job.kind not in (JobKind.INSTALL, JobKind.SCALE_ADD, JobKind.UPGRADE):
            return {}
        folder = artifacts.check_airgap_artifacts(version, str(self.cluster.cni))
        return {
            "rke2_airgap_artifact_dir": str(folder),
            "rke2_airgap_install_script": str(artifacts.install_script(folder)),
        }

    # Recording.

    def _job_started(self) -> None:
        kind = self.job.kind
        if kind == JobKind.SCALE_ADD:
            self.new_node_ids = list(
                Node.objects.filter(
                    cluster_id=self.cluster.pk,
                    status__in=(NodeStatus.PENDING, NodeStatus.FAILED, NodeStatus.INSTALLING),
                )
                .order_by("created_at", "pk")
                .values_list("pk", flat=True)
            )
        running_status = RUNNING_CLUSTER_STATUS.get(kind)
        if running_status:
            state.cluster_update(self.cluster.pk, status=running_status)

    def _stage_succeeded(self, stage: str, result: StageResult) -> None:
        kind = self.job.kind
        node_ids = result.node_ids
        if stage in INSTALLING_STAGES:
            state.nodes_succeed(list(node_ids.values()), self.job)
        if kind == JobKind.INSTALL and stage == InstallationStage.INITIAL_MASTER:
            Cluster.objects.filter(pk=self.cluster.pk, bootstrapped_at__isnull=True).update(
                bootstrapped_at=timezone.now()
            )
        if result.outcome.kubeconfig is not None:
            # Its credentials are secrets of the job from now on.
            self.redactor.add(_kubeconfig_secrets(result.outcome.kubeconfig))
            state.cluster_update(self.cluster.pk, kubeconfig=result.outcome.kubeconfig)
        if kind == JobKind.SCALE_REMOVE:
            removed = self.facts.get("rke2_removed_nodes")
            names = [str(name) for name in removed] if isinstance(removed, list) else list(node_ids)
            Node.objects.filter(cluster_id=self.cluster.pk, hostname__in=names, status=NodeStatus.DRAINING).update(
                status=NodeStatus.REMOVED, last_error="", last_job=self.job, updated_at=timezone.now()
            )

    def _stage_failed(self, stage: str, outcome: RunOutcome, node_ids: Mapping[str, int]) -> None:
        canceled = outcome.status == "canceled"
        stopped = outcome.status in ("canceled", "timeout", "error")
        reason = "Canceled." if canceled else (outcome.explanation or f"Stage {stage} failed.")
        errors: dict[int, str] = {}
        for hostname, node_id in node_ids.items():
            if hostname in outcome.host_errors:
                errors[node_id] = outcome.host_errors[hostname]
            elif outcome.host_failed(hostname):
                errors[node_id] = f"Stage {stage} failed on this node."
        errors = {node_id: self.redactor.text(message) for node_id, message in errors.items()}
        reason = self.redactor.text(reason)
        if (
            self.job.kind in (JobKind.PREFLIGHT, JobKind.HEALTH_SYNC, JobKind.NODE_LABELS)
            or stage == REACHABILITY_STAGE
        ):
            # Findings and a failed change of labels do not say that a node stopped working.
            state.nodes_note_errors(errors, self.job)
            return
        if stage in SNAPSHOT_STAGES:
            # A snapshot that could not be taken or listed: the node itself is not failed.
            state.nodes_note_errors(errors, self.job)
            return
        if stage in INSTALLING_STAGES:
            # Hosts that reached the end of the stage are installed even though another host failed; the others
            # stopped with the stage (canceled, timed out, or the play aborted after the first failure).
            completed = [
                node_id
                for hostname, node_id in node_ids.items()
                if not stopped and node_id not in errors and _completed(outcome, hostname)
            ]
            for node_id in node_ids.values():
                if node_id not in errors and node_id not in completed:
                    errors[node_id] = reason if stopped else f"Stage {stage} stopped before completing on this node."
            state.nodes_succeed(completed, self.job)
            state.nodes_fail(errors, self.job)
        else:
            # Post-checks, upgrades, health: a node that failed them is failed; scale-in targets keep draining. A
            # check that runs on the API host about other nodes ("Nodes not Ready: ...") fails on the API host;
            # a host Kubernetes reports Ready is not blamed for it (the readiness facts mark the others).
            ready = outcome.artifact_data.get("rke2_node_ready") or {}
            errors = {
                node_id: message
                for hostname, node_id in node_ids.items()
                if (message := errors.get(node_id)) is not None and ready.get(hostname) is not True
            }
            state.nodes_fail(errors, self.job, statuses=(NodeStatus.ACTIVE, NodeStatus.INSTALLING, NodeStatus.FAILED))
        state.nodes_abort(self.cluster.pk, self.job, reason)

    def _abort(self, reason: str) -> None:
        """The job ended without finishing its stages for a reason that is not a stage's own failure."""
        try:
            state.nodes_abort(self.cluster.pk, self.job, self.redactor.text(reason))
        except Exception:
            logger.exception("job %s: could not record the abort on its nodes", self.job.pk)

    def _take_facts(self, outcome: RunOutcome) -> None:
        data = outcome.artifact_data or {}
        versions = data.get("rke2_installed_versions")
        if isinstance(versions, dict):
            state.nodes_record_versions(self.cluster.pk, versions)
            self.facts.setdefault("rke2_installed_versions", {}).update(versions)
        ready = data.get("rke2_node_ready")
        if isinstance(ready, dict):
            self.facts.setdefault("rke2_node_ready", {}).update(ready)
            if self.job.kind in (
                JobKind.HEALTH,
                JobKind.HEALTH_SYNC,
                JobKind.INSTALL,
                JobKind.UPGRADE,
                JobKind.SCALE_ADD,
                JobKind.CERT_ROTATE,
            ):
                state.nodes_apply_readiness(self.cluster.pk, ready, self.job)
        if "rke2_etcd_snapshots" in data:
            snapshots_record(self.cluster, self.job, data.get("rke2_etcd_snapshots"))
        health = data.get("rke2_node_health")
        if isinstance(health, dict) and self.job.kind in (JobKind.HEALTH, JobKind.HEALTH_SYNC):
            health_record(self.cluster.pk, health)
        warnings = data.get("rke2_warnings")
        if isinstance(warnings, dict):
            # {host: [message]} of every stage: a host's messages are kept once each, in order.
            known = self.facts.setdefault("rke2_warnings", {})
            for host, messages in warnings.items():
                listed = known.setdefault(str(host), [])
                listed.extend(str(item) for item in messages or [] if str(item) not in listed)
        for key, value in data.items():
            if key not in ("rke2_installed_versions", "rke2_node_ready", "rke2_warnings"):
                self.facts[key] = value

    def _record_host_summaries(self, outcome: RunOutcome) -> None:
        hosts = set()
        for counts in outcome.stats.values():
            hosts.update(counts)
        if not hosts:
            return
        for host in hosts:
            totals = self.host_totals.setdefault(host, {})
            for key in ("ok", "changed", "dark", "failures", "ignored", "rescued", "skipped", "processed"):
                totals[key] = totals.get(key, 0) + int(outcome.stats.get(key, {}).get(host, 0))
        with transaction.atomic():
            JobHostSummary.objects.filter(job_id=self.job.pk).delete()
            JobHostSummary.objects.bulk_create(
                [
                    JobHostSummary(job_id=self.job.pk, host_name=host[:255], **counts)
                    for host, counts in sorted(self.host_totals.items())
                ]
            )

    def _record_stage(self, stage: str, playbook: str, outcome: RunOutcome) -> None:
        self.job.result = {
            **(self.job.result or {}),
            "stages": [
                *(self.job.result or {}).get("stages", []),
                {
                    "stage": stage,
                    "playbook": playbook,
                    "status": outcome.status,
                    "rc": outcome.rc,
                    "duration": round(outcome.duration, 3),
                    "events": outcome.events,
                    "explanation": outcome.explanation,
                    "failed_hosts": outcome.host_errors,
                },
            ],
        }
        self._set_job(result=self.job.result, rc=outcome.rc)

    def _set_job(self, **fields: Any) -> None:
        if "result" in fields:
            fields["result"] = self.redactor.data(fields["result"])
        for name, value in fields.items():
            setattr(self.job, name, value)
        fields["heartbeat_at"] = timezone.now()
        fields["emitted_events"] = self.writer.emitted
        Job.objects.filter(pk=self.job.pk, status=JobStatus.RUNNING).update(**fields)

    def _emit(self, stage: str, text: str) -> None:
        self.runner.emit_message(stage, text)

    def _finish(self, status: str, explanation: str) -> None:
        """Settle the cluster, then end the job (which releases the cluster for the next job)."""
        kind = self.job.kind
        now = timezone.now()
        with transaction.atomic():
            still_ours = Job.objects.filter(
                pk=self.job.pk, status=JobStatus.RUNNING, worker_pid=self.job.worker_pid
            ).exists()
            if still_ours:
                try:
                    state.cluster_settle_after_job(self.job, status)
                except Exception:
                    logger.exception("job %s: could not settle the state of cluster %s", self.job.pk, self.cluster.pk)
            # Facts, stage summaries and the explanation come from Ansible's output: masked like the events.
            result = self.redactor.data(
                {**(self.job.result or {}), "facts": self.facts, "dropped_events": self.writer.dropped}
            )
            updated = Job.objects.filter(pk=self.job.pk, status=JobStatus.RUNNING).update(
                status=status,
                finished_at=now,
                explanation=self.redactor.text(explanation)[:10000],
                result=result,
                emitted_events=self.writer.emitted,
                heartbeat_at=now,
            )
        if not updated:
            logger.warning("job %s (%s) had already been ended by someone else", self.job.pk, kind)
        else:
            logger.info("job %s (%s) on cluster %s: %s", self.job.pk, kind, self.cluster.pk, status)

    def _cancel_explanation(self, stage: str, *, next_stage: str = "") -> str:
        job = Job.objects.select_related("cancel_requested_by").get(pk=self.job.pk)
        who = f" by {job.cancel_requested_by.get_username()}" if job.cancel_requested_by else ""
        if next_stage:
            done = f" after stage {stage}" if self.results else ""
            return f"Canceled{who}{done}; stage {next_stage} did not start."
        return f"Canceled{who} during stage {stage}; the playbook was stopped."

    def _findings_text(self) -> str:
        """What preflight found (unreachable pairs and ports, RKE2 already on the nodes), then the warnings."""
        return preflight.preflight_text(self.facts) + self._warnings_text()

    def _warnings_text(self) -> str:
        """What the playbooks warned about (kernel modules or parameters a host lacks, say), one sentence per host."""
        warnings = self.facts.get("rke2_warnings") or {}
        lines = [f"{host}: {' '.join(messages)}" for host, messages in sorted(warnings.items()) if messages]
        return (" Warnings: " + " ".join(lines)) if lines else ""

    def _success_explanation(self) -> str:
        done = ", ".join(result.stage for result in self.results)
        return f"Completed: {done}.{_cni_notice(self.facts.get('rke2_waiting_for_cni'))}"


def _cni_notice(waiting: Any) -> str:
    """What a cluster without a CNI (cni: none) needs next: its nodes are registered but NotReady until one runs."""
    if not isinstance(waiting, list) or not waiting:
        return ""
    names = ", ".join(str(name) for name in waiting)
    return (
        f" The cluster has no CNI (cni: none): its nodes ({names}) are registered and etcd is healthy, but the nodes"
        " wait for a CNI and stay NotReady until one is installed; run a health check afterwards."
    )


def _completed(outcome: RunOutcome, hostname: str) -> bool:
    """Whether a host went through the whole play: Ansible processed it and it neither failed nor was unreachable."""
    return bool(outcome.stats.get("processed", {}).get(hostname)) and not outcome.host_failed(hostname)


def _workers_batch(value: Any) -> Any:
    if isinstance(value, bool):
        raise StageError("workers_batch must be a number of workers or a percentage such as '25%'.")
    if isinstance(value, int) and value >= 1:
        return value
    if isinstance(value, str) and (_WORKERS_BATCH_RE.match(value) or value.isdigit() and int(value) >= 1):
        return int(value) if value.isdigit() else value
    raise StageError("workers_batch must be a number of workers or a percentage such as '25%'.")


def _positive_int(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise StageError(f"{name} must be a whole number of seconds.") from None
    if isinstance(value, bool) or number < 0:
        raise StageError(f"{name} must be a whole number of seconds.")
    return number


def _kubeconfig_secrets(text: str) -> list[str]:
    """Credential values inside a kubeconfig (client keys, tokens, passwords), to be masked like other secrets."""
    if not text.strip():
        return []
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        return [text]
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("client-key-data", "client-certificate-data", "token", "password") and isinstance(item, str):
                    found.append(item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(document)
    return found
