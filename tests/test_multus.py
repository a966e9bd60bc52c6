"""The reported gap, end to end: real Multus writing the Pod's network-status through a real API server.

Each test creates a Pod through the API (bound to a node, never started: there is no kubelet),
a NetworkAttachmentDefinition shaped like the field's (cniVersion 0.3.0, host-device standing in
for akshci-iov, then deviceid-inject), calls the Multus thin plugin as containerd would, and reads
network-status back as Multus wrote it. These rows are the README's Multus matrix.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import NET1_DEVICE_INFO, NET1_PCI, SYSFS_IAVF, attachment_state, fallback_name, files_under, read_json
from kube import Api, ApiServer, nad, namespace, network_status, pod
from multus import Node, run_multus

pytestmark = [pytest.mark.netns, pytest.mark.multus]

NODE = "node-a"
NETWORK = "n6-dpdk"
RESOURCE = "intel.com/sriov_n6"
PLACEHOLDER = "0000:00:00.0"


def field_nad(
    first: dict[str, Any], data_dir: Path, log_file: Path, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    """The field's NAD: one chain at 0.3.0, the plugin that makes net1 first, then deviceid-inject."""
    config = {
        "cniVersion": "0.3.0",
        "name": NETWORK,
        "plugins": [
            first,
            {
                "type": "deviceid-inject",
                "sysfsRoot": str(SYSFS_IAVF),
                "dataDir": str(data_dir),
                "logFile": str(log_file),
                "logLevel": "debug",
                "capabilities": {"deviceID": True, "CNIDeviceInfoFile": True},
            },
        ],
    }
    return nad(NETWORK, config, annotations)


@dataclass
class Scene:
    """One namespace with the field's NAD, one Pod, one pod netns, and what a node holds."""

    api: Api
    ns: str
    node: Node
    kubeconfig: Path
    cni_path: str
    netns: str
    data_dir: Path
    log_file: Path
    host_end: str
    peer: str

    @property
    def host_device(self) -> dict[str, Any]:
        """The stand-in for akshci-iov: it moves a device of its own choosing into the pod. It does
        not declare deviceID, as the README asks of the SR-IOV plugin on the selection route."""
        return {"type": "host-device", "device": self.peer, "capabilities": {"ips": True}}

    @property
    def macvlan(self) -> dict[str, Any]:
        """The stand-in where a device plugin allocates: Multus writes the allocated deviceID and
        pciBusID into every plugin of the chain, which sriov-cni obeys and host-device would too
        (and find no such function here); macvlan ignores them."""
        return {"type": "macvlan", "master": self.host_end, "mode": "bridge"}

    def create_nad(self, first: dict[str, Any] | None = None, annotations: dict[str, str] | None = None) -> None:
        body = field_nad(first or self.host_device, self.data_dir, self.log_file, annotations)
        self.api.post(f"/apis/k8s.cni.cncf.io/v1/namespaces/{self.ns}/network-attachment-definitions", body)

    def create_pod(self, networks: Any, name: str = "upf-0") -> dict[str, Any]:
        return self.api.post(f"/api/v1/namespaces/{self.ns}/pods", pod(name, NODE, networks))

    def read_pod(self, name: str = "upf-0") -> dict[str, Any]:
        return self.api.get(f"/api/v1/namespaces/{self.ns}/pods/{name}")

    def multus(self, version: str, command: str, pod_object: dict[str, Any], container_id: str):
        return run_multus(
            version,
            command,
            node=self.node,
            kubeconfig=self.kubeconfig,
            cni_path=self.cni_path,
            pod=pod_object,
            container_id=container_id,
            netns=self.netns,
        )


@pytest.fixture
def scene(kube: ApiServer, cni_path: str, netns: str, host_veth, tmp_path: Path) -> Iterator[Scene]:
    api = kube.api()
    ns = f"ran-{uuid.uuid4().hex[:8]}"
    api.post("/api/v1/namespaces", namespace(ns))
    host_end, peer = host_veth()
    try:
        yield Scene(
            api=api,
            ns=ns,
            node=Node(tmp_path / "node"),
            kubeconfig=api.kubeconfig(tmp_path / "multus.kubeconfig"),
            cni_path=cni_path,
            netns=netns,
            data_dir=tmp_path / "state",
            log_file=tmp_path / "deviceid-inject.log",
            host_end=host_end,
            peer=peer,
        )
    finally:
        api.delete(f"/api/v1/namespaces/{ns}")


def secondary_entry(pod_object: dict[str, Any], ns: str) -> dict[str, Any]:
    status = network_status(pod_object)
    assert status is not None, f"Multus wrote no network-status: {pod_object['metadata'].get('annotations')}"
    entries = [e for e in status if e.get("name") == f"{ns}/{NETWORK}"]
    assert len(entries) == 1, status
    assert entries[0]["interface"] == "net1"
    return entries[0]


def added(scene: Scene, version: str, networks: Any) -> tuple[dict[str, Any], str]:
    """Create the Pod, run Multus ADD for its sandbox; the Pod as Multus left it, and the sandbox ID."""
    created = scene.create_pod(networks)
    container_id = f"sandbox{uuid.uuid4().hex[:12]}"
    out = scene.multus(version, "ADD", created, container_id)
    assert out.code == 0, f"{out.stdout}\n{out.stderr}\n{scene.node.multus_log.read_text()}"
    assert out.json["cniVersion"], out.stdout
    return scene.read_pod(), container_id


