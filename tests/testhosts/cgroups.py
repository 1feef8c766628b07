"""Per-network and per-host cgroups of the systemd test hosts.

A network ``thn<X>`` owns the cgroup ``/thn<X>`` in every mounted cgroup hierarchy it uses (on this kind of
machine: the named ``systemd`` v1 hierarchy and the unified v2 one); each host gets ``/thn<X>/h<slot>`` below
it, and ``systemd-nspawn`` and the host's own systemd create further groups inside that. Killing the unified
group (``cgroup.kill``) kills every process of a host, wherever its namespaces are.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

__all__ = ["HIERARCHIES", "create", "existing", "kill", "kill_and_remove", "populated", "remove", "unified_root"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Hierarchies a host's processes are placed in (what systemd-nspawn looks at in hybrid and unified mode).
HIERARCHIES: tuple[str, ...] = ("systemd", "unified")


def _mounted_hierarchies() -> list[Path]:
    """Every cgroup hierarchy mounted under /sys/fs/cgroup (v1 and v2)."""
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        try:
            separator = fields.index("-")
        except ValueError:
            continue
        if fields[separator + 1] in ("cgroup", "cgroup2"):
            found.append(Path(fields[4]))
    return found


def unified_root() -> Path | None:
    """Where the v2 hierarchy is mounted (hybrid: /sys/fs/cgroup/unified; unified: /sys/fs/cgroup)."""
    for path in _mounted_hierarchies():
        if (path / "cgroup.controllers").exists():
            return path
    return None


def _placement_roots() -> list[Path]:
    roots = []
    unified = unified_root()
    systemd_v1 = CGROUP_ROOT / "systemd"
    if systemd_v1 in _mounted_hierarchies():
        roots.append(systemd_v1)
    if unified is not None:
        roots.append(unified)
    return roots


def create(relative: str) -> list[Path]:
    """Create ``relative`` (e.g. ``thn42/h1``) in the hierarchies hosts are placed in; returns the paths."""
    paths = []
    for root in _placement_roots():
        path = root / relative
        path.mkdir(parents=True, exist_ok=True)
        paths.append(path)
    return paths


def procs_files(relative: str) -> list[Path]:
    return [root / relative / "cgroup.procs" for root in _placement_roots()]


def existing(relative: str) -> list[Path]:
    """Every directory named ``relative`` in any mounted hierarchy."""
    return [root / relative for root in _mounted_hierarchies() if (root / relative).is_dir()]


def _pids_below(path: Path) -> list[int]:
    pids: list[int] = []
    for directory, _dirs, _files in os.walk(path):
        with contextlib.suppress(OSError):
            pids += [int(pid) for pid in (Path(directory) / "cgroup.procs").read_text().split()]
    return pids


def populated(relative: str) -> bool:
    """Whether any process is left in ``relative`` or below it, in any hierarchy."""
    return any(_pids_below(path) for path in existing(relative))


def kill(relative: str, *, timeout: float = 10.0) -> None:
    """SIGKILL every process in ``relative`` and below, and wait until none is left."""
    unified = unified_root()
    deadline = time.monotonic() + timeout
    while populated(relative):
        kill_file = unified / relative / "cgroup.kill" if unified is not None else None
        if kill_file is not None and kill_file.exists():
            with contextlib.suppress(OSError):
                kill_file.write_text("1\n")
        else:  # no cgroup.kill (kernel < 5.14): kill what is listed
            for path in existing(relative):
                for pid in _pids_below(path):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 9)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes survived in cgroup {relative}: {sorted(set(_pids_below_all(relative)))}")
        time.sleep(0.02)


def _pids_below_all(relative: str) -> list[int]:
    return [pid for path in existing(relative) for pid in _pids_below(path)]


def remove(relative: str, *, timeout: float = 5.0) -> None:
    """Remove ``relative`` and its descendants (deepest first) in every hierarchy; they must be empty."""
    deadline = time.monotonic() + timeout
    for path in existing(relative):
        for directory, _dirs, _files in sorted(os.walk(path), key=lambda entry: entry[0].count("/"), reverse=True):
            while True:
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY while the kernel finishes releasing the last task
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)


def kill_and_remove(relative: str) -> None:
    if existing(relative):
        kill(relative)
        remove(relative)
