"""SSH test hosts: disposable Linux machines in network namespaces, reachable over real SSH.

See :mod:`tests.testhosts.harness` for the design, :mod:`tests.testhosts.fixtures` for the pytest fixtures and
``python -m tests.testhosts --help`` for the command line.
"""

from .harness import Host, HostNetwork, HostNetworkError, cleanup_stale, instance_leftovers, missing_prerequisites

__all__ = ["Host", "HostNetwork", "HostNetworkError", "cleanup_stale", "instance_leftovers", "missing_prerequisites"]
