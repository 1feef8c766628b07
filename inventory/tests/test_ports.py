from inventory.ports import CNI_PORTS, listening_ports, overlay_port


def test_servers_listen_on_control_plane_and_etcd_ports_agents_do_not():
    server = {p.spec for p in listening_ports("server", "canal")}
    agent = {p.spec for p in listening_ports("agent", "canal")}
    assert {"9345/tcp", "6443/tcp", "2379/tcp", "2380/tcp", "2381/tcp"} <= server
    assert not {"9345/tcp", "6443/tcp", "2379/tcp", "2380/tcp"} & agent
    assert {"10250/tcp", "30000-32767/tcp", "8472/udp"} <= agent


def test_overlay_port_follows_the_cni():
    assert overlay_port("canal").spec == "8472/udp"
    assert overlay_port("cilium").spec == "8472/udp"
    assert overlay_port("calico").spec == "4789/udp"
    assert overlay_port("none") is None
    assert "4789/udp" not in {p.spec for p in listening_ports("agent", "canal")}


def test_every_cni_choice_has_an_entry():
    from clusters.choices import Cni

    assert set(CNI_PORTS) == set(Cni.values)
