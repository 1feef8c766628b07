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
    if not _DNS_LABEL_RE.match(value or ""):
        raise ValidationError(
            "Enter a DNS-safe name: lowercase letters, digits and '-', at most 63 characters, "
            "starting and ending with a letter or digit.",
            code="invalid_dns_label",
        )


def validate_hostname(value: str) -> None:
    """RFC 1123 host name: dot-separated DNS labels, at most 253 characters, lowercase."""
    if not value or len(value) > 253 or not _HOSTNAME_RE.match(value):
        raise ValidationError(
            "Enter a valid RFC 1123 host name (lowercase letters, digits, '-' and '.', at most 253 characters).",
            code="invalid_hostname",
        )


def is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def validate_address(value: str) -> None:
    """An IPv4/IPv6 address or an RFC 1123 DNS name."""
    if is_ip_address(value):
        return
    try:
        validate_hostname(value)
    except ValidationError:
        raise ValidationError("Enter an IP address or a DNS name.", code="invalid_address") from None


def validate_cidr(value: str) -> None:
    """A network in CIDR notation, or a comma-separated IPv4,IPv6 dual-stack pair."""
    parts = [part.strip() for part in (value or "").split(",")]
    if not 1 <= len(parts) <= 2:
        raise ValidationError("Enter one CIDR, or an IPv4 and an IPv6 CIDR separated by a comma.", code="invalid_cidr")
    try:
        networks = [ipaddress.ip_network(part, strict=True) for part in parts]
    except ValueError as exc:
        raise ValidationError(f"Enter a valid network in CIDR notation ({exc}).", code="invalid_cidr") from None
    if len(networks) == 2 and networks[0].version == networks[1].version:
        raise ValidationError("A dual-stack value needs one IPv4 and one IPv6 CIDR.", code="invalid_cidr")


def parse_cidrs(value: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(part.strip(), strict=True) for part in value.split(",")]


def validate_rke2_version(value: str) -> None:
    if not RKE2_VERSION_RE.match(value or ""):
        raise ValidationError(
            "Enter an RKE2 release such as v1.31.4+rke2r1.", code="invalid_rke2_version"
        )


def parse_rke2_version(value: str) -> tuple[int, int, int, int]:
    match = RKE2_VERSION_RE.match(value)
    if not match:
        raise ValueError(f"not an RKE2 version: {value!r}")
    return (int(match["major"]), int(match["minor"]), int(match["patch"]), int(match["release"]))


_CONFIG_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9-]*\+?$")
_SCALAR_TYPES = (str, int, float, bool)


@deconstructible
class RKE2ConfigValidator:
    """Validates a JSON mapping of extra RKE2 ``config.yaml`` keys (``cluster_vars`` / ``node_vars``).

    Keys are RKE2 flag names (lowercase, digits, '-', an optional trailing '+' to append); values are scalars or
    lists of scalars. Keys the portal manages itself are refused, so that extra keys can never redirect a node to
    another server or replace its token.
    """

    reserved = frozenset({"server", "token", "token-file", "agent-token", "agent-token-file", "node-name"})

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
                    f"{key!r} is managed by the portal and cannot be set here.", code="reserved_config_key"
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

_LABEL_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def validate_node_label(value: str) -> None:
    """Kubernetes label ``key=value``."""
    key, sep, label_value = (value or "").partition("=")
    if not sep or not _LABEL_KEY_RE.match(key) or not _LABEL_VALUE_RE.match(label_value):
        raise ValidationError(f"{value!r} is not a Kubernetes label of the form key=value.", code="invalid_label")


def validate_node_taint(value: str) -> None:
    """Kubernetes taint ``key[=value]:Effect``."""
    head, sep, effect = (value or "").rpartition(":")
    key, _, taint_value = head.partition("=")
    if not sep or effect not in _TAINT_EFFECTS or not _LABEL_KEY_RE.match(key) or not _LABEL_VALUE_RE.match(taint_value):
        raise ValidationError(
            f"{value!r} is not a Kubernetes taint of the form key[=value]:NoSchedule|PreferNoSchedule|NoExecute.",
            code="invalid_taint",
        )
