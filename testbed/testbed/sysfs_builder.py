"""Builds sysfs-shaped fixture trees: the same folders, files and relative symlinks as a real
/sys, for the few entries deviceid-inject reads.

`python -m testbed.sysfs_builder` regenerates the committed trees under testdata/sysfs/;
benchmarks use Tree to make hosts with many VFs.
"""

from __future__ import annotations

import os
import shutil
import sys

from testbed.tools import REPO


class Tree:
    def __init__(self, root: str) -> None:
        self.root = root
        for folder in ("devices", "bus/pci/devices", "bus/pci/drivers", "class/net"):
            os.makedirs(os.path.join(root, folder), exist_ok=True)

    def _device_dir(self, address: str) -> str:
        domain_bus = address.rsplit(":", 1)[0]
        return os.path.join(self.root, "devices", f"pci{domain_bus}", address)

    def _link(self, target: str, link: str) -> None:
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.relpath(target, os.path.dirname(link)), link)

    def _write(self, path: str, text: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text + "\n")

    def function(self, address: str, driver: str, vendor: str = "0x8086", device: str = "0x1889") -> str:
        folder = self._device_dir(address)
        os.makedirs(folder, exist_ok=True)
        self._write(os.path.join(folder, "vendor"), vendor)
        self._write(os.path.join(folder, "device"), device)
        driver_dir = os.path.join(self.root, "bus", "pci", "drivers", driver)
        self._write(os.path.join(driver_dir, "bind"), "")
        self._link(driver_dir, os.path.join(folder, "driver"))
        self._link(folder, os.path.join(self.root, "bus", "pci", "devices", address))
        return folder

    def sriov(self, pf: str, vfs: list[str]) -> None:
        pf_dir = self._device_dir(pf)
        self._write(os.path.join(pf_dir, "sriov_totalvfs"), str(max(len(vfs), 1)))
        self._write(os.path.join(pf_dir, "sriov_numvfs"), str(len(vfs)))
        for index, vf in enumerate(vfs):
            self._link(self._device_dir(vf), os.path.join(pf_dir, f"virtfn{index}"))
            self._link(pf_dir, os.path.join(self._device_dir(vf), "physfn"))

    def netdev(self, parent_dir: str, name: str, **attrs: str) -> None:
        net_dir = os.path.join(parent_dir, "net", name)
        os.makedirs(net_dir, exist_ok=True)
        self._link(parent_dir, os.path.join(net_dir, "device"))
        for attr, value in attrs.items():
            self._write(os.path.join(net_dir, attr), value)
        self._link(net_dir, os.path.join(self.root, "class", "net", name))

    def rdma(self, address: str, name: str) -> None:
        self._write(os.path.join(self._device_dir(address), "infiniband", name, "node_type"), "1: CA")

    def virtio(self, address: str, name: str) -> str:
        folder = os.path.join(self._device_dir(address), name)
        os.makedirs(folder, exist_ok=True)
        return folder

    def device_dir(self, address: str) -> str:
        return self._device_dir(address)


def vf_addresses(bus: str, count: int, domain: str = "0000") -> list[str]:
    """VF addresses the way PFs lay them out: 8 functions a device, from device 01 on."""
    return [f"{domain}:{bus}:{1 + i // 8:02x}.{i % 8}" for i in range(count)]


def sriov_host(root: str, vf_count: int, pod_vf: int, pod_ifname: str = "net1", pf_name: str = "ens1f0") -> Tree:
    """An Intel E810 PF (ice) with `vf_count` iavf VFs; VF `pod_vf` is the pod's `pod_ifname`."""
    tree = Tree(root)
    pf = "0000:3b:00.0"
    tree.netdev(tree.function(pf, "ice", device="0x159b"), pf_name)
    vfs = vf_addresses("3b", vf_count)
    for vf in vfs:
        tree.function(vf, "iavf")
    tree.sriov(pf, vfs)
    tree.netdev(tree.device_dir(vfs[pod_vf]), pod_ifname)
    return tree


def build_all(base: str) -> None:
    """The committed fixture trees, one per shape discovery must handle."""
    # A netdev VF on iavf with index 11: virtfn10 and virtfn11 must not be confused with virtfn1.
    sriov_host(os.path.join(base, "vf-iavf"), vf_count=16, pod_vf=11)

    # Mellanox ConnectX VF with RDMA, in PCI domain 0001.
    tree = Tree(os.path.join(base, "mlx5-rdma"))
    pf = "0001:af:00.0"
    tree.netdev(tree.function(pf, "mlx5_core", vendor="0x15b3", device="0x101d"), "ens2f0np0")
    vfs = vf_addresses("af", 4, domain="0001")
    for vf in vfs:
        tree.function(vf, "mlx5_core", vendor="0x15b3", device="0x101e")
    tree.sriov(pf, vfs)
    tree.rdma(vfs[2], "mlx5_4")
    tree.netdev(tree.device_dir(vfs[2]), "net1")

    # Switchdev: representors pf0vf<N> sit under the PF with the uplink's phys_switch_id.
    tree = Tree(os.path.join(base, "switchdev"))
    pf = "0000:5e:00.0"
    pf_dir = tree.function(pf, "mlx5_core", vendor="0x15b3", device="0x101d")
    tree.netdev(pf_dir, "ens3f0np0", phys_switch_id="1c34da0300a1b2c4", phys_port_name="p0")
    vfs = vf_addresses("5e", 12)
    for index, vf in enumerate(vfs):
        tree.function(vf, "mlx5_core", vendor="0x15b3", device="0x101e")
        tree.netdev(pf_dir, f"ens3f0r{index}", phys_switch_id="1c34da0300a1b2c4", phys_port_name=f"pf0vf{index}")
    tree.sriov(pf, vfs)
    tree.netdev(tree.device_dir(vfs[10]), "net1")

    # DPDK: the VF is bound to vfio-pci and has no netdev anywhere; the pod's class/net lacks net1.
    tree = Tree(os.path.join(base, "dpdk"))
    pf = "0000:3b:00.0"
    tree.netdev(tree.function(pf, "ice", device="0x159b"), "ens1f0")
    vfs = vf_addresses("3b", 16)
    for index, vf in enumerate(vfs):
        tree.function(vf, "vfio-pci" if index == 12 else "iavf")
    tree.sriov(pf, vfs)

    # virtio-net: the netdev's device is a virtio device whose parent is the PCI function.
    tree = Tree(os.path.join(base, "virtio"))
    pci_dir = tree.function("0000:00:03.0", "virtio-pci", vendor="0x1af4", device="0x1041")
    tree.netdev(tree.virtio("0000:00:03.0", "virtio2"), "eth0")
    assert pci_dir


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else str(REPO / "testdata" / "sysfs")
    shutil.rmtree(target, ignore_errors=True)
    build_all(target)
