"""Validators for names, addresses and versions used in cluster definitions."""

from __future__ import annotations

import ipaddress
import re

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
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def validate_ip_address(value: str) -> None:
    if not isinstance(value, str) or not is_ip_address(value):
        raise ValidationError("Enter a valid IPv4 or IPv6 address.", code="invalid_ip")


def validate_address(value: str) -> None:
    """An IPv4/IPv6 address or an RFC 1123 DNS name."""
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
        raise ValidationError(
            "Enter an RKE2 release such as v1.31.4+rke2r1.", code="invalid_rke2_version"
        )


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
            if _SECRET_KEY_RE.search(key):
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
                if isinstance(element, str) and ("\n" in element or "\r" in element or "\x00" in element):
                    raise ValidationError(
                        f"{key!r}: values cannot contain line breaks or NUL characters.", code="invalid_config_value"
                    )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RKE2ConfigValidator)


validate_rke2_config = RKE2ConfigValidator()

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
    if not sep or effect not in _TAINT_EFFECTS or not _LABEL_KEY_RE.match(key) or not _LABEL_VALUE_RE.match(taint_value):
        raise ValidationError(
            f"{value!r} is not a Kubernetes taint of the form key[=value]:NoSchedule|PreferNoSchedule|NoExecute.",
            code="invalid_taint",
        )
