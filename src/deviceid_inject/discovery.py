"""Finding the PCI function behind an attachment, then what the device-info spec can say about it.

Each strategy is one small function that returns an address or raises
NotApplicable with the reason, and they are tried in the order of STRATEGIES:
first what the chain already knows, then the cheap look at the pod's netdev,
and the netlink VF-table search (which needs pyroute2) only when those fail,
as they do for a DPDK VF that has no netdev anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import netns, vftable
from .pci import SysfsPci, normalize_address

# Names for annotations only: typing costs milliseconds to import on every ADD.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    Strategy = Callable[["Clues", "Host"], str]

VHOST_NET = "/dev/vhost-net"


class NotApplicable(Exception):
    """A strategy did not apply; the message says why."""


@dataclass(frozen=True)
class Clues:
    """What the chain tells us about the attachment."""

    ifname: str
    mac: str | None = None
    result_pci_id: str | None = None
    runtime_device_id: str | None = None
    config_device_id: str | None = None


@dataclass(frozen=True)
class Device:
    """A discovered PCI function and what the NPWG device-info spec lets us say about it."""

    pci_address: str
    strategy: str
    pf_pci_address: str | None = None
    rdma_device: str | None = None
    representor_device: str | None = None
    vhost_net: str | None = None


@dataclass(frozen=True)
class Attempt:
    strategy: str
    outcome: str


@dataclass
class Discovery:
    device: Device | None
    attempts: list[Attempt] = field(default_factory=list)

    def explain(self) -> str:
        return "; ".join(f"{a.strategy}: {a.outcome}" for a in self.attempts)


class Host:
    """Where discovery looks: the pod's netdev (through its netns, or a fixture's class/net when
    sysfsRoot is set), the PCI tree, and the PFs' VF tables. `vhost_net` is the device node to
    report when the config asks for vhost-net."""

    def __init__(
        self,
        netns_path: str,
        sysfs_root: str | None = None,
        pci: SysfsPci | None = None,
        vf_tables: vftable.Source | None = None,
        pf_names: Sequence[str] = (),
        vhost_net: str | None = None,
    ) -> None:
        self.netns_path = netns_path
        self.sysfs_root = sysfs_root
        self.pci = pci or SysfsPci(sysfs_root)
        self.vf_tables = vf_tables or vftable.netlink_tables
        self.pf_names = tuple(pf_names)
        self.vhost_net = vhost_net
        self._netdevs: dict[str, netns.NetdevView] = {}

    def netdev(self, ifname: str) -> netns.NetdevView:
        if ifname not in self._netdevs:
            self._netdevs[ifname] = self._look(ifname)
        return self._netdevs[ifname]

    def _look(self, ifname: str) -> netns.NetdevView:
        if self.sysfs_root is None:
            return netns.look_inside(self.netns_path, ifname)
        exists, device_path, problem = netns.read_netdev(self.sysfs_root, ifname)
        return netns.NetdevView(exists=exists, device_path=device_path, problem=problem)


def from_result(clues: Clues, host: Host) -> str:
    return _given(clues.result_pci_id, "the interface in prevResult has no pciID")


def from_runtime_device_id(clues: Clues, host: Host) -> str:
    return _present(host, _given(clues.runtime_device_id, "runtimeConfig has no deviceID (capability deviceID)"))


def from_config_device_id(clues: Clues, host: Host) -> str:
    return _present(host, _given(clues.config_device_id, "the config has no deviceID"))


def _present(host: Host, address: str) -> str:
    # A deviceID can be a placeholder: a Pod's network selection may carry one only so that Multus
    # v4 asks the chain for a device-info file. One that names no function here is no clue at all.
    if not os.path.isdir(host.pci.path(address)):
        raise NotApplicable(f"deviceID {address} names no PCI function on this host (a placeholder?)")
    return address


def _given(value: str | None, absent: str) -> str:
    if not value:
        raise NotApplicable(absent)
    address = normalize_address(value)
    if address is None:
        raise NotApplicable(f"{value!r} is not a PCI address")
    return address


def from_netdev_sysfs(clues: Clues, host: Host) -> str:
    view = _pod_netdev(clues, host)
    if not view.device_path:
        raise NotApplicable(view.problem or f"{clues.ifname} has no device link")
    address = host.pci.pci_parent(view.device_path)
    if address is None:
        raise NotApplicable(f"{clues.ifname} is backed by {view.device_path}, which is not on PCI")
    return address


def from_netdev_ethtool(clues: Clues, host: Host) -> str:
    if host.sysfs_root is not None:
        raise NotApplicable("sysfsRoot is set, and ethtool would ask the real kernel instead")
    view = _pod_netdev(clues, host)
    if not view.bus_info:
        raise NotApplicable(f"{clues.ifname} (driver {view.driver or 'unknown'}) reports no ethtool bus-info")
    address = normalize_address(view.bus_info)
    if address is None:
        raise NotApplicable(f"ethtool bus-info {view.bus_info!r} of {clues.ifname} is not a PCI address")
    return address


def _pod_netdev(clues: Clues, host: Host) -> netns.NetdevView:
    view = host.netdev(clues.ifname)
    if not view.exists:
        where = "in the fixture's class/net" if host.sysfs_root else "in the pod's netns"
        raise NotApplicable(f"no netdev {clues.ifname} {where}" + (f" ({view.problem})" if view.problem else ""))
    return view


def from_vf_table(clues: Clues, host: Host) -> str:
    if not clues.mac:
        raise NotApplicable("the interface in prevResult has no mac to look up in the PFs' VF tables")
    pfs = host.pf_names or tuple(host.pci.sriov_pfs())
    if not pfs:
        raise NotApplicable("the host has no PF with VFs enabled")
    matches = vftable.find_mac(host.vf_tables(pfs), clues.mac)
    if not matches:
        raise NotApplicable(f"no VF with mac {clues.mac} on {', '.join(pfs)}")
    located = [(entry, _vf_address(host, entry)) for entry in matches]
    if len(located) > 1:
        named = ", ".join(f"{e.pf} vf {e.index} ({addr or 'no virtfn link'})" for e, addr in located)
        raise vftable.Ambiguous(f"mac {clues.mac} is on more than one VF: {named}")
    entry, address = located[0]
    if address is None:
        raise NotApplicable(f"{entry.pf} vf {entry.index} has mac {clues.mac} but no virtfn{entry.index} in sysfs")
    return address


def _vf_address(host: Host, entry: vftable.VfEntry) -> str | None:
    pf_address = host.pci.host_netdev_address(entry.pf)
    return host.pci.virtfn(pf_address, entry.index) if pf_address else None


STRATEGIES: tuple[tuple[str, Strategy], ...] = (
    ("prevResult pciID", from_result),
    ("runtimeConfig deviceID", from_runtime_device_id),
    ("config deviceID", from_config_device_id),
    ("netdev sysfs", from_netdev_sysfs),
    ("netdev ethtool", from_netdev_ethtool),
    ("VF table by mac", from_vf_table),
)


def discover(clues: Clues, host: Host, strategies: Sequence[tuple[str, Strategy]] = STRATEGIES) -> Discovery:
    """Try each strategy in order; the first address wins, every miss is remembered."""
    discovery = Discovery(device=None)
    for name, strategy in strategies:
        try:
            address = strategy(clues, host)
        except NotApplicable as why:
            discovery.attempts.append(Attempt(name, str(why)))
            continue
        discovery.attempts.append(Attempt(name, f"found {address}"))
        discovery.device = enrich(address, name, host)
        return discovery
    return discovery


def enrich(address: str, strategy: str, host: Host) -> Device:
    """Add what the PCI tree knows: the PF, the RDMA device, the switchdev representor, vhost-net."""
    pci = host.pci
    pf = pci.physfn(address)
    return Device(
        pci_address=address,
        strategy=strategy,
        pf_pci_address=pf,
        rdma_device=pci.rdma_device(address),
        representor_device=pci.representor(pf, address) if pf else None,
        vhost_net=host.vhost_net if host.vhost_net and os.path.exists(host.vhost_net) else None,
    )