def our_file(scene: Scene, name: str) -> dict[str, Any]:
    return read_json(scene.node.devinfo / "cni" / name)


def multus_named_file(scene: Scene, container_id: str) -> str:
    """The path Multus builds when it knows a deviceID: <ns>-<nad>-<containerID>_<ifname>."""
    return f"{scene.ns}-{NETWORK}-{container_id}_net1"


# --- Multus v4.0.2 and v3.7.2: the gate ---------------------------------------------------------------


@pytest.mark.parametrize("version", ["v4.0.2", "v3.7.2"])
def test_without_a_device_plugin_network_status_has_no_device_info(scene: Scene, version: str):
    scene.create_nad()
    pod_object, container_id = added(scene, version, NETWORK)

    entry = secondary_entry(pod_object, scene.ns)
    assert "device-info" not in entry
    assert "getDelegateDeviceInfo(): No CapArgs" in scene.node.multus_log.read_text()
    # The chain ran and deviceid-inject did its part: the file is at our documented fallback path.
    assert our_file(scene, fallback_name(NETWORK, container_id)) == NET1_DEVICE_INFO

    out = scene.multus(version, "DEL", pod_object, container_id)
    assert out.code == 0, out.stdout + out.stderr
    assert files_under(scene.node.devinfo) == []
    assert attachment_state(scene.data_dir) == []


# --- the rows where device-info does reach network-status ---------------------------------------------


def test_v4_with_a_device_plugin_allocation_carries_our_fields(scene: Scene):
    scene.create_nad(scene.macvlan, {"k8s.v1.cni.cncf.io/resourceName": RESOURCE})
    created = scene.create_pod(NETWORK)
    scene.node.device_plugin_allocation(created["metadata"]["uid"], RESOURCE, [NET1_PCI])
    container_id = f"sandbox{uuid.uuid4().hex[:12]}"
    out = scene.multus("v4.0.2", "ADD", created, container_id)
    assert out.code == 0, f"{out.stdout}\n{out.stderr}"

    entry = secondary_entry(scene.read_pod(), scene.ns)
    assert entry["device-info"] == NET1_DEVICE_INFO
    assert our_file(scene, multus_named_file(scene, container_id)) == NET1_DEVICE_INFO
    record = read_json(scene.data_dir / container_id / "net1.json")
    assert record["strategy"] == "runtimeConfig deviceID"

    out = scene.multus("v4.0.2", "DEL", created, container_id)
    assert out.code == 0, out.stdout + out.stderr
    assert attachment_state(scene.data_dir) == []


def test_v3_7_1_hands_every_delegate_a_path_and_network_status_has_our_device_info(scene: Scene):
    scene.create_nad()
    pod_object, container_id = added(scene, "v3.7.1", NETWORK)

    entry = secondary_entry(pod_object, scene.ns)
    assert entry["device-info"] == NET1_DEVICE_INFO
    assert our_file(scene, multus_named_file(scene, container_id)) == NET1_DEVICE_INFO

    out = scene.multus("v3.7.1", "DEL", pod_object, container_id)
    assert out.code == 0, out.stdout + out.stderr
    assert files_under(scene.node.devinfo) == []
    assert attachment_state(scene.data_dir) == []


def test_v4_selection_route_a_placeholder_device_id_brings_our_device_info(scene: Scene):
    """No agent, no device plugin: the Pod's selection names a deviceID that is no device at all."""
    scene.create_nad()
    selection = [{"name": NETWORK, "interface": "net1", "deviceID": PLACEHOLDER}]
    pod_object, container_id = added(scene, "v4.0.2", selection)

    entry = secondary_entry(pod_object, scene.ns)
    # The VF we discovered, not the placeholder Multus passed to us as runtimeConfig.deviceID.
    assert entry["device-info"] == NET1_DEVICE_INFO
    assert our_file(scene, multus_named_file(scene, container_id)) == NET1_DEVICE_INFO
    log = scene.log_file.read_text()
    assert f"deviceID {PLACEHOLDER} names no PCI function on this host" in log
    record = read_json(scene.data_dir / container_id / "net1.json")
    assert record["pci_address"] == NET1_PCI
    assert record["strategy"] == "netdev sysfs"
    # Multus's CNI_ARGS (its own keys, then the runtime's, repeated) tell whose attachment it is.
    meta = pod_object["metadata"]
    assert (record["pod_namespace"], record["pod_name"], record["pod_uid"]) == (meta["namespace"], "upf-0", meta["uid"])
    assert record["device_info"] == NET1_DEVICE_INFO

    out = scene.multus("v4.0.2", "DEL", pod_object, container_id)
    assert out.code == 0, out.stdout + out.stderr
    assert files_under(scene.node.devinfo) == []


def test_v4_selection_route_breaks_a_first_plugin_that_takes_the_placeholder(scene: Scene):
    """Why the README says not to declare deviceID on the SR-IOV plugin: host-device, given the
    placeholder as runtimeConfig.deviceID, looks for that PCI function and fails the ADD."""
    scene.create_nad({**scene.host_device, "capabilities": {"ips": True, "deviceID": True}})
    created = scene.create_pod([{"name": NETWORK, "interface": "net1", "deviceID": PLACEHOLDER}])
    out = scene.multus("v4.0.2", "ADD", created, f"sandbox{uuid.uuid4().hex[:12]}")
    assert out.code != 0
    assert PLACEHOLDER in out.stdout + out.stderr
