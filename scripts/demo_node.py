"""The demo's last part: deviceid-inject on a real node, as a user installs it.

A single-node Kubernetes cluster (testbed.node: kubelet, containerd, kube-proxy and the control plane,
in namespaces of their own on this machine), Multus v4.3.0 thick from its own manifest, deploy/ applied
with `kubectl apply -k` through a one-line overlay, the field's NAD, and a Pod whose init container
prints its device-info. Run by scripts/demo.sh after `make image`; everything it makes is removed on
exit, also on failure.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from testbed import tools
from testbed.cluster import Cluster, build_multus_image, entry, image_reference
from testbed.kube import Watch
from testbed.node import Node

REPO = Path(__file__).resolve().parent.parent
IMAGE = REPO / "dist" / "deviceid-inject-image.tar"
VF = "0000:3b:02.3"  # the vf-iavf fixture's net1


def step(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(obj: object) -> None:
    print(json.dumps(obj, indent=2), flush=True)


def main() -> int:
    scratch = Path(os.environ["SCRATCH"]) / "node"
    node = Node(scratch)
    try:
        step(f"Part 3: a node: Kubernetes {tools.KUBERNETES_VERSION}, containerd {tools.CONTAINERD_VERSION}, "
             "in network, mount and cgroup namespaces of its own")  # fmt: skip
        started = time.monotonic()
        node.start()
        print(node.kubectl("get", "nodes", "-o", "wide").stdout, end="")
        print(f"(Ready {time.monotonic() - started:.0f} s after the start)")
        cluster = Cluster(node, scratch / "user")

        step(f"ctr images import: {IMAGE.name} (make image) and Multus {tools.THICK_MULTUS}'s image")
        cluster.import_images([IMAGE, build_multus_image(tools.THICK_MULTUS, scratch / "multus.tar")])
        print(node.ctr("images", "ls", "-q").stdout, end="")

        step(f"Multus {tools.THICK_MULTUS} thick, from its own deployments/multus-daemonset-thick.yml")
        cluster.use_multus(tools.THICK_MULTUS)
        print("kube-multus-ds rolled out")

        step("kubectl apply -k overlay/   (deploy/ as a kustomize base; the overlay sets only the image)")
        cluster.deploy_ours(image_reference(IMAGE))
        print((scratch / "user" / "overlay" / "kustomization.yaml").read_text(), end="")
        print(cluster.ok("-n", "kube-system", "get", "daemonset,pods", "-l", "app.kubernetes.io/name=deviceid-inject"))

        ns = cluster.namespace()
        step(f"The field's NAD in {ns}: akshci-iov's stand-in (host-device) then deviceid-inject, cniVersion 0.3.0")
        cluster.field_nad(ns, "n6-dpdk", cluster.veth())
        print(cluster.ok("-n", ns, "get", "net-attach-def", "n6-dpdk", "-o", "jsonpath={.spec.config}"))

        step("A Pod on n6-dpdk whose init container runs `deviceid-inject wait-device-info`")
        watch = Watch(node.api(), f"/api/v1/namespaces/{ns}/pods").start()
        try:
            cluster.apply(cluster.workload(ns, "upf-0", "n6-dpdk"))
            network = f"{ns}/n6-dpdk"
            wrote = watch.wait_for(lambda s: entry(s.object, network) is not None, 120, "with Multus's entry")
            print("network-status as Multus wrote it (v4 knew no deviceID, so no device-info):")
            show(entry(wrote.object, network))
            ours = watch.wait_for(lambda s: "device-info" in (entry(s.object, network) or {}), 60, "with device-info")
            print(f"... and {1000 * (ours.at - wrote.at):.0f} ms later, after the network-status bridge:")
            show(entry(ours.object, network))
        finally:
            watch.stop()
        cluster.wait_ready(ns, "upf-0")
        step("kubectl -n kube-system logs <deviceid-inject pod> -c cni-server   (the ADD Multus ran, served here)")
        print("\n".join(line for line in cluster.cni_server_log().splitlines() if "served " in line))
        step("kubectl logs upf-0 -c wait-device-info   (what the workload read from the downward API)")
        print(cluster.logs(ns, "upf-0", "wait-device-info"), end="")

        step("kubectl delete pod upf-0: its device-info file and record go with it")
        cluster.ok("-n", ns, "delete", "pod", "upf-0", "--wait=true")
        devinfo = node.host_path("/run/k8s.cni.cncf.io/devinfo/cni")
        records = node.host_path("/var/lib/cni/deviceid-inject")
        left = (len(list(devinfo.glob("*"))), len(list(records.glob("*/*.json"))))
        print("device-info files left: {}; records left: {}".format(*left))
        return 0
    finally:
        node.stop()
        left = node.leftovers()
        print(f"\nnode stopped; left behind: {left or 'nothing'}")


if __name__ == "__main__":
    sys.exit(main())
