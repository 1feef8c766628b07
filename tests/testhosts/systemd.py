"""Test hosts running real systemd as PID 1, booted with ``systemd-nspawn`` (the ``systemd`` flavour).

Same network, names, addresses, keys and API as the namespace hosts of :mod:`tests.testhosts.harness`; what
differs is what runs inside a host:

* **Root file system.** An overlay whose lower layer is the cached Debian root of :mod:`tests.testhosts.rootfs`
  (never this machine's live ``/``: overlayfs does not allow a lower layer that changes while mounted) and
  whose upper layer is the host's ``root_dir``. Before boot the upper layer gets ``/etc/hostname``,
  ``/etc/hosts``, a fresh ``/etc/machine-id``, a fresh ssh host key, ``/etc/ssh/sshd_config`` (the same
  settings as the namespace hosts: key-only ``root`` and ``deploy``, no post-quantum key exchange) and the
  network's client key in ``/etc/ssh/authorized_keys/<user>``.
* **Launch.** From a per-host cgroup ``/thn<X>/h<slot>`` (named ``systemd`` and unified hierarchies), inside a
  private mount namespace with a tmpfs on ``/run/systemd/nspawn`` (this machine's ``/run`` is not a tmpfs),
  the overlay is mounted and ``systemd-nspawn --boot --register=no --keep-unit`` boots it in the host's
  network namespace, with this machine's ``/usr/bin/kubectl`` bound read-only. Exit code 133 (``systemctl
  reboot`` inside the host) starts nspawn again on the same overlay; any other exit ends the host.
* **Stop.** SIGTERM to nspawn (the host halts cleanly), after a grace period ``cgroup.kill`` on the host's
  cgroup (a SIGKILLed nspawn would leave the host's processes running), then the cgroups are removed deepest
  first, and the harness removes the veth, the namespace and the host's neighbour entry.

On this machine the network raises ``fs.inotify.max_user_instances`` (to 8192) and ``max_user_watches`` when
they are lower: the hosts' systemd instances share root's inotify limits with the whole machine.

Inside a host: cgroup v1 hybrid, so ``MemoryMax``/``CPUQuota`` are accepted but not enforced; ``/sys`` and
``/proc/sys`` are read-only (``sysctl -w`` fails with "permission denied", ``net.*`` included); ``modprobe``
fails for every module when this machine has no ``/lib/modules`` (its kernel has what it needs built in). The
host's root holds ``CAP_NET_ADMIN`` in its own network namespace (nftables, links, routes), not
``CAP_SYS_ADMIN``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from . import cgroups, rootfs
from .harness import (
    DEPLOY_USER,
    HOST_PATH,
    SFTP_SERVER,
    SSH_PORT,
    Host,
    HostNetwork,
    HostNetworkError,
    _children_by_parent,
    _comm,
    _ip_batch,
    _is_opaque,
    _is_whiteout,
    _listens_on,
    _process_alive,
    _process_start_ticks,
    _rel,
    _render_sshd_config,
    _UpperTree,
    missing_prerequisites,
)

__all__ = ["KUBECTL", "SystemdHost", "SystemdHostNetwork", "missing_systemd_prerequisites"]

NSPAWN = "/usr/bin/systemd-nspawn"
KUBECTL = "/usr/bin/kubectl"
EXIT_REBOOT = 133
BOOT_TIMEOUT = 90.0
STOP_GRACE = 5.0
REBOOT_WAIT = 30.0
POLL = 0.05
# Paths a host does not keep in its overlay: reached through its running PID 1 only.
_RUNTIME_DIRS = ("/run", "/tmp", "/var/tmp", "/dev", "/proc", "/sys")


# Every systemd (and journald, logind, dbus...) of every host takes inotify instances from root's per-user
# limit, which is shared with the whole machine: at the kernel's default of 128 a few hosts exhaust it and
# systemd then stalls its boot ("Failed to create inotify object: Too many open files").
INOTIFY_LIMITS = {"max_user_instances": 8192, "max_user_watches": 524288}


def _raise_inotify_limits() -> None:
    """Raise (never lower) the machine's inotify limits to :data:`INOTIFY_LIMITS`."""
    for name, wanted in INOTIFY_LIMITS.items():
        path = Path("/proc/sys/fs/inotify") / name
        try:
            if int(path.read_text()) < wanted:
                path.write_text(f"{wanted}\n")
        except (OSError, ValueError) as error:
            raise HostNetworkError(f"cannot raise fs.inotify.{name} to {wanted}: {error}") from error


