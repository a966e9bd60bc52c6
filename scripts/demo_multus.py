"""The demo's last part: a Pod's network-status as unmodified Multus v4.0.2 writes it, then with
the network-status bridge's device-info. Run by scripts/demo.sh, which passes CNI_PATH (a folder
with deviceid-inject first) and SCRATCH; it reuses the test bed of tests/ (kube.py, multus.py,
bridge.py) and removes everything it made on exit, also on failure.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "testdata")]

from bridge import BridgeProcess, agent_api, install  # noqa: E402
from kube import ApiServer  # noqa: E402
from multus import Scene, host_device  # noqa: E402


def step(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show_network_status(pod: dict) -> None:
    print(json.dumps(json.loads(pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"]), indent=2))


def main() -> int:
    scratch = Path(os.environ["SCRATCH"]) / "k8s"
    plugin = shlex.split(os.environ["DEMO_PLUGIN_COMMAND"])
    links: list[str] = []
    namespaces: list[str] = []

    def make_veth() -> tuple[str, str]:
        token = uuid.uuid4().hex[:6]
        host, peer = f"dit-dmh{token}", f"dit-dmp{token}"
        subprocess.run(["ip", "link", "add", host, "type", "veth", "peer", "name", peer], check=True)
        links.append(host)
        return host, peer

    def make_netns() -> str:
        name = f"dit-demo-{uuid.uuid4().hex[:6]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        namespaces.append(name)
        return f"/var/run/netns/{name}"

    kube = ApiServer(scratch / "apiserver")
    agent = None
    try:
        step("Part 3: etcd and kube-apiserver v1.34.2 on 127.0.0.1, the NAD CRD, deploy/'s bridge RBAC and policy")
        started = time.monotonic()
        kube.start()
        kube.install_nad_crd()
        install(kube)
        print(f"API server ready at {kube.url} in {time.monotonic() - started:.1f} s")
        api = kube.api()
        scene = Scene.create(api, scratch, os.environ["CNI_PATH"], make_veth, make_netns, ns="ran")
        box = scene.sandbox("upf-0", "n6-dpdk")
        scene.create_nad(host_device(box.peer))
        step("Multus v4.0.2 ADD for Pod ran/upf-0 (NAD n6-dpdk: host-device, then deviceid-inject, at 0.3.0)")
        pod = scene.add("v4.0.2", box)
        print("network-status as Multus wrote it (no device-info: Multus v4 knew no deviceID):")
        show_network_status(pod)
        print(f"our file, at the fallback path Multus does not read: {sorted(os.listdir(scene.node.devinfo / 'cni'))}")

        step("The network-status bridge for node-a starts, with its own token (bound to its Pod on node-a)")
        kubeconfig = agent_api(kube, "node-a").kubeconfig(scratch / "bridge.kubeconfig", user="bridge")
        agent = BridgeProcess(plugin, kubeconfig, scene.data_dir).start()
        deadline = time.monotonic() + 30
        while "device-info" not in scene.entry(scene.read_pod("upf-0")) and time.monotonic() < deadline:
            time.sleep(0.05)
        print("network-status after the bridge:")
        show_network_status(scene.read_pod("upf-0"))
        print(f"bridge patches: {agent.metric('deviceid_inject_bridge_patches_total'):.0f}")
        return 0
    finally:
        if agent is not None:
            agent.stop()
        kube.stop()
        for name in namespaces:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        for link in links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
