"""Discovery over fixture sysfs trees: each strategy, its order, its reasons, and enrichment."""

from __future__ import annotations

import pytest

from deviceid_inject import discovery, vftable
from deviceid_inject.discovery import Clues, Host
from deviceid_inject.pci import SysfsPci
from testbed.helpers import SYSFS


def host(tree: str, tables=None, **kwargs) -> Host:
    return Host(netns_path="/nonexistent/netns", sysfs_root=str(SYSFS / tree), vf_tables=tables, **kwargs)


def table(*entries: tuple[str, int, str]):
    """A stand-in for the netlink VF-table source that records which PFs were asked."""
    asked: list[tuple[str, ...]] = []

    def source(pfs):
        asked.append(tuple(pfs))
        return [vftable.VfEntry(pf, index, mac) for pf, index, mac in entries if pf in pfs]

    source.asked = asked
    return source


def test_netdev_vf_is_found_in_sysfs_with_its_pf():
    found = discovery.discover(Clues(ifname="net1"), host("vf-iavf"))
    assert found.device == discovery.Device(
        pci_address="0000:3b:02.3", strategy="netdev sysfs", pf_pci_address="0000:3b:00.0"
    )


def test_misses_are_explained_in_order_before_the_hit():
    found = discovery.discover(Clues(ifname="net1"), host("vf-iavf"))
    assert [a.strategy for a in found.attempts] == [
        "prevResult pciID",
        "runtimeConfig deviceID",
        "config deviceID",
        "netdev sysfs",
    ]
    assert found.attempts[-1].outcome == "found 0000:3b:02.3"
    assert "no pciID" in found.attempts[0].outcome


@pytest.mark.parametrize(
    ("clues", "strategy"),
    [
        (Clues(ifname="net1", result_pci_id="0000:3b:01.1"), "prevResult pciID"),
        (Clues(ifname="net1", runtime_device_id="3b:01.1"), "runtimeConfig deviceID"),
        (Clues(ifname="net1", config_device_id="0000:3B:01.1"), "config deviceID"),
    ],
)
def test_given_addresses_win_and_are_normalised(clues, strategy):
    found = discovery.discover(clues, host("vf-iavf"))
    assert found.device.pci_address == "0000:3b:01.1"
    assert found.device.strategy == strategy
    assert found.device.pf_pci_address == "0000:3b:00.0"


def test_a_given_id_that_is_not_pci_is_skipped_with_the_reason():
    found = discovery.discover(Clues(ifname="net1", runtime_device_id="mlx5_core.sf.2"), host("vf-iavf"))
    assert found.device.strategy == "netdev sysfs"
    assert "'mlx5_core.sf.2' is not a PCI address" in found.explain()


@pytest.mark.parametrize("field", ["runtime_device_id", "config_device_id"])
def test_a_placeholder_device_id_naming_no_function_here_is_skipped(field):
    # The selection route: a Pod asks for deviceID 0000:00:00.0 only so that Multus v4 hands the
    # chain a device-info path. That address is no clue; the netdev still tells the truth.
    found = discovery.discover(Clues(ifname="net1", **{field: "0000:00:00.0"}), host("vf-iavf"))
    assert found.device.pci_address == "0000:3b:02.3"
    assert found.device.strategy == "netdev sysfs"
    assert "deviceID 0000:00:00.0 names no PCI function on this host" in found.explain()


def test_non_zero_domain_and_rdma_device():
    found = discovery.discover(Clues(ifname="net1"), host("mlx5-rdma"))
    assert found.device.pci_address == "0001:af:01.2"
    assert found.device.pf_pci_address == "0001:af:00.0"
    assert found.device.rdma_device == "mlx5_4"


def test_switchdev_representor_of_vf_index_ten_not_one():
    found = discovery.discover(Clues(ifname="net1"), host("switchdev"))
    assert found.device.pci_address == "0000:5e:02.2"
    assert found.device.representor_device == "ens3f0r10"


def test_virtio_netdev_resolves_to_its_pci_parent():
    found = discovery.discover(Clues(ifname="eth0"), host("virtio"))
    assert found.device.pci_address == "0000:00:03.0"
    assert found.device.pf_pci_address is None


