"""The reported gap, end to end: real Multus writing the Pod's network-status through a real API server.

Each test creates a Pod through the API (bound to a node, never started: there is no kubelet),
a NetworkAttachmentDefinition shaped like the field's (cniVersion 0.3.0, host-device standing in
for akshci-iov, then deviceid-inject), calls Multus as containerd would (the thin plugin, or
multus-shim to a multus-daemon: THICK), and reads network-status back as Multus wrote it. These
rows are the README's Multus matrix.
"""

from __future__ import annotations

import pytest

from testbed.helpers import (
    NET1_DEVICE_INFO,
    NET1_PCI,
    PLACEHOLDER,
    attachment_state,
    fallback_name,
    files_under,
    read_json,
)
from testbed.multus import NETWORK, THICK, Scene, host_device, macvlan
from testbed.tools import FIELD_MULTUS, MULTUS_V4_VERSIONS, V3_GATED, V3_UNGATED

pytestmark = [pytest.mark.netns, pytest.mark.multus]

RESOURCE = "intel.com/sriov_n6"


def selection(**extra: str) -> list[dict[str, str]]:
    """The JSON form of the Pod's network selection."""
    return [{"name": NETWORK, "interface": "net1", **extra}]


# --- Multus v4.0.2 and v3.7.2: the gate ---------------------------------------------------------------


GATED = (*MULTUS_V4_VERSIONS, V3_GATED)  # every version with the deviceID gate: each is a row of the README matrix


@pytest.mark.parametrize("version", [*GATED, THICK])
def test_without_a_device_plugin_network_status_has_no_device_info(scene: Scene, version: str):
    box = scene.sandbox("upf-0")
    scene.create_nad(host_device(box.peer))
    pod = scene.add(version, box)

    assert "device-info" not in scene.entry(pod)
    assert "getDelegateDeviceInfo(): No CapArgs" in scene.node.multus_log.read_text()
    # The chain ran and deviceid-inject did its part: the file is at our documented fallback path.
    assert scene.our_file(fallback_name(NETWORK, box.container_id)) == NET1_DEVICE_INFO

    out = scene.multus(version, "DEL", box)
    assert out.code == 0, out.stdout + out.stderr
    assert files_under(scene.node.devinfo) == []
    assert attachment_state(scene.data_dir) == []


# --- the rows where device-info does reach network-status ---------------------------------------------


def test_v4_with_a_device_plugin_allocation_carries_our_fields(scene: Scene):
    box = scene.sandbox("upf-0")
    scene.create_nad(macvlan(box.host_end), annotations={"k8s.v1.cni.cncf.io/resourceName": RESOURCE})
    scene.node.device_plugin_allocation(box.uid, RESOURCE, [NET1_PCI])
    pod = scene.add(FIELD_MULTUS, box)

    assert scene.entry(pod)["device-info"] == NET1_DEVICE_INFO
    assert scene.our_file(scene.multus_named_file(box)) == NET1_DEVICE_INFO
    record = read_json(scene.data_dir / box.container_id / "net1.json")
    assert record["strategy"] == "runtimeConfig deviceID"

    out = scene.multus(FIELD_MULTUS, "DEL", box)
    assert out.code == 0, out.stdout + out.stderr
    assert attachment_state(scene.data_dir) == []


def test_v3_7_1_hands_every_delegate_a_path_and_network_status_has_our_device_info(scene: Scene):
    box = scene.sandbox("upf-0")
    scene.create_nad(host_device(box.peer))
    pod = scene.add(V3_UNGATED, box)

    assert scene.entry(pod)["device-info"] == NET1_DEVICE_INFO
    assert scene.our_file(scene.multus_named_file(box)) == NET1_DEVICE_INFO

    out = scene.multus(V3_UNGATED, "DEL", box)
    assert out.code == 0, out.stdout + out.stderr
    assert files_under(scene.node.devinfo) == []
    assert attachment_state(scene.data_dir) == []


@pytest.mark.parametrize("version", [*MULTUS_V4_VERSIONS, THICK])
def test_v4_selection_route_a_placeholder_device_id_brings_our_device_info(scene: Scene, version: str):
    """No agent, no device plugin: the Pod's selection names a deviceID that is no device at all."""
    box = scene.sandbox("upf-0", selection(deviceID=PLACEHOLDER))
    scene.create_nad(host_device(box.peer))
    pod = scene.add(version, box)

    # The VF we discovered, not the placeholder Multus passed to us as runtimeConfig.deviceID.
    assert scene.entry(pod)["device-info"] == NET1_DEVICE_INFO
    assert scene.our_file(scene.multus_named_file(box)) == NET1_DEVICE_INFO
    assert f"deviceID {PLACEHOLDER} names no PCI function on this host" in scene.log_file.read_text()
    record = read_json(scene.data_dir / box.container_id / "net1.json")
    assert (record["pci_address"], record["strategy"]) == (NET1_PCI, "netdev sysfs")
    # Multus's CNI_ARGS (its own keys, then the runtime's, repeated) tell whose attachment it is.
    assert (record["pod_namespace"], record["pod_name"], record["pod_uid"]) == (scene.ns, "upf-0", box.uid)
    assert record["device_info"] == NET1_DEVICE_INFO

    out = scene.multus(version, "DEL", box)
    assert out.code == 0, out.stdout + out.stderr
    assert files_under(scene.node.devinfo) == []


def test_v4_selection_route_breaks_a_first_plugin_that_takes_the_placeholder(scene: Scene):
    """Why docs/network-status-routes.md says not to declare deviceID on the SR-IOV plugin: host-device, given the
    placeholder as runtimeConfig.deviceID, looks for that PCI function and fails the ADD."""
    box = scene.sandbox("upf-0", selection(deviceID=PLACEHOLDER))
    scene.create_nad(host_device(box.peer, declare_device_id=True))
    out = scene.multus(FIELD_MULTUS, "ADD", box)
    assert out.code != 0
    assert PLACEHOLDER in out.stdout + out.stderr
