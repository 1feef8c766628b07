"""The Debian root file system that systemd test hosts boot from (the read-only lower layer of their overlays).

Built once with ``debootstrap --variant=minbase`` from this machine's configured Debian mirror and cached outside
the repository, in ``$TESTHOSTS_ROOT_CACHE`` (default ``/var/cache/rke2portal/testhost-root``) under a key that
hashes the suite, the architecture, the package list and :data:`RECIPE_VERSION`. The build runs into a temporary
directory next to the cache entry and is renamed into place when complete, under an ``flock`` so that concurrent
test runs build it once; a finished entry is never modified (a running host's lower layer must not change).

Changes made to the root after debootstrap (bump :data:`RECIPE_VERSION` when changing them):

* ``etcd.service`` is masked and its ``etcd2.service`` alias removed (the stand-in RKE2 runs its own etcd on
  2379/2380), and the ``etcd`` user, group and ``/var/lib/etcd`` the package created are removed (on an RKE2
  host the operator creates that user, e.g. for the CIS profile);
* ``firewalld`` and ``NetworkManager`` are installed but disabled (a host runs them only when a test enables
  them, as a RHEL-family machine would have them on);
* timers and gettys a test host does not need are removed (``apt-daily*``, ``dpkg-db-backup``, ``e2scrub*``,
  ``fstrim``, ``getty@tty1``) and ``console-getty.service`` is masked;
* the shared ssh host keys and machine id are removed (every host gets its own);
* a ``deploy`` user (home ``/var/lib/deploy-home``, passwordless sudo) is added;
* apt's package lists and downloaded archives are dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "PACKAGES",
    "RECIPE_VERSION",
    "SUITE",
    "RootBuildError",
    "build_root",
    "cache_base",
    "cached_root",
    "debian_mirror",
    "root_key",
]

log = logging.getLogger(__name__)

SUITE = "bookworm"
RECIPE_VERSION = 4
PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "python3-yaml",
    "sudo",
    "iproute2",
    "kmod",
    "procps",
    "openssl",
    "curl",
    "ca-certificates",
    "nftables",
    "etcd-server",
    "etcd-client",
    "tar",
    "gzip",
    "zstd",
    "libpam-systemd",  # logind, which polkitd (needed by the next two) depends on through a virtual package
    "netbase",  # /etc/protocols and /etc/services, which firewalld reads
    "firewalld",
    "network-manager",
)
DEFAULT_CACHE_BASE = Path("/var/cache/rke2portal/testhost-root")
PRUNE_UNUSED_AFTER = 3600.0
DEPLOY_USER = "deploy"
DEPLOY_UID = 2000
DEPLOY_HOME = "/var/lib/deploy-home"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

_MASKED_UNITS = ("etcd.service", "console-getty.service", "apt-daily.timer", "apt-daily-upgrade.timer")
_DISABLED_UNITS = (
    "firewalld.service",
    "NetworkManager.service",
    "NetworkManager-wait-online.service",
    "NetworkManager-dispatcher.service",
)
_REMOVED_WANTS = re.compile(r"^(apt-daily.*|dpkg-db-backup|e2scrub.*|fstrim|getty@tty1)\.(timer|service)$")


class RootBuildError(RuntimeError):
    """The root file system of the systemd test hosts could not be built."""


def cache_base() -> Path:
    return Path(os.environ.get("TESTHOSTS_ROOT_CACHE", DEFAULT_CACHE_BASE))


def _architecture() -> str:
    try:
        return subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def root_key() -> str:
    """Cache key of the root this code builds: changes with the suite, architecture, packages and recipe."""
    recipe = {"suite": SUITE, "arch": _architecture(), "packages": sorted(PACKAGES), "recipe": RECIPE_VERSION}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    return f"{SUITE}-{digest}"


def cached_root() -> Path | None:
    """The finished root for the current recipe, or None when it has not been built yet."""
    path = cache_base() / root_key()
    return path if (path / "usr/lib/systemd/systemd").exists() else None


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if fields:
            yield fields


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses for the suite (``$TESTHOSTS_DEBIAN_MIRROR`` overrides it)."""
    override = os.environ.get("TESTHOSTS_DEBIAN_MIRROR")
    if override:
        return override
    candidates: list[str] = []
    sources_dir = Path("/etc/apt/sources.list.d")
    for path in sorted(sources_dir.glob("*.sources")) if sources_dir.is_dir() else []:
        for stanza in _deb822_stanzas(path.read_text(errors="replace")):
            if stanza.get("enabled", "yes").lower() == "no" or "deb" not in stanza.get("types", "").split():
                continue
            if SUITE in stanza.get("suites", "").split() and "main" in stanza.get("components", "").split():
                candidates += stanza.get("uris", "").split()
    lists = [Path("/etc/apt/sources.list")]
    lists += sorted(sources_dir.glob("*.list")) if sources_dir.is_dir() else []
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = re.sub(r"\[[^]]*\]", "", line).split()
            if len(words) >= 4 and words[0] == "deb" and words[2] == SUITE and "main" in words[3:]:
                candidates.append(words[1])
    for uri in candidates:
        if uri.startswith(("http://", "https://", "file:/")):
            return uri.rstrip("/")
    return DEFAULT_MIRROR