def test_vhost_net_only_when_asked_and_present(tmp_path):
    node = tmp_path / "vhost-net"
    assert discovery.discover(Clues(ifname="net1"), host("vf-iavf", vhost_net=str(node))).device.vhost_net is None
    node.touch()
    assert discovery.discover(Clues(ifname="net1"), host("vf-iavf", vhost_net=str(node))).device.vhost_net == str(node)
    assert discovery.discover(Clues(ifname="net1"), host("vf-iavf")).device.vhost_net is None


def test_dpdk_vf_without_netdev_is_found_by_mac_in_the_vf_table():
    source = table(("ens1f0", 11, "02:aa:00:00:00:0b"), ("ens1f0", 12, "02:AA:00:00:00:0C"))
    found = discovery.discover(Clues(ifname="net1", mac="02:aa:00:00:00:0c"), host("dpdk", source))
    assert found.device.pci_address == "0000:3b:02.4"  # virtfn12, bound to vfio-pci
    assert found.device.pf_pci_address == "0000:3b:00.0"
    assert found.device.strategy == "VF table by mac"
    assert "no netdev net1" in found.explain()
    assert source.asked == [("ens1f0",)]  # only PFs with VFs enabled are asked


def test_vf_table_is_not_asked_when_the_netdev_answers():
    source = table(("ens1f0", 11, "02:00:00:00:00:01"))
    found = discovery.discover(Clues(ifname="net1", mac="02:00:00:00:00:01"), host("vf-iavf", source))
    assert found.device.strategy == "netdev sysfs"
    assert source.asked == []


def test_pf_names_restrict_the_search():
    source = table(("ens1f0", 12, "02:aa:00:00:00:0c"))
    found = discovery.discover(Clues(ifname="net1", mac="02:aa:00:00:00:0c"), host("dpdk", source, pf_names=["ens9"]))
    assert found.device is None
    assert source.asked == [("ens9",)]
    assert "no VF with mac 02:aa:00:00:00:0c on ens9" in found.explain()


def test_two_vfs_with_one_mac_is_an_error_naming_both():
    source = table(("ens1f0", 3, "02:aa:00:00:00:0c"), ("ens1f0", 12, "02:aa:00:00:00:0c"))
    with pytest.raises(vftable.Ambiguous) as err:
        discovery.discover(Clues(ifname="net1", mac="02:aa:00:00:00:0c"), host("dpdk", source))
    assert "ens1f0 vf 3 (0000:3b:01.3)" in str(err.value)
    assert "ens1f0 vf 12 (0000:3b:02.4)" in str(err.value)


def test_no_mac_and_no_netdev_says_what_would_have_helped():
    found = discovery.discover(Clues(ifname="net1"), host("dpdk", table()))
    assert found.device is None
    explained = found.explain()
    assert "no netdev net1" in explained
    assert "no mac to look up" in explained
    assert "no pciID" in explained and "no deviceID" in explained


def test_ethtool_is_not_asked_of_a_fixture_tree():
    found = discovery.discover(Clues(ifname="net1"), host("dpdk", table()))
    assert "sysfsRoot is set" in found.explain()


def test_real_netlink_source_finds_no_vf_on_this_machine():
    # The real pyroute2 path against this machine's links: eth0 has no VFs.
    assert vftable.netlink_tables(["eth0", "lo", "no-such-pf0"]) == []
    found = discovery.discover(
        Clues(ifname="net1", mac="02:aa:00:00:00:0c"), host("dpdk", vftable.netlink_tables, pf_names=["eth0"])
    )
    assert found.device is None
    assert "no VF with mac 02:aa:00:00:00:0c on eth0" in found.explain()


def test_a_legacy_pf_never_reads_its_virtfn_links(monkeypatch):
    # Finding a VF's index walks the PF's virtfn links: only switchdev PFs (with representors) may pay that.
    def walk(self, pf, vf):
        raise AssertionError("vf_index walked the virtfn links of a PF without representors")

    monkeypatch.setattr(SysfsPci, "vf_index", walk)
    found = discovery.discover(Clues(ifname="net1"), host("vf-iavf"))
    assert found.device.representor_device is None
    with pytest.raises(AssertionError, match="vf_index walked"):
        discovery.discover(Clues(ifname="net1"), host("switchdev"))
