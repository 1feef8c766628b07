"""Air-gap artifacts: which folder and which files of it an install of a given RKE2 version uses.

``RKE2_AIRGAP_ARTIFACT_DIR`` on the worker holds one folder per RKE2 version, laid out like a release's assets::

    <RKE2_AIRGAP_ARTIFACT_DIR>/
        install.sh                          (here, or in the version's folder)
        v1.31.4+rke2r1/
            rke2.linux-amd64.tar.gz
            sha256sum-amd64.txt
            rke2-images.linux-amd64.tar.zst         core images and Canal's,
            rke2-images-core.linux-amd64.tar.zst    or the core images alone (then Canal's archive is needed too)
            rke2-images-calico.linux-amd64.tar.zst  the CNI's own archive (calico, cilium, flannel, canal)
            ... the same for arm64 and s390x when the cluster has such nodes

There is no fallback to the base folder: a version without its folder is refused, so an install never unpacks
whatever other version happens to lie there. A node gets only the files of its version, architecture and CNI; the
playbooks check them on the controller against the checksum file before copying them (``airgap_check.yml`` of the
``rke2_common`` role). This module does the same checks in Python when a job is requested, before any node is
reached: the version's folder exists and holds a complete set of files for the cluster's CNI (for every
architecture when ``arches`` is given, else for at least one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from ..exceptions import ApplicationError

__all__ = [
    "ARCHITECTURES",
    "AirgapArtifactsError",
    "AirgapFiles",
    "airgap_enabled",
    "airgap_files",
    "airgap_version_dir",
    "check_airgap_artifacts",
    "install_script",
]

# Machine names (``uname -m``, Ansible's ansible_architecture) to RKE2's architecture names in asset file names.
ARCHITECTURES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "s390x": "s390x",
}
RKE2_ARCHES = ("amd64", "arm64", "s390x")
# Image archives are zstd in current releases, gzip in older ones: the first one found wins.
_ARCHIVE_SUFFIXES = (".tar.zst", ".tar.gz")
# CNIs whose images are not in the core archive (rke2-images-core); the all-in-one rke2-images holds Canal's.
_CNIS_WITH_ARCHIVE = ("canal", "calico", "cilium", "flannel")


class AirgapArtifactsError(ApplicationError):
    """The air-gap artifacts of a version are missing or incomplete on the worker."""

    code = "airgap_artifacts"
    http_status = 400


@dataclass(frozen=True)
class AirgapFiles:
    """The files of one version and architecture a node of a cluster with ``cni`` needs."""

    folder: Path
    arch: str
    tarball: Path
    checksums: Path
    core_archive: Path
    cni_archive: Path | None

    @property
    def image_archives(self) -> list[Path]:
        return [self.core_archive] + ([self.cni_archive] if self.cni_archive else [])

    @property
    def all(self) -> list[Path]:
        return [self.tarball, self.checksums, *self.image_archives]


def airgap_enabled() -> bool:
    return settings.RKE2_INSTALL_METHOD == "airgap"


def _base_dir() -> Path:
    base = str(settings.RKE2_AIRGAP_ARTIFACT_DIR or "").strip()
    if not base:
        raise AirgapArtifactsError(
            "RKE2_INSTALL_METHOD is airgap but RKE2_AIRGAP_ARTIFACT_DIR (the folder of the air-gap artifacts, one "
            "sub-folder per RKE2 version) is not set on the worker."
        )
    return Path(base)


def airgap_version_dir(version: str) -> Path:
    """The folder of ``version``'s artifacts. Raises :class:`AirgapArtifactsError` when it does not exist."""
    version = str(version or "").strip()
    base = _base_dir()
    if not version or "/" in version or version in (".", ".."):
        raise AirgapArtifactsError(f"{version!r} is not an RKE2 version that names a folder under {base}.")
    folder = base / version
    if not folder.is_dir():
        raise AirgapArtifactsError(
            f"No air-gap artifacts for RKE2 {version}: the folder {folder} does not exist. Put the release's "
            f"assets (rke2.linux-<arch>.tar.gz, sha256sum-<arch>.txt and the image archives) there."
        )
    return folder


def install_script(folder: Path) -> Path:
    """install.sh of the version's folder, else of the base folder (the script does not depend on the version)."""
    for candidate in (folder / "install.sh", folder.parent / "install.sh"):
        if candidate.is_file():
            return candidate
    raise AirgapArtifactsError(
        f"No install.sh in {folder} nor in {folder.parent}: download the RKE2 install script (get.rke2.io) there."
    )


def _first(folder: Path, stem: str) -> Path | None:
    for suffix in _ARCHIVE_SUFFIXES:
        path = folder / (stem + suffix)
        if path.is_file():
            return path
    return None


def airgap_files(folder: Path, arch: str, cni: str) -> AirgapFiles:
    """The files a node on ``arch`` (RKE2's name or the machine's) of a cluster with ``cni`` needs from ``folder``.

    Raises :class:`AirgapArtifactsError` naming the version, the folder and the missing files."""
    arch = ARCHITECTURES.get(arch, arch)
    if arch not in RKE2_ARCHES:
        raise AirgapArtifactsError(f"RKE2 has no release for the architecture {arch!r}.")
    cni = str(cni or "canal")
    suffix = f"linux-{arch}"
    missing: list[str] = []
    tarball = folder / f"rke2.{suffix}.tar.gz"
    checksums = folder / f"sha256sum-{arch}.txt"
    for path in (tarball, checksums):
        if not path.is_file():
            missing.append(path.name)
    full = _first(folder, f"rke2-images.{suffix}")
    core = full or _first(folder, f"rke2-images-core.{suffix}")
    if core is None:
        missing.append(f"rke2-images-core.{suffix}.tar.zst (or rke2-images.{suffix}.tar.zst)")
    cni_archive = None
    if cni in _CNIS_WITH_ARCHIVE and not (cni == "canal" and full is not None):
        cni_archive = _first(folder, f"rke2-images-{cni}.{suffix}")
        if cni_archive is None:
            missing.append(f"rke2-images-{cni}.{suffix}.tar.zst (the images of the CNI {cni})")
    if missing:
        raise AirgapArtifactsError(
            f"The air-gap artifacts of RKE2 {folder.name} in {folder} lack what {arch} nodes need: "
            + ", ".join(missing)
            + "."
        )
    assert core is not None
    return AirgapFiles(folder, arch, tarball, checksums, core, cni_archive)


def check_airgap_artifacts(version: str, cni: str, arches: list[str] | None = None) -> Path:
    """Check, before a job reaches any node, that ``version``'s artifacts are there for the cluster's CNI: for each
    of ``arches`` when the nodes' architectures are known, else for at least one architecture (the playbooks check
    each node's own). Returns the version's folder; raises :class:`AirgapArtifactsError`."""
    folder = airgap_version_dir(version)
    install_script(folder)
    if arches:
        for arch in dict.fromkeys(arches):
            airgap_files(folder, arch, cni)
        return folder
    present = [arch for arch in RKE2_ARCHES if (folder / f"sha256sum-{arch}.txt").is_file()]
    if not present:
        raise AirgapArtifactsError(
            f"The air-gap artifacts of RKE2 {version} in {folder} have no checksum file (sha256sum-<arch>.txt) for "
            f"any architecture ({', '.join(RKE2_ARCHES)})."
        )
    errors = []
    for arch in present:
        try:
            airgap_files(folder, arch, cni)
        except AirgapArtifactsError as exc:
            errors.append(exc.message)
        else:
            return folder
    raise AirgapArtifactsError(" ".join(errors))
