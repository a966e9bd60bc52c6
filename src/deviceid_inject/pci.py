"""Reading the host-global PCI tree: addresses, SR-IOV links, RDMA and representors.

`/sys/bus/pci/devices/<addr>` is the same in every network namespace, so these
reads need no namespace work. `SysfsPci` reads a sysfs tree (the real /sys or a
fixture shaped like it): the one view discovery uses, at every log level; libudev
(`udev.UdevDescriber`) only names a function for the log.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_BDF = re.compile(r"^(?:([0-9a-fA-F]{4,8}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")
_BDF_WITH_DOMAIN = re.compile(r"^[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
_VIRTFN = re.compile(r"^virtfn(\d+)$")
_REPRESENTOR_PORT = re.compile(r"^pf(\d+)vf(\d+)$")


def normalize_address(text: str) -> str | None:
    """`dddd:bb:dd.f` in lower case, or None when `text` is not a PCI address."""
    match = _BDF.match(text.strip())
    if not match:
        return None
    domain, bus, dev, fn = match.groups()
    return f"{int(domain or '0', 16):04x}:{bus.lower()}:{dev.lower()}.{fn}"


def address_in_path(path: str) -> str | None:
    """The PCI function nearest the end of a device path: a VF's own directory, or a virtio
    device's PCI parent (`.../0000:00:03.0/virtio2`)."""
    for part in reversed(path.split(os.sep)):
        if _BDF_WITH_DOMAIN.match(part):
            return normalize_address(part)
    return None


@dataclass(frozen=True)
class Description:
    """What a function is, for the log: its driver and ids."""

    driver: str | None
    vendor: str | None
    device: str | None


SYSFS = "/sys"  # where the kernel's sysfs is mounted, on the host and in the pod's private mount


class SysfsPci:
    """The PCI tree under `<root>/bus/pci/devices`, and host netdevs under `<root>/class/net`."""

    def __init__(self, root: str | None = None) -> None:
        self.root = root or SYSFS

    @property
    def devices(self) -> str:
        return os.path.join(self.root, "bus", "pci", "devices")

    def path(self, address: str) -> str:
        return os.path.join(self.devices, address)

    def pci_parent(self, device_path: str) -> str | None:
        """The PCI function a device path belongs to (itself, or a virtio device's parent)."""
        return address_in_path(device_path)

    def physfn(self, address: str) -> str | None:
        return self._linked_address(os.path.join(self.path(address), "physfn"))

    def virtfn(self, pf: str, index: int) -> str | None:
        return self._linked_address(os.path.join(self.path(pf), f"virtfn{index}"))

    def vf_index(self, pf: str, vf: str) -> int | None:
        """N such that the PF's virtfn<N> is `vf`; compared by link name, numerically."""
        try:
            names = os.listdir(self.path(pf))
        except OSError:
            return None
        for name in names:
            match = _VIRTFN.match(name)
            if match and self._linked_address(os.path.join(self.path(pf), name)) == vf:
                return int(match.group(1))
        return None

    def rdma_device(self, address: str) -> str | None:
        names = self._list(os.path.join(self.path(address), "infiniband"))
        return names[0] if names else None

    def netdevs(self, address: str) -> list[str]:
        return self._list(os.path.join(self.path(address), "net"))

    def netdev_attr(self, address: str, netdev: str, attr: str) -> str | None:
        return self._read(os.path.join(self.path(address), "net", netdev, attr))

    def representor(self, pf: str, vf: str) -> str | None:
        """The switchdev representor of `vf`: a netdev under the PF whose phys_port_name is
        pf<P>vf<N>, N being the VF's index, and whose phys_switch_id is the PF uplink's.

        Only a PF that has representors at all pays for finding the VF's index, which means
        reading its virtfn links: on legacy SR-IOV the cost stays flat in the number of VFs."""
        ports = {name: self.netdev_attr(pf, name, "phys_port_name") or "" for name in self.netdevs(pf)}
        representors = {name: int(m.group(2)) for name, p in ports.items() if (m := _REPRESENTOR_PORT.match(p))}
        if not representors:
            return None
        uplink_switch_ids = {
            self.netdev_attr(pf, name, "phys_switch_id") for name in ports if name not in representors
        } - {None, ""}
        index = self.vf_index(pf, vf)
        for name, vf_index in representors.items():
            if vf_index == index and self.netdev_attr(pf, name, "phys_switch_id") in uplink_switch_ids:
                return name
        return None

    def describe(self, address: str) -> Description:
        driver_link = os.path.join(self.path(address), "driver")
        driver = os.path.basename(os.readlink(driver_link)) if os.path.islink(driver_link) else None
        return Description(
            driver=driver,
            vendor=self._read(os.path.join(self.path(address), "vendor")),
            device=self._read(os.path.join(self.path(address), "device")),
        )

    def host_netdev_address(self, netdev: str) -> str | None:
        """The PCI function behind a netdev of the host's own netns (where PFs live)."""
        device = os.path.join(self.root, "class", "net", netdev, "device")
        return address_in_path(os.path.realpath(device)) if os.path.exists(device) else None

    def sriov_pfs(self) -> list[str]:
        """Host netdevs whose PCI function has VFs enabled: the only candidates for a VF search."""
        class_net = os.path.join(self.root, "class", "net")
        return [
            name
            for name in self._list(class_net)
            if (self._read(os.path.join(class_net, name, "device", "sriov_numvfs")) or "0") not in ("0", "")
        ]

    def _linked_address(self, link: str) -> str | None:
        if not os.path.islink(link):
            return None
        return normalize_address(os.path.basename(os.readlink(link)))

    @staticmethod
    def _list(folder: str) -> list[str]:
        try:
            return sorted(os.listdir(folder))
        except OSError:
            return []

    @staticmethod
    def _read(path: str) -> str | None:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read().strip()
        except OSError:
            return None
