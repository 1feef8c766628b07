"""Air-gap artifacts by version, checked when a job is requested (install method airgap).

- Each version has its own folder under RKE2_AIRGAP_ARTIFACT_DIR; there is no fallback to the base folder: a job
  for a version without a folder is refused (API 400 naming the field, the version and the folder), nothing queued.
- A folder whose image archive for the cluster's CNI is missing is refused naming the file.
- Which files a node gets: the tarball and checksum file of its architecture, the core archive, and the CNI's own
  archive unless the all-in-one archive holds it (canal).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.urls import reverse
from rest_framework.test import APIClient

from clusters.choices import JobKind, JobStatus
from clusters.models import Job
from clusters.services.artifacts import AirgapArtifactsError, airgap_files, check_airgap_artifacts
from clusters.services.jobs import job_request
from clusters.services.tokens import api_token_create
from clusters.tasks import run_job
from tests.standin_rke2.build import IMAGE_ARCHIVE_PARTS, build_airgap_dir, build_bundle

from .factories import make_cluster, make_credential, mark_installed

V1 = "v1.31.4+rke2r1"
V2 = "v1.32.1+rke2r1"


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Messages the job task would have sent to the broker."""
    messages: list[dict[str, Any]] = []
    monkeypatch.setattr(run_job, "apply_async", lambda *args, **kwargs: messages.append(kwargs))
    return messages


@pytest.fixture
def airgap(tmp_path: Path, settings: Any) -> Path:
    """RKE2_AIRGAP_ARTIFACT_DIR holding V1 only, with a complete release in the base folder too (the old fallback)."""
    root = build_airgap_dir(tmp_path / "airgap", [V1])
    build_bundle(root, V2)  # files of V2 right in the base folder: never used for V2
    settings.RKE2_INSTALL_METHOD = "airgap"
    settings.RKE2_AIRGAP_ARTIFACT_DIR = str(root)
    return root


def _api_client() -> APIClient:
    user = get_user_model().objects.create_user(username="otto", password="pw-otto")
    user.groups.add(Group.objects.get(name="operators"))
    _, token = api_token_create(user=user, name="tests")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


@pytest.mark.django_db
def test_install_of_a_version_without_its_folder_is_refused_without_fallback(airgap, sent):
    cluster = make_cluster(servers=1, ssh_credential=make_credential(), rke2_version=V2)
    response = _api_client().post(f"/api/clusters/{cluster.pk}/install/", {}, format="json")
    assert response.status_code == 400, response.content
    text = str(response.json())
    assert "rke2_version" in text
    assert f"No air-gap artifacts for RKE2 {V2}" in text and str(airgap / V2) in text
    assert not Job.objects.exists() and sent == []


@pytest.mark.django_db
def test_upgrade_to_a_version_without_its_folder_names_target_version(airgap, sent):
    cluster = mark_installed(make_cluster(servers=1, ssh_credential=make_credential(), rke2_version=V1))
    with pytest.raises(ValidationError) as info:
        job_request(cluster=cluster, kind=JobKind.UPGRADE, params={"target_version": V2})
    assert list(info.value.message_dict) == ["target_version"]
    assert str(airgap / V2) in info.value.message_dict["target_version"][0]
    assert not Job.objects.exists() and sent == []
    # Once the folder is there, the same request is accepted.
    build_bundle(airgap / V2, V2)
    job = job_request(cluster=cluster, kind=JobKind.UPGRADE, params={"target_version": V2})
    assert job.status == JobStatus.PENDING and Job.objects.count() == 1


@pytest.mark.django_db
def test_a_folder_without_the_cni_archive_is_refused_naming_it(airgap, sent):
    (airgap / V1 / "rke2-images-cilium.linux-amd64.tar.zst").unlink()
    cluster = make_cluster(servers=1, ssh_credential=make_credential(), rke2_version=V1, cni="cilium")
    with pytest.raises(ValidationError) as info:
        job_request(cluster=cluster, kind=JobKind.INSTALL)
    message = info.value.message_dict["rke2_version"][0]
    assert "rke2-images-cilium.linux-amd64.tar.zst" in message and str(airgap / V1) in message, message
    assert not Job.objects.exists() and sent == []
    # canal is in the all-in-one archive: the same folder serves a canal cluster.
    canal = make_cluster("beta", servers=1, subnet="10.0.1", ssh_credential=make_credential("b"), rke2_version=V1)
    assert job_request(cluster=canal, kind=JobKind.INSTALL).status == JobStatus.PENDING


