"""Disposable Linux "machines" reachable over real SSH, built from namespaces on this machine.

Design
======

A :class:`HostNetwork` owns one private IPv4 subnet ``10.213.X.0/24`` (``X`` in 16..250) and a bridge
``thn<X>br`` holding the gateway address ``10.213.X.1``. Every :class:`Host` in it is made of:

* a named network namespace ``thn<X>h<slot>`` joined to the bridge by a veth pair (``thn<X>v<slot>`` on the
  bridge, ``eth0`` with address ``10.213.X.<10+slot>`` inside). There is no default route in the namespace and
  ``net.ipv4.ip_forward`` is never touched, so hosts reach each other and the gateway address, nothing else;
* a process tree started with ``ip netns exec <ns> unshare --mount --uts --pid --fork --mount-proc``. Its PID 1
  is the host's ``sshd -D``. Before the launcher execs sshd it mounts, inside the private mount namespace,
  an overlay over each of :data:`DEFAULT_OVERLAY_DIRS` (lower: the real directory, upper: the host's
  ``root_dir``), a bind mount of an initially (nearly) empty per-host directory over each of
  :data:`DEFAULT_PRIVATE_DIRS` (``/root``: the machine's own dotfiles must not leak into hosts) and a tmpfs
  over each of :data:`DEFAULT_TMPFS_DIRS`, then sets the hostname. Because sshd is
  PID 1 of the host's PID namespace it reaps orphans (daemons a playbook started), and killing it makes the
  kernel kill every process of the host;
* files written into the upper directories before boot: ``/etc/hostname``, ``/etc/hosts`` (every host of
  the network), ``/etc/machine-id``, user databases with an extra ``deploy`` user (home
  ``/var/lib/deploy-home``, passwordless sudo through ``/etc/sudoers.d/deploy``), ``/etc/ssh/sshd_config``
  (key-only login for ``root`` and ``deploy``), a host key generated for this host and
  ``/etc/ssh/authorized_keys/<user>`` holding the network's client key. sshd leaves out the post-quantum
  hybrid key exchange, which costs about 0.3 s of CPU per connection on small test machines.

The client key pair and ``known_hosts`` live in the network's run directory (``/tmp/thn<X>-*``, mode 0700),
so callers can use strict host key checking. A host that is destroyed and created again gets a new host key;
``known_hosts`` always lists the live hosts only. Deterministic MAC addresses keep neighbour caches valid when
a host is recreated with the same address.

Concurrency
===========

Subnet indexes are claimed with files ``/run/lock/testhosts/net-<X>.json`` holding the owner's PID and its
start time, created atomically under an ``flock``, round-robin over the range (an index just released is not
handed out again at once). A claim whose owner is gone is stale: the next allocation (or
``python -m tests.testhosts cleanup-stale``) tears its resources down and removes it. Indexes whose names or
routes already exist on the machine are skipped. Everything a network creates carries its ``thn<X>`` prefix,
so teardown never touches anything else. Namespaces are identified by inode only while they are pinned (by
their /run/netns bind mount or an open descriptor), because the kernel reuses the inodes of freed ones.

Safety
======

A ``blackhole 10.213.X.0/24 metric 4000`` route is added before the bridge and removed last: whatever
happens to the bridge, traffic for the test subnet can never follow the default route off the machine.

Teardown order (per host, and for the whole network)
====================================================

1. SIGKILL the host's PID 1 (sshd); the kernel kills the rest of its PID namespace. Reap the launcher.
2. SIGKILL every process still in the host's network or mount namespace (what ``ip netns pids`` lists,
   including processes entered with ``nsenter`` or ``ip netns exec``) until none is left.
3. ``ss -K`` inside each namespace (orphaned sockets) and ``ss -K dst <prefix>`` in the root namespace
   (client sockets such as ssh ControlPersist masters, which would otherwise outlive the hosts).
4. Delete the veth, then the namespace. For the whole network: then the bridge, then the blackhole route.
5. Lazily unmount anything still mounted under the run directory, remove the run directory, and release the
   claim only if :func:`instance_leftovers` finds nothing left (no namespace, link, route, socket, process
   or mount).

Flavours
========

``HostNetwork(flavour="systemd")`` (see :mod:`tests.testhosts.systemd`) runs real systemd as PID 1 in each
host, booted with ``systemd-nspawn`` from a cached Debian root instead of overlays of this machine's
directories; the network, names, keys, claims and teardown order are the same, with one more step: each host
lives in the cgroup ``/thn<X>/h<slot>``, which is killed and removed before its namespace is deleted.

Teardown also runs from ``atexit`` in the owning process; :func:`install_signal_teardown` adds SIGTERM and
SIGHUP handling for processes that would otherwise die without running ``atexit``.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import fcntl
import functools
import ipaddress
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from types import FrameType

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import cgroups

__all__ = [
    "DEFAULT_CLAIMS_DIR",
    "DEFAULT_OVERLAY_DIRS",
    "DEFAULT_PRIVATE_DIRS",
    "DEFAULT_TMPFS_DIRS",
    "DEPLOY_HOME",
    "DEPLOY_USER",
    "FLAVOURS",
    "TARGET_PYTHON",
    "Claim",
    "Host",
    "HostNetwork",
    "HostNetworkError",
    "cleanup_stale",
    "close_all_networks",
    "install_signal_teardown",
    "instance_leftovers",
    "missing_prerequisites",
    "read_claims",
]

log = logging.getLogger(__name__)

SUBNET_BASE = "10.213"
SUBNET_INDEXES = range(16, 251)
NAME_PREFIX = "thn"
HOST_OFFSET = 10
MAX_SLOT = 240
BLACKHOLE_METRIC = 4000
SSH_PORT = 22

DEFAULT_CLAIMS_DIR = Path("/run/lock/testhosts")
DEFAULT_RUN_BASE = Path("/tmp")
DEFAULT_OVERLAY_DIRS: tuple[str, ...] = ("/etc", "/opt", "/usr/local", "/var/lib", "/var/log")
DEFAULT_PRIVATE_DIRS: tuple[str, ...] = ("/root",)
DEFAULT_TMPFS_DIRS: tuple[str, ...] = ("/run", "/tmp")
DEFAULT_HOSTNAME_PREFIX = "node"
FLAVOURS: tuple[str, ...] = ("namespace", "systemd")

DEPLOY_USER = "deploy"
DEPLOY_HOME = "/var/lib/deploy-home"
TARGET_PYTHON = "/usr/bin/python3"
SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

BOOT_TIMEOUT = 15.0
KILL_TIMEOUT = 10.0

_HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HOSTS_BEGIN = "# BEGIN test host network"
_HOSTS_END = "# END test host network"
_TCP_LISTEN = "0A"
NFT_TABLE = "testhosts"
_PROTOCOLS = ("tcp", "udp", "sctp")


class HostNetworkError(RuntimeError):
    """The test-host network could not be created, changed or torn down."""


# --------------------------------------------------------------------------------------------------------------
# Small system helpers
# --------------------------------------------------------------------------------------------------------------


def _run(
    argv: Sequence[str],
    *,
    input: str | None = None,  # noqa: A002
    check: bool = True,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise HostNetworkError(f"`{shlex.join(argv)}` exited with {proc.returncode}: {detail}")
    return proc


def _ip_batch(commands: Sequence[str], *, netns: str | None = None, force: bool = False) -> None:
    """Run several ``ip`` commands in one process; with ``force`` errors are ignored (teardown)."""
    if not commands:
        return
    argv = ["ip"]
    if netns is not None:
        argv += ["-n", netns]
    if force:
        argv.append("-force")
    argv += ["-batch", "-"]
    _run(argv, input="\n".join(commands) + "\n", check=not force)


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


NsId = tuple[int, int]


def _ns_id(path: str) -> NsId | None:
    """Identity (device, inode) of a namespace file, None if it is gone (or the process is a zombie)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _fd_ns_id(fd: int) -> NsId:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def _proc_stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat starting at field 3 (state), None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _process_start_ticks(pid: int) -> int | None:
    fields = _proc_stat_fields(pid)
    return int(fields[19]) if fields else None


