"""Command line of the stand-in ``rke2`` binary."""

import os
import subprocess
import sys
import time

from . import config, log

USAGE = """NAME:
   rke2 - Rancher Kubernetes Engine 2 (test stand-in)

USAGE:
   rke2 [global options] command [command options] [arguments...]

COMMANDS:
   server         Run management server
   agent          Run node agent
   etcd-snapshot  Manage etcd snapshots (save, list)

GLOBAL OPTIONS:
   --debug            (logging) Turn on debug logs
   --help, -h         show help
   --version, -v      print the version
"""


def _build():
    from . import _build as build  # generated into the zipapp by tests/standin_rke2/build.py

    return build


def _prefix():
    here = os.path.realpath(sys.argv[0])
    return os.path.dirname(os.path.dirname(here))


def _parse_flags(args, role):
    """``--flag value`` / ``--flag=value`` / boolean ``--flag`` on the command line."""
    flags = {}
    config_path = config.CONFIG_FILE
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-"):
            raise SystemExit("rke2 %s: unexpected argument %r" % (role, arg))
        name, sep, value = arg.lstrip("-").partition("=")
        if name in ("c", "config"):
            if not sep:
                i += 1
                value = args[i] if i < len(args) else ""
            config_path = value
        elif name in config.BOOL_FLAGS:
            flags[name] = value if sep else True
        else:
            if not sep:
                i += 1
                if i >= len(args):
                    raise SystemExit("rke2 %s: flag needs an argument: --%s" % (role, name))
                value = args[i]
            if name in config.LIST_FLAGS:
                flags.setdefault(name, []).append(value)
            else:
                flags[name] = value
        i += 1
    return flags, config_path


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    build = _build()
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0
    if argv[0] in ("-v", "--version", "version"):
        sys.stdout.write("rke2 version %s (%s)\ngo version %s\n" % (build.VERSION, build.COMMIT, build.GO_VERSION))
        return 0
    if argv[0] == "--debug":
        log.set_debug(True)
        argv = argv[1:]
    command, rest = argv[0], argv[1:]
    if command in ("server", "agent"):
        if os.geteuid() != 0:
            log.fatal("rke2 must be run as root")
        flags, config_path = _parse_flags(rest, command)
        try:
            cfg = config.load(command, config_path, flags)
        except (config.ConfigError, OSError) as exc:
            log.fatal(str(exc))
        if cfg.get("debug"):
            log.set_debug(True)
        knobs = config.load_knobs(_prefix())
        if command == "server":
            from .server import Server

            Server(cfg, knobs, build).run()
        else:
            from .agent import Agent

            Agent(cfg, knobs, build).run()
        return 0
    if command == "etcd-snapshot":
        return etcd_snapshot(rest)
    sys.stderr.write("No help topic for '%s'\n" % command)
    return 3


def etcd_snapshot(args):
    """``rke2 etcd-snapshot save [--name NAME]`` / ``rke2 etcd-snapshot list`` through the real etcdctl."""
    from .node import Paths

    paths = Paths()
    tls = paths.etcd_tls
    sub = args[0] if args and not args[0].startswith("-") else "save"
    opts = args[1:] if args and not args[0].startswith("-") else args
    name = "on-demand"
    for i, opt in enumerate(opts):
        if opt.startswith("--name="):
            name = opt.split("=", 1)[1]
        elif opt == "--name" and i + 1 < len(opts):
            name = opts[i + 1]
    os.makedirs(paths.snapshots, mode=0o700, exist_ok=True)
    if sub == "list":
        for entry in sorted(os.listdir(paths.snapshots)):
            full = os.path.join(paths.snapshots, entry)
            sys.stdout.write("%s\t%s\t%d\n" % (entry, full, os.path.getsize(full)))
        return 0
    if sub != "save":
        sys.stderr.write("unknown etcd-snapshot subcommand %r\n" % sub)
        return 1
    node_name = os.uname().nodename
    target = os.path.join(paths.snapshots, "%s-%s-%d" % (name, node_name, int(time.time())))
    env = dict(os.environ, ETCDCTL_API="3")
    proc = subprocess.run(
        [
            "etcdctl",
            "--endpoints=https://127.0.0.1:2379",
            "--cacert=%s/server-ca.crt" % tls,
            "--cert=%s/server-client.crt" % tls,
            "--key=%s/server-client.key" % tls,
            "snapshot",
            "save",
            target,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        log.error("etcd snapshot failed", error=proc.stderr.strip()[-500:])
        return 1
    log.info("Saved etcd snapshot", name=os.path.basename(target), path=target)
    return 0
