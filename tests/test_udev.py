"""The libudev view of the PCI tree, against this host's real devices."""

from __future__ import annotations

import os

from conftest import host_pci_netdev

from deviceid_inject import udev
from deviceid_inject.log import Log
from deviceid_inject.pci import SysfsPci


def test_pci_parent_through_libudev_matches_the_sysfs_walk():
    name, address = host_pci_netdev()
    device_path = os.path.realpath(f"/sys/class/net/{name}/device")
    view = udev.UdevPci()
    assert view.pci_parent(device_path) == address
    assert view.pci_parent(os.path.join("/sys/bus/pci/devices", address)) == address
    assert view.pci_parent("/sys/devices/virtual/net/lo") is None
    assert view.pci_parent("/sys/devices/no/such/device") is None


def test_describe_agrees_with_plain_sysfs_on_driver_and_ids():
    _, address = host_pci_netdev()
    through_udev = udev.UdevPci().describe(address)
    plain = SysfsPci("/sys").describe(address)
    assert through_udev.driver == plain.driver
    # libudev gives the hwdb name where it has one, else the same id sysfs shows.
    assert through_udev.vendor == plain.vendor or not through_udev.vendor.startswith("0x")


def test_unknown_function_is_described_as_unknown():
    assert udev.UdevPci().describe("ffff:ff:1f.7") == udev.Description(None, None, None)


def test_falls_back_to_plain_sysfs_when_libudev_cannot_load(monkeypatch):
    def no_libudev():
        raise ImportError("libudev.so.1: cannot open shared object file")

    monkeypatch.setattr(udev, "UdevPci", no_libudev)
    view = udev.real_host_pci(Log("debug"))
    assert type(view) is SysfsPci and view.root == "/sys"


def test_real_host_uses_libudev_when_it_loads():
    assert isinstance(udev.real_host_pci(Log()), udev.UdevPci)
