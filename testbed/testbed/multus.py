"""Real Multus (thin plugin, built by scripts/install-tools.sh) run the way containerd runs it.

A `Node` is the folder Multus and the plugins take for the node's own: in a private mount
namespace that dies with the Multus process (see `isolation`), it appears at /var/lib/cni
(Multus's and libcni's caches), /var/lib/kubelet (the device plugin checkpoint Multus falls
back to without a pod-resources socket) and /var/run/k8s.cni.cncf.io (the device-info tree).
So Multus's fixed paths are real paths, and the host's own folders never see a write.
"""

from __future__ import annotations

import json
import shutil
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.harness import Outcome, Service, base_env, run
from testbed.helpers import SYSFS_IAVF, cni_env, passed_through, read_json
from testbed.kube import Api, nad, namespace, network_status, pod
from testbed.tools import FIELD_MULTUS, MULTUS_V3_VERSIONS, MULTUS_V4_VERSIONS
from testbed.tools import multus as multus_tool

MULTUS_VERSIONS = MULTUS_V4_VERSIONS + MULTUS_V3_VERSIONS
CHECKPOINT = "device-plugins/kubelet_internal_checkpoint"
# Where a Node's scratch folders appear to Multus and the plugins: (subfolder, fixed path), "$run"
# standing for what /var/run resolves to (usually /run).
BINDS = (
    ("var-lib-cni", "/var/lib/cni"),
    ("var-lib-kubelet", "/var/lib/kubelet"),
    ("run-k8s-cni", "$run/k8s.cni.cncf.io"),
)


def isolation(binds: tuple[tuple[str, str], ...] = BINDS) -> str:
    """A shell script for `unshare --mount`: /run and /var/lib become tmpfs of this namespace only (the
    host's netns folder moved in, so CNI_NETNS paths still work), then each `$1/<subfolder>` is bound at
    its fixed path, then the rest of the arguments is exec'd. Nothing is made at the host's paths, and no
    other session's clean-up can pull a bind from under a running Multus."""
    lines = [
        'set -e; root="$1"; shift',
        "run=$(readlink -f /var/run)",
        'mkdir -p "$root/.netns"',
        'if [ -d "$run/netns" ]; then mount --rbind "$run/netns" "$root/.netns"; fi',
        'mount -t tmpfs -o mode=0755 node-run "$run"',
        "mount -t tmpfs -o mode=0755 node-var-lib /var/lib",
        'mkdir -p "$run/netns"',
        'if mountpoint -q "$root/.netns"; then mount --move "$root/.netns" "$run/netns"; fi',
    ]
    for sub, target in binds:
        lines.append(f'mkdir -p "{target}"; mount --bind "$root/{sub}" "{target}"')
    lines.append('exec "$@"')
    return "\n".join(lines)


def multus_binary(version: str) -> Path:
    return multus_tool(version)


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
    env = cni_env(command, container_id=container_id, netns=netns, ifname="eth0", CNI_PATH=cni_path,
                  CNI_ARGS=cni_args(pod, container_id))  # fmt: skip
    argv = [
        "unshare", "--mount", "--propagation", "private",
        "sh", "-c", isolation(), "sh", str(node.root),
        str(multus_binary(version)),
    ]  # fmt: skip
    stdin = json.dumps(multus_config(kubeconfig, node)).encode()
    return run(argv, env, timeout, stdin)


# --- thick mode: multus-daemon runs the delegates, multus-shim is what containerd calls ---------------
#
# No kubelet is needed. What the daemon does want, read in v4.0.2's source:
# - an in-cluster API config, always (`pkg/server/server.go` NewCNIServer -> `k8sclient.InClusterK8sClient`
#   -> client-go `rest.InClusterConfig`): KUBERNETES_SERVICE_HOST/PORT and a token and CA at
#   /var/run/secrets/kubernetes.io/serviceaccount. A `kubeconfig` key is never read for the daemon's client,
#   so the test bed's admin token goes in that folder, bound from scratch as a projected volume would be.
# - in "auto" mode (its default) a primary CNI config in `multusAutoconfigDir`, from which it writes
#   `00-multus.conf`, the shim's config; no node name, no informer, no readiness indicator unless
#   configured, and the pod-resources socket only for NADs with a resourceName.
# - the shim finds the daemon through `daemonSocketDir` in its config (default /run/multus/); the daemon's
#   generated config names it `socketDir`, which the shim does not read, so the shim's config gets both.

