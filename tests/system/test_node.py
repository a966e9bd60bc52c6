"""deviceid-inject on a real node: kubelet, containerd and runc, the image built from the binary under
test, deploy/ applied with `kubectl apply -k` as a user applies it, Multus in thick mode from its own
manifest (v4.3.0, the newest, and v4.0.2, the field's), and the field's NetworkAttachmentDefinition.

Everything here goes through the kubelet: Pods are created with kubectl, their sandboxes made by
containerd, their networks attached by Multus, and what the workload sees is read from its own
container's output.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from deviceid_inject.annotations import NETWORK_STATUS, NETWORKS_STATUS
from testbed.bridge import device_info
from testbed.cluster import Cluster, entry, ready
from testbed.harness import NotReady
from testbed.helpers import PLACEHOLDER, VFS, files_under
from testbed.kube import Watch
from testbed.node import Node, build_our_image

pytestmark = [pytest.mark.node]

BRIDGE_MANAGER = "deviceid-inject-bridge"  # the field manager of the bridge's patches


def exe() -> Path:
    return Path(os.environ["DEVICEID_INJECT_EXE"])


def records_of(cluster: Cluster, uid: str) -> list[dict[str, Any]]:
    """The plugin's records (on the node, under its default dataDir) of the Pod with `uid`."""
    data_dir = cluster.node.host_path("/var/lib/cni/deviceid-inject")
    found = []
    for path in data_dir.glob("*/*.json"):
        record = json.loads(path.read_text())
        if record.get("pod_uid") == uid:
            found.append(record)
    return found


def written_by_bridge(pod: dict[str, Any]) -> bool:
    return any(f.get("manager") == BRIDGE_MANAGER for f in pod["metadata"].get("managedFields", []))


def attach(
    cluster: Cluster, ns: str, name: str, vf: str, selection_route: bool = False, with_plugin: bool = True
) -> str:
    """The field's NAD for `name` (its own veth, its own VF) and the network selection for its Pod:
    the NAD's name (the bridge's route), or the JSON form with a deviceID placeholder."""
    network = f"n6-{name}"
    cluster.field_nad(ns, network, cluster.veth(), vf=vf, sriov_device_id=not selection_route, with_plugin=with_plugin)
    if selection_route:
        return json.dumps([{"name": network, "interface": "net1", "deviceID": PLACEHOLDER}])
    return network


def start_pod(cluster: Cluster, ns: str, name: str, vf: str, selection_route: bool = False) -> None:
    cluster.apply(cluster.workload(ns, name, attach(cluster, ns, name, vf, selection_route)))


# --- the DaemonSet ---------------------------------------------------------------------------------------