def _process_alive(pid: int, start_ticks: int | None) -> bool:
    fields = _proc_stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return start_ticks is None or int(fields[19]) == start_ticks


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid in _pids():
        fields = _proc_stat_fields(pid)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(pid)
    return children


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _listens_on(pid: int, port: int) -> bool:
    """Whether a TCP socket listens on ``port`` in the network namespace of ``pid``."""
    try:
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    suffix = f":{port:04X}"
    return any((fields := line.split())[1].endswith(suffix) and fields[3] == _TCP_LISTEN for line in lines)


def _kill_namespace_processes(net_ids: set[NsId], mnt_ids: set[NsId], *, timeout: float = KILL_TIMEOUT) -> None:
    """SIGKILL every process whose network or mount namespace is listed, until none is left.

    The caller must keep every listed namespace alive (a bind mount under /run/netns or an open file
    descriptor) until this returns: the kernel reuses the inode number of a freed namespace.
    """
    protected = {_ns_id("/proc/1/ns/net"), _ns_id("/proc/self/ns/net")} | {
        _ns_id("/proc/1/ns/mnt"),
        _ns_id("/proc/self/ns/mnt"),
    }
    if (net_ids | mnt_ids) & protected:
        raise HostNetworkError("refusing to kill the processes of the machine's own namespaces")
    if not net_ids and not mnt_ids:
        return
    me = os.getpid()
    deadline = time.monotonic() + timeout
    while True:
        victims = [
            pid
            for pid in _pids()
            if pid != me and (_ns_id(f"/proc/{pid}/ns/net") in net_ids or _ns_id(f"/proc/{pid}/ns/mnt") in mnt_ids)
        ]
        if not victims:
            return
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise HostNetworkError(f"processes {victims} survived SIGKILL for {timeout:.0f}s")
        time.sleep(0.01)


