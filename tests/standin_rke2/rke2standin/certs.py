"""``rke2 certificate rotate``: new service certificates at the next start, under the same CAs.

Like RKE2's command it works on a stopped node: it copies ``<data-dir>/server/tls`` to a backup folder
``<data-dir>/server/tls-<unix time>``, then removes the service (leaf) certificates and keys, keeping the CAs, so
that the next start of ``rke2 server`` issues new ones (new keys, serials and notBefore): the admin client
certificate written into ``rke2.yaml``, the API server's serving certificate, etcd's server, peer and client
certificates (a running etcd reads its files again at the next TLS handshake) and the kubelet's client certificate.
"""

import os
import shutil
import sys
import time

from . import config, log, node

USAGE = """NAME:
   rke2 certificate rotate - Rotate the service certificates (run it while rke2 is stopped)

USAGE:
   rke2 certificate rotate [--data-dir DIR] [--config FILE]
"""


def _is_ca(name):
    base = name.rsplit(".", 1)[0]
    return base.endswith("-ca") or base == "ca"


def certificate(args):
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0
    if args[0] != "rotate":
        sys.stderr.write("rke2 certificate: unknown subcommand %r (only rotate)\n" % args[0])
        return 1
    data_dir = None
    config_path = config.CONFIG_FILE
    opts = args[1:]
    i = 0
    while i < len(opts):
        key, sep, value = opts[i].lstrip("-").partition("=")
        if not sep and key in ("data-dir", "d", "config", "c", "service", "s"):
            i += 1
            value = opts[i] if i < len(opts) else ""
        if key in ("data-dir", "d"):
            data_dir = value
        elif key in ("config", "c"):
            config_path = value
        i += 1
    if data_dir is None:
        try:
            data_dir = config.load("server", config_path, quiet=True).get("data-dir")
        except (config.ConfigError, OSError) as exc:
            log.fatal(str(exc))
    paths = node.Paths(data_dir)
    if not os.path.isdir(paths.tls):
        log.fatal("no server certificates to rotate in %s" % paths.tls)
    backup = "%s-%d" % (paths.tls, int(time.time()))
    shutil.copytree(paths.tls, backup, symlinks=True)
    os.chmod(backup, 0o700)
    removed = []
    for folder in (paths.tls, paths.etcd_tls):
        for name in sorted(os.listdir(folder)):
            full = os.path.join(folder, name)
            if os.path.isfile(full) and name.endswith((".crt", ".key")) and not _is_ca(name):
                os.unlink(full)
                removed.append(os.path.relpath(full, paths.tls))
    for full in (paths.kubelet_crt, paths.kubelet_key):
        if os.path.exists(full):
            os.unlink(full)
    log.info("Backed up the certificates", path=backup)
    log.info("Removed %d service certificates and keys; restart rke2 to issue new ones" % len(removed))
    return 0