THICK = f"{FIELD_MULTUS}-thick"
SERVICE_ACCOUNT = "kubernetes.io/serviceaccount"
# The daemon's mount namespace: as `isolation` makes it, with the host's netns folder a slave (sandboxes
# made later show up, as with the DaemonSet's `mountPropagation: HostToContainer`) and the
# service-account folder at its fixed path too.
THICK_BINDS = (("run-k8s-cni", "$run/k8s.cni.cncf.io"), ("run-secrets", "$run/secrets"))


class ThickMultus:
    """multus-daemon for one Node, and multus-shim calls to it as containerd makes them."""

    def __init__(self, node: Node, api: Api, cni_path: str) -> None:
        self.node = node
        self.api = api
        self.cni_path = cni_path
        self.socket_dir = node.root / "run-multus"  # the daemon removes and makes it again itself
        self.net_d = node.root / "etc-cni-net.d"
        self.daemon_config = node.root / "daemon-config.json"
        self.daemon_output = node.root / "multus-daemon.out"
        self.service: Service | None = None

    @property
    def socket(self) -> Path:
        return self.socket_dir / "multus.sock"

    def start(self, timeout: float = 30) -> None:
        secrets = self.node.root / "run-secrets" / SERVICE_ACCOUNT
        secrets.mkdir(parents=True)
        (secrets / "token").write_text(self.api.token)
        shutil.copy(self.api.ca_file, secrets / "ca.crt")
        self.net_d.mkdir()
        primary = {"cniVersion": "0.3.1", "name": "default-lo", "type": "loopback"}
        (self.net_d / "10-default-lo.conf").write_text(json.dumps(primary))
        config = {
            "logFile": str(self.node.multus_log),
            "logLevel": "debug",
            "logToStderr": False,  # the log once, in the file; panics still reach multus-daemon.out
            "socketDir": str(self.socket_dir),
            "cniVersion": "0.3.1",
            "cniConfigDir": str(self.net_d),
            "multusConfigFile": "auto",
            "multusAutoconfigDir": str(self.net_d),
            # Merged into every request's config: Multus's cache and libcni's, instead of /var/lib/cni/multus.
            "cniDir": str(self.node.root / "var-lib-cni" / "multus"),
        }  # no chrootDir: the daemon runs on the node's root; no metricsPort: it would listen on every address
        self.daemon_config.write_text(json.dumps(config))

        env = base_env(
            CNI_PATH=self.cni_path,  # libcni looks for the delegates there (pkg/multus/multus.go confAdd)
            KUBERNETES_SERVICE_HOST="127.0.0.1",
            KUBERNETES_SERVICE_PORT=self.api.url.rpartition(":")[2],
            **passed_through(),
        )
        argv = [
            "unshare", "--mount", "--propagation", "slave",
            "sh", "-c", isolation(THICK_BINDS), "sh", str(self.node.root),
            str(multus_tool(FIELD_MULTUS, "multus-daemon")), "-config", str(self.daemon_config),
        ]  # fmt: skip
        self.service = Service("multus-daemon", argv, self.daemon_output, env).start()
        ready = self.service.wait_until(lambda: self._healthy() and (self.net_d / "00-multus.conf").exists(), timeout)
        assert ready, self.logs()

    def _healthy(self) -> bool:
        """GET /healthz on the daemon's socket, as a readiness probe would."""
        try:
            with socket.socket(socket.AF_UNIX) as conn:
                conn.settimeout(2)
                conn.connect(str(self.socket))
                conn.sendall(b"GET /healthz HTTP/1.0\r\nHost: multus\r\n\r\n")
                return conn.recv(64).startswith(b"HTTP/1.0 200")
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM to the daemon's process group (it and any plugin it runs), SIGKILL if it lingers."""
        if self.service is not None:
            self.service.stop(timeout=10)

    def logs(self) -> str:
        parts = [p.read_text(errors="replace") for p in (self.daemon_output, self.node.multus_log) if p.exists()]
        return "\n".join(parts)

    def shim_config(self) -> dict[str, Any]:
        """The daemon's generated 00-multus.conf, plus where the shim finds the daemon's socket."""
        config = json.loads((self.net_d / "00-multus.conf").read_text())
        return {**config, "daemonSocketDir": str(self.socket_dir)}

    def shim(self, command: str, box: Sandbox, timeout: float = 120) -> Outcome:
        """One CNI call of multus-shim for the sandbox, from the host's namespaces as containerd makes it."""
        env = cni_env(command, container_id=box.container_id, netns=box.netns, ifname="eth0", CNI_PATH=self.cni_path,
                      CNI_ARGS=cni_args(box.pod, box.container_id))  # fmt: skip
        stdin = json.dumps(self.shim_config()).encode()
        return run([str(multus_tool(FIELD_MULTUS, "multus-shim"))], env, timeout, stdin)


