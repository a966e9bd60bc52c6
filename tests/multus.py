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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import Outcome, passed_through, run_in_group
from kube import K8S_TOOLS

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
