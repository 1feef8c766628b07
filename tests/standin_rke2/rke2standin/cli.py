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
   etcd-snapshot  Manage etcd snapshots (save, list, prune, delete)
   certificate    Rotate the service certificates (rotate)

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
    if command == "certificate":
        from .certs import certificate

        return certificate(rest)
    sys.stderr.write("No help topic for '%s'\n" % command)
    return 3


SNAPSHOT_SUBCOMMANDS = ("save", "list", "ls", "prune", "delete", "rm")


def etcd_snapshot(args):
    """``rke2 etcd-snapshot [save|list|prune|delete]`` on the local etcd member, through the real etcdctl.

    - ``save [--name NAME]`` writes ``<snapshot-dir>/<NAME>-<node>-<unix time>`` (NAME defaults to ``on-demand``);
    - ``list`` prints RKE2's table: ``Name  Location  Size  Created`` (location as a ``file://`` URL);
    - ``prune --snapshot-retention N [--name NAME]`` keeps the N newest snapshots whose name starts with NAME
      (default ``on-demand``) and deletes the older ones;
    - ``delete NAME...`` deletes the named snapshots.
    The snapshot folder is ``--etcd-snapshot-dir`` / config.yaml ``etcd-snapshot-dir``, else
    ``<data-dir>/server/db/snapshots``."""
    sub = args[0] if args and not args[0].startswith("-") else "save"
    rest = args[1:] if args and not args[0].startswith("-") else args
    if sub not in SNAPSHOT_SUBCOMMANDS:
        sys.stderr.write("unknown etcd-snapshot subcommand %r\n" % sub)
        return 1
    name = None
    retention = None
    data_dir = None
    snapshot_dir = None
    config_path = config.CONFIG_FILE
    positional = []
    i = 0
    while i < len(rest):
        opt = rest[i]
        if not opt.startswith("-"):
            positional.append(opt)
            i += 1
            continue
        key, sep, value = opt.lstrip("-").partition("=")
        if not sep:
            i += 1
            value = rest[i] if i < len(rest) else ""
        if key == "name":
            name = value
        elif key == "snapshot-retention":
            retention = value
        elif key in ("data-dir", "d"):
            data_dir = value
        elif key == "etcd-snapshot-dir":
            snapshot_dir = value
        elif key in ("config", "c"):
            config_path = value
        i += 1
    try:
        cfg = config.load("server", config_path, quiet=True)
    except (config.ConfigError, OSError) as exc:
        log.fatal(str(exc))
    if data_dir is None:
        data_dir = cfg.get("data-dir")
    paths = node.Paths(data_dir)
    folder = snapshot_dir or cfg.get("etcd-snapshot-dir") or paths.snapshots
    os.makedirs(folder, mode=0o700, exist_ok=True)
    if sub in ("list", "ls"):
        return _snapshot_list(folder)
    if sub == "prune":
        try:
            keep = int(retention if retention is not None else "5")
        except ValueError:
            log.fatal("invalid value %r for flag --snapshot-retention" % retention)
        return _snapshot_prune(folder, name or "on-demand", keep)
    if sub in ("delete", "rm"):
        if not positional:
            log.fatal("no snapshots given for removal")
        return _snapshot_delete(folder, positional)
    node_name = (cfg.get("node-name") or os.uname().nodename).strip().lower()
    return _snapshot_save(paths, folder, name or "on-demand", node_name)


def _snapshots(folder):
    """[(name, path, size, mtime)] of the snapshot files, oldest first."""
    found = []
    for entry in os.listdir(folder):
        full = os.path.join(folder, entry)
        if os.path.isfile(full) and not entry.startswith("."):
            stat = os.stat(full)
            found.append((entry, full, stat.st_size, stat.st_mtime))
    return sorted(found, key=lambda item: (item[3], item[0]))


def _snapshot_list(folder):
    rows = [("Name", "Location", "Size", "Created")]
    for entry, full, size, mtime in _snapshots(folder):
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))
        rows.append((entry, "file://" + full, str(size), created))
    widths = [max(len(row[col]) for row in rows) for col in range(4)]
    for row in rows:
        sys.stdout.write(" ".join(value.ljust(widths[col]) for col, value in enumerate(row)).rstrip() + "\n")
    return 0


def _snapshot_prune(folder, prefix, keep):
    matching = [item for item in _snapshots(folder) if item[0].startswith(prefix + "-")]
    doomed = matching[: max(len(matching) - keep, 0)] if keep > 0 else []
    for _entry, full, _, _ in doomed:
        os.remove(full)
        log.info("Removing local snapshot %s" % full)
    log.info("Pruned etcd snapshots", prefix=prefix, kept=len(matching) - len(doomed), removed=len(doomed))
    return 0


def _snapshot_delete(folder, names):
    known = {entry: full for entry, full, _, _ in _snapshots(folder)}
    for wanted in names:
        full = known.get(os.path.basename(wanted))
        if full is None:
            log.warning("Snapshot %s not found" % wanted)
            continue
        os.remove(full)
        log.info("Removing local snapshot %s" % full)
    return 0


def _snapshot_save(paths, folder, name, node_name):
    tls = paths.etcd_tls
    target = os.path.join(folder, "%s-%s-%d" % (name, node_name, int(time.time())))
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
