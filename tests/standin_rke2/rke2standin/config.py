"""Configuration: ``/etc/rancher/rke2/config.yaml`` (+ ``config.yaml.d/*.yaml``) and the stand-in's timing knobs.

Mirrors rke2's config-file handling: keys are long flag names; drop-ins are merged in lexical order after the
main file, a later value replaces an earlier one and ``key+:`` appends to a list; keys the subcommand does
not know are skipped with ``Unknown flag --key found in config.yaml, skipping``.
"""

import glob
import os

from . import log, yamlutil

CONFIG_FILE = "/etc/rancher/rke2/config.yaml"

# Flags understood by both ``rke2 server`` and ``rke2 agent`` (names as in the real CLI).
COMMON_FLAGS = {
    "config",
    "debug",
    "data-dir",
    "token",
    "token-file",
    "server",
    "node-name",
    "with-node-id",
    "node-label",
    "node-taint",
    "node-ip",
    "node-external-ip",
    "node-internal-dns",
    "node-external-dns",
    "image-credential-provider-bin-dir",
    "image-credential-provider-config",
    "container-runtime-endpoint",
    "default-runtime",
    "disable-default-registry-endpoint",
    "snapshotter",
    "private-registry",
    "system-default-registry",
    "airgap-extra-registry",
    "kubelet-arg",
    "kube-proxy-arg",
    "protect-kernel-defaults",
    "selinux",
    "lb-server-port",
    "resolv-conf",
    "profile",
    "cloud-provider-name",
    "cloud-provider-config",
    "kubelet-path",
    "bind-address",
    "enable-pprof",
    "vpn-auth",
    "vpn-auth-file",
    "pause-image",
    "runtime-image",
    "kube-proxy-extra-mount",
    "kube-proxy-extra-env",
    "node-name-from-cloud-provider-metadata",
    "log",
    "alsologtostderr",
}
SERVER_FLAGS = COMMON_FLAGS | {
    "advertise-address",
    "advertise-port",
    "tls-san",
    "tls-san-security",
    "cluster-cidr",
    "service-cidr",
    "service-node-port-range",
    "cluster-dns",
    "cluster-domain",
    "egress-selector-mode",
    "write-kubeconfig",
    "write-kubeconfig-mode",
    "write-kubeconfig-group",
    "agent-token",
    "agent-token-file",
    "cluster-reset",
    "cluster-reset-restore-path",
    "secrets-encryption",
    "secrets-encryption-provider",
    "enable-servicelb",
    "servicelb-namespace",
    "disable",
    "disable-scheduler",
    "disable-cloud-controller",
    "disable-kube-proxy",
    "disable-apiserver",
    "disable-controller-manager",
    "disable-etcd",
    "cni",
    "ingress-controller",
    "embedded-registry",
    "supervisor-metrics",
    "audit-policy-file",
    "pod-security-admission-config-file",
    "control-plane-resource-requests",
    "control-plane-resource-limits",
    "control-plane-probe-configuration",
    "kube-apiserver-arg",
    "kube-scheduler-arg",
    "kube-controller-manager-arg",
    "kube-cloud-controller-manager-arg",
    "etcd-arg",
    "etcd-expose-metrics",
    "etcd-disable-snapshots",
    "datastore-endpoint",
    "datastore-cafile",
    "datastore-certfile",
    "datastore-keyfile",
    "kine-tls",
    "service-account-key-file",
    "kube-apiserver-extra-mount",
    "kube-scheduler-extra-mount",
    "kube-controller-manager-extra-mount",
    "etcd-extra-mount",
    "cloud-controller-manager-extra-mount",
    "kube-apiserver-extra-env",
    "kube-scheduler-extra-env",
    "kube-controller-manager-extra-env",
    "etcd-extra-env",
    "cloud-controller-manager-extra-env",
    "kube-apiserver-image",
    "kube-scheduler-image",
    "kube-controller-manager-image",
    "kube-proxy-image",
    "etcd-image",
    "cloud-controller-manager-image",
}
SERVER_FLAG_PREFIXES = ("etcd-snapshot-", "etcd-s3")

LIST_FLAGS = {
    "tls-san",
    "node-label",
    "node-taint",
    "disable",
    "cni",
    "kubelet-arg",
    "kube-proxy-arg",
    "kube-apiserver-arg",
    "kube-scheduler-arg",
    "kube-controller-manager-arg",
    "kube-cloud-controller-manager-arg",
    "etcd-arg",
    "node-ip",
    "node-external-ip",
    "cluster-cidr",
    "service-cidr",
    "cluster-dns",
    "node-internal-dns",
    "node-external-dns",
    "airgap-extra-registry",
    "kube-apiserver-extra-mount",
    "kube-scheduler-extra-mount",
    "kube-controller-manager-extra-mount",
    "etcd-extra-mount",
    "cloud-controller-manager-extra-mount",
    "kube-proxy-extra-mount",
    "kube-apiserver-extra-env",
    "kube-scheduler-extra-env",
    "kube-controller-manager-extra-env",
    "etcd-extra-env",
    "cloud-controller-manager-extra-env",
    "kube-proxy-extra-env",
}
BOOL_FLAGS = {
    "debug",
    "with-node-id",
    "protect-kernel-defaults",
    "selinux",
    "cluster-reset",
    "secrets-encryption",
    "enable-servicelb",
    "disable-scheduler",
    "disable-cloud-controller",
    "disable-kube-proxy",
    "disable-apiserver",
    "disable-controller-manager",
    "disable-etcd",
    "embedded-registry",
    "supervisor-metrics",
    "etcd-expose-metrics",
    "etcd-disable-snapshots",
    "enable-pprof",
    "disable-default-registry-endpoint",
    "alsologtostderr",
}

