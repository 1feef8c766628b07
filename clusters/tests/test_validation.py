"""Validation of names, addresses, networks and versions, and the cross-field rules of clusters and nodes."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from clusters import validators
from clusters.models import Cluster, Node

from .factories import make_cluster, mark_installed

# Validators ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "node1",
        "a",
        "node-1.example.com",
        "1node",
        "x" * 63,
        ".".join(["a" * 63] * 3) + "." + "b" * 61,
        "10-0-0-1.nip.io",
    ],
)
def test_valid_hostnames(value):
    validators.validate_hostname(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Node1",
        "node_1",
        "-node",
        "node-",
        "node..example",
        "node.",
        ".node",
        "x" * 64,
        "a" * 250 + ".com",
        "node 1",
        "nöde",
        "10.0.0.1",
        "10.0.0.256",
        None,
        42,
    ],
)
def test_invalid_hostnames(value):
    with pytest.raises(ValidationError) as info:
        validators.validate_hostname(value)
    assert info.value.code == "invalid_hostname"


@pytest.mark.parametrize("value", ["alpha", "prod-eu-1", "a" * 63, "1st"])
def test_valid_cluster_names(value):
    validators.validate_dns_label(value)


@pytest.mark.parametrize("value", ["", "Prod", "prod.eu", "prod_eu", "-prod", "a" * 64, None])
def test_invalid_cluster_names(value):
    with pytest.raises(ValidationError):
        validators.validate_dns_label(value)


@pytest.mark.parametrize("value", ["10.0.0.1", "::1", "2001:db8::10", "fd00::1", "lb.example.com", "vip"])
def test_valid_addresses(value):
    validators.validate_address(value)


@pytest.mark.parametrize(
    "value", ["10.0.0.256", "1.2.3", "2001:db8:::1", "https://lb:9345", "lb:9345", "", "LB.example"]
)
def test_invalid_addresses(value):
    with pytest.raises(ValidationError) as info:
        validators.validate_address(value)
    assert "neither an IP address nor a DNS name" in info.value.messages[0]


@pytest.mark.parametrize(
    "value", ["10.42.0.0/16", "fd00:42::/56", "10.42.0.0/16,fd00:42::/56", "10.42.0.0/16, fd00:42::/56"]
)
def test_valid_cidrs(value):
    validators.validate_cidr(value)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("10.42.0.1/16", "host bits set"),
        ("10.42.0.0", "no prefix length"),
        ("10.42.0.0/33", "valid network"),
        ("10.42.0.0/16,10.44.0.0/16", "one IPv4 and one IPv6"),
        ("10.42.0.0/16,fd00::/56,fd01::/56", "separated by a comma"),
        ("banana/16", "valid network"),
        ("", "no prefix length"),
    ],
)
def test_invalid_cidrs(value, fragment):
    with pytest.raises(ValidationError) as info:
        validators.validate_cidr(value)
    assert fragment in info.value.messages[0]


def test_rke2_versions():
    validators.validate_rke2_version("v1.31.4+rke2r1")
    assert validators.parse_rke2_version("v1.31.4+rke2r2") == (1, 31, 4, 2)
    assert validators.parse_rke2_version("v1.31.10+rke2r1") > validators.parse_rke2_version("v1.31.9+rke2r1")
    for bad in ("1.31.4+rke2r1", "v1.31.4", "v1.31.4+k3s1", "latest", "stable", "v1.31+rke2r1", ""):
        with pytest.raises(ValidationError):
            validators.validate_rke2_version(bad)


@pytest.mark.parametrize(
    "label",
    ["env=prod", "example.com/tier=web", "node.kubernetes.io/pool=a", "topology.kubernetes.io/zone=z1", "empty="],
)
def test_valid_labels(label):
    validators.validate_node_label(label)


@pytest.mark.parametrize(
    ("label", "code"),
    [
        ("env", "invalid_label"),
        ("=prod", "invalid_label"),
        ("env=has space", "invalid_label"),
        ("node-role.kubernetes.io/worker=true", "restricted_label"),
        ("kubernetes.io/role=master", "restricted_label"),
        ("foo.k8s.io/x=y", "restricted_label"),
    ],
)
def test_invalid_labels(label, code):
    with pytest.raises(ValidationError) as info:
        validators.validate_node_label(label)
    assert info.value.code == code


def test_taints():
    for good in ("CriticalAddonsOnly=true:NoExecute", "dedicated:NoSchedule", "example.com/gpu=yes:PreferNoSchedule"):
        validators.validate_node_taint(good)
    for bad in ("dedicated", "dedicated=true", "dedicated=true:Sometimes", ":NoSchedule"):
        with pytest.raises(ValidationError):
            validators.validate_node_taint(bad)


def test_extra_config_keys():
    check = validators.validate_rke2_config
    check(
        {
            "write-kubeconfig-mode": "0600",
            "kube-apiserver-arg+": ["audit-log-maxage=30"],
            "disable": ["rke2-ingress-nginx"],
        }
    )
    check({})
    for bad, fragment in (
        ({"token": "x"}, "token is managed"),
        ({"server": "https://evil:9345"}, "registration address"),
        ({"cluster-cidr": "10.99.0.0/16"}, "cluster CIDR field"),
        ({"tls-san+": ["x"]}, "TLS SANs field"),
        ({"node-label": ["a=b"]}, "labels"),
        ({"Bad_Key": 1}, "not an RKE2 configuration key"),
        ({"disable": {"nested": 1}}, "values must be"),
        ({"node-name": "x"}, "host name"),
        ({"kubelet-arg": "a\nb"}, "line breaks"),
        (["not", "a", "mapping"], "mapping"),
        ({"etcd-s3-secret-key": "abc"}, "cannot carry secrets"),
        ({"etcd-s3-access-key": "abc"}, "cannot carry secrets"),
    ):
        with pytest.raises(ValidationError) as info:
            check(bad)
        assert fragment in info.value.messages[0], (bad, info.value.messages)


# Cluster.clean() -------------------------------------------------------------------------------------------------


def cluster_errors(**fields) -> dict[str, list[str]]:
    fields.setdefault("name", "alpha")
    fields.setdefault("rke2_version", "v1.31.4+rke2r1")
    cluster = Cluster(**fields)
    try:
        cluster.full_clean(validate_unique=False)
    except ValidationError as exc:
        return exc.message_dict
    return {}


def test_default_cluster_is_valid():
    assert cluster_errors() == {}


def test_cluster_and_service_cidrs_must_not_overlap():
    errors = cluster_errors(cluster_cidr="10.42.0.0/16", service_cidr="10.42.128.0/20", cluster_dns="10.42.128.10")
    assert errors == {"service_cidr": ["The service CIDR 10.42.128.0/20 overlaps the cluster CIDR 10.42.0.0/16."]}
    errors = cluster_errors(
        cluster_cidr="10.42.0.0/16,fd00:42::/56", service_cidr="10.43.0.0/16,fd00:42::/112", cluster_dns="10.43.0.10"
    )
    assert list(errors) == ["service_cidr"] and "fd00:42::/112" in errors["service_cidr"][0]


def test_cluster_dns_must_be_inside_the_service_cidr():
    errors = cluster_errors(service_cidr="10.96.0.0/16", cluster_dns="10.43.0.10")
    assert errors == {
        "cluster_dns": ["The cluster DNS address 10.43.0.10 must lie inside the service CIDR (10.96.0.0/16)."]
    }
    assert cluster_errors(service_cidr="10.96.0.0/16", cluster_dns="10.96.0.10") == {}
    assert "network or broadcast" in cluster_errors(cluster_dns="10.43.0.0")["cluster_dns"][0]
    assert "network or broadcast" in cluster_errors(cluster_dns="10.43.255.255")["cluster_dns"][0]
    # Dual stack: the DNS address may be in either family's range.
    assert cluster_errors(service_cidr="10.43.0.0/16,fd00:43::/112", cluster_dns="fd00:43::a") == {}


def test_service_cidr_size_is_bounded_like_the_api_server_does():
    errors = cluster_errors(cluster_cidr="172.16.0.0/16", service_cidr="10.0.0.0/8", cluster_dns="10.0.0.10")
    assert errors == {"service_cidr": ["The service CIDR 10.0.0.0/8 is too large: use a prefix of /12 or longer."]}
    assert cluster_errors(cluster_cidr="172.16.0.0/16", service_cidr="10.0.0.0/12", cluster_dns="10.0.0.10") == {}


def test_cidrs_are_stored_in_canonical_form():
    cluster = Cluster(
        name="alpha",
        rke2_version="v1.31.4+rke2r1",
        cluster_cidr=" 10.42.0.0/16 , FD00:0042:0000::/56",
        service_cidr="10.43.0.0/16",
        cluster_dns="10.43.0.10",
    )
    cluster.full_clean(validate_unique=False)
    assert cluster.cluster_cidr == "10.42.0.0/16,fd00:42::/56"


def test_malformed_values_are_reported_once_per_field():
    errors = cluster_errors(
        name="Bad_Name",
        rke2_version="1.31",
        cluster_cidr="nonsense",
        cluster_dns="not-an-ip",
        registration_address="https://x",
        tls_san=["ok.example.com", "no good"],
        cni="weave",
    )
    assert set(errors) == {
        "name",
        "rke2_version",
        "cluster_cidr",
        "cluster_dns",
        "registration_address",
        "tls_san",
        "cni",
    }
    assert len(errors["cluster_dns"]) == 1
    assert errors["tls_san"] == ["'no good' is not an IP address or DNS name."]
    assert cluster_errors(tls_san="lb.example.com") == {"tls_san": ["Enter a list of DNS names or IP addresses."]}


@pytest.mark.django_db
def test_critical_values_are_frozen_after_bootstrap():
    cluster = make_cluster(cluster_vars={"disable-kube-proxy": False})
    # Before the install, everything may change.
    cluster.cluster_cidr = "10.52.0.0/16"
    cluster.full_clean()
    cluster.save()
    mark_installed(cluster)
    for field, value in (
        ("cni", "cilium"),
        ("cluster_cidr", "10.62.0.0/16"),
        ("service_cidr", "10.63.0.0/16"),
        ("cluster_dns", "10.43.0.11"),
        ("cluster_domain", "cluster.example"),
    ):
        fresh = Cluster.objects.get(pk=cluster.pk)
        setattr(fresh, field, value)
        if field == "service_cidr":
            fresh.cluster_dns = "10.63.0.10"
        with pytest.raises(ValidationError) as info:
            fresh.full_clean()
        assert "cannot change once the cluster is installed" in info.value.message_dict[field][0]
    fresh = Cluster.objects.get(pk=cluster.pk)
    fresh.cluster_vars = {"disable-kube-proxy": True}
    with pytest.raises(ValidationError) as info:
        fresh.full_clean()
    assert info.value.message_dict["cluster_vars"][0].startswith("disable-kube-proxy: ")
    # Equivalent spellings are not changes; other fields stay editable.
    fresh = Cluster.objects.get(pk=cluster.pk)
    fresh.cluster_cidr = " 10.52.0.0/16"
    fresh.description = "changed"
    fresh.cluster_vars = {"disable-kube-proxy": False, "write-kubeconfig-mode": "0400"}
    fresh.registration_address = "lb.example.com"
    fresh.full_clean()


# Node.clean() ----------------------------------------------------------------------------------------------------


def node_errors(**fields) -> dict[str, list[str]]:
    fields.setdefault("hostname", "node1")
    fields.setdefault("internal_ip", "10.0.0.1")
    node = Node(cluster=Cluster(name="alpha", rke2_version="v1.31.4+rke2r1"), **fields)
    try:
        node.full_clean(exclude=["cluster"], validate_constraints=False)
    except ValidationError as exc:
        return exc.message_dict
    return {}


def test_node_fields():
    assert node_errors() == {}
    assert node_errors(internal_ip="fd00::11", external_ip="2001:db8::11", use_external_ip=True) == {}
    assert set(node_errors(hostname="Node_1", internal_ip="10.0.0.999", role="boss")) == {
        "hostname",
        "internal_ip",
        "role",
    }
    assert node_errors(use_external_ip=True) == {"external_ip": ["Using the external IP requires an external IP."]}
    assert "labels" in node_errors(labels=["no-equals-sign"])
    assert "labels" in node_errors(labels="env=prod")
    assert "taints" in node_errors(taints=["x=y:Never"])
    assert node_errors(node_vars={"egress-selector-mode": "agent"}) == {
        "node_vars": [
            "egress-selector-mode: must be the same on every server; set it in the cluster's extra RKE2 config instead."
        ]
    }


@pytest.mark.django_db
def test_node_full_clean_reports_the_external_ip_rule_once():
    cluster = make_cluster()
    node = Node(cluster=cluster, hostname="extra", internal_ip="10.0.0.50", use_external_ip=True)
    with pytest.raises(ValidationError) as info:
        node.full_clean()
    assert info.value.message_dict == {"external_ip": ["Using the external IP requires an external IP."]}
