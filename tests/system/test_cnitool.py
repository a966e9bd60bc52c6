"""Real chains through cnitool: host-device (standing in for akshci-iov: it moves a veth end into the
pod as net1), then deviceid-inject over the vf-iavf fixture sysfs (net1 is 0000:3b:02.3), then
optionally tuning. cnitool runs in a private mount namespace with its own result cache.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.helpers import (
    NET1_DEVICE_INFO,
    NET1_PCI,
    POD_NETNS,
    SYSFS_IAVF,
    VETH_NOT_PCI,
    Cnitool,
    attachment_state,
    cnitool_container_id,
    fallback_name,
    files_under,
    link_exists,
    needs_root,
    read_json,
    run_plugin,
    write_conflist,
)

pytestmark = [pytest.mark.cnitool, pytest.mark.netns, needs_root]

NETWORK = "n6-dpdk"
# What Multus v3.7 hands a delegate: <devinfo>/cni/<delegate name>-<pod sandbox ID>_<ifname>. The
# sandbox ID is the runtime's, not cnitool's, so this path differs from our documented fallback.
MULTUS_SANDBOX_ID = "5b2ad3c0e4f1a9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4"


@dataclass
class Pod:
    netns: str  # /var/run/netns/<name>
    name: str
    host_end: str
    device: str  # the host veth end host-device moves in as net1
    container_id: str
    devinfo: Path
    state: Path
    log: Path
    tuning: Path

    @property
    def fallback(self) -> Path:
        return self.devinfo / "cni" / fallback_name(NETWORK, self.container_id)

    @property
    def multus_path(self) -> Path:
        return self.devinfo / "cni" / fallback_name(NETWORK, MULTUS_SANDBOX_ID)

    def conflist(
        self, cnitool: Cnitool, version: str, template: str = "host-device-deviceid-inject", inject=None
    ) -> dict:
        return write_conflist(
            cnitool.netconf_dir,
            template,
            inject,
            cniVersion=version,
            name=NETWORK,
            device=self.device,
            sysfsRoot=SYSFS_IAVF,
            deviceInfoRoot=self.devinfo,
            dataDir=self.state,
            logFile=self.log,
            tuningDataDir=self.tuning,
        )


@pytest.fixture
def pod(netns: str, host_veth, tmp_path: Path) -> Pod:
    host_end, device = host_veth()
    return Pod(
        netns=netns,
        name=os.path.basename(netns),
        host_end=host_end,
        device=device,
        container_id=cnitool_container_id(netns),
        devinfo=tmp_path / "devinfo",
        state=tmp_path / "state",
        log=tmp_path / "deviceid-inject.log",
        tuning=tmp_path / "tuning",
    )


def net1_in(pod: Pod) -> str:
    argv = ["ip", "-n", pod.name, "-o", "link", "show", "dev", "net1"]
    return subprocess.run(argv, capture_output=True, text=True).stdout


def assert_clean(pod: Pod, cnitool: Cnitool, kept: tuple[str, ...] = ()) -> None:
    assert files_under(pod.devinfo) == sorted(kept), "DEL left device-info files behind"
    assert attachment_state(pod.state) == [], "DEL left state behind"
    assert cnitool.cached_results() == []


@pytest.mark.parametrize("multus", ["v3.7", "v4"])
@pytest.mark.parametrize("version", ["0.3.0", "0.4.0", "1.0.0", "1.1.0"])
def test_add_check_del_through_cnitool(cnitool: Cnitool, pod: Pod, version: str, multus: str) -> None:
    """Multus v3.7 hands every delegate a CNIDeviceInfoFile; v4 without a device plugin hands none."""
    pod.conflist(cnitool, version)
    cap_args = {"CNIDeviceInfoFile": str(pod.multus_path)} if multus == "v3.7" else None
    expected_file = pod.multus_path if multus == "v3.7" else pod.fallback

    add = cnitool.run("add", NETWORK, pod.netns, cap_args=cap_args)
    assert add.code == 0, add.stderr
    result = add.json
    assert result["cniVersion"] == version
    (iface,) = [i for i in result["interfaces"] if i.get("sandbox")]
    assert (iface["name"], iface["sandbox"]) == ("net1", pod.netns)
    # cnitool parses every result into Go types: 1.0.0 and 1.1.0 share types/100, which (in libcni
    # v1.3.1) has pciID; 0.3.x and 0.4.0 share types/040, which drops it.
    if version.startswith("1."):
        assert iface["pciID"] == NET1_PCI
    else:
        assert "pciID" not in iface
    assert "net1" in net1_in(pod), "host-device did not move the veth end in as net1"
    assert files_under(pod.devinfo) == [str(expected_file.relative_to(pod.devinfo))]
    assert read_json(expected_file) == NET1_DEVICE_INFO
    assert oct(expected_file.stat().st_mode & 0o777) == "0o444"
    record = read_json(pod.state / pod.container_id / "net1.json")
    assert (record["device_info_file"], record["created_file"]) == (str(expected_file), True)
    assert f"net1 is {NET1_PCI}" in pod.log.read_text()

    check = cnitool.run("check", NETWORK, pod.netns, cap_args=cap_args)
    if version == "0.3.0":  # libcni refuses CHECK below 0.4.0 before running any plugin
        assert check.code == 1
        assert 'configuration version "0.3.0" does not support the CHECK command' in check.stderr
        assert " CHECK " not in pod.log.read_text()
    else:
        assert (check.code, check.stdout) == (0, ""), check.stderr

    delete = cnitool.run("del", NETWORK, pod.netns, cap_args=cap_args)
    assert delete.code == 0, delete.stderr
    assert link_exists(pod.device), "host-device did not give the veth end back"
    assert_clean(pod, cnitool)


@pytest.mark.parametrize("multus", ["v3.7", "v4"])
@pytest.mark.parametrize("version", ["0.3.0", "0.4.0", "1.0.0", "1.1.0"])
def test_add_check_del_through_cnitool_in_the_pods_own_netns(
    cnitool: Cnitool, pod: Pod, version: str, multus: str
) -> None:
    """The production path under cnitool: no sysfsRoot, so discovery looks at net1 from inside the
    pod's netns (fork, setns, a private sysfs). net1 is a veth there: no PCI function, which the
    log and the record say, and `required: false` lets the result through unchanged."""
    pod.conflist(cnitool, version, inject=POD_NETNS)
    cap_args = {"CNIDeviceInfoFile": str(pod.multus_path)} if multus == "v3.7" else None
    add = cnitool.run("add", NETWORK, pod.netns, cap_args=cap_args)
    assert add.code == 0, add.stderr
    (iface,) = [i for i in add.json["interfaces"] if i.get("sandbox")]
    assert (iface["name"], iface["sandbox"]) == ("net1", pod.netns)
    assert "pciID" not in iface
    assert "net1" in net1_in(pod)
    assert files_under(pod.devinfo) == []
    record = read_json(pod.state / pod.container_id / "net1.json")
    assert (record["pci_address"], record["strategy"], record["created_file"]) == (None, None, False)
    log = pod.log.read_text()
    assert "no PCI function found, passing prevResult through (required: false)" in log
    assert VETH_NOT_PCI in log
    assert "net1 (driver veth) reports no ethtool bus-info" in log

    if version != "0.3.0":  # libcni refuses CHECK below 0.4.0
        check = cnitool.run("check", NETWORK, pod.netns, cap_args=cap_args)
        assert (check.code, check.stdout) == (0, ""), check.stderr
    delete = cnitool.run("del", NETWORK, pod.netns, cap_args=cap_args)
    assert delete.code == 0, delete.stderr
    assert link_exists(pod.device)
    assert_clean(pod, cnitool)


@pytest.mark.parametrize("version", ["0.3.0", "1.1.0"])
def test_tuning_takes_our_result_as_its_prev_result(cnitool: Cnitool, pod: Pod, version: str) -> None:
    pod.conflist(cnitool, version, "host-device-deviceid-inject-tuning")
    add = cnitool.run("add", NETWORK, pod.netns)
    assert add.code == 0, add.stderr
    result = add.json
    assert result["cniVersion"] == version
    (iface,) = [i for i in result["interfaces"] if i.get("sandbox")]
    assert iface["name"] == "net1"
    if version == "1.1.0":
        assert iface["pciID"] == NET1_PCI, "tuning did not pass pciID on"
    assert "mtu 1400" in net1_in(pod), "tuning did not run on net1"
    assert read_json(pod.fallback) == NET1_DEVICE_INFO
    if version == "1.1.0":
        check = cnitool.run("check", NETWORK, pod.netns)
        assert (check.code, check.stdout) == (0, ""), check.stderr
    delete = cnitool.run("del", NETWORK, pod.netns)
    assert delete.code == 0, delete.stderr
    assert_clean(pod, cnitool)
    assert files_under(pod.tuning) == []


@pytest.mark.parametrize("version", ["0.3.0", "1.1.0"])
def test_del_after_the_netns_is_gone(cnitool: Cnitool, pod: Pod, version: str) -> None:
    """deviceid-inject's DEL (the first in a DEL, which runs the chain backwards) cleans up without
    the netns. host-device v1.10.0 then fails: it cannot open the netns to move the link out. That
    error, not ours, is what cnitool reports."""
    pod.conflist(cnitool, version)
    assert cnitool.run("add", NETWORK, pod.netns).code == 0
    assert files_under(pod.devinfo) == [str(pod.fallback.relative_to(pod.devinfo))]
    subprocess.run(["ip", "netns", "del", pod.name], check=True, capture_output=True)

    delete = cnitool.run("del", NETWORK, pod.netns)
    assert files_under(pod.devinfo) == []
    assert attachment_state(pod.state) == []
    assert "removed" in pod.log.read_text() and " DEL " in pod.log.read_text()
    assert delete.code == 1
    assert 'plugin type="host-device" failed (delete)' in delete.stderr
    assert "failed to open netns" in delete.stderr
    ours = [line for line in delete.stderr.splitlines() if "deviceid-inject[" in line]
    assert ours and not [line for line in ours if " ERROR " in line], delete.stderr


@pytest.mark.parametrize("version", ["0.4.0", "1.1.0"])
def test_check_fails_clearly_after_someone_deleted_our_file(cnitool: Cnitool, pod: Pod, version: str) -> None:
    pod.conflist(cnitool, version)
    assert cnitool.run("add", NETWORK, pod.netns).code == 0
    os.unlink(pod.fallback)
    check = cnitool.run("check", NETWORK, pod.netns)
    assert check.code == 1
    assert f"device-info file {pod.fallback} is gone" in check.stderr
    delete = cnitool.run("del", NETWORK, pod.netns)
    assert delete.code == 0, delete.stderr
    assert_clean(pod, cnitool)


def test_del_keeps_a_device_plugin_file_multus_copied(cnitool: Cnitool, pod: Pod) -> None:
    """Multus v4 with a device plugin: the path exists (the device plugin's 1.0.0 copy) and a
    deviceID comes as runtimeConfig. ADD updates the file, DEL leaves it to Multus."""
    pod.conflist(cnitool, "1.1.0")
    given = pod.multus_path
    given.parent.mkdir(parents=True)
    given.write_text(json.dumps({"type": "pci", "version": "1.0.0", "pci": {"pci-address": NET1_PCI}}))
    cap_args = {"CNIDeviceInfoFile": str(given), "deviceID": NET1_PCI}
    add = cnitool.run("add", NETWORK, pod.netns, cap_args=cap_args)
    assert add.code == 0, add.stderr
    assert read_json(given) == NET1_DEVICE_INFO
    assert "by runtimeConfig deviceID" in pod.log.read_text()
    assert cnitool.run("check", NETWORK, pod.netns, cap_args=cap_args).code == 0
    assert cnitool.run("del", NETWORK, pod.netns, cap_args=cap_args).code == 0
    assert_clean(pod, cnitool, kept=(str(given.relative_to(pod.devinfo)),))


def test_status_and_gc_through_cnitool(cnitool: Cnitool, pod: Pod, make_config) -> None:
    """cnitool gc (in this isolated cache only) DELs every cached attachment of the network, then
    sends GC without cni.dev/valid-attachments: deviceid-inject then removes nothing else, so a
    record cnitool never knew of stays."""
    pod.conflist(cnitool, "1.1.0")
    assert cnitool.run("add", NETWORK, pod.netns).code == 0
    stale = make_config()  # the same network, dataDir and device-info tree, another container
    assert run_plugin("ADD", stale, container_id="stale").code == 0
    stale_file = f"cni/{fallback_name(NETWORK, 'stale')}"
    assert files_under(pod.devinfo) == sorted([stale_file, str(pod.fallback.relative_to(pod.devinfo))])

    status = cnitool.run("status", NETWORK, pod.netns)
    assert (status.code, status.stdout) == (0, ""), status.stderr
    gc = cnitool.run("gc", NETWORK, pod.netns)
    assert gc.code == 0, gc.stderr
    assert link_exists(pod.device), "gc did not DEL the cached attachment"
    assert cnitool.cached_results() == []
    assert files_under(pod.devinfo) == [stale_file]
    assert attachment_state(pod.state) == ["stale/", "stale/net1.json"]
    assert "GC without cni.dev/valid-attachments: nothing is removed" in pod.log.read_text()

    assert run_plugin("DEL", make_config(prev=None), container_id="stale").code == 0
    assert_clean(pod, cnitool)
