"""Pytest plugin providing SSH test hosts (registered in the root ``conftest.py``).

Fixtures:

``host_network`` (session)
    The process's :class:`~tests.testhosts.harness.HostNetwork`: one private subnet and bridge, torn down
    (and verified gone) at the end of the session.
``make_hosts`` (function)
    ``make_hosts(n=1, names=None) -> list[Host]`` boots ``n`` fresh hosts (or one per name); every host
    created during the test (including hosts recreated with ``host_network.recreate_host``) is destroyed
    after it.
``ansible_ssh_env`` (function)
    Environment variables for ``ansible_runner.run(envvars=...)``: a private ControlPersist directory for
    the test, pipelining, the hosts' Python and strict host key checking against the network's
    ``known_hosts``.

When the machine cannot run test hosts (not root, no ``ip netns``, ...), tests using these fixtures are
skipped, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from .harness import Host, HostNetwork, install_signal_teardown, missing_prerequisites

__all__ = ["MakeHosts", "ansible_ssh_env", "host_network", "make_hosts", "require_test_hosts"]


def require_test_hosts() -> None:
    """Skip the calling test when test hosts cannot run here; under ``CI=true`` fail it instead."""
    problems = missing_prerequisites()
    if not problems:
        return
    message = "SSH test hosts unavailable: " + "; ".join(problems)
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


class MakeHosts(Protocol):
    """``make_hosts(n=1, names=None)``: boot ``n`` fresh hosts, or one per name in ``names``."""

    def __call__(self, n: int | None = None, names: Sequence[str] | None = None) -> list[Host]: ...


@pytest.fixture(scope="session")
def host_network() -> Iterator[HostNetwork]:
    require_test_hosts()
    install_signal_teardown()
    network = HostNetwork().start()
    try:
        yield network
    finally:
        network.close()


@pytest.fixture
def make_hosts(host_network: HostNetwork) -> Iterator[MakeHosts]:
    existing = set(host_network.hosts)

    def factory(n: int | None = None, names: Sequence[str] | None = None) -> list[Host]:
        return host_network.add_hosts(n, names=names)

    yield factory
    for host in host_network.hosts:
        if host not in existing:
            host_network.destroy_host(host)


@pytest.fixture
def ansible_ssh_env(host_network: HostNetwork) -> Iterator[dict[str, str]]:
    # Not under tmp_path: ssh's ControlPath must fit a unix socket path (107 bytes).
    control_dir = Path(tempfile.mkdtemp(prefix="cp-", dir=host_network.run_dir))
    try:
        yield host_network.ansible_env(control_path_dir=control_dir)
    finally:
        shutil.rmtree(control_dir, ignore_errors=True)
