"""Command line for SSH test hosts (run from the repository root, as root).

``python -m tests.testhosts up --count 3 [--flavour systemd]``
    Boot a network of hosts (``systemd``: real systemd as PID 1 in each host), print its JSON description (one line on stdout) and ssh commands (stderr), keep
    running until Ctrl-C / SIGTERM / SIGHUP, then tear everything down.
``python -m tests.testhosts cleanup-stale``
    Tear down networks whose owning process is gone; prints the removed claims as JSON.
``python -m tests.testhosts build-root [--force]``
    Build the cached Debian root of the systemd hosts unless it exists; prints its path.
``python -m tests.testhosts list``
    Print every claim (index, owner PID, whether the owner is alive, run directory) as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

from . import rootfs
from .harness import DEFAULT_HOSTNAME_PREFIX, FLAVOURS, HostNetwork, HostNetworkError, cleanup_stale, read_claims

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Stop(Exception):
    """Raised by the signal handlers to leave the ``up`` loop."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def _up(args: argparse.Namespace) -> int:
    names = [name.strip() for name in args.names.split(",")] if args.names else None
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _raise_stop)
    network = HostNetwork(flavour=args.flavour, hostname_prefix=args.hostname_prefix)
    try:
        started = time.perf_counter()
        network.start()
        hosts = network.add_hosts(None if names else args.count, names=names)
        elapsed = time.perf_counter() - started
        print(json.dumps({"boot_seconds": round(elapsed, 3), **network.describe()}), flush=True)
        print(f"{len(hosts)} hosts up in {elapsed:.2f}s on {network.subnet}:", file=sys.stderr)
        for host in hosts:
            print(
                f"  {host.name:<12} {host.ip:<15} ssh -F {network.ssh_config_path} [deploy@]{host.name}",
                file=sys.stderr,
            )
        print("Ctrl-C or SIGTERM tears the network down.", file=sys.stderr, flush=True)
        while True:
            signal.pause()
    except _Stop as stop:
        print(f"{stop}: tearing down", file=sys.stderr, flush=True)
    finally:
        for signum in _STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        network.close()
    return 0


def _cleanup_stale(args: argparse.Namespace) -> int:
    removed = cleanup_stale()
    print(json.dumps([{"index": claim.index, "pid": claim.pid, "run_dir": claim.run_dir} for claim in removed]))
    return 0


def _build_root(args: argparse.Namespace) -> int:
    print(rootfs.build_root(force=args.force))
    return 0


def _list(args: argparse.Namespace) -> int:
    claims = [
        {**dataclasses.asdict(claim), "path": str(claim.path), "owner_alive": claim.owner_alive}
        for claim in read_claims()
    ]
    print(json.dumps(claims))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.testhosts", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="boot hosts and keep them until interrupted")
    up.add_argument("--count", type=int, default=3, help="number of hosts (default 3)")
    up.add_argument("--names", help="comma-separated hostnames (instead of --count)")
    up.add_argument("--hostname-prefix", default=DEFAULT_HOSTNAME_PREFIX, help="prefix of generated hostnames")
    up.add_argument("--flavour", choices=FLAVOURS, default="namespace", help="what runs in the hosts")
    up.set_defaults(handler=_up)
    build = commands.add_parser("build-root", help="build the cached root of the systemd hosts when missing")
    build.add_argument("--force", action="store_true", help="build it again even if it exists")
    build.set_defaults(handler=_build_root)
    commands.add_parser("cleanup-stale", help="tear down networks whose owner is gone").set_defaults(
        handler=_cleanup_stale
    )
    commands.add_parser("list", help="show claimed networks").set_defaults(handler=_list)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except (HostNetworkError, rootfs.RootBuildError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
