"""What a user puts on the test node (testbed.node), done the way a user does it: images imported with
`ctr images import`, Multus from its own deployments/multus-daemonset-thick.yml with only the image
reference changed, deploy/ applied with `kubectl apply -k` through an overlay of one line, the field's
NetworkAttachmentDefinition, and Pods created with kubectl and read back through the API.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deviceid_inject.annotations import NETWORKS
from testbed import tools
from testbed.harness import Outcome
from testbed.helpers import REPO, SYSFS_IAVF
from testbed.kube import ApiError, network_status
from testbed.multus import field_nad
from testbed.node import PAUSE_IMAGE, Node, build_image

TEST_IMAGES = "localhost/deviceid-inject-test"
DEPLOY = REPO / "deploy"
PUBLISHED_IMAGE = "ghcr.io/deviceid-inject/deviceid-inject"  # what deploy/'s manifests name
PLUGIN_LOG = "/var/log/deviceid-inject/plugin.log"  # on the node: a folder the CNI server serves
DEVICEID_INJECT = "/usr/local/bin/deviceid-inject"  # in the image
# The one test seam in what the node runs: this machine has no SR-IOV NIC, so the field NAD's
# sysfsRoot is the vf-iavf fixture, which the CNI server must see at its host path like every folder
# it serves. Nothing else of deploy/ changes.
FIXTURE_SYSFS_PATCH = [
    {
        "op": "add",
        "path": "/spec/template/spec/containers/1/volumeMounts/-",
        "value": {"name": "fixture-sysfs", "mountPath": str(SYSFS_IAVF), "readOnly": True},
    },
    {
        "op": "add",
        "path": "/spec/template/spec/volumes/-",
        "value": {"name": "fixture-sysfs", "hostPath": {"path": str(SYSFS_IAVF), "type": "Directory"}},
    },
]


def deploy_kustomization(folder: Path, image: str) -> dict[str, Any]:
    """The kustomization, in `folder`, of deploy/ as the tests apply it: the one line that sets the
    image, and the fixture sysfs patch. Every overlay that brings deploy/ to the node starts here, or
    applying it would take the fixture away from the CNI server."""
    name, _, tag = image.rpartition(":")
    return {
        "resources": [os.path.relpath(DEPLOY, folder)],  # kustomize takes a base by relative path only
        "images": [{"name": PUBLISHED_IMAGE, "newName": name, "newTag": tag}],
        "patches": [
            {"target": {"kind": "DaemonSet", "name": "deviceid-inject"}, "patch": json.dumps(FIXTURE_SYSFS_PATCH)}
        ],
    }


def image_reference(archive: Path) -> str:
    """The name an image archive (packaging/image.py) gives its image."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None, f"{archive} has no index.json"
        index = json.load(member)
    return index["manifests"][0]["annotations"]["io.containerd.image.name"]


def multus_image(version: str) -> str:
    return f"{TEST_IMAGES}/multus:{version}"


def build_multus_image(version: str, archive: Path) -> Path:
    """Multus's image as its Dockerfile.thick lays it out (every command under /usr/src/multus-cni/bin),
    from the binaries install-tools built from the module; busybox for the `cp` v4.0.2's manifest runs."""
    folder = tools.multus(version).parent
    commands = [p for p in folder.iterdir() if p.is_file() and os.access(p, os.X_OK)]
    files = {f"/usr/src/multus-cni/bin/{p.name}": p for p in commands}
    files["/bin/busybox"] = tools.BUSYBOX
    # multus-daemon refuses to run unless user.Current() says root, which reads /etc/passwd (upstream's
    # image is Debian-based; ours has nothing else).
    for name, text in (("passwd", "root:x:0:0:root:/root:/bin/sh\n"), ("group", "root:x:0:\n")):
        path = archive.parent / f"multus-{version}.{name}"
        path.write_text(text)
        files[f"/etc/{name}"] = path
    build_image(
        multus_image(version),
        archive,
        files,
        entrypoint=["/usr/src/multus-cni/bin/multus-daemon"],
        symlinks={"/bin/cp": "busybox", "/bin/sh": "busybox", "/var/run": "/run"},  # as Debian lays them out
    )
    return archive


