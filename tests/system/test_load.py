"""Load: 100 pods of one network attached at once through cnitool (host-device then deviceid-inject),
then detached at once, once over the fixture with a VF of its own handed to each pod and once on
the production path (the pods' own netns, no sysfsRoot). Every call must succeed, every result,
file and record must name the pod's own device, and nothing may be left afterwards. The wall
time is printed, never asserted.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.helpers import (
    NET1_PF,
    POD_NETNS,
    SYSFS_IAVF,
    VETH_NOT_PCI,
    VFS,
    Cnitool,
    Impl,
    attachment_state,
    cnitool_container_id,
    fallback_name,
    files_under,
    host_pci_netdev,
    needs_root,
    prev_result,
    read_json,
    run_plugin,
    write_conflist,
)

pytestmark = [pytest.mark.cnitool, pytest.mark.netns, pytest.mark.load, needs_root]

PODS = 100
WORKERS = 50
NETWORK = "n6-dpdk"


@dataclass(frozen=True)
class LoadPod:
    netns_name: str
    host_end: str
    device: str

    @property
    def netns(self) -> str:
        return f"/var/run/netns/{self.netns_name}"


def _batch(lines: list[str], check: bool) -> None:
    subprocess.run(
        ["ip", *([] if check else ["-force"]), "-batch", "-"],
        input="\n".join(lines) + "\n",
        text=True,
        capture_output=True,
        check=check,
    )


@pytest.fixture
def load_pods() -> Iterator[list[LoadPod]]:
    """PODS network namespaces, each with a veth pair on the host; all removed afterwards."""
    token = uuid.uuid4().hex[:5]
    pods = [LoadPod(f"dit-load-{token}-{i:03d}", f"dl{token}h{i:03d}", f"dl{token}p{i:03d}") for i in range(PODS)]
    try:
        _batch([f"netns add {p.netns_name}" for p in pods], check=True)
        _batch([f"link add {p.host_end} type veth peer name {p.device}" for p in pods], check=True)
        yield pods
    finally:
        _batch([f"link del {p.host_end}" for p in pods], check=False)
        _batch([f"netns del {p.netns_name}" for p in pods], check=False)


def vf_of(index: int) -> str:
    """Pod `index`'s deviceID: pods running side by side name different VFs of the fixture."""
    return VFS[index % len(VFS)]


