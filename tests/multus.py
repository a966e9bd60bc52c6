"""Real Multus (thin plugin, built by scripts/install-tools.sh) run the way containerd runs it.

A `Node` is the folder Multus and the plugins take for the node's own: in a private mount
namespace that dies with the Multus process, it is bound over /var/lib/cni (Multus's and
libcni's caches), /var/lib/kubelet (the device plugin checkpoint Multus falls back to
without a pod-resources socket) and /run/k8s.cni.cncf.io (the device-info tree). So Multus's
fixed paths are real paths, and the host's own folders never see a write.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from helpers import SYSFS_IAVF, Outcome, passed_through, read_json, run_in_group
from kube import K8S_TOOLS, Api, nad, network_status, pod

MULTUS_VERSIONS = ("v4.0.2", "v3.7.1", "v3.7.2")
# Where the Node's folders appear to Multus and the plugins: (scratch subfolder, mount point).
BINDS = (
    ("var-lib-cni", "/var/lib/cni"),
    ("var-lib-kubelet", "/var/lib/kubelet"),
    ("run-k8s-cni", "/var/run/k8s.cni.cncf.io"),
)
MOUNT_POINTS = tuple(target for _, target in BINDS)
CHECKPOINT = "device-plugins/kubelet_internal_checkpoint"
_ISOLATE = (
    'set -e; root="$1"; shift; '
    + "; ".join(f'mount --bind "$root/{sub}" {target}' for sub, target in BINDS)
    + '; exec "$@"'
)


def multus_binary(version: str) -> Path:
    return K8S_TOOLS / f"multus-{version}" / "multus"


def make_mount_points() -> list[str]:
    """Create the bind targets that do not exist yet; returns those made, for remove_mount_points."""
    made = []
    for target in MOUNT_POINTS:
        real = os.path.realpath(target)
        if not os.path.exists(real):
            os.makedirs(real)
            made.append(real)
    return made


def remove_mount_points(made: list[str]) -> None:
    for folder in reversed(made):
        with contextlib.suppress(OSError):  # something else put a file there since: not ours
            os.rmdir(folder)


@dataclass
class Node:
    root: Path

    def __post_init__(self) -> None:
        for sub, _ in BINDS:
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    @property
    def devinfo(self) -> Path:
        """What the plugins see as /var/run/k8s.cni.cncf.io/devinfo."""
        return self.root / "run-k8s-cni" / "devinfo"

    @property
    def multus_log(self) -> Path:
        return self.root / "multus.log"

    def device_plugin_allocation(self, pod_uid: str, resource: str, device_ids: list[str]) -> None:
        """The kubelet's device-plugin checkpoint, as a device plugin's allocation leaves it."""
        path = self.root / "var-lib-kubelet" / CHECKPOINT
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "Data": {
                "PodDeviceEntries": [
                    {
                        "PodUID": pod_uid,
                        "ContainerName": "app",
                        "ResourceName": resource,
                        "DeviceIDs": {"0": device_ids},
                        "AllocResp": "",
                    }
                ],
                "RegisteredDevices": {resource: device_ids},
            },
            "Checksum": 0,
        }
        path.write_text(json.dumps(data))


def multus_config(kubeconfig: Path, node: Node) -> dict[str, Any]:
    """The thin plugin's own config, as its installer writes it into /etc/cni/net.d."""
    return {
        "cniVersion": "0.3.1",
        "name": "multus-cni-network",
        "type": "multus",
        "kubeconfig": str(kubeconfig),
        "logFile": str(node.multus_log),
        "logLevel": "debug",
        "logToStderr": False,
        "delegates": [{"cniVersion": "0.3.1", "name": "default-lo", "type": "loopback"}],
    }


def cni_args(pod: dict[str, Any], container_id: str) -> str:
    meta = pod["metadata"]
    return ";".join(
        [
            "IgnoreUnknown=1",
            f"K8S_POD_NAMESPACE={meta['namespace']}",
            f"K8S_POD_NAME={meta['name']}",
            f"K8S_POD_INFRA_CONTAINER_ID={container_id}",
            f"K8S_POD_UID={meta['uid']}",
        ]
    )


