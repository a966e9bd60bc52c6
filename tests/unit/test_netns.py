"""The real path: real network namespaces, veth pairs, this host's PCI-backed eth0, no fixtures."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess

import pytest

from deviceid_inject import cni, discovery, udev
from deviceid_inject import netns as pod_netns
from deviceid_inject.pci import SysfsPci
from testbed.helpers import VETH_NOT_PCI, cni_env, host_pci_netdev, needs_root, prev_result, run_plugin

pytestmark = needs_root
HOST_NETNS = f"/proc/{os.getpid()}/ns/net"


def mounts() -> list[str]:
    """The host's sysfs mounts: what a probe that mounted its fresh sysfs in the wrong namespace would
    add. (Not the whole table: other runs on this machine add netns mounts of their own meanwhile.)"""
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if " - sysfs " in line]


def test_a_veth_in_a_pod_netns_is_seen_there_and_is_not_pci(netns, veth_in, make_config):
    veth_in("net1")
    before = mounts()
    run = run_plugin("ADD", make_config(sysfs=None), netns=netns)
    assert run.json["code"] == 100
    assert VETH_NOT_PCI in run.json["msg"]
    assert "net1 (driver veth) reports no ethtool bus-info" in run.json["msg"]
    assert mounts() == before, "the host's mounts must not change"


def test_a_veth_passes_through_when_not_required(netns, veth_in, make_config, roots):
    veth_in("net1")
    prev = prev_result(sandbox=netns)
    run = run_plugin("ADD", make_config(sysfs=None, prev=prev, required=False), netns=netns)
    assert run.code == 0
    assert run.json == prev
    assert not roots["devinfo"].exists()


def test_an_interface_missing_from_the_netns_is_reported_as_such(netns, veth_in, make_config):
    veth_in("net2")
    run = run_plugin("ADD", make_config(sysfs=None), netns=netns)
    assert "no netdev net1 in the pod's netns" in run.json["msg"]


def test_the_hosts_own_pci_netdev_matches_sysfs_and_ethtool(make_config, roots):
    name, sysfs_address = host_pci_netdev()
    prev = prev_result(ifname=name)
    run = run_plugin("ADD", make_config(sysfs=None, prev=prev, logLevel="debug"), ifname=name, netns=HOST_NETNS)
    assert run.code == 0, run.stdout
    assert run.json["interfaces"][0]["pciID"] == sysfs_address
    if shutil.which("ethtool"):
        info = subprocess.run(["ethtool", "-i", name], capture_output=True, text=True, check=True).stdout
        bus_info = re.search(r"^bus-info: (\S+)", info, re.M).group(1)
        assert bus_info == sysfs_address
    written = (roots["devinfo"] / f"cni/n6-dpdk-ctr-1_{name}").read_text()
    assert f'"pci-address": "{sysfs_address}"' in written
    check = run_plugin("CHECK", make_config(sysfs=None, prev=run.json), ifname=name, netns=HOST_NETNS)
    assert (check.code, check.stdout) == (0, "")
    assert run_plugin("DEL", make_config(sysfs=None, prev=None), ifname=name, netns="").code == 0
    assert not (roots["devinfo"] / f"cni/n6-dpdk-ctr-1_{name}").exists()


def test_pid_1_netns_path_works_where_it_may_be_opened(make_config):
    name, sysfs_address = host_pci_netdev()
    try:
        os.close(os.open("/proc/1/ns/net", os.O_RDONLY))
    except PermissionError:
        pytest.skip("this sandbox does not let us open /proc/1/ns/net")
    run = run_plugin("ADD", make_config(sysfs=None, prev=prev_result(ifname=name)), ifname=name, netns="/proc/1/ns/net")
    assert run.json["interfaces"][0]["pciID"] == sysfs_address


def test_look_inside_sees_the_pod_view_not_the_host_view(netns, veth_in):
    host_end = veth_in("net7")
    inside = pod_netns.look_inside(netns, "net7")
    assert inside.exists and inside.driver == "veth" and inside.device_path is None
    # The host end lives in the host's netns. Absent is an answer, not a problem (ENODEV from ethtool).
    absent = pod_netns.look_inside(netns, host_end)
    assert not absent.exists and absent.problem is None, absent


def test_look_inside_explains_a_bad_netns(tmp_path):
    assert "No such file" in pod_netns.look_inside(str(tmp_path / "gone"), "eth0").problem
    not_ns = tmp_path / "file"
    not_ns.write_text("")
    assert pod_netns.look_inside(str(not_ns), "eth0").problem == "cannot enter the netns: not a network namespace"


def test_add_check_del_with_a_device_id_in_a_real_netns(netns, veth_in, make_config, roots):
    veth_in("net1")
    config = make_config(sysfs=None, runtimeConfig={"deviceID": "0000:00:03.0"}, prev=prev_result(sandbox=netns))
    result = run_plugin("ADD", config, netns=netns).json
    assert result["interfaces"][0]["pciID"] == "0000:00:03.0"
    config["prevResult"] = result
    assert run_plugin("CHECK", config, netns=netns).code == 0
    subprocess.run(["ip", "netns", "del", os.path.basename(netns)], check=True)
    assert run_plugin("DEL", config, netns=netns).code == 0
    assert not any(roots["devinfo"].rglob("*-ctr-1_net1"))


def add_on_the_hosts_nic(make_config, name: str, level: str) -> tuple[str, str]:
    """One ADD in this process on the host's PCI netdev at log level `level`: (stdout, stderr)."""
    environ = cni_env("ADD", container_id="c1", netns=HOST_NETNS, ifname=name)
    config = make_config(sysfs=None, prev=prev_result(ifname=name), logLevel=level)
    out, err = io.StringIO(), io.StringIO()
    assert cni.run(environ, io.BytesIO(json.dumps(config).encode()), out, err) == 0, out.getvalue()
    return out.getvalue(), err.getvalue()


