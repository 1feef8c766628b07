"""Private registries of a cluster: the checks on what an operator enters, and the ``registries.yaml`` document.

RKE2 reads ``/etc/rancher/rke2/registries.yaml`` (containerd's registry configuration)::

    mirrors:
      <registry>: {endpoint: [<url>, ...], rewrite: {<regex>: <replacement>}}
    configs:
      <registry or endpoint host>: {auth: {username, password | auth | identity_token},
                                    tls: {ca_file, cert_file, key_file, insecure_skip_verify}}

One :class:`~clusters.models.Registry` row per registry host gives its mirror (when it has endpoints) and its
config (when it has credentials or TLS settings). :func:`registries_document` builds the document as a mapping;
the playbooks serialize it (``to_nice_yaml``), never as concatenated text. Credentials stay
:class:`~clusters.fields.Secret` values in it, so the mapping cannot be written into an inventory by mistake.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from .fields import MASK, Secret, reveal

__all__ = [
    "endpoint_problem",
    "file_path_problem",
    "registries_document",
    "registries_variable",
    "registry_name_problem",
    "registry_secrets",
    "rewrite_problems",
]

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_PORT_RE = re.compile(r"^[0-9]{1,5}$")
# Credentials that look like they were pasted into a plain field: user:password@, or a well-known token shape.
_TOKEN_SHAPES = re.compile(r"(ghp_|glpat-|xox[abp]-|AKIA[0-9A-Z]{16}|eyJ[A-Za-z0-9_-]{10,}\.)")


def _host_problem(host: str) -> str:
    if host.startswith("["):
        inner = host[1:-1] if host.endswith("]") else ""
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            return f"{host!r} is not a valid IPv6 address in brackets."
        return ""
    if len(host) > 253 or not _HOST_RE.match(host):
        return f"{host!r} is not a valid host name or IP address."
    return ""


def registry_name_problem(name: str) -> str:
    """Why ``name`` cannot name a registry (empty when it can): ``host``, ``host:port`` (IPv6 in brackets), or
    ``*`` for the default mirror of every registry."""
    if name == "*":
        return ""
    if not name:
        return "Enter the registry's host name, e.g. docker.io or registry.example.com:5000 (or * for every one)."
    if "://" in name or "/" in name or "@" in name:
        return "Enter the registry's host name only (optionally with :port), without a scheme, path or user name."
    host, port = name, ""
    if name.startswith("["):
        if "]" in name and name.rindex("]") < len(name) - 1:
            host, _, port = name.rpartition(":")
    elif name.count(":") == 1:
        host, _, port = name.partition(":")
    if port and (not _PORT_RE.match(port) or not 0 < int(port) < 65536):
        return f"{port!r} is not a valid port (1-65535)."
    problem = _host_problem(host)
    return problem.replace(repr(host), repr(name)) if problem else ""


def endpoint_problem(url: str) -> str:
    """Why ``url`` cannot be a mirror endpoint (empty when it can): http(s) with a host, no credentials in it."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return f"{url!r} is not a valid http:// or https:// URL."
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an http:// or https:// URL with a host name."
    if parts.username or parts.password:
        return (
            f"Put no user name or password in the endpoint URL {parts.scheme}://{parts.hostname}...: set them as "
            "the registry's credentials, which are stored encrypted."
        )
    if parts.query or parts.fragment:
        return f"{url!r}: remove the ?query or #fragment; containerd does not use them."
    if any(char.isspace() for char in url):
        return f"{url!r} contains spaces."
    return ""


def rewrite_problems(rewrite: object) -> list[str]:
    """Problems of a ``rewrite`` mapping (regular expression of an image path to its replacement)."""
    if not isinstance(rewrite, Mapping):
        return ['Enter a mapping of regular expressions to replacements, e.g. {"^rancher/(.*)": "mirror/$1"}.']
    problems = []
    for pattern, replacement in rewrite.items():
        if not isinstance(pattern, str) or not pattern or not isinstance(replacement, str):
            problems.append(f"{pattern!r}: both the expression and its replacement must be text.")
            continue
        try:
            re.compile(pattern)
        except re.error as exc:
            problems.append(f"{pattern!r} is not a valid regular expression ({exc}).")
        if _TOKEN_SHAPES.search(pattern) or _TOKEN_SHAPES.search(replacement):
            problems.append(f"{pattern!r}: this looks like a credential; set it as the registry's credentials.")
    return problems


