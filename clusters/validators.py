"""Validators for names, addresses and versions used in cluster definitions."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping

from django.core.exceptions import ValidationError
from django.utils.deconstruct import deconstructible

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DNS_LABEL_RE = re.compile(rf"^{_LABEL}$")
_HOSTNAME_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
RKE2_VERSION_RE = re.compile(r"^v(?P<major>\d+)\.(?P<minor>\d+)\.(?P<patch>\d+)\+rke2r(?P<release>\d+)$")


def validate_dns_label(value: str) -> None:
    """RFC 1123 label: lowercase letters, digits and '-', 1-63 characters, alphanumeric at both ends."""
    if not isinstance(value, str) or not _DNS_LABEL_RE.match(value):
        raise ValidationError(
            "Enter a DNS-safe name: lowercase letters, digits and '-', at most 63 characters, "
            "starting and ending with a letter or digit.",
            code="invalid_dns_label",
        )


def validate_hostname(value: str) -> None:
    """RFC 1123 host name: dot-separated DNS labels, at most 253 characters, lowercase (it is also the Kubernetes
    node name, which must be lowercase). A dotted all-numeric name is refused: it is a mistyped IP address."""
    if not isinstance(value, str) or not value or len(value) > 253 or not _HOSTNAME_RE.match(value):
        raise ValidationError(
            "Enter a valid RFC 1123 host name (lowercase letters, digits, '-' and '.', labels of at most 63 "
            "characters that start and end with a letter or digit, at most 253 characters in all).",
            code="invalid_hostname",
        )
    if all(label.isdigit() for label in value.split(".")) and "." in value:
        raise ValidationError(
            f"{value!r} looks like an IP address, not a host name, and is not a valid IP address either.",
            code="invalid_hostname",
        )


def is_ip_address(value: str) -> bool:
    """Whether ``value`` is a plain IPv4 or IPv6 address. An IPv6 zone (``fe80::1%eth0``) is not part of an address
    another host can use, so it does not count."""
    if not isinstance(value, str) or "%" in value:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _refuse_zone(value: object) -> None:
    if isinstance(value, str) and "%" in value:
        raise ValidationError(
            f"{value!r}: an IPv6 zone (the '%' suffix) names an interface of one host and means nothing to the "
            "others; enter the address without it.",
            code="ipv6_zone",
        )


def validate_ip_address(value: str) -> None:
    _refuse_zone(value)
    if not isinstance(value, str) or not is_ip_address(value):
        raise ValidationError("Enter a valid IPv4 or IPv6 address.", code="invalid_ip")


def validate_address(value: str) -> None:
    """An IPv4/IPv6 address (without a zone) or an RFC 1123 DNS name."""
    _refuse_zone(value)
    if isinstance(value, str) and is_ip_address(value):
        return
    try:
        validate_hostname(value)
    except ValidationError:
        raise ValidationError(
            f"{value!r} is neither an IP address nor a DNS name (lowercase letters, digits, '-' and '.').",
            code="invalid_address",
        ) from None


def validate_cidr(value: str) -> None:
    """A network in CIDR notation, or a comma-separated IPv4,IPv6 dual-stack pair."""
    if not isinstance(value, str):
        raise ValidationError("Enter a network in CIDR notation, such as 10.42.0.0/16.", code="invalid_cidr")
    parts = [part.strip() for part in value.split(",")]
    if not 1 <= len(parts) <= 2:
        raise ValidationError("Enter one CIDR, or an IPv4 and an IPv6 CIDR separated by a comma.", code="invalid_cidr")
    networks = []
    for part in parts:
        if "/" not in part:
            raise ValidationError(
                f"{part!r} has no prefix length: enter a network in CIDR notation, such as 10.42.0.0/16.",
                code="invalid_cidr",
            )
        try:
            networks.append(ipaddress.ip_network(part, strict=True))
        except ValueError as exc:
            raise ValidationError(f"Enter a valid network in CIDR notation ({exc}).", code="invalid_cidr") from None
    if len(networks) == 2 and networks[0].version == networks[1].version:
        raise ValidationError("A dual-stack value needs one IPv4 and one IPv6 CIDR.", code="invalid_cidr")


def parse_cidrs(value: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(part.strip(), strict=True) for part in value.split(",")]


def normalize_cidrs(value: str) -> str:
    """Canonical text of a valid CIDR value (no spaces, compressed IPv6), so equal networks compare equal."""
    return ",".join(str(network) for network in parse_cidrs(value))


_USERNAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")


def validate_unix_username(value: str) -> None:
    """A login name on Linux hosts: letters, digits, '_', '.', '-', not starting with a digit, '.' or '-'."""
    if not isinstance(value, str) or not _USERNAME_RE.match(value):
        raise ValidationError(
            "Enter a Linux user name: letters, digits, '_', '.' and '-', starting with a letter or '_', "
            "at most 32 characters.",
            code="invalid_username",
        )


def validate_rke2_version(value: str) -> None:
    if not isinstance(value, str) or not RKE2_VERSION_RE.match(value):
        raise ValidationError("Enter an RKE2 release such as v1.31.4+rke2r1.", code="invalid_rke2_version")


def parse_rke2_version(value: str) -> tuple[int, int, int, int]:
    match = RKE2_VERSION_RE.match(value)
    if not match:
        raise ValueError(f"not an RKE2 version: {value!r}")
    return (int(match["major"]), int(match["minor"]), int(match["patch"]), int(match["release"]))


_CONFIG_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9-]*\+?$")
# Extra config is stored and shown in clear; keys that carry credentials (etcd S3 keys, tokens, passwords) are
# refused so that no secret lands there.
_SECRET_KEY_RE = re.compile(r"(secret|token|password|passwd|access-key|private-key)")
_SCALAR_TYPES = (str, int, float, bool)
# Keys the credential pattern matches that hold no credential.
_NOT_CREDENTIALS = frozenset({"secrets-encryption", "secrets-encryption-provider"})


@deconstructible
class RKE2ConfigValidator:
    """Validates a JSON mapping of extra RKE2 ``config.yaml`` keys (``cluster_vars`` / ``node_vars``).

    Keys are RKE2 flag names (lowercase, digits, '-', an optional trailing '+' to append); values are scalars or
    lists of scalars. Keys the portal manages itself are refused, so that extra keys can never redirect a node to
    another server, replace its token, or override a value that has its own field (and its own checks).
    """

    # Keys set from the cluster's or node's own fields, or by the portal itself.
    reserved = {
        "server": "it is set by the portal from the registration address",
        "token": "the cluster token is managed by the portal",
        "token-file": "the cluster token is managed by the portal",
        "agent-token": "the cluster token is managed by the portal",
        "agent-token-file": "the cluster token is managed by the portal",
        "node-name": "it is the node's host name",
        "node-ip": "it is the node's internal IP",
        "node-external-ip": "it is the node's external IP",
        "node-label": "use the node's labels",
        "node-taint": "use the node's taints",
        "cni": "use the cluster's CNI field",
        "cluster-cidr": "use the cluster's cluster CIDR field",
        "service-cidr": "use the cluster's service CIDR field",
        "cluster-dns": "use the cluster's cluster DNS field",
        "cluster-domain": "use the cluster's cluster domain field",
        "tls-san": "use the cluster's TLS SANs field",
    }

    def __call__(self, value: object) -> None:
        if value in (None, ""):
            return
        if not isinstance(value, dict):
            raise ValidationError("Enter a mapping of RKE2 configuration keys to values.", code="invalid_config")
        for key, item in value.items():
            if not isinstance(key, str) or not _CONFIG_KEY_RE.match(key):
                raise ValidationError(
                    f"{key!r} is not an RKE2 configuration key (lowercase letters, digits and '-').",
                    code="invalid_config_key",
                )
            if key.rstrip("+") in self.reserved:
                raise ValidationError(
                    f"{key!r} cannot be set here: {self.reserved[key.rstrip('+')]}.", code="reserved_config_key"
                )
            if _SECRET_KEY_RE.search(key) and key.rstrip("+") not in _NOT_CREDENTIALS:
                raise ValidationError(
                    f"{key!r} holds a credential: extra configuration is stored in clear and cannot carry secrets.",
                    code="secret_config_key",
                )
            items = item if isinstance(item, list) else [item]
            for element in items:
                if not isinstance(element, _SCALAR_TYPES):
                    raise ValidationError(
                        f"{key!r}: values must be strings, numbers, booleans or lists of them.",
                        code="invalid_config_value",
                    )
                if isinstance(element, float) and not math.isfinite(element):
                    raise ValidationError(
                        f"{key!r}: {element!r} is not a finite number; NaN and Infinity cannot be used in RKE2's "
                        "configuration (nor in JSON).",
                        code="non_finite_number",
                    )
                if isinstance(element, str) and ("\n" in element or "\r" in element or "\x00" in element):
                    raise ValidationError(
                        f"{key!r}: values cannot contain line breaks or NUL characters.", code="invalid_config_value"
                    )
            reason = weakening_reason(key, item)
            if reason:
                raise ValidationError(f"{key!r}: {reason}", code="weakening_config")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RKE2ConfigValidator)


validate_rke2_config = RKE2ConfigValidator()


# Extra config that would weaken the cluster or hand its control plane to whoever sets it. Operators may change
# clusters but are not cluster administrators of them: nothing they can set may make anyone cluster-admin, open the
# API (or the kubelet, or etcd) without authentication or authorization, expose the admin kubeconfig, or reset etcd.

_FALSE_WORDS = frozenset({"0", "f", "false"})


def _is_false(value: str) -> bool:
    """Whether a flag value reads as false (Go's strconv.ParseBool spellings)."""
    return value.strip().lower() in _FALSE_WORDS


def _mode_reason(value: object) -> str | None:
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not re.fullmatch(r"0?[0-7]{3}", text):
        return f"{value!r} is not a file mode: give an octal mode such as 0600."
    if int(text, 8) & 0o077:
        return (
            f"{text} would let other users of the servers read the admin kubeconfig, which is cluster-admin; "
            "use 0600 (the default) or stricter."
        )
    return None


# Top-level keys refused whatever their value.
REFUSED_CONFIG_KEYS: Mapping[str, str] = {
    "cluster-reset": "resetting etcd to a single member is a recovery operation, not a setting; it would run again "
    "at every restart of the server",
    "cluster-reset-restore-path": "restoring an etcd snapshot is an operation of its own, not a setting; it would run "
    "again at every restart of the server",
    "write-kubeconfig": "the admin kubeconfig (cluster-admin) stays at RKE2's own path, where the portal fetches it",
    "write-kubeconfig-group": "it would make the admin kubeconfig (cluster-admin) readable by a group of the servers",
    "enable-pprof": "it serves profiling endpoints on the supervisor port",
}

# Top-level keys refused for some values: a function of the value giving the reason, or None.
_CONFIG_VALUE_RULES: Mapping[str, Callable[[object], str | None]] = {
    "write-kubeconfig-mode": _mode_reason,
    "secrets-encryption": lambda value: (
        "false would store Kubernetes secrets in etcd in clear." if _is_false(str(value)) else None
    ),
}


def _always(reason: str) -> Callable[[str], str | None]:
    return lambda value: reason


def _unless_false(reason: str) -> Callable[[str], str | None]:
    return lambda value: None if _is_false(value) else reason


def _if_false(reason: str) -> Callable[[str], str | None]:
    return lambda value: reason if _is_false(value) else None


def _unless_zero(reason: str) -> Callable[[str], str | None]:
    return lambda value: None if value.strip() == "0" else reason


def _listing(names: frozenset[str], reason: str) -> Callable[[str], str | None]:
    folded = {name.lower(): name for name in names}

    def check(value: str) -> str | None:
        found = [folded[item.strip().lower()] for item in value.split(",") if item.strip().lower() in folded]
        return f"{', '.join(found)}: {reason}" if found else None

    return check


_ANONYMOUS = "anonymous requests would be served (as system:anonymous) instead of refused"
_ALWAYS_ALLOW = "it lets every request do anything: every user would be cluster-admin"
_INSECURE_PORT = "an insecure port serves requests without authentication or authorization"
_AUTHENTICATION = (
    "who can log in to the cluster is set by its administrators, not here: credentials or an identity provider "
    "given here could grant any group, system:masters (cluster-admin) included"
)
_AUTHORIZATION = "authorization stays RBAC and Node, as RKE2 sets it"
_PROTECTIVE_ADMISSION = frozenset(
    {
        "NodeRestriction",
        "PodSecurity",
        "ServiceAccount",
        "NamespaceLifecycle",
        "CertificateApproval",
        "CertificateSigning",
        "CertificateSubjectRestriction",
        "ValidatingAdmissionWebhook",
        "MutatingAdmissionWebhook",
        "ValidatingAdmissionPolicy",
    }
)
_NO_AUTHORIZATION_PATHS = "paths listed here would be served without authorization"

# Component arguments ("name=value" items of the *-arg keys) refused, by component key then flag name. A name
# ending in '-' is a prefix.
COMPONENT_ARG_RULES: Mapping[str, Mapping[str, Callable[[str], str | None]]] = {
    "kube-apiserver-arg": {
        "anonymous-auth": _unless_false(_ANONYMOUS),
        "authorization-mode": _listing(frozenset({"AlwaysAllow"}), _ALWAYS_ALLOW),
        "insecure-port": _unless_zero(_INSECURE_PORT),
        "insecure-bind-address": _always(_INSECURE_PORT),
        "token-auth-file": _always(_AUTHENTICATION),
        "basic-auth-file": _always(_AUTHENTICATION),
        "authentication-config": _always(_AUTHENTICATION),
        "authentication-token-webhook-config-file": _always(_AUTHENTICATION),
        "oidc-": _always(_AUTHENTICATION),
        "authorization-config": _always(_AUTHORIZATION),
        "authorization-policy-file": _always(_AUTHORIZATION),
        "authorization-webhook-config-file": _always(_AUTHORIZATION),
        "disable-admission-plugins": _listing(
            _PROTECTIVE_ADMISSION, "these admission plugins protect the cluster and stay enabled"
        ),
        "admission-control": _always("it replaces the whole list of admission plugins, protective ones included"),
        "enable-admission-plugins": _listing(frozenset({"AlwaysAdmit"}), "it admits every request unchecked"),
        "service-account-lookup": _if_false("deleted service accounts' tokens would stay valid"),
    },
    "kubelet-arg": {
        "anonymous-auth": _unless_false(_ANONYMOUS),
        "authorization-mode": _listing(frozenset({"AlwaysAllow"}), _ALWAYS_ALLOW),
        "read-only-port": _unless_zero("the read-only port serves pod and node data without authentication"),
    },
    "kube-controller-manager-arg": {
        "port": _unless_zero(_INSECURE_PORT),
        "address": _always(_INSECURE_PORT),
        "authorization-always-allow-paths": _always(_NO_AUTHORIZATION_PATHS),
    },
    "kube-scheduler-arg": {
        "port": _unless_zero(_INSECURE_PORT),
        "address": _always(_INSECURE_PORT),
        "authorization-always-allow-paths": _always(_NO_AUTHORIZATION_PATHS),
    },
    "cloud-controller-manager-arg": {
        "authorization-always-allow-paths": _always(_NO_AUTHORIZATION_PATHS),
    },
    "etcd-arg": {
        "client-cert-auth": _if_false("etcd would serve clients without a certificate"),
        "peer-client-cert-auth": _if_false("etcd would accept peers without a certificate"),
        "listen-client-http-urls": _always("etcd would serve clients in clear, bypassing the API server"),
    },
}


def _split_arg(item: object) -> tuple[str, str]:
    """(flag name, value) of one component argument, as RKE2 reads it: a leading '--' is optional, a bare flag is
    true, and '_' is the same as '-' in flag names."""
    text = str(item).lower() if isinstance(item, bool) else str(item)
    name, sep, value = text.strip().lstrip("-").partition("=")
    return name.strip().replace("_", "-").lower(), (value if sep else "true")


def weakening_reason(key: str, value: object) -> str | None:
    """Why an extra RKE2 config key and value would weaken the cluster (see :data:`REFUSED_CONFIG_KEYS`,
    :data:`COMPONENT_ARG_RULES`), or None when it would not."""
    name = key.rstrip("+")
    if name in REFUSED_CONFIG_KEYS:
        return f"cannot be set here: {REFUSED_CONFIG_KEYS[name]}."
    items = value if isinstance(value, list) else [value]
    rule = _CONFIG_VALUE_RULES.get(name)
    if rule is not None:
        if isinstance(value, list):
            return "takes one value, not a list."
        reason = rule(value)
        return reason
    rules = COMPONENT_ARG_RULES.get(name)
    if rules is None:
        return None
    for item in items:
        flag, flag_value = _split_arg(item)
        for rule_name, check in rules.items():
            matches = flag.startswith(rule_name) if rule_name.endswith("-") else flag == rule_name
            reason = check(flag_value) if matches else None
            if reason:
                return f"{str(item)!r} is refused: {reason}."
    return None


def weakening_config_errors(value: object) -> list[str]:
    """What a stored extra-config mapping holds that :func:`weakening_reason` refuses, one message per key (values
    stored before a key was refused are checked again before they are rendered into a node's config.yaml)."""
    if not isinstance(value, dict):
        return []
    return [
        f"{key!r}: {reason}"
        for key, item in value.items()
        if isinstance(key, str) and (reason := weakening_reason(key, item))
    ]


# RKE2 "critical" server flags beyond the ones with their own fields: every server must have the same value, or a
# joining server is refused ("critical configuration value mismatch"). They belong to the cluster, never to one
# node, and are frozen with the other critical values once the cluster has bootstrapped.
CRITICAL_CONFIG_KEYS = frozenset({"disable-kube-proxy", "disable-cloud-controller", "egress-selector-mode"})


def critical_config(value: object) -> dict[str, object]:
    """The critical keys of an extra-config mapping (``+`` suffixes folded into the key)."""
    if not isinstance(value, dict):
        return {}
    return {
        key: item for key, item in value.items() if isinstance(key, str) and key.rstrip("+") in CRITICAL_CONFIG_KEYS
    }


_LABEL_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


# The kubelet refuses to start when --node-labels holds a key in the kubernetes.io or k8s.io namespaces, except
# for these prefixes and keys (labels such as node-role.kubernetes.io/worker are set with kubectl afterwards).
_KUBELET_LABEL_PREFIXES = ("kubelet.kubernetes.io/", "node.kubernetes.io/")
_KUBELET_LABEL_KEYS = frozenset(
    {
        "kubernetes.io/hostname",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    }
)


def _is_restricted_label_key(key: str) -> bool:
    prefix, sep, _ = key.rpartition("/")
    if not sep:
        return False
    restricted = any(prefix == ns or prefix.endswith("." + ns) for ns in ("kubernetes.io", "k8s.io"))
    return restricted and key not in _KUBELET_LABEL_KEYS and not key.startswith(_KUBELET_LABEL_PREFIXES)


def validate_node_label(value: str) -> None:
    """Kubernetes label ``key=value`` that the kubelet accepts at registration."""
    key, sep, label_value = (value if isinstance(value, str) else "").partition("=")
    prefix = key.rpartition("/")[0]
    if not sep or not _LABEL_KEY_RE.match(key) or len(prefix) > 253 or not _LABEL_VALUE_RE.match(label_value):
        raise ValidationError(f"{value!r} is not a Kubernetes label of the form key=value.", code="invalid_label")
    if _is_restricted_label_key(key):
        raise ValidationError(
            f"{value!r}: the kubelet refuses labels in the kubernetes.io and k8s.io namespaces at registration "
            "(except node.kubernetes.io/ and a few well-known keys); set such labels with kubectl once the node "
            "has joined.",
            code="restricted_label",
        )


def validate_node_taint(value: str) -> None:
    """Kubernetes taint ``key[=value]:Effect``."""
    head, sep, effect = (value if isinstance(value, str) else "").rpartition(":")
    key, _, taint_value = head.partition("=")
    if (
        not sep
        or effect not in _TAINT_EFFECTS
        or not _LABEL_KEY_RE.match(key)
        or not _LABEL_VALUE_RE.match(taint_value)
    ):
        raise ValidationError(
            f"{value!r} is not a Kubernetes taint of the form key[=value]:NoSchedule|PreferNoSchedule|NoExecute.",
            code="invalid_taint",
        )