def multus_manifest(version: str) -> str:
    """Multus's own thick-mode manifest of `version`, with its image references pointed at ours."""
    text = tools.multus(version, "multus-daemonset-thick.yml").read_text()
    replaced, count = re.subn(
        r"image: ghcr\.io/k8snetworkplumbingwg/multus-cni:\S+", f"image: {multus_image(version)}", text
    )
    assert count >= 2, f"no image reference to replace in Multus {version}'s manifest"
    return replaced


@dataclass
class Cluster:
    """The test node with what a user deployed on it."""

    node: Node
    work: Path
    image: str = ""  # deviceid-inject's image reference, as the overlay sets it
    multus: str | None = None  # the Multus version deployed
    made_links: list[str] = field(default_factory=list)

    # --- kubectl

    def kubectl(self, *args: str, stdin: str = "", timeout: float = 120) -> Outcome:
        return self.node.kubectl(*args, stdin=stdin, timeout=timeout)

    def ok(self, *args: str, stdin: str = "", timeout: float = 120) -> str:
        out = self.kubectl(*args, stdin=stdin, timeout=timeout)
        assert out.code == 0, f"kubectl {' '.join(args)}: {out.stdout}{out.stderr}"
        return out.stdout

    def apply(self, objects: list[dict[str, Any]] | dict[str, Any]) -> None:
        items = objects if isinstance(objects, list) else [objects]
        self.ok("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))

    def rollout(self, daemonset: str, timeout: float = 180) -> None:
        argv = ("-n", "kube-system", "rollout", "status", f"daemonset/{daemonset}", f"--timeout={timeout:g}s")
        out = self.kubectl(*argv, timeout=timeout + 10)
        assert out.code == 0, f"{daemonset} did not roll out: {out.stdout}{out.stderr}\n{self.diagnosis('kube-system')}"

    def diagnosis(self, namespace: str) -> str:
        """What a failed wait should show: the namespace's Pods and events, its containers' logs."""
        parts = [self.kubectl("-n", namespace, "get", "pods", "-o", "wide").stdout]
        parts.append(self.kubectl("-n", namespace, "get", "events", "--sort-by=.lastTimestamp").stdout[-4000:])
        logs = self.node.host_path("/var/log/pods")
        for log in sorted(logs.glob(f"{namespace}_*/*/*.log")):
            parts.append(f"--- {log.relative_to(logs)}\n{log.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)

    # --- what is deployed

    def import_images(self, archives: list[Path]) -> None:
        for archive in archives:
            self.node.import_image(archive)

    def deploy_ours(self, image: str, timeout: float = 180) -> None:
        """deploy/ as a user applies it, `kubectl apply -k` of an overlay that sets the image, with the
        fixture sysfs seam."""
        overlay = self.work / "overlay"
        overlay.mkdir(parents=True, exist_ok=True)
        (overlay / "kustomization.yaml").write_text(json.dumps(deploy_kustomization(overlay, image), indent=2))
        self.ok("apply", "-k", str(overlay))
        self.image = image
        self.rollout("deviceid-inject", timeout)

    def use_multus(self, version: str, timeout: float = 180) -> None:
        """Multus `version` in thick mode from its own manifest, replacing the one deployed before."""
        if self.multus == version:
            return
        if self.multus is not None:
            self.ok("delete", "-f", "-", "--wait=true", stdin=multus_manifest(self.multus), timeout=timeout)
            self.node.wait(lambda: not self._pods("kube-system", "name=multus"), timeout, "Multus's Pod gone")
            # Its generated config would send every ADD to a shim whose daemon is gone.
            self.node.host_path("/etc/cni/net.d/00-multus.conf").unlink(missing_ok=True)
        self.ok("apply", "-f", "-", stdin=multus_manifest(version))
        self.rollout("kube-multus-ds", timeout)
        self.node.wait(self.node.host_path("/etc/cni/net.d/00-multus.conf").exists, 60, "Multus's CNI config")
        self.multus = version

    def set_multus_cpu_limit(self, limit: str, timeout: float = 180) -> None:
        """What an operator changes in Multus's own manifest, the way an operator changes it: the daemon's
        CPU limit (its manifest gives it 100m, and every delegate plugin runs inside that container)."""
        self.ok("-n", "kube-system", "set", "resources", "daemonset/kube-multus-ds", "-c", "kube-multus",
                f"--limits=cpu={limit}")  # fmt: skip
        self.rollout("kube-multus-ds", timeout)
        self.node.wait(self.node.host_path("/etc/cni/net.d/00-multus.conf").exists, 60, "Multus's CNI config")

    def _pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return self.node.api().get(f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}")["items"]

    def bridge_pod(self) -> dict[str, Any]:
        (pod,) = self._pods("kube-system", "app.kubernetes.io/name=deviceid-inject")
        return pod

    @contextlib.contextmanager
    def bridge_off(self, timeout: float = 120) -> Iterator[None]:
        """The bridge off the node (its DaemonSet's Pods selected onto no node) while the block runs,
        then back and rolled out, also when the block fails."""

        def select(value: str | None) -> None:
            patch = {"spec": {"template": {"spec": {"nodeSelector": {"deviceid-inject-test/bridge": value}}}}}
            self.ok("-n", "kube-system", "patch", "daemonset/deviceid-inject", "--type=merge", "-p", json.dumps(patch))

        select("paused")
        try:
            self.node.wait(lambda: not self._pods("kube-system", "app.kubernetes.io/name=deviceid-inject"), timeout)
            yield
        finally:
            select(None)
            self.rollout("deviceid-inject")

    # --- a namespace, the field's NAD, Pods

    def namespace(self) -> str:
        name = f"ran-{uuid.uuid4().hex[:8]}"
        self.ok("create", "namespace", name)
        return name

    def veth(self) -> str:
        """A veth pair in the node's netns; the end host-device moves into a Pod (standing in for a VF)."""
        token = uuid.uuid4().hex[:8]
        host, peer = f"dth{token}", f"dtp{token}"
        out = self.node.run(["ip", "link", "add", host, "type", "veth", "peer", "name", peer])
        assert out.code == 0, out.stderr
        self.made_links.append(host)
        return peer

    def remove_links(self) -> None:
        for host in self.made_links:
            self.node.run(["ip", "link", "del", host])
        self.made_links.clear()

    def field_nad(
        self,
        namespace: str,
        name: str,
        device: str,
        vf: str | None = None,
        sriov_device_id: bool = True,
        with_plugin: bool = True,
    ) -> None:
        """The field's NAD (akshci-iov at 0.3.0 with capabilities deviceID, ips, CNIDeviceInfoFile, then
        deviceid-inject), host-device standing in for akshci-iov and moving `device` in as net1; the
        plugin reads the vf-iavf fixture (net1 is 0000:3b:02.3; `vf` names another of its VFs). On the
        selection route the SR-IOV plugin must not declare deviceID (`sriov_device_id=False`). Without
        the plugin, the same chain with only its first plugin: what a node without us runs."""
        first = {"type": "host-device", "device": device, "capabilities": {"ips": True, "CNIDeviceInfoFile": True}}
        if sriov_device_id:
            first["capabilities"]["deviceID"] = True
        body = field_nad(name, first, data_dir=None, log_file=PLUGIN_LOG, device_id=vf, log_level="info")
        if not with_plugin:
            config = json.loads(body["spec"]["config"])
            config["plugins"] = config["plugins"][:1]
            body["spec"]["config"] = json.dumps(config)
        body["metadata"]["namespace"] = namespace
        self.apply(body)

    def workload(self, namespace: str, name: str, networks: str, wait_timeout: float = 300) -> dict[str, Any]:
        """A Pod on the secondary network whose init container waits for its device-info with
        `deviceid-inject wait-device-info` (from the downward API, no credentials), as the README shows;
        its app container is the pause program."""
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "annotations": {NETWORKS: networks}},
            "spec": {
                "terminationGracePeriodSeconds": 5,
                "initContainers": [
                    {
                        "name": "wait-device-info",
                        "image": self.image,
                        "command": [
                            DEVICEID_INJECT,
                            "wait-device-info",
                            "--interface",
                            "net1",
                            "--timeout",
                            f"{wait_timeout:g}",
                        ],
                        "volumeMounts": [{"name": "podinfo", "mountPath": "/etc/podinfo"}],
                    }
                ],
                "containers": [{"name": "app", "image": PAUSE_IMAGE}],
                "volumes": [
                    {
                        "name": "podinfo",
                        "downwardAPI": {
                            "items": [{"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}]
                        },
                    }
                ],
            },
        }

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        return self.node.api().get(f"/api/v1/namespaces/{namespace}/pods/{name}")

    def gone(self, namespace: str, name: str) -> bool:
        try:
            self.pod(namespace, name)
        except ApiError as err:
            return err.status == 404
        return False

    def wait_ready(self, namespace: str, name: str, timeout: float = 120) -> dict[str, Any]:
        return self.node.wait(lambda: ready(self.pod(namespace, name)), timeout, f"{namespace}/{name} Ready")

    def logs(self, namespace: str, name: str, container: str) -> str:
        return self.ok("-n", namespace, "logs", name, "-c", container)

    def events(self, namespace: str) -> list[dict[str, Any]]:
        return self.node.api().get(f"/api/v1/namespaces/{namespace}/events")["items"]

    def cni_server_log(self, previous: bool = False) -> str:
        """What the node's CNI server printed (`previous`: its container before the last restart)."""
        (pod,) = self._pods("kube-system", "app.kubernetes.io/name=deviceid-inject")
        args = ["-n", "kube-system", "logs", pod["metadata"]["name"], "-c", "cni-server"]
        return self.ok(*args, *(["--previous"] if previous else []))

    def container_cgroup(self, pod: dict[str, Any], container: str, hierarchy: str = "memory") -> Path:
        """The cgroup (v1, of `hierarchy`) the kubelet made for one container of `pod`, under the
        node's cgroup root."""
        (status,) = [s for s in pod["status"]["containerStatuses"] if s["name"] == container]
        container_id = status["containerID"].rpartition("/")[2]
        top = Path("/sys/fs/cgroup") / hierarchy / self.node.cgroups.name
        (folder,) = [p for p in top.rglob(f"pod{pod['metadata']['uid']}/{container_id}") if p.is_dir()]
        return folder

    def served_add_ms(self, previous: bool = False) -> list[float]:
        """How long each ADD the node's CNI server answered with success took it (from the call's
        start to its answer), by its log."""
        log = self.cni_server_log(previous)
        return [float(ms) for ms in re.findall(r"served ADD \S+: exit 0 in ([0-9.]+) ms", log)]

    def served_adds(self, previous: bool = False) -> int:
        """The ADDs the node's CNI server answered with success, by its log."""
        return len(self.served_add_ms(previous))

    def plugin_log(self) -> str:
        path = self.node.host_path(PLUGIN_LOG)
        return path.read_text(errors="replace") if path.exists() else ""


def ready(pod: dict[str, Any]) -> dict[str, Any] | None:
    conditions = pod.get("status", {}).get("conditions", [])
    return pod if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) else None


def entry(pod: dict[str, Any], network: str) -> dict[str, Any] | None:
    """The network-status entry of `network` (namespace/name), or None while Multus has not written it."""
    return next((e for e in network_status(pod) or [] if e.get("name") == network), None)
