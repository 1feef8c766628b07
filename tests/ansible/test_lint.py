"""The Ansible content passes ansible-lint's production profile and holds no Python."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .playbooks import ANSIBLE_DIR

PLAYBOOKS = (
    "preflight.yml",
    "initial_master.yml",
    "joining_masters.yml",
    "workers.yml",
    "all.yml",
    "scale_add.yml",
    "reachability.yml",
    "scale_remove.yml",
    "upgrade.yml",
    "kubeconfig.yml",
    "uninstall.yml",
    "health.yml",
    "adopt.yml",
    "cert_rotate.yml",
    "node_labels.yml",
    "etcd_snapshot.yml",
    "etcd_restore.yml",
    # Imported at the start of every playbook that installs: the air-gap artifacts checked on the controller.
    "airgap_check.yml",
)


def test_every_operation_has_its_playbook() -> None:
    assert sorted(path.name for path in ANSIBLE_DIR.glob("*.yml")) == sorted(PLAYBOOKS)


def test_content_is_data_only() -> None:
    """No Python runs on the controller from here (no modules or plugins); a role may ship a script it runs on the
    nodes (``roles/*/files/``)."""
    shipped = set(ANSIBLE_DIR.glob("roles/*/files/*.py"))
    assert [str(path) for path in ANSIBLE_DIR.rglob("*.py") if path not in shipped] == []


def test_roles_declare_their_arguments() -> None:
    roles = sorted(path.name for path in (ANSIBLE_DIR / "roles").iterdir() if path.is_dir())
    assert roles == ["rke2_adopt", "rke2_agent", "rke2_common", "rke2_host_prep", "rke2_preflight", "rke2_server"]
    for role in roles:
        assert (ANSIBLE_DIR / "roles" / role / "meta" / "argument_specs.yml").is_file(), role


def test_rke2_paths_come_from_the_node_config() -> None:
    """RKE2's default data directory and kubeconfig path appear only as the fallbacks of `data-dir` and
    `write-kubeconfig`, never as a path a task uses directly."""
    fallback = re.compile(
        r"default\('(/var/lib/rancher/rke2|/etc/rancher/rke2/rke2\.yaml)', true\)|^rke2_common_default_data_dir: /var/lib/rancher/rke2$"
    )
    found = []
    for path in sorted(ANSIBLE_DIR.rglob("*")):
        if path.suffix not in (".yml", ".j2") or path.name == "argument_specs.yml":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            rest = fallback.sub("", line)
            if "/var/lib/rancher/rke2" in rest or "/etc/rancher/rke2/rke2.yaml" in rest:
                found.append(f"{path.relative_to(ANSIBLE_DIR)}:{number}: {line.strip()}")
    assert found == []


@pytest.mark.slow
def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    executable = Path(sys.executable).with_name("ansible-lint")
    if not executable.exists():
        found = shutil.which("ansible-lint")
        assert found, "ansible-lint is not installed (it is in requirements.txt)"
        executable = Path(found)
    env = {
        "PATH": f"{executable.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "NO_COLOR": "1",
    }
    completed = subprocess.run(
        [str(executable), "--offline", "--profile", "production", "--nocolor", str(ANSIBLE_DIR)],
        cwd=ANSIBLE_DIR.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Profile 'production' was required, and it passed." in completed.stdout + completed.stderr
