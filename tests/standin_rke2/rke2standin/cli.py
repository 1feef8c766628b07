"""Command line of the stand-in ``rke2`` binary."""

import os
import subprocess
import sys
import time
import traceback

from . import cisprofile, config, log, node

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


FLAG_ALIASES = {"d": "data-dir", "t": "token"}


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
        name = FLAG_ALIASES.get(name, name)
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
    # First of all: take the service manager's notification socket out of the environment (no child inherits it).
    node.notifier()
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
        log_link = os.environ.pop("RKE2_STANDIN_LOG_LINK", None)
        if os.geteuid() != 0:
            log.fatal("rke2 must be run as root")
        flags, config_path = _parse_flags(rest, command)
        try:
            cfg = config.load(command, config_path, flags)
        except (config.ConfigError, OSError) as exc:
            log.fatal(str(exc))
        if log_link:
            # SysV init script: no journal, the log goes to <data-dir>/<role>/logs/rke2.log.
            log.to_file(node.Paths(cfg.get("data-dir")).log_file(command), log_link)
        else:
            log.keep_on_stderr()
        if cfg.get("debug"):
            log.set_debug(True)
        if not cfg.get("profile") and os.environ.get("RKE2_CIS_PROFILE"):
            cfg["profile"] = os.environ["RKE2_CIS_PROFILE"]
        cisprofile.validate(command, cfg, build.VERSION)
        knobs = config.load_knobs(_prefix())
        try:
            if command == "server":
                from .server import Server

                Server(cfg, knobs, build).run()
            else:
                from .agent import Agent

                Agent(cfg, knobs, build).run()
        except (SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - reported as RKE2 reports a fatal error
            for line in traceback.format_exc().rstrip().splitlines():
                log.debug(line)
            log.fatal("%s: %s" % (type(exc).__name__, exc))
        return 0
    if command == "etcd-snapshot":
        return etcd_snapshot(rest)
    sys.stderr.write("No help topic for '%s'\n" % command)
    return 3


def etcd_snapshot(args):
    """``rke2 etcd-snapshot [save] [--name NAME] [--data-dir DIR]`` / ``... list`` through the real etcdctl."""
    sub = args[0] if args and not args[0].startswith("-") else "save"
    opts = args[1:] if args and not args[0].startswith("-") else args
    name = "on-demand"
    data_dir = None
    config_path = config.CONFIG_FILE
    for i, opt in enumerate(opts):
        key, sep, value = opt.lstrip("-").partition("=")
        if not sep and i + 1 < len(opts):
            value = opts[i + 1]
        if key == "name":
            name = value
        elif key in ("data-dir", "d"):
            data_dir = value
        elif key in ("config", "c"):
            config_path = value
    if data_dir is None:
        try:
            data_dir = config.load("server", config_path, quiet=True).get("data-dir")
        except (config.ConfigError, OSError) as exc:
            log.fatal(str(exc))
    paths = node.Paths(data_dir)
    tls = paths.etcd_tls
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