def test_the_daemonset_installs_the_binary_atomically_and_passes_its_probes(on_node: Cluster):
    pod = on_node.bridge_pod()
    assert ready(pod), pod["status"]
    (init,) = pod["status"]["initContainerStatuses"]
    assert init["state"]["terminated"]["exitCode"] == 0
    statuses = {s["name"]: (s["ready"], s["restartCount"]) for s in pod["status"]["containerStatuses"]}
    assert statuses == {"bridge": (True, 0), "cni-server": (True, 0)}
    # The CNI server's socket, where the installed binary looks first, in a folder of root's alone.
    socket_folder = on_node.node.host_path("/run/deviceid-inject")
    assert stat.S_IMODE(socket_folder.stat().st_mode) == 0o700
    assert stat.S_ISSOCK((socket_folder / "cni.sock").stat().st_mode)
    installed = on_node.node.host_path("/opt/cni/bin/deviceid-inject")
    assert installed.read_bytes() == exe().read_bytes()  # the image's binary is the binary under test
    assert installed.stat().st_mode & 0o777 == 0o755
    leftovers = [p.name for p in installed.parent.iterdir() if p.name.startswith(".deviceid-inject")]
    assert leftovers == []  # the temporary file was renamed, never left
    log = on_node.logs("kube-system", pod["metadata"]["name"], "install-cni-binary")
    assert "installed /host/opt/cni/bin/deviceid-inject: deviceid-inject 0." in log
    # The installing run unpacked the build into the node's launcher cache, where the plugin looks.
    cache = on_node.node.host_path("/var/cache/deviceid-inject")
    builds = [p.name for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(builds) == 1 and (cache / builds[0] / "deviceid-inject").is_file(), builds
    # The kubelet's exec probes made it Ready; on the Pod's address nothing answers (loopback only).
    ip = pod["status"]["podIP"]
    out = on_node.node.run(["bash", "-c", f"exec 3<>/dev/tcp/{ip}/9909"])
    assert out.code != 0 and "refused" in out.stderr, out.stdout + out.stderr
    # (Readiness may fail before the first list; liveness never may.)
    events = on_node.events("kube-system")
    unhealthy = [e for e in events if e["reason"] == "Unhealthy" and "Liveness" in e["message"]]
    assert unhealthy == [], [e["message"] for e in unhealthy]


CAP_SYS_ADMIN = 21


def container_pid(cluster: Cluster, pod: dict[str, Any], container: str) -> int:
    """The node's PID of a container's first process."""
    (status,) = [s for s in pod["status"]["containerStatuses"] if s["name"] == container]
    out = cluster.node.ctr("tasks", "ps", status["containerID"].rpartition("/")[2])
    return int(out.stdout.split()[2])  # PID INFO header, then the container's processes


def test_the_daemonset_keeps_its_least_privilege_under_the_kubelet(on_node: Cluster):
    """What the kubelet really ran: no privilege, no host namespaces, read-only roots; no capability
    but the CNI server's CAP_SYS_ADMIN (entering namespaces, its calls' private sysfs)."""
    pod = on_node.bridge_pod()
    spec = pod["spec"]
    assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    for container in spec["initContainers"] + spec["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        added = ["SYS_ADMIN"] if container["name"] == "cni-server" else []
        assert context["capabilities"] == {"drop": ["ALL"], **({"add": added} if added else {})}
        assert not context.get("privileged")
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # The capabilities each process really has, as the kernel reports them.
    for container, allowed in (("bridge", 0), ("cni-server", 1 << CAP_SYS_ADMIN)):
        status = Path(f"/proc/{container_pid(on_node, pod, container)}/status").read_text()
        caps = dict(line.split(":\t") for line in status.splitlines() if line.startswith("Cap"))
        assert int(caps["CapEff"], 16) == allowed and int(caps["CapPrm"], 16) == allowed, (container, caps)
        assert status.count("Seccomp:\t2") == 1  # filter mode


# --- the user's journey, both routes, both Multus versions --------------------------------------------


def test_the_users_journey_network_status_gets_our_device_info_and_the_pod_reads_it(multus_node: Cluster, node_ns: str):
    cluster, ns = multus_node, node_ns
    watch = Watch(cluster.node.api(), f"/api/v1/namespaces/{ns}/pods").start()
    try:
        start_pod(cluster, ns, "upf-0", VFS[3])
        network = f"{ns}/n6-upf-0"
        multus_wrote = watch.wait_for(lambda s: entry(s.object, network) is not None, 120, "with Multus's entry")
        ours = watch.wait_for(lambda s: "device-info" in (entry(s.object, network) or {}), 60, "with device-info")
        pod = cluster.wait_ready(ns, "upf-0")
    finally:
        watch.stop()
    written = entry(multus_wrote.object, network)
    assert written is not None and written["interface"] == "net1"
    assert "device-info" not in written, "Multus v4 wrote device-info without a known deviceID"
    completed = entry(ours.object, network)
    assert completed is not None and completed["device-info"] == device_info(VFS[3])
    assert {k: v for k, v in completed.items() if k != "device-info"} == written  # nothing else changed
    assert written_by_bridge(ours.object)
    # What the workload saw: its init container printed the device-info from the downward API.
    printed = cluster.logs(ns, "upf-0", "wait-device-info").strip().splitlines()[-1]
    assert json.loads(printed) == device_info(VFS[3])
    (record,) = records_of(cluster, pod["metadata"]["uid"])
    assert (record["pod_namespace"], record["pod_name"], record["pci_address"]) == (ns, "upf-0", VFS[3])


def test_the_selection_route_has_device_info_in_multus_own_write(multus_node: Cluster, node_ns: str):
    """A deviceID placeholder in the Pod's selection: Multus asks the chain for the file and copies ours
    into network-status before its ADD returns: its very first write carries device-info, and the
    bridge has nothing to do."""
    cluster, ns = multus_node, node_ns
    watch = Watch(cluster.node.api(), f"/api/v1/namespaces/{ns}/pods").start()
    try:
        start_pod(cluster, ns, "upf-sel", VFS[4], selection_route=True)
        network = f"{ns}/n6-upf-sel"
        first = watch.wait_for(lambda s: entry(s.object, network) is not None, 120, "with Multus's entry")
        pod = cluster.wait_ready(ns, "upf-sel")
    finally:
        watch.stop()
    written = entry(first.object, network)
    assert written is not None and written["device-info"] == device_info(VFS[4])  # the VF, not the placeholder
    assert not written_by_bridge(pod)
    printed = cluster.logs(ns, "upf-sel", "wait-device-info").strip().splitlines()[-1]
    assert json.loads(printed) == device_info(VFS[4])


# --- deletion, re-created sandboxes, restarts ----------------------------------------------------------


def test_deleting_pods_removes_every_device_info_file_and_record(on_node: Cluster, node_ns: str):
    cluster, ns = on_node, node_ns
    start_pod(cluster, ns, "upf-del-a", VFS[5])
    start_pod(cluster, ns, "upf-del-b", VFS[6], selection_route=True)
    uids = [cluster.wait_ready(ns, name)["metadata"]["uid"] for name in ("upf-del-a", "upf-del-b")]
    records = [r for uid in uids for r in records_of(cluster, uid)]
    assert len(records) == 2
    files = [cluster.node.host_path(r["device_info_file"]) for r in records]
    assert all(f.is_file() for f in files), files
    cluster.ok("-n", ns, "delete", "pod", "upf-del-a", "upf-del-b", "--wait=true", "--timeout=120s", timeout=150)
    assert [r for uid in uids for r in records_of(cluster, uid)] == []
    assert [f for f in files if f.exists()] == []
    devinfo = cluster.node.host_path("/run/k8s.cni.cncf.io/devinfo")
    assert [f for f in files_under(devinfo) if any(r["container_id"] in f for r in records)] == []


def sandbox_pids(cluster: Cluster, sandbox: str) -> list[int]:
    """The processes of a Pod sandbox (its pause program), from the node's cgroups."""
    top = Path("/sys/fs/cgroup/pids") / cluster.node.cgroups.name
    return [int(p) for procs in top.rglob(f"{sandbox}/cgroup.procs") for p in procs.read_text().split()]


def test_a_sandbox_recreated_across_a_containerd_restart_gets_the_new_attachments_device_info(
    on_node: Cluster, node_ns: str
):
    cluster, ns = on_node, node_ns
    start_pod(cluster, ns, "upf-again", VFS[7])
    uid = cluster.wait_ready(ns, "upf-again")["metadata"]["uid"]
    (first,) = records_of(cluster, uid)
    # The next attachment of this network gets another VF, so the two attachments' device-info differ.
    cluster.field_nad(ns, "n6-upf-again", first_device(cluster, ns, "n6-upf-again"), vf=VFS[8])
    containerd = cluster.node.services["containerd"]
    containerd.stop()
    for pid in sandbox_pids(cluster, first["container_id"]):  # the sandbox dies while containerd is down
        os.kill(pid, 9)
    containerd.start()
    containerd.wait_until(lambda: cluster.node.ctr("version").code == 0, 60, "serving")
    network = f"{ns}/n6-upf-again"

    def with_new_device_info() -> dict[str, Any] | None:
        pod = cluster.pod(ns, "upf-again")
        return pod if (entry(pod, network) or {}).get("device-info") == device_info(VFS[8]) else None

    pod = cluster.node.wait(with_new_device_info, 180, "the new attachment's device-info in network-status")
    (second,) = cluster.node.wait(
        lambda: [r for r in records_of(cluster, uid) if r["container_id"] != first["container_id"]] or None, 60
    )
    assert second["pci_address"] == VFS[8]
    assert cluster.node.wait(lambda: len(records_of(cluster, uid)) == 1, 60, "the old attachment's record removed")
    assert not cluster.node.host_path(first["device_info_file"]).exists()
    assert pod["metadata"]["uid"] == uid  # the same Pod, a new sandbox


def first_device(cluster: Cluster, ns: str, network: str) -> str:
    """The host-device `device` a NAD names (the node-side end of its veth)."""
    body = cluster.node.api().get(f"/apis/k8s.cni.cncf.io/v1/namespaces/{ns}/network-attachment-definitions/{network}")
    return json.loads(body["spec"]["config"])["plugins"][0]["device"]


def test_the_bridge_survives_kubelet_and_containerd_restarts(on_node: Cluster, node_ns: str):
    cluster, ns = on_node, node_ns
    before = cluster.bridge_pod()["status"]["containerStatuses"][0]
    cluster.node.restart("kubelet")
    cluster.node.restart("containerd")
    cluster.node.services["containerd"].wait_until(lambda: cluster.node.ctr("version").code == 0, 60, "serving")
    start_pod(cluster, ns, "upf-after", VFS[9])
    pod = cluster.wait_ready(ns, "upf-after", timeout=180)
    assert (entry(pod, f"{ns}/n6-upf-after") or {}).get("device-info") == device_info(VFS[9])
    assert written_by_bridge(pod)
    after = cluster.bridge_pod()["status"]["containerStatuses"][0]
    assert (after["containerID"], after["restartCount"]) == (before["containerID"], before["restartCount"])


def start_attach_only(cluster: Cluster, ns: str, names: list[str], with_plugin: bool = True) -> None:
    """Pods on the field's NAD, each with its own VF, no init container: only their ADDs matter."""
    for i, name in enumerate(names):
        attach_only = cluster.workload(ns, name, attach(cluster, ns, name, VFS[i], with_plugin=with_plugin))
        attach_only["spec"].pop("initContainers")
        cluster.apply(attach_only)


def burst_peak(cluster: Cluster, ns: str, names: list[str], with_plugin: bool) -> tuple[int, int, list[dict[str, Any]]]:
    """The Pods `names` created at once: Multus's daemon container's peak memory meanwhile (as its
    cgroup, the kubelet's, counts it), its limit, and the Pods once Ready. Fails if the daemon restarted."""
    (multus,) = cluster._pods("kube-system", "name=multus")
    restarts = multus["status"]["containerStatuses"][0]["restartCount"]
    folder = cluster.container_cgroup(multus, "kube-multus")
    (folder / "memory.max_usage_in_bytes").write_text("0")  # the peak from now on
    start_attach_only(cluster, ns, names, with_plugin)
    pods = [cluster.wait_ready(ns, name, timeout=180) for name in names]
    (multus,) = cluster._pods("kube-system", "name=multus")
    assert multus["status"]["containerStatuses"][0]["restartCount"] == restarts, multus["status"]
    return (
        int((folder / "memory.max_usage_in_bytes").read_text()),
        int((folder / "memory.limit_in_bytes").read_text()),
        pods,
    )


def test_ten_pods_at_once_are_served_by_the_cni_server_within_multus_own_memory_limit(on_node: Cluster, node_ns: str):
    """Multus thick runs our plugin inside its daemon's container, limited to 50Mi by its own manifest.
    Ten Pods created at once without us, then ten with us: every one of ours attached with its own
    device-info, every ADD answered by the node's CNI server (its log counts them), the daemon never
    OOM-killed; its peak printed for both bursts."""
    cluster, ns = on_node, node_ns
    without, _, plain = burst_peak(cluster, ns, [f"plain-burst-{i}" for i in range(10)], with_plugin=False)
    assert all(entry(pod, f"{ns}/n6-{pod['metadata']['name']}") for pod in plain)
    cluster.ok("-n", ns, "delete", "pod", "--all", "--wait=true", "--timeout=180s", timeout=200)
    served = cluster.served_adds()
    names = [f"upf-burst-{i}" for i in range(10)]
    peak, limit, pods = burst_peak(cluster, ns, names, with_plugin=True)
    for i, pod in enumerate(pods):
        assert (entry(pod, f"{ns}/n6-{names[i]}") or {}).get("device-info") == device_info(VFS[i])
    assert cluster.served_adds() - served == len(names), cluster.cni_server_log()[-3000:]
    print(
        f"\nMultus's daemon container, 10 Pods at once: peak {peak / 2**20:.1f} MiB with deviceid-inject, "
        f"{without / 2**20:.1f} MiB without, of {limit / 2**20:.0f} MiB"
    )
    assert peak < limit


def test_the_cni_server_killed_during_a_burst_costs_no_add_and_serves_again(on_node: Cluster, node_ns: str):
    """SIGKILL to the server (and so to every call it has in flight) while ten Pods start: each ADD is
    made whole by its client, every device-info is right; the kubelet restarts the server, which then
    serves; deleting the Pods leaves no file or record."""
    cluster, ns = on_node, node_ns
    pod = cluster.bridge_pod()
    (status,) = [s for s in pod["status"]["containerStatuses"] if s["name"] == "cni-server"]
    restarts = status["restartCount"]
    served = cluster.served_adds()
    names = [f"upf-kill-{i}" for i in range(10)]
    start_attach_only(cluster, ns, names)
    cluster.node.wait(lambda: cluster.served_adds() > served, 120, "the server's first ADD of the burst")
    os.kill(container_pid(cluster, pod, "cni-server"), signal.SIGKILL)
    uids = []
    for i, name in enumerate(names):
        ready_pod = cluster.wait_ready(ns, name, timeout=240)
        assert (entry(ready_pod, f"{ns}/n6-{name}") or {}).get("device-info") == device_info(VFS[i])
        uids.append(ready_pod["metadata"]["uid"])
    failed = [e for e in cluster.events(ns) if e["reason"] == "FailedCreatePodSandBox"]
    assert failed == [], [e["message"] for e in failed]

    def restarted() -> bool:
        (now,) = [s for s in cluster.bridge_pod()["status"]["containerStatuses"] if s["name"] == "cni-server"]
        return now["restartCount"] > restarts and now["ready"]

    cluster.node.wait(restarted, 180, "the CNI server restarted and ready")
    start_attach_only(cluster, ns, ["upf-kill-after"])
    after = cluster.wait_ready(ns, "upf-kill-after", timeout=180)
    # The restarted server may also have served the burst's last ADDs; this one it must have.
    (record,) = records_of(cluster, after["metadata"]["uid"])
    assert f"served ADD {record['container_id']}/net1: exit 0" in cluster.cni_server_log(), cluster.cni_server_log()
    records = [r for uid in uids for r in records_of(cluster, uid)]
    assert len(records) == len(names)
    files = [cluster.node.host_path(r["device_info_file"]) for r in records]
    cluster.ok("-n", ns, "delete", "pod", "--all", "--wait=true", "--timeout=180s", timeout=200)
    assert [r for uid in uids for r in records_of(cluster, uid)] == []
    assert [f for f in files if f.exists()] == []


# --- a rollout while Pods are being created --------------------------------------------------------------

TRAILER = 80  # packaging/pack.py: magic, records offset and length, then the 56-byte build id


def build_id_of(binary: Path) -> str:
    """The build id in a one-file binary's trailer ("" when there is no such file)."""
    try:
        with open(binary, "rb") as f:
            f.seek(-56, os.SEEK_END)
            return f.read(56).rstrip(b"\0").decode()
    except OSError:
        return ""


def another_build(binary: Path, out: Path) -> str:
    """The same program with another build id in the launcher's trailer: to the node, a new build (it
    unpacks beside the old one and removes it), as every upgrade is."""
    data = bytearray(binary.read_bytes())
    (magic,) = struct.unpack_from("<8s", data, len(data) - TRAILER)
    assert magic == b"DIDINJ\0\1", "not a one-file binary of packaging/pack.py"
    build_id = build_id_of(binary)
    new_id = ("f" if build_id[0] != "f" else "e") + build_id[1:]
    data[len(data) - 56 :] = new_id.encode().ljust(56, b"\0")
    out.write_bytes(bytes(data))
    out.chmod(0o755)
    return new_id


def test_a_rollout_to_a_new_image_while_pods_are_created_fails_no_add(on_node: Cluster, node_ns: str, tmp_path: Path):
    """Pods are created before, during and after the DaemonSet rolls to a new build; the sandboxes'
    ADDs are shown to straddle the moment the new binary replaced the old one in /opt/cni/bin, and
    none failed."""
    cluster, ns = on_node, node_ns
    old_image = cluster.image
    new_binary = tmp_path / "deviceid-inject"
    new_id = another_build(exe(), new_binary)
    archive = tmp_path / "image.tar"
    new_image = f"{old_image.rpartition(':')[0]}:rollout-{new_id[:12]}"
    build_our_image(new_binary, new_image, archive)
    cluster.import_images([archive])
    installed = cluster.node.host_path("/opt/cni/bin/deviceid-inject")
    names: list[str] = []
    swapped: list[float] = []  # when the new build was first seen in /opt/cni/bin (wall time)
    rolled = threading.Event()

    def roll() -> None:
        cluster.deploy_ours(new_image)
        rolled.set()

    def watch_swap() -> None:
        while not swapped and not rolled.wait(0.01):
            if build_id_of(installed) == new_id:
                swapped.append(time.time())
        if not swapped and build_id_of(installed) == new_id:
            swapped.append(time.time())

    def create(count: int) -> None:
        for _ in range(count):
            name = f"upf-roll-{len(names)}"
            names.append(name)
            start_pod(cluster, ns, name, VFS[10 + len(names) % 6])

    try:
        create(2)
        cluster.wait_ready(ns, names[0], timeout=240)  # one ADD surely before the rollout
        with ThreadPoolExecutor(2) as pool:
            pool.submit(watch_swap)
            rolling = pool.submit(roll)
            while not swapped and not rolling.done():  # a Pod every half second while it rolls
                create(1)
                time.sleep(0.5)
            create(3)  # and some surely after
            rolling.result()
        for name in names:
            pod = cluster.wait_ready(ns, name, timeout=240)
            assert (entry(pod, f"{ns}/n6-{name}") or {}).get("device-info"), pod["metadata"]["annotations"]
        failed = [e for e in cluster.events(ns) if e["reason"] in ("FailedCreatePodSandBox", "FailedKillPod")]
        assert failed == [], [e["message"] for e in failed]
        assert swapped, "the new build never reached /opt/cni/bin"
        returned = cluster.node.sandboxes_returned()
        times = sorted(returned[cluster.pod(ns, n)["metadata"]["uid"]] for n in names)
        before = sum(t < swapped[0] for t in times)
        print(f"\nrollout: {len(times)} sandboxes, {before} before the new binary was in place, the rest after")
        assert 0 < before < len(times), "the Pods' ADDs did not straddle the rollout"
        assert cluster.node.host_path("/opt/cni/bin/deviceid-inject").read_bytes() == new_binary.read_bytes()
        cache = cluster.node.host_path("/var/cache/deviceid-inject")
        assert new_id in [p.name for p in cache.iterdir()]
    finally:
        cluster.deploy_ours(old_image)


# --- what it costs and what a workload should expect ---------------------------------------------------------


def test_the_bridges_memory_as_the_kubelet_counts_it(on_node: Cluster):
    """The bridge container's memory cgroup, which the kubelet made under its cgroup root: its limit
    is the DaemonSet's, and what it counts (usage, the working set the kubelet evicts by, the peak)
    stays under it. Printed for the README."""
    folder = on_node.container_cgroup(on_node.bridge_pod(), "bridge")
    limit = int((folder / "memory.limit_in_bytes").read_text())
    usage = int((folder / "memory.usage_in_bytes").read_text())
    peak = int((folder / "memory.max_usage_in_bytes").read_text())
    stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
    working_set = usage - int(stat["total_inactive_file"])  # as the kubelet (cadvisor) computes it
    mib = 2**20
    counted = {"usage": usage, "working set": working_set, "RSS": int(stat["total_rss"]), "peak": peak, "limit": limit}
    print("\nthe bridge's memory cgroup: " + ", ".join(f"{k} {v / mib:.1f} MiB" for k, v in counted.items()))
    assert limit == 128 * mib  # deploy/daemonset.yaml's limit, set by the kubelet
    assert 0 < working_set <= peak < limit


def test_wait_device_info_waits_out_a_bridge_that_starts_late(on_node: Cluster, node_ns: str):
    """With the bridge off the node, the workload's init container waits; the bridge comes back and
    patches; the kubelet refreshes the Pod's downward API file and the init container ends. The delay
    between our patch and the init container's end is the kubelet's refresh, printed for the README."""
    cluster, ns = on_node, node_ns
    paused = {"spec": {"template": {"spec": {"nodeSelector": {"deviceid-inject-test/bridge": "paused"}}}}}
    cluster.ok("-n", "kube-system", "patch", "daemonset", "deviceid-inject", "--type=merge", "-p", json.dumps(paused))
    try:
        cluster.node.wait(lambda: not cluster._pods("kube-system", "app.kubernetes.io/name=deviceid-inject"), 120)
        watch = Watch(cluster.node.api(), f"/api/v1/namespaces/{ns}/pods").start()
        try:
            start_pod(cluster, ns, "upf-late", VFS[11])
            network = f"{ns}/n6-upf-late"
            watch.wait_for(lambda s: entry(s.object, network) is not None, 120, "with Multus's entry")
            waiting = cluster.node.wait(lambda: init_state(cluster.pod(ns, "upf-late")) == "running", 60)
            assert waiting and not ready(cluster.pod(ns, "upf-late"))
        finally:
            resumed = {"spec": {"template": {"spec": {"nodeSelector": {"deviceid-inject-test/bridge": None}}}}}
            cluster.ok(
                "-n", "kube-system", "patch", "daemonset", "deviceid-inject", "--type=merge", "-p", json.dumps(resumed)
            )
        try:
            patched = watch.wait_for(
                lambda s: "device-info" in (entry(s.object, network) or {}), 180, "with device-info"
            )
            ended = watch.wait_for(lambda s: init_state(s.object) == "terminated", 180, "with the init container ended")
        finally:
            watch.stop()
        cluster.rollout("deviceid-inject")
        delay = ended.at - patched.at
        print(f"\nour patch -> the init container saw device-info and ended: {delay:.2f} s (the kubelet's refresh)")
        assert delay >= 0
        assert json.loads(cluster.logs(ns, "upf-late", "wait-device-info").strip().splitlines()[-1]) == device_info(
            VFS[11]
        )
        cluster.wait_ready(ns, "upf-late")
    finally:
        cluster.rollout("deviceid-inject")


def init_state(pod: dict[str, Any]) -> str | None:
    statuses = pod.get("status", {}).get("initContainerStatuses") or []
    return next(iter(statuses[0]["state"]), None) if statuses else None


# --- the node itself ---------------------------------------------------------------------------------------


def test_a_node_that_fails_to_start_leaves_nothing_behind(tmp_path: Path):
    """A kubelet that cannot start: Node.start fails after the control plane, containerd and the pause
    image are up, and its clean-up leaves no process, mount, cgroup or namespace."""
    node = Node(tmp_path / "node", kubelet_flags=["--no-such-flag"])
    with pytest.raises(NotReady, match="kubelet exited"):
        node.start()
    assert node.leftovers() == []
    assert not any(d.exists() for d in node.cgroups.dirs())


def test_network_status_is_the_annotation_multus_writes(on_node: Cluster, node_ns: str):
    """The README's point about Multus v4: only the singular key, and no device-info from a result."""
    cluster, ns = on_node, node_ns
    start_pod(cluster, ns, "upf-keys", VFS[12])
    pod = cluster.wait_ready(ns, "upf-keys")
    annotations = pod["metadata"]["annotations"]
    assert NETWORK_STATUS in annotations
    assert NETWORKS_STATUS not in annotations
