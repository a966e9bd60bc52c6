"""Load: 100 pods of one network attached at once through cnitool (host-device then deviceid-inject),
then detached at once. Every call must succeed, every device-info file must name the right device,
and nothing may be left afterwards. The wall time is printed, never asserted.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.register_assert_rewrite("chain")

from chain import (  # noqa: E402
    NET1_DEVICE_INFO,
    NET1_PCI,
    SYSFS_IAVF,
    Cnitool,
    Impl,
    attachment_state,
    cnitool_container_id,
    fallback_name,
    files_under,
    needs_root,
    read_json,
    write_conflist,
)

pytest_plugins = ["chain"]
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


def test_100_attachments_at_once_add_then_del(
    impl: Impl,
    load_pods: list[LoadPod],
    cni_path: str,
    cnitool: Cnitool,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    devinfo, state = tmp_path / "devinfo", tmp_path / "state"
    tools = {}
    for pod in load_pods:  # one network, so one conflist per pod naming its own veth end
        netconf = tmp_path / "net.d" / pod.netns_name
        write_conflist(
            netconf,
            "host-device-deviceid-inject",
            cniVersion="1.1.0",
            name=NETWORK,
            device=pod.device,
            sysfsRoot=SYSFS_IAVF,
            deviceInfoRoot=devinfo,
            dataDir=state,
            logFile=tmp_path / "deviceid-inject.log",
        )
        tools[pod] = Cnitool(cni_path, netconf, cnitool.cache_dir)
    container_ids = {pod: cnitool_container_id(pod.netns) for pod in load_pods}
    assert len(set(container_ids.values())) == PODS

    def call(command: str, pod: LoadPod):
        return tools[pod].run(command, NETWORK, pod.netns, timeout=300)

    start = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        adds = dict(zip(load_pods, pool.map(lambda p: call("add", p), load_pods)))
    added = time.monotonic()
    failed = {p.netns_name: o.stderr[-500:] for p, o in adds.items() if o.code != 0}
    assert not failed, failed
    for pod, outcome in adds.items():
        (iface,) = [i for i in outcome.json["interfaces"] if i.get("sandbox")]
        assert (iface["name"], iface["sandbox"], iface["pciID"]) == ("net1", pod.netns, NET1_PCI)
    expected = sorted(f"cni/{fallback_name(NETWORK, cid)}" for cid in container_ids.values())
    assert files_under(devinfo) == expected
    for name in expected:
        assert read_json(devinfo / name) == NET1_DEVICE_INFO
    assert len(attachment_state(state)) == 2 * PODS  # <cid>/ and <cid>/net1.json each

    mid = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        dels = dict(zip(load_pods, pool.map(lambda p: call("del", p), load_pods)))
    end = time.monotonic()
    failed = {p.netns_name: o.stderr[-500:] for p, o in dels.items() if o.code != 0}
    assert not failed, failed
    assert files_under(devinfo) == []
    assert attachment_state(state) == []
    assert cnitool.cached_results() == []
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert all(f" {p.device}:" in links or f" {p.device}@" in links for p in load_pods), "a veth end did not return"

    with capsys.disabled():
        print(
            f"\n[load] {impl.name}: {PODS} attachments via cnitool, {WORKERS} at a time: ADD {added - start:.1f} s, "
            f"DEL {end - mid:.1f} s, whole run {end - start:.1f} s wall"
        )