def run_multus(
    version: str,
    command: str,
    *,
    node: Node,
    kubeconfig: Path,
    cni_path: str,
    pod: dict[str, Any],
    container_id: str,
    netns: str,
    timeout: float = 120,
) -> Outcome:
    """One CNI call of Multus `version`, as containerd makes it for the pod's sandbox."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": cni_path,
        "CNI_ARGS": cni_args(pod, container_id),
    }
    env.update(passed_through())
    argv = [
        "unshare", "--mount", "--propagation", "private",
        "sh", "-c", _ISOLATE, "sh", str(node.root),
        str(multus_binary(version)),
    ]  # fmt: skip
    stdin = json.dumps(multus_config(kubeconfig, node)).encode()
    code, stdout, stderr = run_in_group(argv, env, timeout, stdin)
    return Outcome(code, stdout.decode(errors="replace"), stderr.decode(errors="replace"))


# --- a namespace on the test bed, with the field's NAD and Pods whose sandboxes Multus attaches --------

NODE = "node-a"
NETWORK = "n6-dpdk"


def field_nad(
    name: str,
    first: dict[str, Any],
    data_dir: Path,
    log_file: Path,
    annotations: dict[str, str] | None = None,
    device_id: str | None = None,
) -> dict[str, Any]:
    """The field's NAD: one chain at 0.3.0, the plugin that makes net1 first, then deviceid-inject
    (over the vf-iavf fixture tree, where net1 is VF 0000:3b:02.3; `device_id` names another)."""
    inject: dict[str, Any] = {
        "type": "deviceid-inject",
        "sysfsRoot": str(SYSFS_IAVF),
        "dataDir": str(data_dir),
        "logFile": str(log_file),
        "logLevel": "debug",
        "capabilities": {"deviceID": True, "CNIDeviceInfoFile": True},
    }
    if device_id:
        inject["deviceID"] = device_id
    config = {"cniVersion": "0.3.0", "name": name, "plugins": [first, inject]}
    return nad(name, config, annotations)


def host_device(peer: str, declare_device_id: bool = False) -> dict[str, Any]:
    """The stand-in for akshci-iov: it moves a device of its own choosing into the pod. It does not
    declare deviceID, as the README asks of the SR-IOV plugin on the selection route."""
    capabilities = {"ips": True, **({"deviceID": True} if declare_device_id else {})}
    return {"type": "host-device", "device": peer, "capabilities": capabilities}


def macvlan(master: str) -> dict[str, Any]:
    """The stand-in where a device plugin allocates: Multus writes the allocated deviceID and
    pciBusID into every plugin of the chain, which sriov-cni obeys and host-device would too (and
    find no such function here); macvlan ignores them."""
    return {"type": "macvlan", "master": master, "mode": "bridge"}


@dataclass
class Sandbox:
    """One Pod's sandbox: the Pod as created, its container ID, netns, and the veth pair whose
    one end host-device moves in as net1."""

    pod: dict[str, Any]
    container_id: str
    netns: str
    host_end: str
    peer: str

    @property
    def uid(self) -> str:
        return self.pod["metadata"]["uid"]

    @property
    def name(self) -> str:
        return self.pod["metadata"]["name"]


@dataclass
class Scene:
    api: Api
    ns: str
    node: Node
    kubeconfig: Path
    cni_path: str
    data_dir: Path
    log_file: Path
    make_veth: Callable[[], tuple[str, str]]
    make_netns: Callable[[], str]

    def create_nad(self, first: dict[str, Any], name: str = NETWORK, **options: Any) -> None:
        body = field_nad(name, first, self.data_dir, self.log_file, **options)
        self.api.post(f"/apis/k8s.cni.cncf.io/v1/namespaces/{self.ns}/network-attachment-definitions", body)

    def sandbox(self, name: str, networks: Any = NETWORK, node_name: str = NODE, **annotations: str) -> Sandbox:
        """Create the Pod, a netns and a veth pair for its sandbox (nothing attached yet)."""
        created = self.api.post(f"/api/v1/namespaces/{self.ns}/pods", pod(name, node_name, networks, annotations))
        host_end, peer = self.make_veth()
        return Sandbox(created, f"sandbox{uuid.uuid4().hex[:12]}", self.make_netns(), host_end, peer)

    def delete_pod(self, name: str) -> None:
        """Delete at once: with no kubelet to confirm, a graceful delete would wait forever."""
        self.api.delete(f"/api/v1/namespaces/{self.ns}/pods/{name}?gracePeriodSeconds=0")

    def read_pod(self, name: str) -> dict[str, Any]:
        return self.api.get(f"/api/v1/namespaces/{self.ns}/pods/{name}")

    def multus(self, version: str, command: str, box: Sandbox) -> Outcome:
        return run_multus(
            version,
            command,
            node=self.node,
            kubeconfig=self.kubeconfig,
            cni_path=self.cni_path,
            pod=box.pod,
            container_id=box.container_id,
            netns=box.netns,
        )

    def add(self, version: str, box: Sandbox) -> dict[str, Any]:
        """Multus ADD for the sandbox, which must succeed; the Pod as Multus left it."""
        out = self.multus(version, "ADD", box)
        assert out.code == 0, f"{out.stdout}\n{out.stderr}\n{self.node.multus_log.read_text()}"
        assert out.json["cniVersion"], out.stdout
        return self.read_pod(box.name)

    def entry(self, pod_object: dict[str, Any], network: str = NETWORK) -> dict[str, Any]:
        """The secondary network's entry of the Pod's network-status, as Multus wrote it."""
        status = network_status(pod_object)
        assert status is not None, f"no network-status: {pod_object['metadata'].get('annotations')}"
        entries = [e for e in status if e.get("name") == f"{self.ns}/{network}"]
        assert len(entries) == 1, status
        assert entries[0]["interface"] == "net1"
        return entries[0]

    def our_file(self, name: str) -> dict[str, Any]:
        return read_json(self.node.devinfo / "cni" / name)

    def multus_named_file(self, box: Sandbox, network: str = NETWORK) -> str:
        """The path Multus builds when it knows a deviceID: <ns>-<nad>-<containerID>_<ifname>."""
        return f"{self.ns}-{network}-{box.container_id}_net1"
