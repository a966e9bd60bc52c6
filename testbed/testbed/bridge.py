"""The network-status bridge as the tests (and the benchmark) run it: its RBAC and admission
policy from deploy/, a Pod for it on a node (so the API server binds its token to that node),
and the agent itself as a process of the implementation under test.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deviceid_inject.annotations import NETWORK_STATUS, NETWORKS_STATUS
from deviceid_inject.state import Record
from testbed.harness import NotReady, Service, base_env
from testbed.helpers import REPO, passed_through, wait_for
from testbed.kube import Api, ApiError, ApiServer, apply, namespace, node, service_account_token

DEPLOY = REPO / "deploy"
ACCOUNT_NAMESPACE = "kube-system"
ACCOUNT = "deviceid-inject-bridge"
USERNAME = f"system:serviceaccount:{ACCOUNT_NAMESPACE}:{ACCOUNT}"
MERGE = "application/merge-patch+json"
NODES = ("node-a", "node-b")


def device_info(vf: str) -> dict[str, Any]:
    """What the plugin writes for one of helpers.VFS (all on the fixture's PF 0000:3b:00.0)."""
    return {"type": "pci", "version": "1.1.0", "pci": {"pci-address": vf, "pf-pci-address": "0000:3b:00.0"}}


def manifests(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def install(kube: ApiServer) -> None:
    """deploy/'s RBAC and admission policy, the nodes, and kube-system; idempotent."""
    api = kube.api()
    apply(api, [namespace(ACCOUNT_NAMESPACE)])
    apply(api, [node(name) for name in NODES])
    apply(api, manifests("bridge-rbac.yaml") + manifests("bridge-policy.yaml"))


def agent_pod(api: Api, node_name: str, name: str | None = None) -> dict[str, Any]:
    """The DaemonSet's Pod on `node_name` (or another Pod of the account there, `name`), as far as
    the API server needs one to bind a token to."""
    name = name or f"bridge-{node_name}"
    path = f"/api/v1/namespaces/{ACCOUNT_NAMESPACE}/pods"
    try:
        return api.get(f"{path}/{name}")
    except ApiError as err:
        if err.status != 404:
            raise
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "deviceid-inject"}},
        "spec": {
            "nodeName": node_name,
            "serviceAccountName": ACCOUNT,
            "containers": [{"name": "bridge", "image": "registry.invalid/deviceid-inject:0.1.0"}],
        },
    }
    return api.post(path, body)


def agent_api(kube: ApiServer, node_name: str, pod_name: str | None = None) -> Api:
    """The bridge's identity on `node_name`: a service-account token bound to its Pod there (or to
    the Pod `pod_name`: deleting that Pod revokes the token)."""
    admin = kube.api()
    return kube.api(service_account_token(admin, ACCOUNT_NAMESPACE, ACCOUNT, agent_pod(admin, node_name, pod_name)))


# The binding that keeps --legacy-networks-status off (deploy/bridge-policy.yaml).
NO_LEGACY_BINDING = "deviceid-inject-bridge-no-networks-status"
BINDINGS = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"


@contextlib.contextmanager
def networks_status_allowed(kube: ApiServer, agent: Api, probe_pod_path: str) -> Iterator[None]:
    """deploy/'s binding that forbids networks-status deleted, as an operator turning
    --legacy-networks-status on does; put back afterwards, also when the test failed. Waits until
    the API server lets the bridge write networks-status as a copy of network-status (probing on
    `probe_pod_path`, a Pod of its node for this alone), and afterwards until it refuses it again."""
    admin = kube.api()
    binding = next(
        d
        for d in manifests("bridge-policy.yaml")
        if d["kind"] == "ValidatingAdmissionPolicyBinding" and d["metadata"]["name"] == NO_LEGACY_BINDING
    )
    admin.delete(f"{BINDINGS}/{NO_LEGACY_BINDING}")
    try:
        _wait_for_copy(agent, probe_pod_path, allowed=True)
        yield
    finally:
        apply(admin, [binding])
        _wait_for_copy(agent, probe_pod_path, allowed=False)


def copy_of_network_status(pod: dict[str, Any]) -> dict[str, Any]:
    """A pods/status merge patch that makes networks-status equal to the Pod's network-status."""
    value = pod["metadata"]["annotations"][NETWORK_STATUS]
    return {"metadata": {"annotations": {NETWORKS_STATUS: value}}}


