"""The cached Debian root of the systemd test hosts."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.testhosts import rootfs
from tests.testhosts.fixtures import require_test_hosts


def _installed_packages(root: Path) -> set[str]:
    status = (root / "var/lib/dpkg/status").read_text()
    installed = set()
    for stanza in status.split("\n\n"):
        package = re.search(r"^Package: (\S+)$", stanza, re.M)
        if package and re.search(r"^Status: install ok installed$", stanza, re.M):
            installed.add(package.group(1))
    return installed


@pytest.fixture(scope="module")
def root() -> Path:
    require_test_hosts("systemd")
    return rootfs.build_root(quiet=True)


@pytest.mark.integration
def test_root_has_what_hosts_need_and_nothing_that_gets_in_the_way(root: Path) -> None:
    assert root.parent == rootfs.cache_base() and root.name == rootfs.root_key()
    assert rootfs.cached_root() == root
    assert not str(root).startswith(str(Path(__file__).resolve().parents[2]))
    assert set(rootfs.PACKAGES) <= _installed_packages(root)

    system = root / "etc/systemd/system"
    for unit in ("etcd.service", "console-getty.service", "apt-daily.timer", "apt-daily-upgrade.timer"):
        assert os.readlink(system / unit) == "/dev/null", unit
    assert not (system / "etcd2.service").exists()
    wanted = {link.name for wants in system.glob("*.wants") for link in wants.iterdir()}
    assert "ssh.service" in wanted
    assert not {name for name in wanted if name.startswith(("apt-daily", "getty@tty1", "etcd"))}
    assert not list((root / "etc/ssh").glob("ssh_host_*"))
    assert (root / "etc/machine-id").read_text() == ""
    assert f"{rootfs.DEPLOY_USER}:x:{rootfs.DEPLOY_UID}:" in (root / "etc/passwd").read_text()
    assert f"{rootfs.DEPLOY_USER}:*:" in (root / "etc/shadow").read_text()
    for table in ("passwd", "group", "shadow", "gshadow"):
        assert not re.search(r"^etcd:", (root / "etc" / table).read_text(), re.M), table
    assert not (root / "var/lib/etcd").exists()
    assert (root / "etc/sudoers.d/deploy").read_text() == f"{rootfs.DEPLOY_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n"
    assert not list((root / "var/cache/apt/archives").glob("*.deb"))


@pytest.mark.integration
def test_a_second_build_reuses_the_cached_root(root: Path) -> None:
    before = root.stat().st_mtime_ns
    assert rootfs.build_root(quiet=True) == root
    assert root.stat().st_mtime_ns == before


def test_key_follows_the_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    key = rootfs.root_key()
    assert key.startswith(f"{rootfs.SUITE}-") and rootfs.root_key() == key
    monkeypatch.setattr(rootfs, "PACKAGES", (*rootfs.PACKAGES, "jq"))
    assert rootfs.root_key() != key
    monkeypatch.undo()
    monkeypatch.setattr(rootfs, "RECIPE_VERSION", rootfs.RECIPE_VERSION + 1)
    assert rootfs.root_key() != key
    monkeypatch.setenv("TESTHOSTS_ROOT_CACHE", "/var/tmp/elsewhere")
    assert rootfs.cache_base() == Path("/var/tmp/elsewhere")


def test_mirror_comes_from_the_apt_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "# a comment\nTypes: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    stanzas = list(rootfs._deb822_stanzas(text))
    assert [stanza["uris"] for stanza in stanzas] == [
        "http://mirror.example/debian-security",
        "http://mirror.example/debian/",
    ]
    assert stanzas[1]["suites"].split() == ["bookworm", "bookworm-updates"]

    mirror = rootfs.debian_mirror()
    assert re.match(r"^(https?|file):/", mirror) and not mirror.endswith("/")
    monkeypatch.setenv("TESTHOSTS_DEBIAN_MIRROR", "http://other.example/debian")
    assert rootfs.debian_mirror() == "http://other.example/debian"


def test_prune_removes_only_old_roots_nothing_uses(tmp_path: Path) -> None:
    keep, unused, recent, held = (tmp_path / f"{rootfs.SUITE}-{name}" for name in ("keep", "unused", "recent", "held"))
    for root in (keep, unused, recent, held):
        (root / "usr/lib/systemd").mkdir(parents=True)
    two_hours_ago = time.time() - 7200
    for root in (unused, held):
        os.utime(root, (two_hours_ago, two_hours_ago))
    fd = rootfs.hold(held)
    try:
        os.utime(rootfs._use_lock_path(held), (two_hours_ago, two_hours_ago))
        assert rootfs.prune(keep) == [unused]
    finally:
        os.close(fd)
    assert keep.is_dir() and recent.is_dir() and held.is_dir() and not unused.exists()
    assert rootfs.prune(keep) == [held]
    assert not rootfs._use_lock_path(held).exists()
