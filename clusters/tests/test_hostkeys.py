"""Host key checks without hosts: fingerprints as ssh-keygen prints them, which known_hosts lines cover a host
(plain, bracketed port, wildcard, negated and hashed names), and when a presented key counts as changed."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from clusters.services.hostkeys import HostTarget, PublicKey, _has_changed, fingerprint, pinned_keys, targets_of


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Two fresh ed25519 public keys, as ``type base64`` text."""
    folder = tmp_path_factory.mktemp("keys")
    found = []
    for name in ("a", "b"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True)
        found.append(" ".join((folder / f"{name}.pub").read_text().split()[:2]))
    return found


def test_fingerprint_matches_ssh_keygen(keys: list[str], tmp_path: Path) -> None:
    path = tmp_path / "key.pub"
    path.write_text(keys[0] + "\n")
    printed = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(path)], capture_output=True, text=True, check=True
    )

    assert printed.stdout.split()[1] == fingerprint(keys[0].split()[1])


def test_pinned_lines_cover_a_host_by_address_and_port(keys: list[str], tmp_path: Path) -> None:
    a, b = keys
    target = HostTarget("node1", "10.0.0.5")
    other_port = HostTarget("node1", "10.0.0.5", 2222)
    text = f"node1,10.0.0.5 {a}\n[10.0.0.5]:2222 {b}\n10.0.0.* {b}\n10.0.0.*,!10.0.0.5 {a}\n@revoked 10.0.0.5 {b}\n"

    assert pinned_keys(text, target) == [PublicKey(*a.split()), PublicKey(*b.split())]
    assert pinned_keys(text, other_port) == [PublicKey(*b.split())]
    assert pinned_keys(text, HostTarget("x", "10.0.1.5")) == []

    # Hashed names, as ssh-keygen -H writes them.
    path = tmp_path / "known_hosts"
    path.write_text(f"10.0.0.5 {a}\n[10.0.0.5]:2222 {b}\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(path)], check=True, capture_output=True)
    hashed = path.read_text()
    assert "10.0.0.5" not in hashed
    assert pinned_keys(hashed, target) == [PublicKey(*a.split())]
    assert pinned_keys(hashed, other_port) == [PublicKey(*b.split())]


def test_a_key_changed_when_a_shared_type_differs_or_no_type_is_shared(keys: list[str]) -> None:
    a, b = (PublicKey(*key.split()) for key in keys)
    rsa = PublicKey("ssh-rsa", "AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7")

    assert not _has_changed([a], [a])
    assert not _has_changed([a, rsa], [a])  # a type the host no longer offers
    assert not _has_changed([a], [a, rsa])  # a new type next to the trusted one
    assert _has_changed([a], [b])
    assert _has_changed([a, rsa], [b, rsa])
    assert _has_changed([a], [rsa])  # only an unknown type: an impostor could offer any


def test_targets_come_from_the_inventory_hosts() -> None:
    inventory = {
        "all": {
            "hosts": {
                "node1": {"ansible_host": "10.0.0.1", "ansible_port": 2222},
                "node2": {"ansible_host": "10.0.0.2"},
                "local": {"ansible_connection": "local"},
            }
        }
    }

    assert targets_of(inventory) == [HostTarget("node1", "10.0.0.1", 2222), HostTarget("node2", "10.0.0.2", 22)]


@pytest.mark.django_db
def test_without_trust_on_first_use_an_unknown_host_is_not_asked(settings: Any) -> None:
    from clusters.models import HostKey
    from clusters.services.hostkeys import host_keys_check

    closed = HostTarget("node1", "127.0.0.1", 1)  # nothing listens there: a scan reports it unanswered

    settings.SSH_HOST_KEY_TRUST_ON_FIRST_USE = True
    assert host_keys_check([closed]).unanswered == [closed]

    settings.SSH_HOST_KEY_TRUST_ON_FIRST_USE = False
    report = host_keys_check([closed])
    assert (report.unanswered, report.accepted, report.changed) == ([], [], [])
    assert not HostKey.objects.exists()