def _kill_sockets(netns_names: Sequence[str], root_dsts: Sequence[str]) -> None:
    """Destroy sockets left inside the namespaces, and root-namespace sockets towards ``root_dsts``."""
    procs = [
        subprocess.Popen(["ss", "-K", "-a", "-N", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name in netns_names
        if Path("/run/netns", name).exists()
    ]
    for dst in root_dsts:
        _run(["ss", "-K", "dst", dst], check=False)
    for proc in procs:
        proc.wait(timeout=30)


def _disable_ipv6(link: str) -> None:
    """Keep the root namespace out of IPv6 link-local reach of the hosts (IPv4 is the test network)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/sys/net/ipv6/conf/{link}/disable_ipv6").write_text("1\n")


def _mountinfo_lines() -> list[str]:
    return Path("/proc/self/mountinfo").read_text().splitlines()


def _mounts_matching(needles: Sequence[str]) -> list[str]:
    """Mount points of the root mount namespace whose entry mentions one of ``needles``."""
    found = []
    for line in _mountinfo_lines():
        if any(needle in line for needle in needles):
            found.append(line.split()[4])
    return found


def _unmount_all(needles: Sequence[str]) -> None:
    for mount_point in sorted(_mounts_matching(needles), key=len, reverse=True):
        _run(["umount", "--lazy", mount_point], check=False)


def _write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class _KeyPair:
    private_openssh: str
    public_openssh: str


def _generate_ed25519(comment: str) -> _KeyPair:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return _KeyPair(private_openssh=private, public_openssh=f"{public} {comment}")


@functools.lru_cache(maxsize=1)
def missing_prerequisites() -> tuple[str, ...]:
    """What this machine lacks to run test hosts; empty when everything is there."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("not running as root")
    for tool in ("ip", "ss", "nsenter", "unshare", "mount", "umount", "ssh", SSHD, SFTP_SERVER):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not found")
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    if "\toverlay\n" not in filesystems:
        problems.append("the kernel has no overlay filesystem")
    if not problems:
        probe = _run(["ip", "netns", "list"], check=False)
        if probe.returncode != 0:
            problems.append(f"`ip netns` unavailable: {probe.stderr.strip()}")
        probe = _run(["unshare", "--net", "--mount", "--uts", "--pid", "--fork", "true"], check=False)
        if probe.returncode != 0:
            problems.append(f"cannot create namespaces: {probe.stderr.strip()}")
    return tuple(problems)


# --------------------------------------------------------------------------------------------------------------
# Names and claims
# --------------------------------------------------------------------------------------------------------------


_ROUTE_TYPES = frozenset(
    {"unicast", "local", "broadcast", "multicast", "throw", "unreachable", "prohibit", "blackhole", "nat", "anycast"}
)


def _route_table() -> list[tuple[ipaddress.IPv4Network, str]]:
    """Every IPv4 route of every table, as (destination, line); default routes are left out."""
    routes = []
    for line in _run(["ip", "-4", "-o", "route", "show", "table", "all"]).stdout.splitlines():
        words = line.split()
        if not words:
            continue
        dst = words[1] if words[0] in _ROUTE_TYPES and len(words) > 1 else words[0]
        with contextlib.suppress(ValueError):
            routes.append((ipaddress.IPv4Network(dst, strict=False), line.strip()))
    return routes


@dataclasses.dataclass(frozen=True)
class _Names:
    """Every machine-global name derived from a subnet index (all fit Linux's 15-character limit)."""

    index: int

    @property
    def prefix(self) -> str:
        return f"{NAME_PREFIX}{self.index}"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{SUBNET_BASE}.{self.index}.0/24")

    @property
    def gateway(self) -> str:
        return f"{SUBNET_BASE}.{self.index}.1"

    @property
    def bridge_mac(self) -> str:
        return f"02:74:6e:{self.index:02x}:00:01"

    def netns(self, slot: int) -> str:
        return f"{self.prefix}h{slot}"

    def veth(self, slot: int) -> str:
        return f"{self.prefix}v{slot}"

    def ip(self, slot: int) -> str:
        return f"{SUBNET_BASE}.{self.index}.{HOST_OFFSET + slot}"

    def host_mac(self, slot: int) -> str:
        return f"02:74:6e:{self.index:02x}:{slot:02x}:02"

    def existing_namespaces(self) -> list[str]:
        pattern = re.compile(rf"^{self.prefix}h\d+$")
        try:
            return sorted(name for name in os.listdir("/run/netns") if pattern.match(name))
        except FileNotFoundError:
            return []

    def existing_links(self) -> list[str]:
        pattern = re.compile(rf"^{self.prefix}(br|v\d+)$")
        return sorted(name for name in os.listdir("/sys/class/net") if pattern.match(name))

    def routes(self, table: Sequence[tuple[ipaddress.IPv4Network, str]] | None = None) -> list[str]:
        """Routes of any table and type that overlap the subnet, as ``ip route`` prints them."""
        return [line for network, line in (_route_table() if table is None else table) if network.overlaps(self.subnet)]


@dataclasses.dataclass(frozen=True)
class Claim:
    """Ownership record of one subnet index: ``<claims_dir>/net-<index>.json``."""

    index: int
    pid: int
    pid_start_ticks: int | None
    run_dir: str
    created_at: float
    path: Path

    @property
    def owner_alive(self) -> bool:
        return _process_alive(self.pid, self.pid_start_ticks)

    @classmethod
    def load(cls, path: Path) -> Claim | None:
        try:
            data = json.loads(path.read_text())
            return cls(
                index=int(data["index"]),
                pid=int(data["pid"]),
                pid_start_ticks=data.get("pid_start_ticks"),
                run_dir=str(data["run_dir"]),
                created_at=float(data["created_at"]),
                path=path,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _claim_path(claims_dir: Path, index: int) -> Path:
    return claims_dir / f"net-{index}.json"


@contextlib.contextmanager
def _claims_lock(claims_dir: Path) -> Iterator[None]:
    claims_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    with open(claims_dir / "allocate.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_claims(claims_dir: Path = DEFAULT_CLAIMS_DIR) -> list[Claim]:
    """Every readable claim, live or stale, ordered by index."""
    if not claims_dir.is_dir():
        return []
    claims = [Claim.load(path) for path in claims_dir.glob("net-*.json")]
    return sorted((claim for claim in claims if claim is not None), key=lambda claim: claim.index)


def _owned_run_dir(index: int, run_dir: str | Path | None) -> Path | None:
    """``run_dir`` if it is a run directory this module creates for ``index``; nothing else is ever removed."""
    if not run_dir:
        return None
    path = Path(run_dir)
    if path.is_absolute() and ".." not in path.parts and path.name.startswith(f"{NAME_PREFIX}{index}-"):
        return path
    return None


def _teardown_instance(names: _Names, run_dir: Path | None, *, mount_ns_pins: Sequence[int] = ()) -> None:
    """Remove everything carrying the instance's names, in the documented order. Safe to repeat.

    ``mount_ns_pins`` are open descriptors of the hosts' mount namespaces: their processes are killed too, and
    the descriptors are closed once no process is left.
    """
    run_dir = _owned_run_dir(names.index, run_dir)
    # Systemd hosts: everything a host runs is in its cgroup, including processes outside its namespaces.
    cgroups.kill_and_remove(names.prefix)
    namespaces = names.existing_namespaces()
    net_ids = {ns_id for name in namespaces if (ns_id := _ns_id(f"/run/netns/{name}")) is not None}
    try:
        _kill_namespace_processes(net_ids, {_fd_ns_id(fd) for fd in mount_ns_pins})
    finally:
        for fd in mount_ns_pins:
            os.close(fd)
    _kill_sockets(namespaces, [str(names.subnet)])
    links = [link for link in names.existing_links() if link != names.bridge]
    _ip_batch([f"link del {link}" for link in links] + [f"netns del {name}" for name in namespaces], force=True)
    network_commands = []
    if names.bridge in names.existing_links():
        network_commands.append(f"link del {names.bridge}")
    network_commands.append(f"route del blackhole {names.subnet} metric {BLACKHOLE_METRIC}")
    _ip_batch(network_commands, force=True)
    needles = [f"/run/netns/{names.prefix}h"]
    if run_dir is not None:
        needles.append(str(run_dir))
    _unmount_all(needles)
    if run_dir is not None:
        shutil.rmtree(run_dir, ignore_errors=True)


def instance_leftovers(
    index: int,
    *,
    run_dir: str | Path | None = None,
    claims_dir: Path = DEFAULT_CLAIMS_DIR,
) -> list[str]:
    """Describe whatever of network ``index`` still exists; an empty list means it is completely gone.

    Checks namespaces, links, routes (any table), TCP sockets towards the subnet (TIME-WAIT excepted),
    processes whose command line or mount table mentions the run directory (every process of a host sees
    its overlays), root-namespace mounts, cgroups named after the network (systemd hosts), the run
    directory and the claim file.
    """
    names = _Names(index)
    problems = [f"network namespace {name}" for name in names.existing_namespaces()]
    problems += [f"link {link}" for link in names.existing_links()]
    problems += [f"route {route}" for route in names.routes()]
    sockets = _run(["ss", "-H", "-tan", "exclude", "time-wait", "dst", str(names.subnet)], check=False)
    problems += [f"socket {line.strip()}" for line in sockets.stdout.splitlines() if line.strip()]
    if run_dir is not None:
        needle = str(run_dir).encode()
        for pid in _pids():
            for view in ("cmdline", "mountinfo"):
                try:
                    if needle in Path(f"/proc/{pid}/{view}").read_bytes():
                        problems.append(f"process {pid} ({_comm(pid)}) using {run_dir}")
                        break
                except OSError:
                    break
    needles = [f"/run/netns/{names.prefix}h"] + ([str(run_dir)] if run_dir is not None else [])
    problems += [f"mount {mount_point}" for mount_point in _mounts_matching(needles)]
    problems += [f"cgroup {path}" for path in cgroups.existing(names.prefix)]
    if run_dir is not None and os.path.lexists(run_dir):
        problems.append(f"run directory {run_dir}")
    if _claim_path(claims_dir, index).exists():
        problems.append(f"claim {_claim_path(claims_dir, index)}")
    return problems


def _reap_stale_claims(claims_dir: Path) -> list[Claim]:
    """Tear down and release claims whose owner is gone. The caller holds the claims lock."""
    reaped = []
    for claim in read_claims(claims_dir):
        if claim.owner_alive:
            continue
        log.info("removing stale test-host network %s (owner pid %s)", claim.index, claim.pid)
        _teardown_instance(_Names(claim.index), _owned_run_dir(claim.index, claim.run_dir))
        claim.path.unlink(missing_ok=True)
        reaped.append(claim)
    for path in claims_dir.glob("net-*.json"):
        if Claim.load(path) is None and time.time() - path.stat().st_mtime > 60:
            path.unlink(missing_ok=True)
    return reaped


def cleanup_stale(claims_dir: Path = DEFAULT_CLAIMS_DIR) -> list[Claim]:
    """Tear down every network whose owning process is gone; returns the claims that were removed."""
    if not claims_dir.is_dir():
        return []
    with _claims_lock(claims_dir):
        return _reap_stale_claims(claims_dir)


def _allocate(claims_dir: Path, run_base: Path) -> Claim:
    with _claims_lock(claims_dir):
        _reap_stale_claims(claims_dir)
        claimed = {claim.index for claim in read_claims(claims_dir)}
        claimed |= {
            int(match.group(1))
            for path in claims_dir.glob("net-*.json")
            if (match := re.match(r"net-(\d+)\.json$", path.name))
        }
        routes = _route_table()
        # Round-robin, so that an index just released (whose owner may still be checking for leftovers) is
        # not handed out again right away.
        cursor = claims_dir / "next-index"
        try:
            start = int(cursor.read_text())
        except (OSError, ValueError):
            start = SUBNET_INDEXES.start
        order = [index for index in SUBNET_INDEXES if index >= start] + [
            index for index in SUBNET_INDEXES if index < start
        ]
        for index in order:
            if index in claimed:
                continue
            names = _Names(index)
            if names.existing_links() or names.existing_namespaces() or cgroups.existing(names.prefix):
                continue
            if names.routes(routes):
                continue
            run_dir = Path(tempfile.mkdtemp(prefix=f"{names.prefix}-", dir=run_base))
            me = os.getpid()
            record = {
                "index": index,
                "pid": me,
                "pid_start_ticks": _process_start_ticks(me),
                "run_dir": str(run_dir),
                "created_at": time.time(),
            }
            path = _claim_path(claims_dir, index)
            tmp = claims_dir / f".net-{index}.{secrets.token_hex(4)}"
            tmp.write_text(json.dumps(record))
            try:
                os.link(tmp, path)
            except FileExistsError:
                run_dir.rmdir()
                continue
            finally:
                tmp.unlink()
            cursor.write_text(f"{index + 1 if index + 1 in SUBNET_INDEXES else SUBNET_INDEXES.start}\n")
            loaded = Claim.load(path)
            assert loaded is not None
            return loaded
    raise HostNetworkError(f"no free test subnet {SUBNET_BASE}.X.0/24 with X in {SUBNET_INDEXES}")


# --------------------------------------------------------------------------------------------------------------
# Files of a host
# --------------------------------------------------------------------------------------------------------------


def _rel(path: str) -> str:
    return path.lstrip("/")


class _UpperTree:
    """Writes files into a host's overlay upper directories before the host boots.

    Directories created on the way copy the mode and ownership of the real (lower) directory, because the
    merged directory shows the upper directory's attributes.
    """

    def __init__(self, root: Path, lower: Path = Path("/")) -> None:
        self.root = root
        self.lower = lower

    def mkdir_like_lower(self, path: str) -> Path:
        target = self.root / _rel(path)
        parts = PurePosixPath(path).parts[1:]
        current_lower = self.lower
        current_upper = self.root
        for part in parts:
            current_lower /= part
            current_upper /= part
            if current_upper.is_dir():
                continue
            current_upper.mkdir()
            try:
                lower = os.stat(current_lower)
            except FileNotFoundError:
                os.chmod(current_upper, 0o755)
                continue
            os.chown(current_upper, lower.st_uid, lower.st_gid)
            os.chmod(current_upper, stat.S_IMODE(lower.st_mode))
        return target

    def write(
        self,
        path: str,
        content: str,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
    ) -> None:
        self.mkdir_like_lower(str(PurePosixPath(path).parent))
        target = self.root / _rel(path)
        try:
            lower = os.stat(self.lower / _rel(path))
            lower_mode, lower_uid, lower_gid = stat.S_IMODE(lower.st_mode), lower.st_uid, lower.st_gid
        except FileNotFoundError:
            lower_mode, lower_uid, lower_gid = 0o644, 0, 0
        target.write_text(content)
        os.chown(target, lower_uid if uid is None else uid, lower_gid if gid is None else gid)
        os.chmod(target, lower_mode if mode is None else mode)

    def mkdir(self, path: str, *, mode: int, uid: int, gid: int) -> None:
        self.mkdir_like_lower(str(PurePosixPath(path).parent))
        target = self.root / _rel(path)
        target.mkdir()
        os.chown(target, uid, gid)
        os.chmod(target, mode)


def _render_colon_table(rows: Sequence[Sequence[str]]) -> str:
    return "".join(":".join(row) + "\n" for row in rows)


def _read_colon_table(path: str) -> list[list[str]]:
    return [line.split(":") for line in Path(path).read_text().splitlines() if line and not line.startswith("#")]


def _render_sshd_config(options: Sequence[tuple[str, str]]) -> str:
    return "".join(f"{key} {value}\n" for key, value in options)


def _render_hosts_block(entries: Sequence[tuple[str, str]]) -> str:
    lines = [_HOSTS_BEGIN] + [f"{ip}\t{name}" for ip, name in entries] + [_HOSTS_END]
    return "\n".join(lines) + "\n"


def _replace_hosts_block(text: str, block: str) -> str:
    pattern = re.compile(rf"^{re.escape(_HOSTS_BEGIN)}\n.*?^{re.escape(_HOSTS_END)}\n?", re.M | re.S)
    if pattern.search(text):
        return pattern.sub(lambda _match: block, text, count=1)
    return text + ("" if text.endswith("\n") or not text else "\n") + block


def _is_whiteout(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: Path) -> bool:
    for attribute in ("trusted.overlay.opaque", "user.overlay.opaque"):
        with contextlib.suppress(OSError):
            if os.getxattr(path, attribute, follow_symlinks=False) == b"y":
                return True
    return False


# --------------------------------------------------------------------------------------------------------------
# Hosts
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _UserIds:
    uid: int
    gid: int


class Host:
    """One test machine. Create hosts with :meth:`HostNetwork.add_hosts`, never directly."""

    port: int = SSH_PORT

    def __init__(
        self,
        *,
        network: HostNetwork,
        name: str,
        slot: int,
        host_key: _KeyPair,
    ) -> None:
        names = network._names
        self._network = network
        self.name = name
        self.slot = slot
        self.ip = names.ip(slot)
        self.namespace = names.netns(slot)
        self.veth = names.veth(slot)
        self.host_dir = network.run_dir / "hosts" / name
        self.root_dir = self.host_dir / "root"
        self.work_dir = self.host_dir / "work"
        self.console_log = self.host_dir / "console.log"
        self.host_public_key = host_key.public_openssh
        self._host_key = host_key
        self._launcher: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._pid_start: int | None = None
        self._mount_ns_pin: int | None = None
        self._destroyed = False

    def __repr__(self) -> str:
        state = "destroyed" if self._destroyed else f"pid {self._pid}"
        return f"<Host {self.name} {self.ip} {self.namespace} {state}>"

    # -- identity and credentials ------------------------------------------------------------------------------

    @property
    def users(self) -> tuple[str, ...]:
        """Login users: ``root`` and the passwordless-sudo user ``deploy``."""
        return ("root", DEPLOY_USER)

    @property
    def private_key_path(self) -> Path:
        """Client private key (OpenSSH ed25519, mode 0600) accepted for every user of every host."""
        return self._network.private_key_path

    @property
    def private_key_text(self) -> str:
        return self._network.private_key_text

    @property
    def known_hosts_path(self) -> Path:
        return self._network.known_hosts_path

    @property
    def known_hosts_line(self) -> str:
        return f"{self.name},{self.ip} {self.host_public_key}"

    @property
    def pid(self) -> int:
        """PID (in the root PID namespace) of the host's PID 1, its sshd."""
        if self._pid is None:
            raise HostNetworkError(f"host {self.name} is not running")
        return self._pid

    @property
    def alive(self) -> bool:
        return not self._destroyed and self._pid is not None and _process_alive(self._pid, self._pid_start)

    # -- looking inside -----------------------------------------------------------------------------------------

    def path(self, path: str | os.PathLike[str]) -> Path:
        """Where file ``path``, as the host sees it, lives on this machine.

        For overlaid directories this is the file in the host's upper directory when the host wrote it, else
        the real file it shares with this machine. A file the host deleted maps to a path that does not
        exist. Files in private directories (``/root``) live under :attr:`root_dir` only. Paths on the host's
        tmpfs (``/run``, ``/tmp``) are reachable only while it runs (``/proc/<pid>/root/...``). Other paths
        are shared with this machine and returned unchanged.
        """
        target = PurePosixPath(os.path.normpath(os.fspath(path)))
        if not target.is_absolute():
            raise ValueError(f"path must be absolute: {path!r}")
        for mount in self._network.tmpfs_dirs:
            if target == PurePosixPath(mount) or PurePosixPath(mount) in target.parents:
                return Path(f"/proc/{self.pid}/root") / _rel(str(target))
        for mount in self._network.private_dirs:
            if target == PurePosixPath(mount) or PurePosixPath(mount) in target.parents:
                return self.root_dir / _rel(str(target))
        for mount in self._network.overlay_dirs:
            mount_path = PurePosixPath(mount)
            if target != mount_path and mount_path not in target.parents:
                continue
            upper = self.root_dir / _rel(mount)
            absent = self.host_dir / "deleted" / _rel(str(target))
            for part in target.relative_to(mount_path).parts:
                upper = upper / part
                if _is_whiteout(upper):
                    return absent
                if upper.is_dir() and not upper.is_symlink() and _is_opaque(upper):
                    remainder = target.relative_to(mount_path)
                    candidate = self.root_dir / _rel(mount) / remainder
                    return candidate if os.path.lexists(candidate) else absent
            if os.path.lexists(upper):
                return upper
            return Path(target)
        return Path(target)

    def run(
        self,
        cmd: Sequence[str],
        *,
        check: bool = False,
        input: str | None = None,  # noqa: A002
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` as root inside the host (its mount, UTS, network and PID namespaces).

        The command gets a clean environment (``PATH`` of the host, ``HOME=/root``) plus ``env``.
        """
        argv = ["nsenter", f"--target={self.pid}", "--mount", "--uts", "--net", "--pid", "--", *cmd]
        environment = {"PATH": HOST_PATH, "HOME": "/root", "LANG": "C.UTF-8", **(env or {})}
        return subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, env=environment, check=check
        )

    def ssh_argv(self, user: str = "root", *, strict: bool = True) -> list[str]:
        """An ``ssh`` command line (without the remote command) that logs in as ``user`` with the run's key."""
        argv = [
            "ssh",
            "-i", str(self.private_key_path),
            "-p", str(self.port),
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", "ControlMaster=no",
            "-o", "ControlPath=none",
            "-o", "ConnectTimeout=10",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        if strict:
            argv += [
                "-o", f"UserKnownHostsFile={self.known_hosts_path}",
                "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes",
            ]  # fmt: skip
        else:
            argv += ["-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no"]
        return [*argv, f"{user}@{self.ip}"]

    def ssh(
        self,
        command: str | Sequence[str],
        *,
        user: str = "root",
        check: bool = False,
        input: str | None = None,  # noqa: A002
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` over real SSH as ``user``; a sequence is quoted for the remote shell."""
        remote = command if isinstance(command, str) else shlex.join(command)
        return subprocess.run(
            [*self.ssh_argv(user), "--", remote],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    # -- network faults -----------------------------------------------------------------------------------------

    def _nft(self, script: str) -> None:
        _run(["nsenter", f"--net=/run/netns/{self.namespace}", "nft", "-f", "-"], input=script)

    def block_port(self, proto: str, port: int, *, direction: str = "both") -> None:
        """Drop ``proto`` (tcp/udp/sctp) packets to ``port`` in the host's own network namespace.

        ``direction``: ``in`` (packets the host receives), ``out`` (packets it sends) or ``both``. The rules
        live in the nftables table ``inet testhosts`` of the host's namespace.
        """
        if proto not in _PROTOCOLS:
            raise ValueError(f"proto: {proto!r} is not one of {', '.join(_PROTOCOLS)}")
        if not 0 < int(port) < 65536:
            raise ValueError(f"port: {port!r} is not a port number")
        if direction not in ("in", "out", "both"):
            raise ValueError(f"direction: {direction!r} is not in, out or both")
        lines = [
            f"table inet {NFT_TABLE} {{",
            "  set in_tcp { type inet_service; }", "  set in_udp { type inet_service; }",
            "  set in_sctp { type inet_service; }", "  set out_tcp { type inet_service; }",
            "  set out_udp { type inet_service; }", "  set out_sctp { type inet_service; }",
            "  chain input { type filter hook input priority -10; policy accept;",
            "    tcp dport @in_tcp drop; udp dport @in_udp drop; sctp dport @in_sctp drop; }",
            "  chain output { type filter hook output priority -10; policy accept;",
            "    tcp dport @out_tcp drop; udp dport @out_udp drop; sctp dport @out_sctp drop; }",
            "}",
        ]  # fmt: skip
        for side in ("in", "out"):
            if direction in (side, "both"):
                lines.append(f"add element inet {NFT_TABLE} {side}_{proto} {{ {int(port)} }}")
        self._nft("\n".join(lines) + "\n")

    def unblock_port(self, proto: str, port: int, *, direction: str = "both") -> None:
        """Undo :meth:`block_port` for ``proto``/``port`` (no error when it was not blocked)."""
        if proto not in _PROTOCOLS:
            raise ValueError(f"proto: {proto!r} is not one of {', '.join(_PROTOCOLS)}")
        for side in ("in", "out"):
            if direction in (side, "both"):
                _run(
                    ["nsenter", f"--net=/run/netns/{self.namespace}", "nft", "delete", "element", "inet", NFT_TABLE,
                     f"{side}_{proto}", f"{{ {int(port)} }}"],
                    check=False,
                )  # fmt: skip

    def unblock(self) -> None:
        """Remove every block made with :meth:`block_port`."""
        _run(
            ["nsenter", f"--net=/run/netns/{self.namespace}", "nft", "delete", "table", "inet", NFT_TABLE], check=False
        )

    def blocked_ports(self) -> dict[str, list[int]]:
        """``{"in_udp": [8472], ...}``: what :meth:`block_port` currently blocks."""
        out = _run(
            ["nsenter", f"--net=/run/netns/{self.namespace}", "nft", "-j", "list", "table", "inet", NFT_TABLE],
            check=False,
        )
        if out.returncode != 0:
            return {}
        blocked: dict[str, list[int]] = {}
        for item in json.loads(out.stdout).get("nftables", []):
            entry = item.get("set")
            if entry and entry.get("elem"):
                blocked[entry["name"]] = sorted(int(value) for value in entry["elem"])
        return blocked

    def cut_link(self) -> None:
        """Take the host off the network (its veth on the bridge goes down); :meth:`restore_link` undoes it."""
        _ip_batch([f"link set {self.veth} down"])

    def restore_link(self) -> None:
        _ip_batch([f"link set {self.veth} up"])

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "ip": self.ip,
            "port": self.port,
            "users": list(self.users),
            "namespace": self.namespace,
            "pid": self._pid,
            "root_dir": str(self.root_dir),
            "ssh": shlex.join(self.ssh_argv("root")),
        }


# --------------------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------------------

_LIVE_NETWORKS: set[HostNetwork] = set()
_LIVE_LOCK = threading.Lock()


def close_all_networks() -> None:
    """Tear down every network this process owns (used by ``atexit`` and signal handlers)."""
    with _LIVE_LOCK:
        networks = [net for net in _LIVE_NETWORKS if net.owner_pid == os.getpid()]
    for network in networks:
        try:
            network.close()
        except Exception:
            log.exception("teardown of test-host network %s failed", network.index)


atexit.register(close_all_networks)


def _teardown_and_reraise(signum: int, frame: FrameType | None) -> None:
    close_all_networks()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install_signal_teardown(signums: Sequence[int] = (signal.SIGTERM, signal.SIGHUP)) -> None:
    """On these signals tear down this process's networks, then die of the signal as before.

    Only signals still at their default disposition are taken over, and only from the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in signums:
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, _teardown_and_reraise)


class HostNetwork:
    """A private /24 with a bridge, plus the SSH test hosts attached to it.

    Usage::

        with HostNetwork() as network:
            node1, node2 = network.add_hosts(2)
            node1.ssh("hostname", user="deploy")

    All methods are thread-safe. ``close()`` is idempotent and runs at interpreter exit if forgotten.

    ``flavour`` picks what runs inside the hosts: ``"namespace"`` (default: sshd as PID 1 over overlays of this
    machine's directories) or ``"systemd"`` (real systemd as PID 1 booted with ``systemd-nspawn`` from a cached
    Debian root, see :mod:`tests.testhosts.systemd`); both have the same API.
    """

    flavour = "namespace"
    host_class: type[Host] = Host

    def __new__(cls, *args: object, flavour: str = "namespace", **kwargs: object) -> HostNetwork:
        if flavour not in FLAVOURS:
            raise ValueError(f"flavour: {flavour!r} is not one of {', '.join(FLAVOURS)}")
        if cls is HostNetwork and flavour == "systemd":
            from .systemd import SystemdHostNetwork

            cls = SystemdHostNetwork
        return super().__new__(cls)

    def __init__(
        self,
        *,
        flavour: str = "namespace",
        hostname_prefix: str = DEFAULT_HOSTNAME_PREFIX,
        overlay_dirs: Sequence[str] = DEFAULT_OVERLAY_DIRS,
        private_dirs: Sequence[str] = DEFAULT_PRIVATE_DIRS,
        tmpfs_dirs: Sequence[str] = DEFAULT_TMPFS_DIRS,
        claims_dir: str | os.PathLike[str] = DEFAULT_CLAIMS_DIR,
        run_base: str | os.PathLike[str] = DEFAULT_RUN_BASE,
    ) -> None:
        if not _HOSTNAME_RE.match(f"{hostname_prefix}1"):
            raise ValueError(f"hostname_prefix: {hostname_prefix!r} does not make valid host names")
        self.hostname_prefix = hostname_prefix
        self.overlay_dirs = self._validated_mounts(overlay_dirs, private_dirs, tmpfs_dirs)
        self.private_dirs = tuple(private_dirs)
        self.tmpfs_dirs = tuple(tmpfs_dirs)
        self.claims_dir = Path(claims_dir)
        self.run_base = Path(run_base)
        self._lock = threading.RLock()
        self._claim: Claim | None = None
        self._hosts: dict[int, Host] = {}
        self._closed = False
        self._client_key: _KeyPair | None = None
        self._deploy_ids: _UserIds | None = None
        self.owner_pid = os.getpid()

    @staticmethod
    def _validated_mounts(
        overlay_dirs: Sequence[str], private_dirs: Sequence[str], tmpfs_dirs: Sequence[str]
    ) -> tuple[str, ...]:
        mounts = [*overlay_dirs, *private_dirs, *tmpfs_dirs]
        for mount in mounts:
            if not mount.startswith("/") or os.path.normpath(mount) != mount or mount == "/":
                raise ValueError(f"mount directories: {mount!r} must be a normalized absolute path, not /")
            if not os.path.isdir(mount) or os.path.islink(mount):
                raise ValueError(f"mount directories: {mount!r} is not a directory on this machine")
            if re.search(r"[,:\s]", mount):
                raise ValueError(f"mount directories: {mount!r} contains characters overlayfs rejects")
        for outer in mounts:
            for inner in mounts:
                if outer != inner and PurePosixPath(outer) in PurePosixPath(inner).parents:
                    raise ValueError(f"mount directories: {inner!r} is nested in {outer!r}")
        if len(set(mounts)) != len(mounts):
            raise ValueError("mount directories: a directory is listed twice")
        for required in ("/etc", str(PurePosixPath(DEPLOY_HOME).parent)):
            if required not in overlay_dirs:
                raise ValueError(f"overlay_dirs: must include {required!r}")
        return tuple(overlay_dirs)

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def __enter__(self) -> HostNetwork:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> HostNetwork:
        """Claim a subnet, create the run directory, client key, blackhole route and bridge."""
        with self._lock:
            if self._claim is not None:
                return self
            if self._closed:
                raise HostNetworkError("this network was closed; create a new HostNetwork")
            problems = missing_prerequisites()
            if problems:
                raise HostNetworkError("test hosts unavailable: " + "; ".join(problems))
            self.owner_pid = os.getpid()
            self._claim = _allocate(self.claims_dir, self.run_base)
            with _LIVE_LOCK:
                _LIVE_NETWORKS.add(self)
            try:
                self._start_network()
            except BaseException:
                self.close()
                raise
            return self

    def _start_network(self) -> None:
        names = self._names
        (self.run_dir / "hosts").mkdir(mode=0o700)
        self._client_key = _generate_ed25519(f"testhosts@{names.prefix}")
        _write_atomic(self.private_key_path, self._client_key.private_openssh, 0o600)
        _write_atomic(self.run_dir / "id_ed25519.pub", self._client_key.public_openssh + "\n", 0o644)
        _write_atomic(self.known_hosts_path, "", 0o644)
        _write_atomic(self.ssh_config_path, "", 0o644)
        self._deploy_ids = self._choose_deploy_ids()
        _ip_batch(
            [
                f"route add blackhole {names.subnet} metric {BLACKHOLE_METRIC}",
                f"link add name {names.bridge} address {names.bridge_mac} type bridge",
                f"addr add {names.gateway}/24 dev {names.bridge}",
                f"link set {names.bridge} up",
            ]
        )
        _disable_ipv6(names.bridge)

    def close(self) -> None:
        """Destroy every host and the network itself, then verify nothing is left (see module docstring).

        Raises :class:`HostNetworkError` listing the leftovers if any remain; the claim is then kept so that
        a later stale cleanup retries.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            claim = self._claim
            try:
                if claim is None:
                    return
                hosts = list(self._hosts.values())
                self._stop_hosts(hosts)
                _teardown_instance(self._names, self.run_dir, mount_ns_pins=self._take_pins(hosts))
                self._hosts.clear()
                leftovers = [item for item in self.leftovers() if not item.startswith("claim ")]
                if leftovers:
                    raise HostNetworkError(f"teardown of test-host network {claim.index} left: " + "; ".join(leftovers))
                claim.path.unlink(missing_ok=True)
            finally:
                with _LIVE_LOCK:
                    _LIVE_NETWORKS.discard(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def leftovers(self) -> list[str]:
        """What of this network still exists on the machine (see :func:`instance_leftovers`)."""
        return instance_leftovers(self.index, run_dir=self.run_dir, claims_dir=self.claims_dir)

    # -- properties ---------------------------------------------------------------------------------------------

    @property
    def _names(self) -> _Names:
        return _Names(self.claim.index)

    @property
    def claim(self) -> Claim:
        if self._claim is None:
            raise HostNetworkError("the network is not started")
        return self._claim

    @property
    def index(self) -> int:
        return self.claim.index

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return self._names.subnet

    @property
    def gateway_ip(self) -> str:
        """This machine's address on the bridge (reachable from every host)."""
        return self._names.gateway

    @property
    def bridge(self) -> str:
        return self._names.bridge

    @property
    def run_dir(self) -> Path:
        return Path(self.claim.run_dir)

    @property
    def private_key_path(self) -> Path:
        return self.run_dir / "id_ed25519"

    @property
    def private_key_text(self) -> str:
        if self._client_key is None:
            raise HostNetworkError("the network is not started")
        return self._client_key.private_openssh

    @property
    def public_key_text(self) -> str:
        if self._client_key is None:
            raise HostNetworkError("the network is not started")
        return self._client_key.public_openssh

    @property
    def known_hosts_path(self) -> Path:
        """``known_hosts`` listing the live hosts by name and address; rewritten whenever hosts change."""
        return self.run_dir / "known_hosts"

    @property
    def ssh_config_path(self) -> Path:
        """An ssh_config with one ``Host`` entry per live host: ``ssh -F <path> [deploy@]node1``."""
        return self.run_dir / "ssh_config"

    @property
    def known_hosts_text(self) -> str:
        return self.known_hosts_path.read_text()

    @property
    def hosts(self) -> list[Host]:
        """The live hosts, by address."""
        with self._lock:
            return [self._hosts[slot] for slot in sorted(self._hosts)]

    def host(self, name: str) -> Host:
        for candidate in self.hosts:
            if candidate.name == name:
                return candidate
        raise KeyError(name)

    # -- hosts --------------------------------------------------------------------------------------------------

    def add_hosts(self, count: int | None = None, *, names: Sequence[str] | None = None) -> list[Host]:
        """Boot fresh hosts: ``count`` of them (default 1) or one per name in ``names``.

        Without ``names`` hosts are called ``<hostname_prefix><n>`` with the lowest free numbers. Returns once
        every new sshd listens; afterwards every host's ``/etc/hosts`` lists all hosts of the network.
        """
        if names is not None:
            names = list(names)
            if count is not None and count != len(names):
                raise ValueError(f"count: {count} does not match the {len(names)} names given")
            count = len(names)
        if count is None:
            count = 1
        if count < 1:
            raise ValueError(f"count: must be at least 1, got {count}")
        with self._lock:
            self._require_running()
            taken_names = {host.name for host in self._hosts.values()}
            if names is None:
                names, number = [], 1
                while len(names) < count:
                    candidate = f"{self.hostname_prefix}{number}"
                    if candidate not in taken_names:
                        names.append(candidate)
                    number += 1
            for name in names:
                if not _HOSTNAME_RE.match(name):
                    raise ValueError(f"names: {name!r} is not a valid hostname (lowercase RFC 1123 label)")
                if name in taken_names:
                    raise ValueError(f"names: a host named {name!r} already exists")
            if len(set(names)) != len(names):
                raise ValueError("names: must be unique")
            free = [slot for slot in range(1, MAX_SLOT + 1) if slot not in self._hosts]
            if len(free) < count:
                raise HostNetworkError(f"the network has room for {len(free)} more hosts, not {count}")
            return self._boot(list(zip(free[:count], names, strict=True)))

    def destroy_host(self, host: Host) -> None:
        """Stop the host, kill everything in it and remove its namespace, veth and files."""
        self.destroy_hosts([host])

    def destroy_hosts(self, hosts: Sequence[Host]) -> None:
        """:meth:`destroy_host` for several hosts at once (they stop in parallel)."""
        with self._lock:
            for host in hosts:
                if self._hosts.get(host.slot) is not host:
                    raise HostNetworkError(f"{host!r} is not a live host of this network")
            if hosts:
                self._destroy(list(hosts))
                self._publish_membership()

    def recreate_host(self, host: Host) -> Host:
        """Destroy ``host`` and boot a fresh one with the same name and address (new files, new host key)."""
        with self._lock:
            if self._hosts.get(host.slot) is not host:
                raise HostNetworkError(f"{host!r} is not a live host of this network")
            self._destroy([host])
            return self._boot([(host.slot, host.name)])[0]

    def _require_running(self) -> None:
        if self._closed or self._claim is None:
            raise HostNetworkError("the network is not running (call start() first, and not after close())")

    def _boot(self, plan: Sequence[tuple[int, str]]) -> list[Host]:
        names = self._names
        hosts = [
            self.host_class(network=self, name=name, slot=slot, host_key=_generate_ed25519(f"root@{name}"))
            for slot, name in plan
        ]
        for host in hosts:
            self._hosts[host.slot] = host
        try:
            hosts_block = self._hosts_block()
            for host in hosts:
                self._populate(host, hosts_block)
            root_commands = []
            for host in hosts:
                root_commands += [
                    f"netns add {host.namespace}",
                    (
                        f"link add {host.veth} type veth peer name eth0 address {names.host_mac(host.slot)}"
                        f" netns {host.namespace}"
                    ),
                    f"link set {host.veth} master {names.bridge} up",
                ]
            _ip_batch(root_commands)
            for host in hosts:
                _disable_ipv6(host.veth)
            configure = [
                subprocess.Popen(
                    ["ip", "-n", host.namespace, "-batch", "-"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                for host in hosts
            ]
            for host, proc in zip(hosts, configure, strict=True):
                output, _ = proc.communicate(
                    f"addr add {host.ip}/24 dev eth0\nlink set lo up\nlink set eth0 up\n", timeout=30
                )
                if proc.returncode != 0:
                    raise HostNetworkError(f"configuring {host.namespace} failed: {output.strip()}")
            for host in hosts:
                self._launch(host)
            self._wait_until_listening(hosts)
        except BaseException:
            try:
                self._destroy(hosts)
            except Exception:
                log.exception("cleanup after a failed boot of %s failed", [host.name for host in hosts])
            self._publish_membership()
            raise
        self._publish_membership(new=hosts)
        return hosts

    def _choose_deploy_ids(self) -> _UserIds:
        used_uids = {int(row[2]) for row in _read_colon_table("/etc/passwd") if len(row) > 2 and row[2].isdigit()}
        used_gids = {int(row[2]) for row in _read_colon_table("/etc/group") if len(row) > 2 and row[2].isdigit()}
        candidate = 2000
        while candidate in used_uids or candidate in used_gids:
            candidate += 1
        return _UserIds(uid=candidate, gid=candidate)

    def _hosts_block(self) -> str:
        return _render_hosts_block([(host.ip, host.name) for host in self.hosts])

    def _populate(self, host: Host, hosts_block: str) -> None:
        """Create the host's overlay directories and write the files it boots with."""
        assert self._client_key is not None and self._deploy_ids is not None
        ids = self._deploy_ids
        host.host_dir.mkdir(mode=0o700)
        tree = _UpperTree(host.root_dir)
        host.root_dir.mkdir(mode=0o755)
        for mount in self.overlay_dirs:
            tree.mkdir_like_lower(mount)
            (host.work_dir / _rel(mount)).mkdir(parents=True)
        for mount in self.private_dirs:
            tree.mkdir_like_lower(mount)
        if "/root" in self.private_dirs:
            for source, name in (("dot.bashrc", ".bashrc"), ("dot.profile", ".profile")):
                skeleton = Path("/usr/share/base-files", source)
                if skeleton.is_file():
                    tree.write(f"/root/{name}", skeleton.read_text(), mode=0o644, uid=0, gid=0)

        user = DEPLOY_USER
        passwd = [row for row in _read_colon_table("/etc/passwd") if row[0] != user]
        passwd.append([user, "x", str(ids.uid), str(ids.gid), "Deployment user", DEPLOY_HOME, "/bin/bash"])
        group = [row for row in _read_colon_table("/etc/group") if row[0] != user]
        group.append([user, "x", str(ids.gid), ""])
        shadow = [row for row in _read_colon_table("/etc/shadow") if row[0] != user]
        shadow.append([user, "*", str(int(time.time() // 86400)), "0", "99999", "7", "", "", ""])
        tree.write("/etc/passwd", _render_colon_table(passwd))
        tree.write("/etc/group", _render_colon_table(group))
        tree.write("/etc/shadow", _render_colon_table(shadow))
        if os.path.exists("/etc/gshadow"):
            gshadow = [row for row in _read_colon_table("/etc/gshadow") if row[0] != user]
            gshadow.append([user, "!", "", ""])
            tree.write("/etc/gshadow", _render_colon_table(gshadow))
        tree.write("/etc/sudoers.d/deploy", f"{user} ALL=(ALL:ALL) NOPASSWD: ALL\n", mode=0o440, uid=0, gid=0)
        tree.mkdir(DEPLOY_HOME, mode=0o750, uid=ids.uid, gid=ids.gid)

        tree.write("/etc/hostname", f"{host.name}\n", mode=0o644, uid=0, gid=0)
        tree.write("/etc/machine-id", secrets.token_hex(16) + "\n", mode=0o444, uid=0, gid=0)
        localhost = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        tree.write("/etc/hosts", localhost + hosts_block, mode=0o644, uid=0, gid=0)

        sshd_options = [
            ("ListenAddress", "0.0.0.0"),
            ("Port", str(SSH_PORT)),
            ("AddressFamily", "inet"),
            ("HostKey", "/etc/ssh/ssh_host_ed25519_key"),
            ("KexAlgorithms", "curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256"),
            ("PidFile", "none"),
            ("AuthorizedKeysFile", "/etc/ssh/authorized_keys/%u"),
            ("PermitRootLogin", "prohibit-password"),
            ("PubkeyAuthentication", "yes"),
            ("PasswordAuthentication", "no"),
            ("KbdInteractiveAuthentication", "no"),
            ("UsePAM", "no"),
            ("StrictModes", "yes"),
            ("UseDNS", "no"),
            ("PrintMotd", "no"),
            ("PrintLastLog", "no"),
            ("MaxStartups", "100:30:200"),
            ("MaxSessions", "100"),
            ("AcceptEnv", "LANG LC_*"),
            ("Subsystem", f"sftp {SFTP_SERVER}"),
        ]
        tree.write("/etc/ssh/sshd_config", _render_sshd_config(sshd_options), mode=0o644, uid=0, gid=0)
        tree.write("/etc/ssh/ssh_host_ed25519_key", host._host_key.private_openssh, mode=0o600, uid=0, gid=0)
        tree.write("/etc/ssh/ssh_host_ed25519_key.pub", host.host_public_key + "\n", mode=0o644, uid=0, gid=0)
        tree.mkdir("/etc/ssh/authorized_keys", mode=0o755, uid=0, gid=0)
        client_key = self._client_key.public_openssh + "\n"
        tree.write("/etc/ssh/authorized_keys/root", client_key, mode=0o600, uid=0, gid=0)
        tree.write(f"/etc/ssh/authorized_keys/{user}", client_key, mode=0o600, uid=ids.uid, gid=ids.gid)

    def _launch(self, host: Host) -> None:
        script = ["set -e"]
        for mount in self.overlay_dirs:
            options = f"lowerdir={mount},upperdir={host.root_dir / _rel(mount)},workdir={host.work_dir / _rel(mount)}"
            script.append(shlex.join(["mount", "-t", "overlay", "overlay", "-o", options, mount]))
        for mount in self.private_dirs:
            script.append(shlex.join(["mount", "--bind", str(host.root_dir / _rel(mount)), mount]))
        for mount in self.tmpfs_dirs:
            mode = f"{stat.S_IMODE(os.stat(mount).st_mode):04o}"
            script.append(shlex.join(["mount", "-t", "tmpfs", "-o", f"mode={mode},nosuid,nodev", "tmpfs", mount]))
        script.append("mkdir -p -m 0755 /run/sshd")
        script.append(shlex.join(["hostname", host.name]))
        script.append(shlex.join(["exec", SSHD, "-D", "-e", "-f", "/etc/ssh/sshd_config"]))
        argv = [
            "ip", "netns", "exec", host.namespace,
            "unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc", "--propagation", "private",
            "/bin/sh", "-c", "\n".join(script),
        ]  # fmt: skip
        with open(host.console_log, "wb") as console:
            host._launcher = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={"PATH": HOST_PATH, "LANG": "C.UTF-8"},
            )

    def _wait_until_listening(self, hosts: Sequence[Host]) -> None:
        pending = {host.slot: host for host in hosts}
        deadline = time.monotonic() + BOOT_TIMEOUT
        while pending:
            children: dict[int, list[int]] | None = None
            for slot, host in list(pending.items()):
                assert host._launcher is not None
                if host._launcher.poll() is not None:
                    raise HostNetworkError(
                        f"host {host.name} did not boot (exit {host._launcher.returncode}): "
                        + host.console_log.read_text(errors="replace").strip()
                    )
                if host._pid is None:
                    if children is None:
                        children = _children_by_parent()
                    sshd = [pid for pid in children.get(host._launcher.pid, []) if _comm(pid) == "sshd"]
                    if not sshd:
                        continue
                    host._pid = sshd[0]
                if _listens_on(host._pid, SSH_PORT):
                    host._pid_start = _process_start_ticks(host._pid)
                    host._mount_ns_pin = os.open(f"/proc/{host._pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
                    del pending[slot]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise HostNetworkError(
                    f"sshd of {sorted(h.name for h in pending.values())} not listening after {BOOT_TIMEOUT:.0f}s"
                )
            time.sleep(0.005)

    def _stop_hosts(self, hosts: Sequence[Host]) -> None:
        """Kill each host's PID 1 (the kernel then kills its PID namespace) and reap the launchers."""
        for host in hosts:
            if host._pid is not None and host._pid_start is not None and _process_alive(host._pid, host._pid_start):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(host._pid, signal.SIGKILL)
            elif host._launcher is not None and host._launcher.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(host._launcher.pid, signal.SIGKILL)
        for host in hosts:
            if host._launcher is not None:
                try:
                    host._launcher.wait(timeout=KILL_TIMEOUT)
                except subprocess.TimeoutExpired:
                    host._launcher.kill()
                    host._launcher.wait(timeout=KILL_TIMEOUT)
            host._destroyed = True

    @staticmethod
    def _take_pins(hosts: Sequence[Host]) -> list[int]:
        """Hand over the descriptors that keep the hosts' mount namespaces (and their identities) alive."""
        pins = []
        for host in hosts:
            if host._mount_ns_pin is not None:
                pins.append(host._mount_ns_pin)
                host._mount_ns_pin = None
        return pins

    def _destroy(self, hosts: Sequence[Host]) -> None:
        """Tear down hosts following the documented order; the network itself stays."""
        self._stop_hosts(hosts)
        namespaces = [host.namespace for host in hosts if Path("/run/netns", host.namespace).exists()]
        net_ids = {ns_id for name in namespaces if (ns_id := _ns_id(f"/run/netns/{name}")) is not None}
        pins = self._take_pins(hosts)
        try:
            _kill_namespace_processes(net_ids, {_fd_ns_id(fd) for fd in pins})
        finally:
            for fd in pins:
                os.close(fd)
        _kill_sockets(namespaces, [f"{host.ip}/32" for host in hosts])
        existing_links = set(os.listdir("/sys/class/net"))
        _ip_batch(
            [f"link del {host.veth}" for host in hosts if host.veth in existing_links]
            + [f"netns del {name}" for name in namespaces],
            force=True,
        )
        for host in hosts:
            _unmount_all([str(host.host_dir)])
            shutil.rmtree(host.host_dir, ignore_errors=True)
            if self._hosts.get(host.slot) is host:
                del self._hosts[host.slot]

    def _publish_membership(self, new: Sequence[Host] = ()) -> None:
        """Rewrite known_hosts and the managed block of /etc/hosts on the running hosts."""
        known_hosts = "".join(host.known_hosts_line + "\n" for host in self.hosts)
        _write_atomic(self.known_hosts_path, known_hosts, 0o644)
        _write_atomic(self.ssh_config_path, self._render_ssh_config(), 0o644)
        block = self._hosts_block()
        for host in self.hosts:
            if host in new or not host.alive:
                continue
            etc = Path(f"/proc/{host.pid}/root/etc")
            try:
                current = (etc / "hosts").read_text()
            except FileNotFoundError:
                current = ""
            updated = _replace_hosts_block(current, block)
            if updated != current:
                _write_atomic(etc / "hosts", updated, 0o644)

    def _render_ssh_config(self) -> str:
        blocks = []
        for host in self.hosts:
            options = [
                ("HostName", host.ip),
                ("Port", str(host.port)),
                ("User", "root"),
                ("IdentityFile", str(self.private_key_path)),
                ("IdentitiesOnly", "yes"),
                ("UserKnownHostsFile", str(self.known_hosts_path)),
                ("GlobalKnownHostsFile", "/dev/null"),
                ("StrictHostKeyChecking", "yes"),
            ]
            blocks.append(f"Host {host.name}\n" + "".join(f"    {key} {value}\n" for key, value in options))
        return "\n".join(blocks)

    # -- helpers for callers ------------------------------------------------------------------------------------

    def inventory(
        self,
        hosts: Sequence[Host] | None = None,
        *,
        user: str = "root",
        become: bool = False,
        host_vars: Mapping[str, Mapping[str, object]] | None = None,
        group_vars: Mapping[str, object] | None = None,
    ) -> dict[str, object]:
        """An ansible-runner ``inventory`` dict for ``hosts`` (default: all), connecting as ``user``.

        ``become=True`` sets ``ansible_become`` (sudo to root, no password) for every task; as a variable it
        overrides ``become: false`` on tasks, so prefer ``become: true`` on plays.
        """
        selected = list(self.hosts if hosts is None else hosts)
        all_vars: dict[str, object] = {
            "ansible_user": user,
            "ansible_port": SSH_PORT,
            "ansible_python_interpreter": TARGET_PYTHON,
            "ansible_ssh_private_key_file": str(self.private_key_path),
        }
        if become:
            all_vars |= {"ansible_become": True, "ansible_become_method": "sudo", "ansible_become_user": "root"}
        all_vars |= dict(group_vars or {})
        return {
            "all": {
                "hosts": {
                    host.name: {"ansible_host": host.ip, **dict((host_vars or {}).get(host.name, {}))}
                    for host in selected
                },
                "vars": all_vars,
            }
        }

    def ansible_env(
        self, control_path_dir: str | os.PathLike[str] | None = None, *, strict_host_key_checking: bool = True
    ) -> dict[str, str]:
        """Environment variables for ansible-runner ``envvars`` against these hosts.

        Uses a private ControlPersist socket directory (a fresh short one under the run directory when not
        given: unix socket paths are limited to 107 bytes), pipelining, the hosts' Python, and strict host
        key checking against :attr:`known_hosts_path` unless disabled.
        """
        if control_path_dir is None:
            control_path_dir = tempfile.mkdtemp(prefix="cp-", dir=self.run_dir)
        env = {
            "ANSIBLE_SSH_CONTROL_PATH_DIR": os.fspath(control_path_dir),
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_PYTHON_INTERPRETER": TARGET_PYTHON,
            "ANSIBLE_TIMEOUT": "20",
        }
        if strict_host_key_checking:
            env["ANSIBLE_HOST_KEY_CHECKING"] = "True"
            env["ANSIBLE_SSH_COMMON_ARGS"] = (
                f"-o UserKnownHostsFile={self.known_hosts_path} -o GlobalKnownHostsFile=/dev/null"
                " -o StrictHostKeyChecking=yes"
            )
        else:
            env["ANSIBLE_HOST_KEY_CHECKING"] = "False"
        return env

    def describe(self) -> dict[str, object]:
        """A JSON-serializable description of the network and its hosts."""
        return {
            "index": self.index,
            "subnet": str(self.subnet),
            "gateway": self.gateway_ip,
            "bridge": self.bridge,
            "run_dir": str(self.run_dir),
            "owner_pid": self.owner_pid,
            "private_key_path": str(self.private_key_path),
            "known_hosts_path": str(self.known_hosts_path),
            "ssh_config_path": str(self.ssh_config_path),
            "hosts": [host.describe() for host in self.hosts],
        }