@pytest.mark.parametrize(("level", "asks_libudev"), [("warning", False), ("info", True), ("debug", True)])
def test_libudev_is_loaded_only_when_the_log_shows_what_it_adds(make_config, monkeypatch, level, asks_libudev):
    name, sysfs_address = host_pci_netdev()
    calls = []
    real = udev.describer
    monkeypatch.setattr(udev, "describer", lambda root, log: calls.append(log) or real(root, log))
    out, err = add_on_the_hosts_nic(make_config, name, level)
    assert json.loads(out)["interfaces"][0]["pciID"] == sysfs_address
    assert bool(calls) == asks_libudev
    if asks_libudev:
        assert f"{name} is {sysfs_address}" in err


@pytest.mark.parametrize("level", ["error", "warning", "info", "debug"])
def test_discovery_reads_plain_sysfs_at_every_log_level(make_config, monkeypatch, level):
    """The log level must not choose the discovery code: one view, plain /sys, at every level. Seen
    from inside a real ADD at that level: the Host discovery was handed."""
    name, _ = host_pci_netdev()
    views: list[object] = []
    real_discover = discovery.discover

    def spy(clues, host, *rest):
        views.append(host.pci)
        return real_discover(clues, host, *rest)

    monkeypatch.setattr(discovery, "discover", spy)
    add_on_the_hosts_nic(make_config, name, level)
    (view,) = views
    assert type(view) is SysfsPci and view.root == "/sys"


def test_discovery_at_info_finds_the_same_by_the_same_strategies_as_at_warning(make_config, monkeypatch):
    """ADD at info and at warning: the same address by the same strategy, with the same misses before
    it."""
    name, sysfs_address = host_pci_netdev()
    seen: dict[str, list[str]] = {}
    real_discover = discovery.discover

    def spy(clues, host, *rest):
        found = real_discover(clues, host, *rest)
        seen[level] = [f"{a.strategy}: {a.outcome}" for a in found.attempts]
        return found

    monkeypatch.setattr(discovery, "discover", spy)
    for level in ("warning", "info"):
        add_on_the_hosts_nic(make_config, name, level)
    assert seen["info"] == seen["warning"]
    assert seen["info"][-1] == f"netdev sysfs: found {sysfs_address}"
