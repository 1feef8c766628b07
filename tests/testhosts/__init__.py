"""SSH test hosts: disposable Linux machines in network namespaces, reachable over real SSH.

Two flavours with one API: ``HostNetwork()`` (sshd as PID 1 over overlays of this machine's directories) and
``HostNetwork(flavour="systemd")`` (real systemd as PID 1, booted with systemd-nspawn from a cached Debian root).
See :mod:`tests.testhosts.harness` for the design, :mod:`tests.testhosts.systemd` for the systemd flavour,
:mod:`tests.testhosts.fixtures` for the pytest fixtures and ``python -m tests.testhosts --help`` for the command
line.
"""

from .harness import (
    FLAVOURS,
    Host,
    HostNetwork,
    HostNetworkError,
    cleanup_stale,
    instance_leftovers,
    missing_prerequisites,
)
from .systemd import SystemdHost, SystemdHostNetwork, missing_systemd_prerequisites

__all__ = [
    "FLAVOURS",
    "Host",
    "HostNetwork",
    "HostNetworkError",
    "SystemdHost",
    "SystemdHostNetwork",
    "cleanup_stale",
    "instance_leftovers",
    "missing_prerequisites",
    "missing_systemd_prerequisites",
]
