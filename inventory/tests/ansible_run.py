"""Running the real ``ansible-playbook`` on the controller (connection local) against rendered inventories."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from inventory.configs import templates_dir
from inventory.renderers import RenderedInventory

PLAYBOOKS_DIR = Path(__file__).resolve().parent / "playbooks"


def ansible_playbook_path() -> str:
    candidate = Path(sys.executable).with_name("ansible-playbook")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("ansible-playbook")
    if not found:
        raise RuntimeError("ansible-playbook is not installed next to the test interpreter nor on PATH.")
    return found


def run_playbook(
    rendered: RenderedInventory,
    workdir: Path,
    playbook: str,
    extra: dict | None = None,
    *,
    inventory_text: str | None = None,
) -> subprocess.CompletedProcess:
    """Write the inventory and extravars files as the job engine does, then run ``playbook`` locally.

    ``inventory_text`` replaces the serialized inventory (to show what a different serialization would do)."""
    (workdir / "inventory").mkdir(parents=True, exist_ok=True)
    (workdir / "env").mkdir(parents=True, exist_ok=True)
    (workdir / "inventory" / "hosts.json").write_text(
        rendered.inventory_text() if inventory_text is None else inventory_text, encoding="utf-8"
    )
    extravars = workdir / "env" / "extravars"
    job_vars = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "ansible_become": False,
        **(extra or {}),
    }
    extravars.write_text(rendered.extravars_text(job_vars), encoding="utf-8")
    extravars.chmod(0o600)
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "ANSIBLE_CONFIG": str(workdir / "no-ansible.cfg"),
        "ANSIBLE_HOME": str(workdir / ".ansible"),
        "ANSIBLE_LOCAL_TEMP": str(workdir / ".ansible" / "tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "false",
        "ANSIBLE_INVENTORY_ENABLED": "ansible.builtin.yaml",
        "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true",
    }
    return subprocess.run(
        [
            ansible_playbook_path(),
            "-i",
            str(workdir / "inventory" / "hosts.json"),
            "-e",
            f"@{extravars}",
            str(PLAYBOOKS_DIR / playbook),
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def render_configs_with_ansible(
    rendered: RenderedInventory, workdir: Path, *, inventory_text: str | None = None
) -> dict[str, bytes]:
    """``{hostname: config.yaml bytes}`` as written by ``ansible.builtin.template`` for every host."""
    output = workdir / "out"
    output.mkdir(parents=True, exist_ok=True)
    result = run_playbook(
        rendered,
        workdir,
        "render_configs.yml",
        {"render_templates_dir": str(templates_dir()), "render_output_dir": str(output)},
        inventory_text=inventory_text,
    )
    if result.returncode != 0:
        raise AssertionError(f"ansible-playbook failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    # The templates must not lean on anything ansible-core warns about (deprecated or coerced templating).
    for marker in ("[WARNING]", "[DEPRECATION WARNING]"):
        if marker in result.stdout or marker in result.stderr:
            raise AssertionError(f"ansible-playbook warned:\n{result.stdout}\n{result.stderr}")
    return {path.stem: path.read_bytes() for path in sorted(output.glob("*.yaml"))}
