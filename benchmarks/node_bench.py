"""Pod start-up on a real node, with and without deviceid-inject (`make bench`; `--quick` in `make test`).

The node of testbed.node (kubelet, containerd, Multus thick from its own manifest, deploy/ applied as
the tests apply it, the image built from the binary). Each variant's Pods are created through the API,
5 at a time, in waves that take turns between the variants (shuffled each round), so drift on this
shared machine spreads over all of them. Times are taken on this side of one watch of the namespace:
from just before the create call to the event that shows the Pod Ready (and, for Pods that wait, the
event that shows their wait-device-info init container ended).

Variants (the same Pod, its one app container the pause program, unless it waits):
- without deviceid-inject: the field's NAD with only the SR-IOV stand-in (host-device);
- bridge route: the field's NAD with deviceid-inject; the bridge adds device-info after Multus's write;
- selection route: the same NAD (the SR-IOV plugin without deviceID) and a deviceID placeholder in the
  Pod's selection, so Multus writes our device-info itself;
- admission route: the same, the Pod's selection in its text form, rewritten at creation by
  deploy/selection-route's MutatingAdmissionPolicy (its networks opted in before each wave);
- ... waiting: the Pod's init container runs `deviceid-inject wait-device-info` first, as a workload
  that reads device-info at start does.

    .venv/bin/python benchmarks/node_bench.py [--pods 50] [--quick] [--out FILE] [--image ARCHIVE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deviceid_inject.annotations import NETWORKS
from testbed import admission, kube, tools
from testbed.cluster import Cluster, build_multus_image, entry, image_reference, ready
from testbed.helpers import PLACEHOLDER, VFS
from testbed.kube import Seen, Watch
from testbed.node import Node

REPO = Path(__file__).resolve().parent.parent
WAVE = 5


@dataclass
class Variant:
    name: str
    with_plugin: bool = True
    selection_route: bool = False
    admission: bool = False  # the selection route applied by deploy/selection-route's policy
    waits: bool = False
    created: dict[str, float] = field(default_factory=dict)
    ready: dict[str, float] = field(default_factory=dict)
    waited: dict[str, float] = field(default_factory=dict)  # the init container's end
    multus_wrote: dict[str, float] = field(default_factory=dict)
    device_info: dict[str, float] = field(default_factory=dict)
    sandbox_returned: dict[str, float] = field(default_factory=dict)  # containerd's RunPodSandbox, after ADD
    # Multus's daemon container over each wave (its Pods' ADDs and DELs): CPU, and time throttled by
    # its CFS quota, in ns.
    multus_cpu: list[int] = field(default_factory=list)
    multus_throttled: list[int] = field(default_factory=list)


def multus_usage(cluster: Cluster) -> tuple[int, int]:
    """(CPU, throttled time) of Multus's daemon container so far, in ns, as its cgroups count them."""
    (multus,) = cluster._pods("kube-system", "name=multus")
    cpu = int((cluster.container_cgroup(multus, "kube-multus", "cpuacct") / "cpuacct.usage").read_text())
    stat = (cluster.container_cgroup(multus, "kube-multus", "cpu") / "cpu.stat").read_text().split()
    return cpu, int(stat[stat.index("throttled_time") + 1])


VARIANTS = (
    Variant("without deviceid-inject", with_plugin=False),
    Variant("bridge route"),
    Variant("selection route", selection_route=True),
    Variant("admission route", selection_route=True, admission=True),
    Variant("bridge route, waiting", waits=True),
    Variant("selection route, waiting", selection_route=True, waits=True),
    Variant("admission route, waiting", selection_route=True, admission=True, waits=True),
)


def nad_config(name: str, device: str, variant: Variant, vf: str) -> dict[str, Any]:
    first: dict[str, Any] = {
        "type": "host-device",
        "device": device,
        "capabilities": {"ips": True, "CNIDeviceInfoFile": True},
    }
    if not variant.selection_route:
        first["capabilities"]["deviceID"] = True
    plugins = [first]
    if variant.with_plugin:
        plugins.append(
            {
                "type": "deviceid-inject",
                "sysfsRoot": str(REPO / "testdata" / "sysfs" / "vf-iavf"),
                "deviceID": vf,
                "capabilities": {"deviceID": True, "CNIDeviceInfoFile": True},
            }
        )
    return {"cniVersion": "0.3.0", "name": name, "plugins": plugins}


