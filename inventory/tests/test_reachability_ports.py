from inventory.variables import reachability_ports


def specs(cni: str) -> dict[str, tuple[str, str]]:
    return {
        f"{item['port']}/{item['protocol']}": (item["listeners"], item["sources"]) for item in reachability_ports(cni)
    }


def test_servers_are_reached_on_supervisor_and_api_by_all_and_on_etcd_by_servers():
    assert specs("canal") == {
        "9345/tcp": ("servers", "all"),
        "6443/tcp": ("servers", "all"),
        "2379/tcp": ("servers", "servers"),
        "2380/tcp": ("servers", "servers"),
        "10250/tcp": ("all", "all"),
        "8472/udp": ("all", "all"),
    }


def test_the_overlay_port_follows_the_cni_and_none_has_none():
    assert "4789/udp" in specs("calico") and "8472/udp" not in specs("calico")
    assert "8472/udp" in specs("cilium")
    assert [spec for spec in specs("none") if spec.endswith("/udp")] == []
    assert "10250/tcp" in specs("none")
