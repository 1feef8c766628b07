"""The network ports RKE2 needs, by node type and CNI: one table shared by host preparation (firewall rules) and
preflight (reachability between nodes).

Each :class:`Port` is a port a node *listens on* and who must reach it: ``"all"`` (every node of the cluster) or
``"servers"`` (server nodes only). Sources: RKE2's installation requirements (inbound rules for server and agent
nodes) and the CNI charts' documentation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Protocol = Literal["tcp", "udp"]
Peers = Literal["all", "servers"]


@dataclass(frozen=True)
class Port:
    port: int
    protocol: Protocol
    peers: Peers
    purpose: str
    #: The last port of a range (NodePorts); ``None`` for a single port.
    end: int | None = None

    @property
    def spec(self) -> str:
        """``6443/tcp`` or ``30000-32767/tcp``: the form firewalld and ufw take."""
        ports = f"{self.port}-{self.end}" if self.end else str(self.port)
        return f"{ports}/{self.protocol}"

    def as_dict(self) -> dict:
        return {**asdict(self), "spec": self.spec}


SUPERVISOR = Port(9345, "tcp", "all", "RKE2 supervisor (node registration)")
KUBE_API = Port(6443, "tcp", "all", "Kubernetes API")
KUBELET = Port(10250, "tcp", "all", "kubelet metrics and logs")
ETCD_CLIENT = Port(2379, "tcp", "servers", "etcd client")
ETCD_PEER = Port(2380, "tcp", "servers", "etcd peer")
ETCD_METRICS = Port(2381, "tcp", "servers", "etcd metrics")
NODE_PORTS = Port(30000, "tcp", "all", "NodePort services", end=32767)

SERVER_PORTS: tuple[Port, ...] = (SUPERVISOR, KUBE_API, ETCD_CLIENT, ETCD_PEER, ETCD_METRICS)
COMMON_PORTS: tuple[Port, ...] = (KUBELET, NODE_PORTS)

VXLAN_FLANNEL = Port(8472, "udp", "all", "VXLAN overlay")
VXLAN_CALICO = Port(4789, "udp", "all", "Calico VXLAN overlay")
CNI_PORTS: dict[str, tuple[Port, ...]] = {
    "canal": (VXLAN_FLANNEL, Port(9099, "tcp", "all", "Canal health checks")),
    "flannel": (VXLAN_FLANNEL,),
    "calico": (VXLAN_CALICO, Port(179, "tcp", "all", "Calico BGP")),
    "cilium": (VXLAN_FLANNEL, Port(4240, "tcp", "all", "Cilium health checks")),
    "none": (),
}


def overlay_port(cni: str) -> Port | None:
    """The CNI's overlay (UDP) port, or ``None`` when the CNI is not the portal's to know (``none``)."""
    return next((p for p in CNI_PORTS.get(cni, ()) if p.protocol == "udp"), None)


def listening_ports(rke2_type: str, cni: str) -> list[Port]:
    """Every port a node of ``rke2_type`` (``server``/``agent``) listens on for the cluster, in a stable order."""
    ports = [*SERVER_PORTS] if rke2_type == "server" else []
    return [*ports, *COMMON_PORTS, *CNI_PORTS.get(cni, ())]
