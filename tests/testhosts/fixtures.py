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

``systemd_host_network`` (session), ``make_systemd_hosts`` (function), ``systemd_ansible_ssh_env`` (function)
    The same for hosts running real systemd as PID 1 (``HostNetwork(flavour="systemd")``, hosts are
    :class:`~tests.testhosts.systemd.SystemdHost`), on a network of their own. The cached Debian root they
    boot from is built first if missing (``python -m tests.testhosts build-root``; ``scripts/test`` does it).
``host_network_of(flavour)`` (session)
    ``host_network_of("systemd")`` / ``host_network_of("namespace")``: the session's network of that flavour, for
    code that picks the flavour with a parameter.

When the machine cannot run test hosts (not root, no ``ip netns``, ...), tests using these fixtures are
skipped, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from .harness import Host, HostNetwork, install_signal_teardown, missing_prerequisites

__all__ = [
    "MakeHosts",
    "ansible_ssh_env",
    "host_network",
    "make_hosts",
    "make_systemd_hosts",
    "require_test_hosts",
    "systemd_ansible_ssh_env",
    "systemd_host_network",
    "host_network_of",
]


def require_test_hosts(flavour: str = "namespace") -> None:
    """Skip the calling test when test hosts cannot run here; under ``CI=true`` fail it instead."""
    problems = missing_prerequisites()
    if not problems and flavour == "systemd":
        from .systemd import missing_systemd_prerequisites

        problems = missing_systemd_prerequisites()
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


def _hosts_factory(network: HostNetwork) -> Iterator[MakeHosts]:
    existing = set(network.hosts)

    def factory(n: int | None = None, names: Sequence[str] | None = None) -> list[Host]:
        return network.add_hosts(n, names=names)

    yield factory
    network.destroy_hosts([host for host in network.hosts if host not in existing])


def _ansible_env(network: HostNetwork) -> Iterator[dict[str, str]]:
    # Not under tmp_path: ssh's ControlPath must fit a unix socket path (107 bytes).
    control_dir = Path(tempfile.mkdtemp(prefix="cp-", dir=network.run_dir))
    try:
        yield network.ansible_env(control_path_dir=control_dir)
    finally:
        shutil.rmtree(control_dir, ignore_errors=True)


@pytest.fixture
def ansible_ssh_env(host_network: HostNetwork) -> Iterator[dict[str, str]]:
    yield from _ansible_env(host_network)


@pytest.fixture(scope="session")
def systemd_host_network() -> Iterator[HostNetwork]:
    require_test_hosts("systemd")
    install_signal_teardown()
    network = HostNetwork(flavour="systemd").start()
    try:
        yield network
    finally:
        network.close()


@pytest.fixture
def make_systemd_hosts(systemd_host_network: HostNetwork) -> Iterator[MakeHosts]:
    yield from _hosts_factory(systemd_host_network)


@pytest.fixture
def systemd_ansible_ssh_env(systemd_host_network: HostNetwork) -> Iterator[dict[str, str]]:
    yield from _ansible_env(systemd_host_network)


@pytest.fixture(scope="session")
def host_network_of(request: pytest.FixtureRequest) -> Callable[[str], HostNetwork]:
    def network(flavour: str) -> HostNetwork:
        if flavour == "namespace":
            return request.getfixturevalue("host_network")
        if flavour == "systemd":
            return request.getfixturevalue("systemd_host_network")
        raise ValueError(f"flavour: {flavour!r} is not namespace or systemd")

    return network