@pytest.mark.parametrize("view", ["fixture", "pod netns"])
def test_100_attachments_at_once_add_then_del(
    impl: Impl,
    load_pods: list[LoadPod],
    cni_path: str,
    cnitool: Cnitool,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    view: str,
) -> None:
    """fixture: each pod is given its own VF as runtimeConfig deviceID; every result, file and
    record must name that pod's VF. pod netns: no sysfsRoot, so 100 concurrent ADDs each fork into
    their pod's netns and find net1 (a veth) is no PCI function; `required: false` passes it on."""
    devinfo, state, log = tmp_path / "devinfo", tmp_path / "state", tmp_path / "deviceid-inject.log"
    tools = {}
    for pod in load_pods:  # one network, so one conflist per pod naming its own veth end
        netconf = tmp_path / "net.d" / pod.netns_name
        write_conflist(
            netconf,
            "host-device-deviceid-inject",
            POD_NETNS if view == "pod netns" else None,
            cniVersion="1.1.0",
            name=NETWORK,
            device=pod.device,
            sysfsRoot=SYSFS_IAVF,
            deviceInfoRoot=devinfo,
            dataDir=state,
            logFile=log,
        )
        tools[pod] = Cnitool(cni_path, netconf, cnitool.cache_dir)
    container_ids = {pod: cnitool_container_id(pod.netns) for pod in load_pods}
    assert len(set(container_ids.values())) == PODS
    given = {pod: vf_of(i) for i, pod in enumerate(load_pods)}

    def call(command: str, pod: LoadPod):
        cap_args = {"deviceID": given[pod]} if view == "fixture" else None
        return tools[pod].run(command, NETWORK, pod.netns, cap_args=cap_args, timeout=300)

    def every_pod(command: str) -> dict:
        """`command` for every pod, WORKERS at a time; each must succeed."""
        with ThreadPoolExecutor(WORKERS) as pool:
            outcomes = dict(zip(load_pods, pool.map(lambda p: call(command, p), load_pods), strict=False))
        failed = {p.netns_name: o.stderr[-500:] for p, o in outcomes.items() if o.code != 0}
        assert not failed, failed
        return outcomes

    start = time.monotonic()
    adds = every_pod("add")
    added = time.monotonic()
    for pod, outcome in adds.items():
        (iface,) = [i for i in outcome.json["interfaces"] if i.get("sandbox")]
        assert (iface["name"], iface["sandbox"]) == ("net1", pod.netns)
        assert iface.get("pciID") == (given[pod] if view == "fixture" else None)
        record = read_json(state / container_ids[pod] / "net1.json")
        if view == "fixture":
            assert (record["pci_address"], record["strategy"]) == (given[pod], "runtimeConfig deviceID")
            written = read_json(devinfo / "cni" / fallback_name(NETWORK, container_ids[pod]))
            assert written["pci"] == {"pci-address": given[pod], "pf-pci-address": NET1_PF}
        else:
            assert record["pci_address"] is None
    if view == "fixture":
        expected = sorted(f"cni/{fallback_name(NETWORK, cid)}" for cid in container_ids.values())
        assert files_under(devinfo) == expected
    else:
        assert files_under(devinfo) == []
        passed = [line for line in log.read_text().splitlines() if VETH_NOT_PCI in line and "required: false" in line]
        assert sorted(line.split(" ADD ", 1)[1].split("/", 1)[0] for line in passed) == sorted(container_ids.values())
    assert len(attachment_state(state)) == 2 * PODS  # <cid>/ and <cid>/net1.json each

    mid = time.monotonic()
    every_pod("del")
    end = time.monotonic()
    assert files_under(devinfo) == []
    assert attachment_state(state) == []
    assert cnitool.cached_results() == []
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert all(f" {p.device}:" in links or f" {p.device}@" in links for p in load_pods), "a veth end did not return"

    with capsys.disabled():
        print(
            f"\n[load] {impl.name}, {view}: {PODS} attachments via cnitool, {WORKERS} at a time: "
            f"ADD {added - start:.1f} s, DEL {end - mid:.1f} s, whole run {end - start:.1f} s wall"
        )


HOST_ADDS = 20


def test_concurrent_adds_find_the_hosts_own_pci_netdev_through_its_netns(impl: Impl, make_config, roots) -> None:
    """The production path finding a PCI function, under concurrency: no sysfsRoot, the host's own
    PCI-backed netdev through /proc/<pid>/ns/net, HOST_ADDS attachments at once."""
    name, address = host_pci_netdev()
    netns = f"/proc/{os.getpid()}/ns/net"
    config = make_config(sysfs=None, prev=prev_result(ifname=name))
    ids = [f"host-{i:02d}" for i in range(HOST_ADDS)]
    with ThreadPoolExecutor(10) as pool:
        adds = list(pool.map(lambda cid: run_plugin("ADD", config, container_id=cid, ifname=name, netns=netns), ids))
    assert [run.code for run in adds] == [0] * HOST_ADDS, [run.stdout for run in adds if run.code]
    assert {run.json["interfaces"][0]["pciID"] for run in adds} == {address}
    for cid in ids:
        assert read_json(roots["devinfo"] / "cni" / fallback_name(NETWORK, cid, name))["pci"]["pci-address"] == address
        assert read_json(roots["state"] / cid / f"{name}.json")["strategy"] == "netdev sysfs"
    del_config = make_config(sysfs=None, prev=None)
    with ThreadPoolExecutor(10) as pool:
        dels = list(pool.map(lambda cid: run_plugin("DEL", del_config, container_id=cid, ifname=name, netns=""), ids))
    assert [run.code for run in dels] == [0] * HOST_ADDS
    assert files_under(roots["devinfo"]) == []
    assert attachment_state(roots["state"]) == []