# --- a namespace on the test bed, with the field's NAD and Pods whose sandboxes Multus attaches --------

NODE = "node-a"
NETWORK = "n6-dpdk"


def field_nad(
    name: str,
    first: dict[str, Any],
    data_dir: Path | None,
    log_file: Path | str,
    annotations: dict[str, str] | None = None,
    device_id: str | None = None,
    log_level: str = "debug",
) -> dict[str, Any]:
    """The field's NAD: one chain at 0.3.0, the plugin that makes net1 first, then deviceid-inject
    (over the vf-iavf fixture tree, where net1 is VF 0000:3b:02.3; `device_id` names another).
    `data_dir` None: the plugin's default dataDir, as on a node."""
    inject: dict[str, Any] = {
        "type": "deviceid-inject",
        "sysfsRoot": str(SYSFS_IAVF),  # a test seam: this machine has no SR-IOV NIC
        "logFile": str(log_file),
        "logLevel": log_level,
        "capabilities": {"deviceID": True, "CNIDeviceInfoFile": True},
    }
    if data_dir is not None:
        inject["dataDir"] = str(data_dir)
    if device_id:
        inject["deviceID"] = device_id
    config = {"cniVersion": "0.3.0", "name": name, "plugins": [first, inject]}
    return nad(name, config, annotations)


def host_device(peer: str, declare_device_id: bool = False) -> dict[str, Any]:
    """The stand-in for akshci-iov: it moves a device of its own choosing into the pod. It does not
    declare deviceID, as docs/network-status-routes.md asks of the SR-IOV plugin on the selection route."""
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
    _thick: ThickMultus | None = field(default=None, repr=False)

    @classmethod
    def create(
        cls,
        api: Api,
        root: Path,
        cni_path: str,
        make_veth: Callable[[], tuple[str, str]],
        make_netns: Callable[[], str],
        ns: str | None = None,
    ) -> Scene:
        """A namespace of its own (`ns`, or a fresh name), with the node's folders, Multus's kubeconfig,
        the plugin's dataDir and its log under `root`."""
        ns = ns or f"ran-{uuid.uuid4().hex[:8]}"
        api.post("/api/v1/namespaces", namespace(ns))
        return cls(
            api=api,
            ns=ns,
            node=Node(root / "node"),
            kubeconfig=api.kubeconfig(root / "multus.kubeconfig"),
            cni_path=cni_path,
            data_dir=root / "state",
            log_file=root / "deviceid-inject.log",
            make_veth=make_veth,
            make_netns=make_netns,
        )

    def close(self) -> None:
        """Stop what the scene started (the thick-mode daemon)."""
        if self._thick is not None:
            self._thick.stop()

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
        """One CNI call for the sandbox: the thin plugin of `version`, or THICK: multus-shim to a
        multus-daemon of this scene's node (started on first use)."""
        if version == THICK:
            if self._thick is None:
                self._thick = ThickMultus(self.node, self.api, self.cni_path)
                self._thick.start()
            return self._thick.shim(command, box)
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
        log = self._thick.logs() if self._thick else self.node.multus_log.read_text()
        assert out.code == 0, f"{out.stdout}\n{out.stderr}\n{log}"
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