def file_path_problem(path: str) -> str:
    """Why ``path`` cannot be a certificate or key file on the nodes (empty when it can)."""
    if not path:
        return ""
    if not path.startswith("/") or any(char.isspace() or char in "\0" for char in path) or "/../" in path + "/":
        return f"{path!r} is not an absolute file path on the nodes."
    if "-----BEGIN" in path:
        return "Enter the path of the file on the nodes, not its content."
    return ""


def plain_value_problem(value: str) -> str:
    """Why a plain (unencrypted) field value looks like a secret."""
    if _TOKEN_SHAPES.search(value) or "-----BEGIN" in value:
        return "This looks like a credential or key; put secrets only in the password, auth or identity token."
    return ""


def registries_document(registries: Iterable[Any], *, mask: bool = False) -> dict[str, Any]:
    """The ``registries.yaml`` mapping of ``registries`` (:class:`~clusters.models.Registry` rows), in name order.

    Credentials are :class:`~clusters.fields.Secret` values, or :data:`~clusters.fields.MASK` with ``mask``.
    Empty when there is no registry."""
    mirrors: dict[str, Any] = {}
    configs: dict[str, Any] = {}
    for registry in sorted(registries, key=lambda item: str(item.name)):
        name = str(registry.name)
        if registry.endpoints:
            mirror: dict[str, Any] = {"endpoint": [str(url) for url in registry.endpoints]}
            if registry.rewrite:
                mirror["rewrite"] = {str(key): str(value) for key, value in registry.rewrite.items()}
            mirrors[name] = mirror
        config: dict[str, Any] = {}
        auth: dict[str, Any] = {}
        if registry.username:
            auth["username"] = str(registry.username)
        for field in ("password", "auth", "identity_token"):
            if reveal(getattr(registry, field)):
                auth[field] = MASK if mask else Secret(reveal(getattr(registry, field)))
        if auth:
            config["auth"] = auth
        tls: dict[str, Any] = {}
        for field in ("ca_file", "cert_file", "key_file"):
            if getattr(registry, field):
                tls[field] = str(getattr(registry, field))
        if registry.insecure_skip_verify:
            tls["insecure_skip_verify"] = True
        if tls:
            config["tls"] = tls
        if config:
            configs[name] = config
    document: dict[str, Any] = {}
    if mirrors:
        document["mirrors"] = mirrors
    if configs:
        document["configs"] = configs
    return document


def registry_secrets(registries: Iterable[Any]) -> list[str]:
    """Every credential of ``registries`` in plain text (for masking job output)."""
    values = []
    for registry in registries:
        for field in ("password", "auth", "identity_token"):
            if value := reveal(getattr(registry, field)):
                values.append(value)
    return values


def registries_variable(document: Mapping[str, Any]) -> dict[str, Any]:
    """``rke2_registries``, the form of :func:`registries_document` the playbooks get: registry names and rewrite
    expressions become values (``name``, ``key``), never mapping keys, because an inventory or extravars file only
    takes plain names as keys (values are passed untemplated; keys cannot be). ``templates/registries.yaml.j2``
    turns it back into the document. Empty when there is no registry."""
    if not document:
        return {}
    mirrors = []
    for name, mirror in document.get("mirrors", {}).items():
        rewrite = [{"key": key, "value": value} for key, value in mirror.get("rewrite", {}).items()]
        mirrors.append({"name": name, "endpoint": list(mirror["endpoint"]), "rewrite": rewrite})
    configs = [{"name": name, "config": config} for name, config in document.get("configs", {}).items()]
    return {"mirrors": mirrors, "configs": configs}