def pod_body(cluster: Cluster, ns: str, name: str, network: str, variant: Variant) -> dict[str, Any]:
    body = cluster.workload(ns, name, network)
    if variant.selection_route and not variant.admission:  # the admission route's Pod keeps the text form
        body["metadata"]["annotations"][NETWORKS] = json.dumps(
            [{"name": network, "interface": "net1", "deviceID": PLACEHOLDER}]
        )
    if not variant.waits:
        body["spec"].pop("initContainers")
        body["spec"]["volumes"] = []
    return body


def wave(cluster: Cluster, ns: str, variant: Variant, index: int, watch: Watch) -> None:
    api = cluster.node.api()
    names = []
    for i in range(WAVE):
        name = f"w{index}-{i}-{uuid.uuid4().hex[:4]}"
        network = f"n6-{name}"
        config = nad_config(network, cluster.veth(), variant, VFS[(index * WAVE + i) % len(VFS)])
        body = {
            "apiVersion": "k8s.cni.cncf.io/v1",
            "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": network},
            "spec": {"config": json.dumps(config)},
        }
        api.post(f"/apis/k8s.cni.cncf.io/v1/namespaces/{ns}/network-attachment-definitions", body)
        names.append(name)
    if variant.admission:  # opt this wave's networks in (before, so its time is no Pod's)
        kube.apply(api, admission.policy_objects(cluster.work / "policy", [f"{ns}/n6-{n}" for n in names]))
        admission.wait_rewrites(api, ns, f"n6-{names[0]}")
    cpu, throttled = multus_usage(cluster)
    uids = {}
    for name in names:
        variant.created[name] = time.monotonic()
        created = api.post(f"/api/v1/namespaces/{ns}/pods", pod_body(cluster, ns, name, f"n6-{name}", variant))
        uids[name] = created["metadata"]["uid"]
    for name in names:
        seen = watch.wait_for(
            lambda s, n=name: s.object["metadata"]["name"] == n and bool(ready(s.object)), 120, f"{name} Ready"
        )
        variant.ready[name] = seen.at
        network = f"{ns}/n6-{name}"
        status = first(watch, name, lambda s, n=network: entry(s.object, n) is not None)
        if status:
            variant.multus_wrote[name] = status.at
        info = first(watch, name, lambda s, n=network: "device-info" in (entry(s.object, n) or {}))
        if info:
            variant.device_info[name] = info.at
        if variant.waits:
            ended = first(watch, name, lambda s: init_ended(s.object))
            assert ended is not None, f"{name} was Ready before its init container ended"
            variant.waited[name] = ended.at
    monotonic = time.monotonic() - time.time()  # containerd logs wall times, the watch monotonic ones
    returned = cluster.node.sandboxes_returned()
    for name in names:
        if uids[name] in returned:
            variant.sandbox_returned[name] = returned[uids[name]] + monotonic
    for name in names:
        api.delete(f"/api/v1/namespaces/{ns}/pods/{name}")
    cluster.node.wait(lambda: all(cluster.gone(ns, n) for n in names), 120, "the wave's Pods deleted")
    cpu_after, throttled_after = multus_usage(cluster)
    variant.multus_cpu.append(cpu_after - cpu)
    variant.multus_throttled.append(throttled_after - throttled)
    cluster.remove_links()


def first(watch: Watch, name: str, match: Callable[[Seen], bool]) -> Seen | None:
    with watch.changed:
        return next((s for s in watch.seen if s.object["metadata"]["name"] == name and match(s)), None)


def init_ended(pod: dict[str, Any]) -> bool:
    statuses = pod.get("status", {}).get("initContainerStatuses") or []
    return bool(statuses) and "terminated" in statuses[0]["state"]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def spans(variant: Variant, until: dict[str, float], since: dict[str, float] | None = None) -> list[float]:
    since = since if since is not None else variant.created
    return [until[n] - since[n] for n in until if n in since]


def fmt(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values) * 1000:.0f} / {quantile(values, 0.99) * 1000:.0f} ms"