SERVER_DEFAULTS = {
    "cluster-cidr": ["10.42.0.0/16"],
    "service-cidr": ["10.43.0.0/16"],
    "cluster-dns": ["10.43.0.10"],
    "cluster-domain": "cluster.local",
    "cni": ["canal"],
    "egress-selector-mode": "agent",
    "write-kubeconfig-mode": "",
}

# Values that must be identical on every server, as listed by rke2 ("critical configuration value mismatch").
CRITICAL_FLAGS = (
    "cluster-cidr",
    "cluster-dns",
    "cluster-domain",
    "disable-cloud-controller",
    "disable-kube-proxy",
    "egress-selector-mode",
    "service-cidr",
)


class ConfigError(Exception):
    pass


def _known(flag, role):
    if role == "server":
        return flag in SERVER_FLAGS or flag.startswith(SERVER_FLAG_PREFIXES)
    return flag in COMMON_FLAGS


def _to_str(value):
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return ""
    return str(value)


def _normalise(flag, value):
    if flag in LIST_FLAGS:
        items = value if isinstance(value, list) else [value]
        out = []
        for item in items:
            if item is None:
                continue
            if isinstance(item, (list, dict)):
                raise ConfigError("invalid value for %s: nested collections are not allowed" % flag)
            text = _to_str(item)
            if flag in ("node-label", "node-taint", "kubelet-arg") or flag.endswith(("-arg", "-env", "-mount")):
                out.append(text)
            else:
                out.extend(part.strip() for part in text.split(",") if part.strip())
        return out
    if flag in BOOL_FLAGS:
        if isinstance(value, bool):
            return value
        text = _to_str(value).strip().lower()
        if text in ("true", "1", "yes", "on", "t"):
            return True
        if text in ("false", "0", "no", "off", "f", ""):
            return False
        raise ConfigError("invalid boolean value %r for %s" % (value, flag))
    if isinstance(value, (list, dict)):
        raise ConfigError("invalid value for %s: expected a single value" % flag)
    return _to_str(value)


def config_files(path=CONFIG_FILE):
    files = []
    if os.path.isfile(path):
        files.append(path)
    files.extend(sorted(glob.glob(os.path.join(path + ".d", "*.yaml"))))
    return files


def load(role, path=CONFIG_FILE, cli=None, quiet=False):
    """Return the effective flag dict for ``role`` ("server" or "agent")."""
    merged = {}
    for file_path in config_files(path):
        with open(file_path, encoding="utf-8") as handle:
            text = handle.read()
        try:
            data = yamlutil.load(text)
        except yamlutil.YAMLError as exc:
            raise ConfigError("failed to parse %s: %s" % (file_path, exc)) from None
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ConfigError("failed to parse %s: top level must be a mapping" % file_path)
        for raw_key, value in data.items():
            key = str(raw_key)
            append = key.endswith("+")
            flag = key[:-1] if append else key
            if not _known(flag, role):
                if not quiet:
                    log.warning("Unknown flag --%s found in config.yaml, skipping" % flag)
                continue
            try:
                value = _normalise(flag, value)
            except ConfigError as exc:
                raise ConfigError("%s: %s" % (file_path, exc)) from None
            if append and flag in LIST_FLAGS and isinstance(merged.get(flag), list):
                merged[flag] = merged[flag] + value
            else:
                merged[flag] = value
    for flag, value in (cli or {}).items():
        merged[flag] = _normalise(flag, value)
    if role == "server":
        for flag, default in SERVER_DEFAULTS.items():
            merged.setdefault(flag, list(default) if isinstance(default, list) else default)
    if merged.get("token-file") and not merged.get("token"):
        with open(merged["token-file"], encoding="utf-8") as handle:
            merged["token"] = handle.read().strip()
    if merged.get("agent-token-file") and not merged.get("agent-token"):
        with open(merged["agent-token-file"], encoding="utf-8") as handle:
            merged["agent-token"] = handle.read().strip()
    return merged


def critical_values(cfg):
    return {flag: cfg.get(flag, SERVER_DEFAULTS.get(flag, False)) for flag in CRITICAL_FLAGS}


# ---------------------------------------------------------------------------------------------------------
# Timing knobs of the stand-in (not rke2 flags).  Sources, later wins: <prefix>/share/rke2/standin.env from the
# bundle, /etc/rancher/rke2/standin.env on the host, then the process environment (the init scripts export
# /etc/default/rke2-<type>).

KNOB_DEFAULTS = {
    "RKE2_STANDIN_SERVER_START_DELAY": 1.0,
    "RKE2_STANDIN_AGENT_START_DELAY": 1.0,
    "RKE2_STANDIN_HEARTBEAT_INTERVAL": 5.0,
    "RKE2_STANDIN_NODE_MONITOR_GRACE": 40.0,
    "RKE2_STANDIN_JOIN_RETRY_INTERVAL": 5.0,
}
HOST_KNOB_FILE = "/etc/rancher/rke2/standin.env"


def _read_env_file(path):
    values = {}
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return values
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        values[key.strip()] = value.strip().strip("'\"")
    return values


def load_knobs(prefix):
    raw = {}
    raw.update(_read_env_file(os.path.join(prefix, "share", "rke2", "standin.env")))
    raw.update(_read_env_file(HOST_KNOB_FILE))
    raw.update({k: v for k, v in os.environ.items() if k in KNOB_DEFAULTS})
    knobs = dict(KNOB_DEFAULTS)
    for key, value in raw.items():
        if key in KNOB_DEFAULTS:
            try:
                knobs[key] = float(value)
            except ValueError:
                log.warning("ignoring invalid value for %s: %r" % (key, value))
    return knobs