def test_files_of_a_node_by_architecture_and_cni(tmp_path: Path, settings: Any) -> None:
    settings.RKE2_AIRGAP_ARTIFACT_DIR = str(tmp_path)
    build_bundle(tmp_path / V1, V1, arches=["amd64", "arm64"])
    folder = tmp_path / V1
    names = lambda files: sorted(path.name for path in files.all)  # noqa: E731
    assert names(airgap_files(folder, "x86_64", "canal")) == [
        "rke2-images.linux-amd64.tar.zst",
        "rke2.linux-amd64.tar.gz",
        "sha256sum-amd64.txt",
    ]
    assert names(airgap_files(folder, "aarch64", "calico")) == [
        "rke2-images-calico.linux-arm64.tar.zst",
        "rke2-images.linux-arm64.tar.zst",
        "rke2.linux-arm64.tar.gz",
        "sha256sum-arm64.txt",
    ]
    assert names(airgap_files(folder, "amd64", "none")) == [
        "rke2-images.linux-amd64.tar.zst",
        "rke2.linux-amd64.tar.gz",
        "sha256sum-amd64.txt",
    ]
    # A release with the core archive alone: canal needs its own archive then.
    build_bundle(tmp_path / V2, V2, full_archive=False)
    assert names(airgap_files(tmp_path / V2, "x86_64", "canal")) == [
        "rke2-images-canal.linux-amd64.tar.zst",
        "rke2-images-core.linux-amd64.tar.zst",
        "rke2.linux-amd64.tar.gz",
        "sha256sum-amd64.txt",
    ]
    with pytest.raises(AirgapArtifactsError, match=r"lack what s390x nodes need: rke2\.linux-s390x\.tar\.gz"):
        airgap_files(folder, "s390x", "canal")
    assert check_airgap_artifacts(V1, "canal", ["x86_64", "aarch64"]) == folder
    with pytest.raises(AirgapArtifactsError, match="s390x"):
        check_airgap_artifacts(V1, "canal", ["x86_64", "s390x"])


def test_a_core_only_folder_without_the_cni_archive(tmp_path: Path, settings: Any) -> None:
    settings.RKE2_AIRGAP_ARTIFACT_DIR = str(tmp_path)
    parts = [part for part in IMAGE_ARCHIVE_PARTS if part != "canal"]
    build_bundle(tmp_path / V1, V1, full_archive=False, parts=parts)
    with pytest.raises(AirgapArtifactsError) as info:
        check_airgap_artifacts(V1, "canal")
    assert "rke2-images-canal.linux-amd64.tar.zst" in info.value.message
    assert check_airgap_artifacts(V1, "calico") == tmp_path / V1


def test_the_setting_must_be_set(settings: Any) -> None:
    settings.RKE2_AIRGAP_ARTIFACT_DIR = ""
    with pytest.raises(AirgapArtifactsError, match="RKE2_AIRGAP_ARTIFACT_DIR"):
        check_airgap_artifacts(V1, "canal")


@pytest.mark.django_db
def test_the_admin_install_names_the_missing_version_folder(airgap, admin_client: Any, sent) -> None:
    cluster = make_cluster(servers=1, ssh_credential=make_credential(), rke2_version=V2)
    page = admin_client.get(reverse("admin:clusters_cluster_install", args=[cluster.pk]))
    assert f"No air-gap artifacts for RKE2 {V2}" in page.content.decode()
    response = admin_client.post(reverse("admin:clusters_cluster_install", args=[cluster.pk]), {})
    assert response.status_code == 200
    html = response.content.decode()
    assert f"No air-gap artifacts for RKE2 {V2}" in html and str(airgap / V2) in html
    assert not Job.objects.exists() and sent == []