def report(variants: tuple[Variant, ...], pods: int, multus: str, kube: str, served: list[float]) -> str:
    base = spans(variants[0], variants[0].ready)
    base_median, base_p99 = statistics.median(base), quantile(base, 0.99)
    lines = [
        f"Pod start-up on the test node: Kubernetes {kube}, Multus {multus}, {pods} Pods a variant, "
        f"{WAVE} at a time ({time.strftime('%Y-%m-%d')}).",
        "",
        "| variant | creation → Ready (median / p99) | vs without (median / p99) | creation → wait-device-info ended "
        "| Multus's write → device-info visible | RunPodSandbox returned → device-info visible (median / max) |",
        "|---|---|---|---|---|---|",
    ]
    for v in variants:
        ready_spans = spans(v, v.ready)
        med, p99 = statistics.median(ready_spans), quantile(ready_spans, 0.99)
        versus = "1.00x / 1.00x" if v is variants[0] else f"{med / base_median:.2f}x / {p99 / base_p99:.2f}x"
        after_write = spans(v, v.device_info, v.multus_wrote) if v.with_plugin else []
        after_add = spans(v, v.device_info, v.sandbox_returned) if v.with_plugin else []
        window = f"{statistics.median(after_add) * 1000:.0f} / {max(after_add) * 1000:.0f} ms" if after_add else "-"
        lines.append(
            f"| {v.name} | {fmt(ready_spans)} | {versus} | {fmt(spans(v, v.waited))} | {fmt(after_write)} | {window} |"
        )
    lines += [
        "",
        "Visible: the first watch event that shows it. Multus's write → visible is the window in which "
        "network-status has no device-info (0: Multus's own write had it). RunPodSandbox returned: from "
        "containerd's log; it returns after Multus's ADD has returned; negative: device-info visible before.",
        "",
        f"ADDs of deviceid-inject answered by the node's CNI server (its log): {len(served)} of "
        f"{sum(len(v.created) for v in variants if v.with_plugin)}; the rest ran in their client.",
    ]
    if served:
        lines.append(
            f"The server's time per ADD it answered, from the call's start to its answer (median / p99): "
            f"{statistics.median(served):.0f} / {quantile(served, 0.99):.0f} ms."
        )
    lines += [
        "",
        f"Multus's daemon container (which runs every delegate) per Pod, its ADD and DEL, median of the "
        f"waves of {WAVE}: CPU / time throttled by its CFS quota.",
        "",
        "| variant | CPU | throttled |",
        "|---|---|---|",
    ]
    lines += [
        f"| {v.name} | {statistics.median(v.multus_cpu) / WAVE / 1e6:.0f} ms "
        f"| {statistics.median(v.multus_throttled) / WAVE / 1e6:.0f} ms |"
        for v in variants
        if v.multus_cpu
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=50, help="Pods per variant (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="10 Pods per variant")
    parser.add_argument("--image", type=Path, default=REPO / "dist" / "deviceid-inject-image.tar")
    parser.add_argument("--out", type=Path, help="write the table here too")
    parser.add_argument(
        "--multus-cpu",
        default="",
        help="set the Multus daemon's CPU limit (e.g. 2); default: its own manifest's 100m, which every "
        "delegate plugin runs under",
    )
    args = parser.parse_args()
    pods = 10 if args.quick else args.pods
    waves = max(1, pods // WAVE)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="node-bench-") as scratch:
        node = Node(Path(scratch) / "node")
        try:
            node.start()
            cluster = Cluster(node, Path(scratch) / "user")
            archives = [args.image, build_multus_image(tools.THICK_MULTUS, Path(scratch) / "multus.tar")]
            cluster.import_images(archives)
            cluster.deploy_ours(image_reference(args.image))
            cluster.use_multus(tools.THICK_MULTUS)
            if args.multus_cpu:
                cluster.set_multus_cpu_limit(args.multus_cpu)
            ns = cluster.namespace()
            watch = Watch(node.api(), f"/api/v1/namespaces/{ns}/pods").start()
            try:
                for index in range(waves):
                    for variant in random.sample(VARIANTS, len(VARIANTS)):
                        try:
                            wave(cluster, ns, variant, index * len(VARIANTS) + VARIANTS.index(variant), watch)
                        except AssertionError:
                            print(f"node_bench: {variant.name}:\n{cluster.diagnosis(ns)}", file=sys.stderr)
                            raise
                    print(f"node_bench: round {index + 1}/{waves} done", file=sys.stderr, flush=True)
            finally:
                watch.stop()
            served = cluster.served_add_ms()
        finally:
            node.stop()
        left = node.leftovers()
        if left:
            print(f"node_bench: the node left {left}", file=sys.stderr)
            return 1
    limits = f"its daemon's CPU limit set to {args.multus_cpu}" if args.multus_cpu else "its own manifest's limits"
    table = report(VARIANTS, waves * WAVE, f"{tools.THICK_MULTUS} thick ({limits})", tools.KUBERNETES_VERSION, served)
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
