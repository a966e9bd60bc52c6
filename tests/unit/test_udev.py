"""libudev's description of a PCI function, against this host's real devices."""

from __future__ import annotations

from deviceid_inject import udev
from deviceid_inject.log import Log
from deviceid_inject.pci import SysfsPci
from testbed.helpers import host_pci_netdev


def test_describe_agrees_with_plain_sysfs_on_driver_and_ids():
    _, address = host_pci_netdev()
    through_udev = udev.UdevDescriber().describe(address)
    plain = SysfsPci("/sys").describe(address)
    assert through_udev.driver == plain.driver
    # libudev gives the hwdb name where it has one, else the same id sysfs shows.
    assert through_udev.vendor == plain.vendor or not through_udev.vendor.startswith("0x")


def test_unknown_function_is_described_as_unknown():
    assert udev.UdevDescriber().describe("ffff:ff:1f.7") == udev.Description(None, None, None)


def test_falls_back_to_plain_sysfs_when_libudev_cannot_load(monkeypatch):
    def no_libudev():
        raise ImportError("libudev.so.1: cannot open shared object file")

    monkeypatch.setattr(udev, "UdevDescriber", no_libudev)
    view = udev.describer(None, Log("debug"))
    assert type(view) is SysfsPci and view.root == "/sys"


def test_real_host_is_described_by_libudev_when_it_loads():
    assert isinstance(udev.describer(None, Log()), udev.UdevDescriber)


def test_a_fixture_is_described_from_its_own_files(tmp_path):
    view = udev.describer(str(tmp_path), Log())
    assert type(view) is SysfsPci and view.root == str(tmp_path)