@functools.lru_cache(maxsize=1)
def missing_systemd_prerequisites() -> tuple[str, ...]:
    """What this machine lacks to run systemd test hosts (beyond :func:`missing_prerequisites`)."""
    problems = list(missing_prerequisites())
    for tool in (NSPAWN, "nft", "debootstrap", KUBECTL):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not found (apt-get install systemd-container nftables debootstrap kubectl)")
    if cgroups.unified_root() is None:
        problems.append("no cgroup v2 hierarchy is mounted")
    return tuple(problems)


def _nsenter_argv(pid: int) -> list[str]:
    return ["nsenter", f"--target={pid}", "--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup", "--root", "--wd"]


class SystemdHost(Host):
    """A test host whose PID 1 is systemd. Create them with ``HostNetwork(flavour="systemd").add_hosts()``."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.merged_dir = self.host_dir / "merged"
        self.cgroup = f"{self._network._names.prefix}/h{self.slot}"
        self._nspawn_pid: int | None = None

    # -- state ------------------------------------------------------------------------------------------------

    def _find_pid1(self, children: dict[int, list[int]] | None = None) -> tuple[int, int] | None:
        """(nspawn PID, container PID 1) of the current boot, None while nspawn is (re)starting."""
        launcher = self._launcher
        if launcher is None or launcher.poll() is not None:
            return None
        if children is None:
            children = _children_by_parent()
        for nspawn in children.get(launcher.pid, []):
            if _comm(nspawn) != "systemd-nspawn":
                continue
            for pid in children.get(nspawn, []):
                with contextlib.suppress(OSError):
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("NSpid:") and line.split()[-1] == "1" and len(line.split()) > 2:
                            return nspawn, pid
        return None

    def _current_pid(self, wait: float) -> int:
        """PID 1 of the current boot; waits up to ``wait`` seconds while the host is between two boots."""
        if self._destroyed:
            raise HostNetworkError(f"host {self.name} is not running")
        deadline = time.monotonic() + wait
        while self._pid is None or not _process_alive(self._pid, self._pid_start):
            found = self._find_pid1()
            if found is not None:
                self._nspawn_pid, self._pid = found
                self._pid_start = _process_start_ticks(self._pid)
                break
            if self._launcher is None or self._launcher.poll() is not None or time.monotonic() > deadline:
                raise HostNetworkError(f"host {self.name} is not running")
            time.sleep(POLL)
        return self._pid

    @property
    def pid(self) -> int:
        """PID (in this machine's PID namespace) of the host's PID 1, systemd; changes when the host reboots.

        While the host reboots this waits (up to 30 s) for the next boot's PID 1.
        """
        return self._current_pid(REBOOT_WAIT)

    @property
    def alive(self) -> bool:
        """Whether the host runs (a host between two boots of a reboot is not alive)."""
        if self._destroyed or self._launcher is None or self._launcher.poll() is not None:
            return False
        try:
            self._current_pid(0)
        except HostNetworkError:
            return False
        return True

    # -- looking inside -----------------------------------------------------------------------------------------

    def path(self, path: str | os.PathLike[str]) -> Path:
        """Where file ``path``, as the host sees it, lives on this machine.

        A file the host wrote is in its upper directory (:attr:`root_dir`); one it did not touch is in the
        cached root (read it, never write it); one it deleted maps to a path that does not exist. Runtime
        directories (``/run``, ``/tmp``, ``/var/tmp``, ``/dev``, ``/proc``, ``/sys``) are reached through the
        running PID 1 (``/proc/<pid>/root/...``).
        """
        target = PurePosixPath(os.path.normpath(os.fspath(path)))
        if not target.is_absolute():
            raise ValueError(f"path must be absolute: {path!r}")
        for runtime in _RUNTIME_DIRS:
            if target == PurePosixPath(runtime) or PurePosixPath(runtime) in target.parents:
                return Path(f"/proc/{self.pid}/root") / _rel(str(target))
        if target == PurePosixPath(KUBECTL):
            return Path(KUBECTL)
        upper = self.root_dir
        absent = self.host_dir / "deleted" / _rel(str(target))
        for part in target.parts[1:]:
            upper = upper / part
            if _is_whiteout(upper):
                return absent
            if upper.is_dir() and not upper.is_symlink() and _is_opaque(upper):
                candidate = self.root_dir / _rel(str(target))
                return candidate if os.path.lexists(candidate) else absent
        if os.path.lexists(upper):
            return upper
        return self._network.root_path / _rel(str(target))  # type: ignore[attr-defined]

    def run(
        self,
        cmd: Sequence[str],
        *,
        check: bool = False,
        input: str | None = None,  # noqa: A002
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` as root inside the host (all namespaces of its PID 1), outside any of its units.

        The command gets a clean environment (``PATH`` of the host, ``HOME=/root``) plus ``env``.
        """
        environment = {"PATH": HOST_PATH, "HOME": "/root", "LANG": "C.UTF-8", **(env or {})}
        return subprocess.run(
            [*_nsenter_argv(self.pid), "--", *cmd],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environment,
            check=check,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def systemctl(self, *args: str, check: bool = False, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", "--no-pager", *args], check=check, timeout=timeout)

    def journal(
        self,
        unit: str | None = None,
        *,
        since: str | None = None,
        after_cursor: str | None = None,
        output: str = "cat",
    ) -> str:
        """The host's journal of this boot (of ``unit`` if given) as text; ``output`` is journalctl's ``-o``.

        ``after_cursor`` (from :meth:`journal_cursor`) keeps only entries written after that point.
        """
        argv = ["journalctl", "--no-pager", "--boot", "-o", output]
        if unit is not None:
            argv += ["-u", unit]
        if since is not None:
            argv += ["--since", since]
        if after_cursor is not None:
            argv += ["--after-cursor", after_cursor]
        return self.run(argv, check=True).stdout

    def journal_cursor(self) -> str:
        """The cursor of the newest journal entry, for ``journal(after_cursor=...)``."""
        out = self.run(["journalctl", "--no-pager", "-n", "1", "-o", "export", "--output-fields=__CURSOR"], check=True)
        for line in out.stdout.splitlines():
            if line.startswith("__CURSOR="):
                return line.removeprefix("__CURSOR=")
        raise HostNetworkError(f"host {self.name} has an empty journal")

    def boot_id(self) -> str:
        return self.run(["cat", "/proc/sys/kernel/random/boot_id"], check=True).stdout.strip()

    def wait_until_running(self, timeout: float = 60.0) -> str:
        """Wait until the boot is finished; returns ``systemctl is-system-running`` (``running``/``degraded``)."""
        result = self.systemctl("is-system-running", "--wait", timeout=timeout)
        return result.stdout.strip()

    def failed_units(self) -> list[str]:
        out = self.systemctl("list-units", "--failed", "--plain", "--no-legend", check=True).stdout
        return [line.split()[0] for line in out.splitlines() if line.split()]

    def reboot(self, timeout: float = 60.0) -> None:
        """``systemctl reboot`` inside the host; returns once the new boot's sshd listens."""
        old_pid = self.pid
        old_boot = self.boot_id()
        self.run(["systemctl", "reboot"], timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            found = self._find_pid1()
            if found is not None and found[1] != old_pid and _listens_on(found[1], SSH_PORT):
                break
            if self._launcher is None or self._launcher.poll() is not None:
                raise HostNetworkError(f"host {self.name} did not come back from reboot: {self.console_tail()}")
            if time.monotonic() > deadline:
                raise HostNetworkError(f"host {self.name} not back {timeout:.0f}s after reboot")
            time.sleep(POLL)
        if self.boot_id() == old_boot:
            raise HostNetworkError(f"host {self.name} rebooted but kept its boot id")

    def console_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.console_log.read_text(errors="replace")[-chars:]
        return ""

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "flavour": "systemd", "cgroup": self.cgroup}


class SystemdHostNetwork(HostNetwork):
    """A :class:`HostNetwork` whose hosts boot real systemd (``HostNetwork(flavour="systemd")``)."""

    flavour = "systemd"
    host_class = SystemdHost

    def __init__(self, *, root: str | os.PathLike[str] | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._root_override = Path(root) if root is not None else None
        self.root_path = Path("/nonexistent")
        self._root_hold: int | None = None

    def _start_network(self) -> None:
        problems = missing_systemd_prerequisites()
        if problems:
            raise HostNetworkError("systemd test hosts unavailable: " + "; ".join(problems))
        self.root_path = self._root_override or rootfs.build_root()
        if not (self.root_path / "usr/lib/systemd/systemd").exists():
            raise HostNetworkError(f"{self.root_path} is not a root file system with systemd")
        if self._root_override is None:
            self._root_hold = rootfs.hold(self.root_path)
        _raise_inotify_limits()
        super()._start_network()
        cgroups.create(self._names.prefix)
        Path("/run/systemd/nspawn").mkdir(parents=True, exist_ok=True)

    # -- boot -----------------------------------------------------------------------------------------------------

    def _populate(self, host: Host, hosts_block: str) -> None:
        assert self._client_key is not None
        host.host_dir.mkdir(mode=0o700)
        host.root_dir.mkdir(mode=0o755)
        host.work_dir.mkdir(mode=0o700)
        assert isinstance(host, SystemdHost)
        host.merged_dir.mkdir(mode=0o755)
        tree = _UpperTree(host.root_dir, lower=self.root_path)
        tree.write("/etc/hostname", f"{host.name}\n", mode=0o644, uid=0, gid=0)
        tree.write("/etc/machine-id", os.urandom(16).hex() + "\n", mode=0o444, uid=0, gid=0)
        localhost = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        tree.write("/etc/hosts", localhost + hosts_block, mode=0o644, uid=0, gid=0)
        sshd_options = [
            ("ListenAddress", "0.0.0.0"),
            ("Port", str(SSH_PORT)),
            ("AddressFamily", "inet"),
            ("HostKey", "/etc/ssh/ssh_host_ed25519_key"),
            ("KexAlgorithms", "curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256"),
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
        client_key = self._client_key.public_openssh + "\n"
        tree.write("/etc/ssh/authorized_keys/root", client_key, mode=0o600, uid=0, gid=0)
        deploy_uid = rootfs.DEPLOY_UID
        tree.write(f"/etc/ssh/authorized_keys/{DEPLOY_USER}", client_key, mode=0o600, uid=deploy_uid, gid=deploy_uid)

    def _launch(self, host: Host) -> None:
        assert isinstance(host, SystemdHost)
        cgroups.create(host.cgroup)
        nspawn = [
            NSPAWN, "--boot", "--register=no", "--keep-unit", "--quiet",
            "-D", str(host.merged_dir), "-M", host.name, f"--hostname={host.name}",
            f"--network-namespace-path=/run/netns/{host.namespace}",
            "--console=passive", "--resolv-conf=off", "--timezone=off", "--link-journal=no",
            "--tmpfs=/var/tmp:mode=1777", f"--bind-ro={KUBECTL}",
            "--capability=CAP_NET_ADMIN",
        ]  # fmt: skip
        overlay = f"lowerdir={self.root_path},upperdir={host.root_dir},workdir={host.work_dir}"
        inner = "\n".join(
            [
                "set -e",
                "mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run/systemd/nspawn",
                shlex.join(["mount", "-t", "overlay", "overlay", "-o", overlay, str(host.merged_dir)]),
                "set +e",
                "while :; do",
                f"  {shlex.join(nspawn)}",
                "  rc=$?",
                f'  [ "$rc" -eq {EXIT_REBOOT} ] || exit "$rc"',
                "  echo '-- reboot --'",
                "done",
            ]
        )
        outer = "\n".join(
            [f"echo $$ > {shlex.quote(str(path))}" for path in cgroups.procs_files(host.cgroup)]
            + [shlex.join(["exec", "unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", inner])]
        )
        with open(host.console_log, "wb") as console:
            host._launcher = subprocess.Popen(
                ["/bin/sh", "-c", outer],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={"PATH": HOST_PATH, "LANG": "C.UTF-8", "SYSTEMD_LOG_LEVEL": "warning"},
            )

    def _wait_until_listening(self, hosts: Sequence[Host]) -> None:
        pending = {host.slot: host for host in hosts}
        deadline = time.monotonic() + BOOT_TIMEOUT
        while pending:
            children = _children_by_parent()
            for slot, host in list(pending.items()):
                assert isinstance(host, SystemdHost) and host._launcher is not None
                if host._launcher.poll() is not None:
                    raise HostNetworkError(
                        f"host {host.name} did not boot (exit {host._launcher.returncode}): {host.console_tail()}"
                    )
                found = host._find_pid1(children)
                if found is None:
                    continue
                if _listens_on(found[1], SSH_PORT):
                    host._nspawn_pid, host._pid = found
                    host._pid_start = _process_start_ticks(found[1])
                    del pending[slot]
            if not pending:
                return
            if time.monotonic() > deadline:
                details = "; ".join(self._boot_diagnosis(host) for host in pending.values())
                raise HostNetworkError(f"sshd not listening after {BOOT_TIMEOUT:.0f}s: {details}")
            time.sleep(POLL)

    @staticmethod
    def _boot_diagnosis(host: Host) -> str:
        """What a host that did not become reachable was doing (for the error message)."""
        assert isinstance(host, SystemdHost)
        found = host._find_pid1()
        if found is None:
            return f"{host.name}: no systemd running; console: {host.console_tail(1500)}"
        argv = [*_nsenter_argv(found[1]), "--"]
        parts = [f"{host.name}: systemd pid {found[1]}"]
        for view in ("wchan", "stack"):
            with contextlib.suppress(OSError):
                parts.append(f"{view}: {Path(f'/proc/{found[1]}/{view}').read_text().strip()}")
        for cmd in (
            ["systemctl", "is-system-running"],
            ["systemctl", "list-jobs", "--no-pager"],
            ["systemctl", "status", "--no-pager", "-n", "20", "ssh.service"],
            ["ps", "-eo", "pid,stat,wchan:30,cmd"],
            ["journalctl", "--boot", "--no-pager", "-n", "40", "-o", "short-monotonic"],
        ):
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                out = subprocess.run([*argv, *cmd], capture_output=True, text=True, timeout=10)
                parts.append(f"$ {shlex.join(cmd)}: {(out.stdout + out.stderr).strip()}")
        parts.append(f"console: {host.console_tail(1500)}")
        return "\n".join(parts)

    # -- teardown ---------------------------------------------------------------------------------------------

    def _stop_hosts(self, hosts: Sequence[Host]) -> None:
        """SIGTERM each nspawn (clean halt), then ``cgroup.kill`` whatever is left and remove the cgroups."""
        stopping = []
        children = _children_by_parent()
        for host in hosts:
            assert isinstance(host, SystemdHost)
            if host._launcher is None:
                host._destroyed = True
                continue
            if host._launcher.poll() is None:
                found = host._find_pid1(children)
                if found is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(found[0], signal.SIGTERM)
            stopping.append(host)
        deadline = time.monotonic() + STOP_GRACE
        for host in stopping:
            assert host._launcher is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                host._launcher.wait(timeout=max(0.0, deadline - time.monotonic()))
        for host in hosts:
            assert isinstance(host, SystemdHost)
            try:
                cgroups.kill(host.cgroup)
                if host._launcher is not None:
                    host._launcher.wait(timeout=10)
                cgroups.remove(host.cgroup)
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as error:
                raise HostNetworkError(f"stopping host {host.name} failed: {error}") from error
            host._destroyed = True

    def _destroy(self, hosts: Sequence[Host]) -> None:
        bridge = self._names.bridge
        super()._destroy(hosts)
        if bridge in os.listdir("/sys/class/net"):
            _ip_batch([f"neigh del {host.ip} dev {bridge}" for host in hosts], force=True)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._root_hold is not None:
                os.close(self._root_hold)
                self._root_hold = None

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "flavour": "systemd", "root": str(self.root_path)}