def _wait_for_copy(agent: Api, pod_path: str, allowed: bool) -> None:
    """Until a new value of both keys is allowed (or refused): bindings take a moment to reach the
    admission plugin."""

    def answered() -> bool:
        value = json.dumps([{"probe": uuid.uuid4().hex}])
        both = {"metadata": {"annotations": {NETWORK_STATUS: value, NETWORKS_STATUS: value}}}
        return agent.status_code("PATCH", f"{pod_path}/status", both, MERGE) == (200 if allowed else 403)

    wait_for(answered, 30, f"the API server to {'allow' if allowed else 'refuse'} networks-status", 0.2)


def wait_for_policy(kube: ApiServer, agent: Api, foreign_pod_path: str) -> None:
    """The admission policy takes a moment to load: wait until it refuses a change it must refuse."""
    body = {"metadata": {"labels": {"policy-probe": "1"}}}
    refused = (403, 422)
    wait_for(
        lambda: agent.status_code("PATCH", f"{foreign_pod_path}/status", body, MERGE) in refused,
        30,
        "the bridge's admission policy to start refusing",
        0.2,
    )


@dataclass
class BridgeProcess:
    """`deviceid-inject bridge` for one node, run on the test bed's harness; its log goes next to its
    kubeconfig, and its metrics port is read from that log."""

    command: list[str]
    kubeconfig: Path
    data_dir: Path
    node: str = "node-a"
    resync: float = 1.0
    extra: tuple[str, ...] = ()  # more flags, e.g. --legacy-networks-status
    port: int = 0
    service: Service | None = field(default=None, repr=False)
    _since: int = 0  # where this start's part of the log begins

    def start(self) -> BridgeProcess:
        if self.service is None:
            argv = [
                *self.command, "bridge",
                "--node", self.node,
                "--kubeconfig", str(self.kubeconfig),
                "--data-dir", str(self.data_dir),
                "--listen", "127.0.0.1:0",
                "--resync", str(self.resync),
                "--log-level", "debug",
                *self.extra,
            ]  # fmt: skip
            self.service = Service("bridge", argv, self.kubeconfig.with_suffix(".log"), base_env(**passed_through()))
        self._since = len(self.service.log())
        self.port = 0
        self.service.start()
        try:
            self.port = self.service.wait_until(self._serving_port, 60, "serving")
        except NotReady:
            self.stop()
            raise
        return self

    def _serving_port(self) -> int:
        found = re.search(r"serving on [\d.]+:(\d+)", self.log())
        return int(found.group(1)) if found else 0

    @property
    def proc(self) -> subprocess.Popen | None:
        return self.service.proc if self.service else None

    def log(self) -> str:
        """What the agent printed since its last start (not the harness's line that starts it)."""
        text = self.service.log()[self._since :] if self.service else ""
        return text.split("\n", 1)[1] if text.startswith("--- start ") else text

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of /metrics; 0 when the series has no sample yet."""
        _, text = self.get("/metrics")
        for line in text.splitlines():
            if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
                return float(line.split()[-1])
        return 0.0

    def wait_ready(self, timeout: float = 30) -> None:
        assert self.service is not None, "the bridge was never started"
        self.service.wait_until(lambda: self.get("/readyz")[0] == 200, timeout, "ready")

    def alive(self) -> bool:
        return self.service is not None and self.service.alive()

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM to its group, then SIGKILL if it does not end in time; the exit code SIGTERM got."""
        return self.service.stop(timeout) if self.service else None


# --- the plugin's record of an attachment, as the bridge finds it ------------------------------------

UID = "0d180aac-e816-4b5e-96d7-57958f908ac7"
VF = {"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:3b:02.3", "pf-pci-address": "0000:3b:00.0"}}
OTHER_VF = {"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:3b:01.0"}}
DEVICE_PLUGINS = {"type": "pci", "version": "1.0.0", "pci": {"pci-address": "0000:af:00.2"}}


def record(container_id: str = "sandbox1", ifname: str = "net1", **changes) -> Record:
    fields = {
        "container_id": container_id,
        "ifname": ifname,
        "network": "n6-dpdk",
        "pci_address": VF["pci"]["pci-address"],
        "strategy": "netdev sysfs",
        "device_info_file": f"/run/k8s.cni.cncf.io/devinfo/cni/n6-dpdk-{container_id}_{ifname}",
        "created_file": True,
        "pod_namespace": "ran",
        "pod_name": "upf-0",
        "pod_uid": UID,
        "device_info": VF,
    }
    fields.update(changes)
    return Record(**fields)
