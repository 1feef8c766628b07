from clusters.services.preflight import preflight_text, unreachable_pairs

FACTS = {
    "rke2_preflight_unreachable": {
        "w2": [{"to": "m1", "address": "10.0.0.1", "port": 9345, "protocol": "tcp", "error": "connection timed out"}],
        "m1": [],
        "w1": [
            {"to": "m1", "address": "10.0.0.1", "port": 9345, "protocol": "tcp", "error": "connection timed out"},
            {"to": "w2", "address": "10.0.0.4", "port": 8472, "protocol": "udp", "error": "no echo within 3 s"},
        ],
    },
    "rke2_preflight_hosts": {
        "m1": {
            "install_method": "tar",
            "rke2_version": "v1.31.4+rke2r1",
            "rke2_running": ["server"],
            "cluster_data": True,
            "not_probed": [],
        },
        "w1": {
            "install_method": "none",
            "rke2_version": "",
            "rke2_running": [],
            "cluster_data": False,
            "not_probed": [{"to": "m1", "port": 8472, "protocol": "udp"}],
        },
        "w2": {"install_method": "rpm", "rke2_version": "", "rke2_running": [], "not_probed": []},
    },
}


def test_each_unreachable_pair_and_port_is_named_by_source_host():
    assert unreachable_pairs(FACTS) == [
        "w1 → m1 9345/tcp: connection timed out",
        "w1 → w2 8472/udp: no echo within 3 s",
        "w2 → m1 9345/tcp: connection timed out",
    ]


def test_the_explanation_names_pairs_existing_rke2_and_probes_not_made():
    text = preflight_text(FACTS)
    assert text.startswith(
        " Unreachable (3): w1 → m1 9345/tcp: connection timed out; w1 → w2 8472/udp: no echo within 3 s; "
        "w2 → m1 9345/tcp: connection timed out."
    )
    assert (
        " RKE2 found: m1 v1.31.4+rke2r1 (tar, rke2-server running, holds cluster data); w2 version unknown (rpm)."
        in text
    )
    assert text.endswith(": 8472/udp on m1.")


def test_nothing_without_preflight_facts_or_findings():
    assert preflight_text({}) == ""
    assert preflight_text({"rke2_preflight_unreachable": {"m1": []}, "rke2_preflight_hosts": {"m1": {}}}) == ""