@contextlib.contextmanager
def _build_lock(base: Path) -> Iterator[None]:
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    with open(base / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _customize(root: Path) -> None:
    """The changes listed in the module docstring, applied to a fresh debootstrap tree."""
    system = root / "etc/systemd/system"
    for wants in system.glob("*.wants"):
        for link in wants.iterdir():
            if _REMOVED_WANTS.match(link.name) or link.name in _MASKED_UNITS:
                link.unlink()
    (system / "etcd2.service").unlink(missing_ok=True)
    subprocess.run(["chroot", str(root), "systemctl", "disable", *_DISABLED_UNITS], check=True, capture_output=True)
    for unit in _MASKED_UNITS:
        target = system / unit
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to("/dev/null")
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() and not dbus_id.is_symlink():
        dbus_id.unlink()
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("# The test network has no name server: names are in /etc/hosts.\n")

    subprocess.run(["chroot", str(root), "userdel", "etcd"], check=True, capture_output=True)
    subprocess.run(["chroot", str(root), "groupdel", "etcd"], check=False, capture_output=True)
    shutil.rmtree(root / "var/lib/etcd", ignore_errors=True)

    subprocess.run(
        ["chroot", str(root), "useradd", "--uid", str(DEPLOY_UID), "--user-group", "--no-create-home",
         "--home-dir", DEPLOY_HOME, "--shell", "/bin/bash", "--comment", "Deployment user", DEPLOY_USER],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    # A locked password ("!") would make sshd refuse the key too; "*" only means "no password".
    subprocess.run(["chroot", str(root), "usermod", "-p", "*", DEPLOY_USER], check=True, capture_output=True)
    home = root / DEPLOY_HOME.lstrip("/")
    home.mkdir(mode=0o750)
    os.chown(home, DEPLOY_UID, DEPLOY_UID)
    os.chmod(home, 0o750)
    sudoers = root / "etc/sudoers.d/deploy"
    sudoers.write_text(f"{DEPLOY_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n")
    os.chmod(sudoers, 0o440)
    (root / "etc/ssh/authorized_keys").mkdir(mode=0o755, exist_ok=True)

    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for entry in (root / leftover).glob("*"):
            if entry.is_file():
                entry.unlink()


def _in_use(path: Path) -> bool:
    """Whether a running process has a mount of ``path`` (a host booted from it)."""
    needle = str(path).encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{entry}/mountinfo").read_bytes():
                    return True
    return False


def _use_lock_path(root: Path) -> Path:
    return root.parent / f".{root.name}.in-use"


def hold(root: Path) -> int:
    """Mark ``root`` as in use until the returned descriptor is closed (shared ``flock``; see :func:`prune`)."""
    fd = os.open(_use_lock_path(root), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.utime(fd)  # last use, see prune()
    return fd


def _held(root: Path) -> bool:
    path = _use_lock_path(root)
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _recently_used(root: Path) -> bool:
    marker = _use_lock_path(root)
    try:
        last = max(marker.stat().st_mtime, root.stat().st_mtime) if marker.exists() else root.stat().st_mtime
    except OSError:
        return False
    return time.time() - last < PRUNE_UNUSED_AFTER


def prune(keep: Path) -> list[Path]:
    """Remove the cached roots of other recipes that nothing uses and nothing used for an hour.

    The hour keeps two checkouts with different recipes on one machine from removing each other's root.
    Returns what was removed.
    """
    removed = []
    base = keep.parent
    with _build_lock(base):
        for other in sorted(base.glob(f"{SUITE}-*")):
            if other == keep or not other.is_dir() or _recently_used(other) or _held(other) or _in_use(other):
                continue
            retired = base / f".build-retired-{other.name}-{os.getpid()}"
            other.rename(retired)
            shutil.rmtree(retired, ignore_errors=True)
            _use_lock_path(other).unlink(missing_ok=True)
            removed.append(other)
    return removed


def build_root(*, force: bool = False, quiet: bool = False) -> Path:
    """Return the cached root, building it first when missing (or always with ``force``)."""
    base = cache_base()
    key = root_key()
    final = base / key
    if not force and cached_root() is not None:
        if os.geteuid() == 0:
            prune(final)
        return final
    if os.geteuid() != 0:
        raise RootBuildError("building the test-host root needs root")
    if shutil.which("debootstrap") is None:
        raise RootBuildError("debootstrap not found (apt-get install debootstrap)")
    with _build_lock(base):
        if not force and cached_root() is not None:
            return final
        for stale in base.glob(".build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=base))
        os.chmod(work, 0o755)
        debs = base / "debs"
        debs.mkdir(exist_ok=True)
        mirror = debian_mirror()
        argv = [
            "debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", f"--cache-dir={debs}",
            "--components=main", f"--arch={_architecture()}", SUITE, str(work), mirror,
        ]  # fmt: skip
        started = time.monotonic()
        if not quiet:
            print(f"Building the systemd test-host root {final} from {mirror} (a few minutes, once)", flush=True)
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            )
            if proc.returncode != 0:
                log_tail = ""
                with contextlib.suppress(OSError):
                    log_tail = (work / "debootstrap/debootstrap.log").read_text(errors="replace")[-3000:]
                raise RootBuildError(
                    f"debootstrap exited with {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}\n{log_tail}"
                )
            _customize(work)
            if force and final.exists():
                if _held(final) or _in_use(final):
                    raise RootBuildError(f"{final} is in use by running test hosts; stop them first")
                retired = base / f".build-retired-{key}-{os.getpid()}"
                final.rename(retired)
                shutil.rmtree(retired, ignore_errors=True)
            work.rename(final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        if not quiet:
            print(f"Built {final} in {time.monotonic() - started:.0f}s", flush=True)
    for old in prune(final):
        log.info("removed the unused test-host root %s", old)
    return final
