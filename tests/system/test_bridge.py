"""The network-status bridge on the test bed: real Multus v4.0.2 writes network-status without
device-info, the agent (python -m deviceid_inject, and the binary) adds ours, with the least
privilege deploy/ gives it, proven refusal by refusal against the real API server.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from deviceid_inject.annotations import ANNOTATIONS_LIMIT, NETWORK_STATUS, NETWORKS, NETWORKS_STATUS
from deviceid_inject.state import Store
from testbed.bridge import (
    MERGE,
    USERNAME,
    BridgeProcess,
    agent_api,
    copy_of_network_status,
    device_info,
    install,
    manifests,
    networks_status_allowed,
    record,
    wait_for_policy,
)
from testbed.helpers import NET1_DEVICE_INFO, VFS, Impl, wait_for
from testbed.kube import Api, ApiError, ApiServer, apply, jwt_claims, network_status, service_account_token
from testbed.multus import NODE, Sandbox, Scene, host_device
from testbed.tools import FIELD_MULTUS

pytestmark = [pytest.mark.netns, pytest.mark.multus]

OTHER_NODE = "node-b"


@pytest.fixture(scope="session")
def agent_identity(kube: ApiServer) -> Api:
    """deploy/'s RBAC and policy installed, and the bridge's token for node-a, bound to its Pod."""
    install(kube)
    return agent_api(kube, NODE)


@pytest.fixture
def start_bridge(
    impl: Impl, agent_identity: Api, scene: Scene, tmp_path: Path
) -> Iterator[Callable[..., BridgeProcess]]:
    """Start the agent of the implementation under test for node-a over the scene's dataDir, with
    the bridge's own token; every agent started is stopped afterwards."""
    started: list[BridgeProcess] = []

    def start(identity: Api | None = None, **options: Any) -> BridgeProcess:
        """`identity`: another token for the bridge than its Pod's on node-a."""
        kubeconfig = (identity or agent_identity).kubeconfig(
            tmp_path / f"bridge-{len(started)}.kubeconfig", user="bridge"
        )
        agent = BridgeProcess(list(impl.command), kubeconfig, scene.data_dir, **options)
        started.append(agent)
        agent.start()
        agent.wait_ready()
        return agent

    try:
        yield start
    finally:
        for agent in started:
            agent.stop()


def attach(scene: Scene, name: str, vf: str | None = None, node_name: str = NODE, **annotations: str) -> Sandbox:
    """A Pod whose own NAD (host-device, then deviceid-inject naming `vf`) Multus v4.0.2 attaches."""
    network = f"n6-{name}"
    box = scene.sandbox(name, network, node_name, **annotations)
    scene.create_nad(host_device(box.peer), name=network, device_id=vf)
    scene.add(FIELD_MULTUS, box)
    return box


def entry_of(scene: Scene, name: str) -> dict[str, Any]:
    return scene.entry(scene.read_pod(name), f"n6-{name}")


def device_info_of(scene: Scene, name: str) -> dict[str, Any] | None:
    return entry_of(scene, name).get("device-info")


def assert_one_insertion(before: str, after: str, device: dict[str, Any] = NET1_DEVICE_INFO) -> None:
    """`after` is `before` with one piece inserted: `,"device-info": <device>` in some whitespace."""
    start = next((i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b), len(before))
    inserted = after[start : start + len(after) - len(before)]
    assert after[:start] + after[start + len(inserted) :] == before, (before, after)
    assert json.loads('{"_": 0' + inserted + "}") == {"_": 0, "device-info": device}, inserted


def our_record(scene: Scene, box: Sandbox, vf: str, network: str = "n6-x") -> None:
    """The record ADD would have left for the Pod's net1, written straight into the scene's dataDir."""
    Store(str(scene.data_dir)).save(
        record(
            box.container_id,
            network=network,
            pci_address=vf,
            device_info_file=None,
            created_file=False,
            pod_namespace=scene.ns,
            pod_name=box.name,
            pod_uid=box.uid,
            device_info=device_info(vf),
        )
    )


def with_status(scene: Scene, name: str, raw: str, vf: str, **annotations: str) -> Sandbox:
    """A Pod of node-a whose network-status another writer left as `raw`, with a record of ours."""
    box = scene.sandbox(name, "n6-x", **{NETWORK_STATUS: raw}, **annotations)
    our_record(scene, box, vf)
    return box


# --- the main flow ----------------------------------------------------------------------------------


def test_device_info_appears_after_multus_writes_and_nothing_else_changes(scene: Scene, start_bridge):
    agent = start_bridge()
    box = scene.sandbox("upf-0", "n6-upf-0", other="kept")
    scene.create_nad(host_device(box.peer), name="n6-upf-0")
    written = scene.add(FIELD_MULTUS, box)
    before = network_status(written)

    wait_for(lambda: device_info_of(scene, "upf-0"), why="device-info from the bridge\n" + agent.log())
    after_pod = scene.read_pod("upf-0")
    after = network_status(after_pod)
    assert [e for e in after if e.get("name") != f"{scene.ns}/n6-upf-0"] == [
        e for e in before if e.get("name") != f"{scene.ns}/n6-upf-0"
    ]
    assert len(before) == 2  # Multus's default network too
    ours = scene.entry(after_pod, "n6-upf-0")
    assert ours == {**scene.entry(written, "n6-upf-0"), "device-info": NET1_DEVICE_INFO}
    annotations = after_pod["metadata"]["annotations"]
    assert annotations["other"] == "kept"
    assert set(annotations) == set(written["metadata"]["annotations"])
    assert after_pod["metadata"].get("labels") == written["metadata"].get("labels")
    assert agent.metric("deviceid_inject_bridge_patches_total") == 1
    assert agent.metric("deviceid_inject_bridge_patch_latency_seconds_count") == 1


def test_a_bridge_started_later_catches_up_and_restarts_cleanly(scene: Scene, start_bridge):
    first = attach(scene, "early", VFS[0])
    assert "device-info" not in entry_of(scene, "early")
    multus_wrote = scene.read_pod("early")["metadata"]["annotations"][NETWORK_STATUS]
    agent = start_bridge()
    wait_for(lambda: device_info_of(scene, "early"), why="catch-up after start\n" + agent.log())
    assert device_info_of(scene, "early") == device_info(VFS[0])
    # Multus's text byte for byte, one member inserted in its style (issue 15, defect 4)
    assert_one_insertion(
        multus_wrote, scene.read_pod("early")["metadata"]["annotations"][NETWORK_STATUS], device_info(VFS[0])
    )
    assert first.uid in agent.log()

    assert agent.stop() == 0  # SIGTERM ends it cleanly
    attach(scene, "while-down", VFS[1])
    agent = start_bridge()
    wait_for(lambda: device_info_of(scene, "while-down"), why="catch-up after restart\n" + agent.log())
    assert device_info_of(scene, "while-down") == device_info(VFS[1])
    assert agent.metric("deviceid_inject_bridge_patches_total") == 1  # "early" needed nothing more


def test_multus_rewriting_network_status_gets_device_info_again(scene: Scene, start_bridge):
    """A new sandbox of the same Pod: Multus replaces the whole annotation; the bridge re-applies,
    with the new sandbox's record."""
    start_bridge()
    box = attach(scene, "upf-0", VFS[2])
    wait_for(lambda: device_info_of(scene, "upf-0"))
    assert scene.multus(FIELD_MULTUS, "DEL", box).code == 0
    scene.api.delete(f"/apis/k8s.cni.cncf.io/v1/namespaces/{scene.ns}/network-attachment-definitions/n6-upf-0")
    second = Sandbox(box.pod, f"sandbox{uuid.uuid4().hex[:12]}", scene.make_netns(), *scene.make_veth())
    scene.create_nad(host_device(second.peer), name="n6-upf-0", device_id=VFS[3])
    scene.add(FIELD_MULTUS, second)  # the bridge may already have re-applied when this returns
    wait_for(lambda: device_info_of(scene, "upf-0") == device_info(VFS[3]), why="re-applied after Multus")


def test_the_api_server_restarted_mid_watch(kube: ApiServer, scene: Scene, start_bridge):
    agent = start_bridge()
    attach(scene, "before", VFS[4])
    wait_for(lambda: device_info_of(scene, "before"))
    kube.stop_apiserver()
    try:
        wait_for(lambda: "API server:" in agent.log(), timeout=60, why="the bridge noticing\n" + agent.log())
        assert agent.alive()
        assert agent.get("/healthz")[0] == 200  # away API server: alive, not restarted by a probe
    finally:
        kube.start_apiserver()
    attach(scene, "after", VFS[5])
    wait_for(lambda: device_info_of(scene, "after"), timeout=90, why="after the restart\n" + agent.log())
    assert device_info_of(scene, "after") == device_info(VFS[5])
    assert agent.metric("deviceid_inject_bridge_errors_total", '{kind="api"}') >= 1
    assert agent.alive()


def test_other_writers_lose_nothing(scene: Scene, start_bridge):
    """Other annotations written at the same moment, by another writer, all survive our patches."""
    # Whether a write lands between the bridge's read and its patch is up to timing (none did in
    # about one round of sixteen here): rounds, each with a bridge of its own, until one has had
    # to recompute its patch after a 409, the case a lost update would come from.
    for attempt in range(4):
        name, vf = f"upf-{attempt}", VFS[6 + attempt]
        agent, written = _race_a_writer(scene, start_bridge, name, vf)
        final = scene.read_pod(name)
        assert scene.entry(final, f"n6-{name}")["device-info"] == device_info(vf)
        assert set(written) <= set(final["metadata"]["annotations"])
        assert agent.metric("deviceid_inject_bridge_errors_total", '{kind="patch"}') == 0
        if agent.metric("deviceid_inject_bridge_conflicts_total") >= 1:
            return
        agent.stop()  # the next round's Pod must be found by a bridge started under its writer
    raise AssertionError("in no round did a write land between the bridge's read and its patch")


def _race_a_writer(scene: Scene, start_bridge, name: str, vf: str) -> tuple[BridgeProcess, list[str]]:
    """Multus ADD for Pod `name`, then another writer adding annotations to it while a new bridge
    starts and patches; the bridge and the annotation keys the writer wrote."""
    box = scene.sandbox(name, f"n6-{name}")
    scene.create_nad(host_device(box.peer), name=f"n6-{name}", device_id=vf)
    # Multus first, alone: its own status update gives up after five conflicts 10 ms apart
    # (client-go's DefaultRetry), and a writer hammering the Pod then fails the ADD.
    scene.add(FIELD_MULTUS, box)
    stop = threading.Event()
    written: list[str] = []

    def other_writer() -> None:
        while not stop.is_set() and len(written) < 5000:  # 5000 keys: ~150 KB of the 256 KiB
            key = f"example.com/writer-{len(written)}"
            scene.api.merge_patch(
                f"/api/v1/namespaces/{scene.ns}/pods/{name}", {"metadata": {"annotations": {key: "v"}}}
            )
            written.append(key)

    writer = threading.Thread(target=other_writer)
    writer.start()
    try:
        wait_for(lambda: len(written) > 10, why="the other writer starting")
        agent = start_bridge()
        wait_for(lambda: device_info_of(scene, name), why="device-info under concurrent writes")
        assert writer.is_alive(), "the other writer had stopped before the bridge patched: no race was run"
    finally:
        stop.set()
        writer.join()
    return agent, written


def test_a_pod_deleted_mid_patch_does_not_trouble_the_bridge(scene: Scene, start_bridge):
    agent = start_bridge()
    for i in range(5):
        attach(scene, f"short-{i}", VFS[i])
        scene.delete_pod(f"short-{i}")
    attach(scene, "survivor", VFS[7])
    wait_for(lambda: device_info_of(scene, "survivor"), why="a later Pod\n" + agent.log())
    assert agent.alive()
    assert agent.metric("deviceid_inject_bridge_errors_total", '{kind="patch"}') == 0


def test_a_pod_recreated_under_the_same_name_gets_nothing_stale(scene: Scene, start_bridge):
    old = attach(scene, "upf-0", VFS[8])  # its record stays (no DEL): a stale record of the old UID
    scene.delete_pod("upf-0")
    wait_for(lambda: _gone(scene, "upf-0"))
    status = [{"name": f"{scene.ns}/n6-upf-0", "interface": "net1", "mac": "02:00:00:00:00:09"}]
    recreated = scene.sandbox("upf-0", "n6-upf-0", **{NETWORK_STATUS: json.dumps(status)})
    assert recreated.uid != old.uid
    agent = start_bridge()
    attach(scene, "control", VFS[9])  # a positive control, attached after the recreated Pod exists
    wait_for(lambda: device_info_of(scene, "control"), why="the control Pod\n" + agent.log())
    time.sleep(2.5)  # two more resyncs
    assert network_status(scene.read_pod("upf-0")) == status
    # The stale record (a vanished Pod's) costs nothing: no patch tried, no error, no retry loop.
    assert agent.metric("deviceid_inject_bridge_patches_total") == 1
    assert agent.metric("deviceid_inject_bridge_conflicts_total") == 0
    assert agent.metric("deviceid_inject_bridge_errors_total", '{kind="patch"}') == 0


def test_a_pod_on_another_node_is_never_touched(scene: Scene, start_bridge):
    # A record that claims a Pod of node-b (as a bug or a shared dataDir might leave one).
    status = [{"name": f"{scene.ns}/n6-x", "interface": "net1", "mac": "02:00:00:00:00:0a"}]
    foreign = scene.sandbox("foreign", "n6-x", node_name=OTHER_NODE, **{NETWORK_STATUS: json.dumps(status)})
    our_record(scene, foreign, VFS[10])
    agent = start_bridge()
    attach(scene, "control", VFS[11])
    wait_for(lambda: device_info_of(scene, "control"), why="the control Pod\n" + agent.log())
    time.sleep(2.5)
    assert network_status(scene.read_pod("foreign")) == status
    assert foreign.uid not in agent.log()


def test_a_hundred_pods_attached_in_parallel_all_get_their_own(scene: Scene, start_bridge):
    agent = start_bridge()
    names = [f"upf-{i:03d}" for i in range(100)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: attach(scene, names[i], VFS[i % 16]), range(100)))
    for i, name in enumerate(names):
        got = wait_for(lambda name=name: device_info_of(scene, name), timeout=60, why=f"{name}\n{agent.log()[-3000:]}")
        assert got == device_info(VFS[i % 16]), name
    assert agent.metric("deviceid_inject_bridge_patches_total") == 100
    assert agent.metric("deviceid_inject_bridge_errors_total", '{kind="patch"}') == 0


# --- one Pod's bad data, odd files, other writers' bytes (issue 15) ----------------------------------

DEEP = '[{"interface":"net1","x":' + "[" * 3000 + "]" * 3000 + "}]"


def test_a_pod_whose_network_status_nests_3000_deep_costs_only_that_pod(scene: Scene, start_bridge):
    """Defect 1: the value raised RecursionError on the first list and ended both threads, for every
    Pod of the node, and again after every restart. Now the agent is ready, the Pod is left alone
    (named, counted once), and every other Pod is served."""
    bad = with_status(scene, "deep", DEEP, VFS[12])
    agent = start_bridge()  # ready: the first list is over, the deep value in it
    attach(scene, "control", VFS[13])
    wait_for(lambda: device_info_of(scene, "control"), why="the control Pod\n" + agent.log())
    assert scene.read_pod("deep")["metadata"]["annotations"][NETWORK_STATUS] == DEEP
    assert f"{scene.ns}/deep (uid {bad.uid}): left alone: network-status is not one we understand" in agent.log()
    assert agent.metric("deviceid_inject_bridge_skipped_total", '{reason="unparsable"}') == 1
    assert agent.get("/healthz")[0] == 200 and agent.get("/readyz")[0] == 200
    assert agent.stop() == 0
    agent = start_bridge()  # and after a restart, the same
    attach(scene, "control-2", VFS[14])
    wait_for(lambda: device_info_of(scene, "control-2"), why="after a restart\n" + agent.log())


def test_odd_files_in_the_data_dir_cost_only_themselves(scene: Scene, start_bridge):
    """Defect 2: a directory, a FIFO or a symlink named <id>/net1.json made the record read raise
    and ended both threads."""
    scene.data_dir.mkdir(parents=True, exist_ok=True)
    for name in ("odd-dir", "odd-fifo", "odd-link"):
        (scene.data_dir / name).mkdir()
    os.mkdir(scene.data_dir / "odd-dir" / "net1.json")
    os.mkfifo(scene.data_dir / "odd-fifo" / "net1.json")
    os.symlink("/etc/hostname", scene.data_dir / "odd-link" / "net1.json")
    agent = start_bridge()
    attach(scene, "control", VFS[15])
    wait_for(lambda: device_info_of(scene, "control"), why="the control Pod\n" + agent.log())
    assert agent.metric("deviceid_inject_bridge_errors_total", '{kind="record"}') == 3
    for name in ("odd-dir", "odd-fifo", "odd-link"):
        assert agent.log().count(f"{scene.data_dir}/{name}/net1.json:") == 1, agent.log()
    assert agent.get("/healthz")[0] == 200 and agent.get("/readyz")[0] == 200


ODD_NUMBERS = (
    "[{\n"
    '    "name": "default/kindnet",\n'
    '    "interface": "eth0",\n'
    '    "default": true\n'
    "},{\n"
    '    "name": "ran/n6-x",\n'
    '    "interface": "net1",\n'
    '    "huge": 1e400,\n'
    '    "precise": 0.1000000000000000001,\n'
    '    "hundred": 1E2,\n'
    '    "dns": {}\n'
    "}]"
)


def test_other_writers_numbers_stay_as_they_wrote_them(scene: Scene, start_bridge):
    """Defect 4: re-serialising turned 1e400 into Infinity (which Go, and so Multus, refuses),
    0.1000000000000000001 into 0.1 and 1E2 into 100.0."""
    with_status(scene, "numbers", ODD_NUMBERS, VFS[0])
    agent = start_bridge()
    wait_for(lambda: "device-info" in scene.read_pod("numbers")["metadata"]["annotations"][NETWORK_STATUS])
    after = scene.read_pod("numbers")["metadata"]["annotations"][NETWORK_STATUS]
    assert_one_insertion(ODD_NUMBERS, after, device_info(VFS[0]))
    assert after.startswith(ODD_NUMBERS[:-3] + ',\n    "device-info": {\n        "pci": {')  # in its style
    assert agent.metric("deviceid_inject_bridge_errors_total", '{kind="patch"}') == 0


def compact_status(size: int, ns: str) -> str:
    """A compact network-status of exactly `size` bytes: many other entries, then ours (net1)."""
    ours = json.dumps({"name": f"{ns}/n6-x", "interface": "net1"}, separators=(",", ":"))
    others: list[str] = []
    while True:
        entry = json.dumps({"name": f"{ns}/o-{len(others)}", "interface": f"o{len(others)}"}, separators=(",", ":"))
        if 2 + sum(len(e) + 1 for e in [*others, entry]) + len(ours) > size:
            break
        others.append(entry)
    text = "[" + ",".join([*others, ours]) + "]"
    return "[" + " " * (size - len(text)) + text[1:]


def test_a_large_compact_network_status_gets_device_info_and_stays_under_the_limit(scene: Scene, start_bridge):
    """Defect 5: written back with indent=4, a compact 174,218-byte value was 300,425 bytes, over
    the 262,144-byte limit: 422 at every resync, and device-info never landed."""
    raw = compact_status(174_218, scene.ns)
    with_status(scene, "big", raw, VFS[1])
    agent = start_bridge()
    wait_for(
        lambda: len(scene.read_pod("big")["metadata"]["annotations"][NETWORK_STATUS]) > len(raw),
        why=agent.log()[-2000:],
    )
    after = scene.read_pod("big")["metadata"]["annotations"][NETWORK_STATUS]
    assert_one_insertion(raw, after, device_info(VFS[1]))
    assert agent.metric("deviceid_inject_bridge_errors_total", '{kind="patch"}') == 0


def test_a_change_that_would_exceed_the_limit_is_not_tried(scene: Scene, start_bridge):
    """Annotations a few bytes under the limit: device-info would take them over. The Pod is left
    alone, once, with no 422 at every resync; the other Pods are served."""
    raw = compact_status(200_000, scene.ns)
    used = len(NETWORK_STATUS) + len(raw) + len(NETWORKS) + len("n6-x") + len("filler")
    with_status(scene, "full", raw, VFS[2], filler="x" * (ANNOTATIONS_LIMIT - used - 40))
    agent = start_bridge()
    attach(scene, "control", VFS[3])
    wait_for(lambda: device_info_of(scene, "control"), why="the control Pod\n" + agent.log())
    time.sleep(2.5)  # two more resyncs
    assert scene.read_pod("full")["metadata"]["annotations"][NETWORK_STATUS] == raw
    assert agent.metric("deviceid_inject_bridge_errors_total", '{kind="patch"}') == 0  # no 422 at every resync
    assert agent.metric("deviceid_inject_bridge_skipped_total", '{reason="too-large"}') == 1


def peak_rss_after_reset(pid: int) -> tuple[int, Callable[[], int]]:
    """Reset the process's VmHWM to its RSS now (proc(5), clear_refs 5); (that RSS in KiB, a
    function giving the peak since, in KiB)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")

    def status(key: str) -> int:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(f"{key}:"))

    return status("VmRSS"), lambda: status("VmHWM")


def test_a_record_of_20_mib_costs_no_memory(scene: Scene, start_bridge):
    """Defect 6: a 20 MiB record took the agent from 41 to 124 MiB (the DaemonSet's limit is
    128 Mi). Now it is refused from its size, never read."""
    agent = start_bridge()
    attach(scene, "warm-up", VFS[4])  # the paths a record and a patch take, once, before measuring
    wait_for(lambda: device_info_of(scene, "warm-up"), why=agent.log())
    assert agent.proc is not None
    rss, peak = peak_rss_after_reset(agent.proc.pid)
    big = scene.data_dir / "sandboxhuge" / "net1.json"
    big.parent.mkdir()
    record = {"container_id": "sandboxhuge", "ifname": "net1", "network": "n6-x", "pci_address": None,
              "strategy": None, "device_info_file": None, "created_file": False}  # fmt: skip
    big.write_text(json.dumps(record) + " " * (20 << 20))
    attach(scene, "control", VFS[5])  # its events make the agent look at the data dir again
    wait_for(lambda: device_info_of(scene, "control"), why=agent.log())
    assert peak() - rss < 10 * 1024, f"peak RSS grew by {(peak() - rss) / 1024:.1f} MiB"
    assert f"{big}: {big.stat().st_size} bytes, more than a record's" in agent.log()


def test_credentials_the_api_server_refuses_make_the_bridge_unready(kube: ApiServer, scene: Scene, start_bridge):
    """Defect 3: an expired token (401 for ever) left /readyz at 200. The bridge's token here is
    bound to a Pod of its own: deleting that Pod revokes it; restarting the API server ends the
    watch that was already open."""
    identity = agent_api(kube, NODE, pod_name="bridge-short-lived")
    agent = start_bridge(identity=identity)
    kube.api().delete("/api/v1/namespaces/kube-system/pods/bridge-short-lived?gracePeriodSeconds=0")
    kube.stop_apiserver()
    kube.start_apiserver()
    wait_for(lambda: agent.get("/readyz")[0] == 503, timeout=60, why="unready\n" + agent.log())
    why = agent.get("/readyz")[1]
    assert "the API server refuses our credentials: API error 401" in why, why
    assert agent.get("/healthz")[0] == 200  # alive: a restart would not give it a valid token


def test_a_removed_rbac_binding_makes_the_bridge_unready_until_a_patch_goes_through(
    kube: ApiServer, scene: Scene, start_bridge
):
    """Issue 23, point 4: with the bridge's ClusterRoleBinding removed every patch got 403 while
    /readyz stayed 200 (the open watch still delivered). Now 503 from the first refused patch, and
    200 again at the refused Pod's next attempt once the binding is back."""
    agent = start_bridge()
    admin = kube.api()
    (binding,) = [d for d in manifests("bridge-rbac.yaml") if d["kind"] == "ClusterRoleBinding"]
    path = f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{binding['metadata']['name']}"
    admin.delete(path)
    try:
        raw = json.dumps([{"name": f"{scene.ns}/n6-x", "interface": "net1", "mac": "02:00:00:00:00:01"}])
        with_status(scene, "refused", raw, VFS[3])
        wait_for(lambda: agent.get("/readyz")[0] == 503, timeout=30, why="unready\n" + agent.log())
        why = agent.get("/readyz")[1]
        assert "the API server refuses our patches: API error 403" in why, why
        assert device_info_of_pod(scene, "refused") is None
    finally:
        apply(admin, [binding])
    refused_before = agent.metric("deviceid_inject_bridge_errors_total", '{kind="patch"}')
    wait_for(lambda: agent.get("/readyz")[0] == 200, timeout=60, why="ready again\n" + agent.log())
    wait_for(lambda: device_info_of_pod(scene, "refused") == device_info(VFS[3]), timeout=10, why=agent.log())
    # Within one patch attempt: at most one more refusal (RBAC's cache catching up), then through.
    assert agent.metric("deviceid_inject_bridge_errors_total", '{kind="patch"}') - refused_before <= 1


def test_a_writer_fighting_the_bridge_gets_fewer_and_fewer_patches_and_other_pods_are_served(
    scene: Scene, start_bridge
):
    """Issue 23, point 3: a writer that took our device-info out 1,702 times in 16 s got 524 patches
    back. Now, for 15 s of a writer doing so every 50 ms, the bridge's patches to that Pod come
    1, 2, 4, 8 s apart, and a Pod attached meanwhile gets device-info as it would without the fight."""
    agent = start_bridge()
    raw = json.dumps([{"name": f"{scene.ns}/n6-x", "interface": "net1", "mac": "02:00:00:00:00:01"}])
    with_status(scene, "fought", raw, VFS[4])
    wait_for(lambda: device_info_of_pod(scene, "fought") is not None, why=agent.log())
    path = f"/api/v1/namespaces/{scene.ns}/pods/fought/status"
    writer = scene.api  # another controller, with its own rights
    before = agent.metric("deviceid_inject_bridge_patches_total")
    stop = threading.Event()

    def fight() -> None:
        while not stop.wait(0.05):
            writer.merge_patch(path, {"metadata": {"annotations": {NETWORK_STATUS: raw}}})

    fighter = threading.Thread(target=fight, daemon=True)
    fighter.start()
    try:
        time.sleep(5)
        attach(scene, "calm", VFS[6])
        wait_for(lambda: device_info_of(scene, "calm") == device_info(VFS[6]), timeout=10, why=agent.log())
        time.sleep(10)
    finally:
        stop.set()
        fighter.join(10)
    patches = agent.metric("deviceid_inject_bridge_patches_total") - before - 1  # less the calm Pod's
    assert patches <= 6, agent.log()  # 0, 1, 3, 7, 15 s: five (each write got one back before)
    assert agent.metric("deviceid_inject_bridge_device_info_lost_total") >= 3
    assert agent.log().count("lost our device-info again") == 1


def device_info_of_pod(scene: Scene, name: str) -> dict[str, Any] | None:
    entries = network_status(scene.read_pod(name)) or []
    return next((e.get("device-info") for e in entries if e.get("interface") == "net1"), None)


def _gone(scene: Scene, name: str) -> bool:
    try:
        scene.read_pod(name)
    except ApiError as err:
        return err.status == 404
    return False


# --- least privilege, refusal by refusal --------------------------------------------------------------


@pytest.fixture
def pods(kube: ApiServer, agent_identity: Api, scene: Scene) -> dict[str, str]:
    """A Pod on node-a and one on node-b, both with network-status and another annotation."""
    paths = {}
    for name, node_name in (("mine", NODE), ("theirs", OTHER_NODE)):
        box = scene.sandbox(name, "n6-dpdk", node_name, **{NETWORK_STATUS: "[]", "other": "x"})
        paths[name] = f"/api/v1/namespaces/{scene.ns}/pods/{box.name}"
    wait_for_policy(kube, agent_identity, paths["theirs"])
    return paths


def test_the_token_names_the_bridge_and_its_node(agent_identity: Api):
    claims = jwt_claims(agent_identity.token)
    assert claims["sub"] == USERNAME
    assert claims["kubernetes.io"]["node"]["name"] == NODE


def test_the_bridge_may_change_network_status_of_its_nodes_pods(agent_identity: Api, pods: dict[str, str]):
    body = {"metadata": {"annotations": {NETWORK_STATUS: '[{"interface":"net1"}]'}}}
    assert agent_identity.status_code("PATCH", f"{pods['mine']}/status", body, MERGE) == 200
    assert agent_identity.status_code("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a") == 200


@pytest.mark.parametrize(
    ("what", "method", "target", "body"),
    [
        (
            "network-status of another node's Pod",
            "PATCH",
            "theirs/status",
            {"metadata": {"annotations": {NETWORK_STATUS: "[1]"}}},
        ),
        ("another annotation", "PATCH", "mine/status", {"metadata": {"annotations": {"other": "y"}}}),
        ("removing another annotation", "PATCH", "mine/status", {"metadata": {"annotations": {"other": None}}}),
        ("adding an annotation", "PATCH", "mine/status", {"metadata": {"annotations": {"new": "1"}}}),
        ("labels", "PATCH", "mine/status", {"metadata": {"labels": {"x": "y"}}}),
        ("generateName", "PATCH", "mine/status", {"metadata": {"generateName": "upf-"}}),
        (
            "networks-status while --legacy-networks-status is off",
            "PATCH",
            "mine/status",
            {"metadata": {"annotations": {NETWORKS_STATUS: "[]"}}},
        ),
        ("finalizers", "PATCH", "mine/status", {"metadata": {"finalizers": ["example.com/hold"]}}),
        ("status", "PATCH", "mine/status", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        ("the Pod itself", "PATCH", "mine", {"metadata": {"annotations": {NETWORK_STATUS: "[]"}}}),
        ("deleting a Pod", "DELETE", "mine", None),
        ("evicting a Pod", "POST", "mine/eviction", {"apiVersion": "policy/v1", "kind": "Eviction"}),
        ("reading secrets", "GET", "/api/v1/namespaces/kube-system/secrets", None),
        ("creating a Pod", "POST", "/api/v1/namespaces/kube-system/pods", {"apiVersion": "v1", "kind": "Pod"}),
    ],
)
def test_the_bridge_is_refused(agent_identity: Api, pods: dict[str, str], what, method, target, body):
    name, _, sub = target.partition("/")
    path = target if target.startswith("/") else pods[name] + (f"/{sub}" if sub else "")
    content_type = MERGE if method == "PATCH" else "application/json"
    assert agent_identity.status_code(method, path, body, content_type) == 403, what


def test_a_token_not_bound_to_a_node_may_change_nothing(kube: ApiServer, pods: dict[str, str]):
    unbound = kube.api(service_account_token(kube.api(), "kube-system", "deviceid-inject-bridge"))
    body = {"metadata": {"annotations": {NETWORK_STATUS: '[{"interface":"net1"}]'}}}
    with pytest.raises(ApiError) as refused:
        unbound.request("PATCH", f"{pods['mine']}/status", body, MERGE)
    assert refused.value.status == 403
    assert "not bound to a Pod on a node" in str(refused.value)


# --- --legacy-networks-status: the v3 key, opt-in ---------------------------------------------------


@pytest.fixture
def legacy_allowed(kube: ApiServer, agent_identity: Api, scene: Scene) -> Iterator[None]:
    """The binding that keeps networks-status off deleted, as an operator turning the option on does;
    put back afterwards (probing with a Pod of node-a of its own)."""
    probe = scene.sandbox("probe", "n6-dpdk", **{NETWORK_STATUS: "[]"})
    with networks_status_allowed(kube, agent_identity, f"/api/v1/namespaces/{scene.ns}/pods/{probe.name}"):
        yield


def test_with_the_option_allowed_the_bridge_may_write_networks_status_only_as_a_copy(
    agent_identity: Api, pods: dict[str, str], legacy_allowed: None
):
    mine = pods["mine"]
    pod = agent_identity.get(mine)
    other = {"metadata": {"annotations": {NETWORKS_STATUS: '[{"interface":"net9"}]'}}}
    assert agent_identity.status_code("PATCH", f"{mine}/status", other, MERGE) == 403
    both_new = '[{"interface":"net1"}]'
    together = {"metadata": {"annotations": {NETWORK_STATUS: both_new, NETWORKS_STATUS: both_new}}}
    assert agent_identity.status_code("PATCH", f"{mine}/status", together, MERGE) == 200
    removal = {"metadata": {"annotations": {NETWORKS_STATUS: None}}}
    assert agent_identity.status_code("PATCH", f"{mine}/status", removal, MERGE) == 403
    alone = {"metadata": {"annotations": {NETWORK_STATUS: "[]"}}}  # as without the option: the copy may lag
    assert agent_identity.status_code("PATCH", f"{mine}/status", alone, MERGE) == 200
    assert (
        agent_identity.status_code("PATCH", f"{mine}/status", copy_of_network_status(agent_identity.get(mine)), MERGE)
        == 200
    )
    assert pod["metadata"]["annotations"]["other"] == agent_identity.get(mine)["metadata"]["annotations"]["other"]
    theirs = copy_of_network_status(agent_identity.get(pods["theirs"]))
    assert agent_identity.status_code("PATCH", f"{pods['theirs']}/status", theirs, MERGE) == 403  # not another node's


def test_legacy_networks_status_is_kept_equal_to_network_status(scene: Scene, start_bridge, legacy_allowed: None):
    """With the option, v3 readers get the key they read, with our device-info; a Pod without a
    record of ours gets the copy too (v4 left them nothing at all)."""
    agent = start_bridge(extra=("--legacy-networks-status",))
    attach(scene, "upf-0", VFS[6])
    plain = '[{"name":"default/kindnet","interface":"eth0","default":true}]'
    scene.sandbox("no-record", "n6-dpdk", **{NETWORK_STATUS: plain})

    def copied(name: str) -> bool:
        annotations = scene.read_pod(name)["metadata"]["annotations"]
        return NETWORKS_STATUS in annotations and annotations[NETWORKS_STATUS] == annotations[NETWORK_STATUS]

    wait_for(lambda: device_info_of(scene, "upf-0") and copied("upf-0"), why="the copy\n" + agent.log())
    wait_for(lambda: copied("no-record"), why="the copy without a record\n" + agent.log())
    assert scene.read_pod("no-record")["metadata"]["annotations"][NETWORKS_STATUS] == plain
    assert json.loads(scene.read_pod("upf-0")["metadata"]["annotations"][NETWORKS_STATUS]) == network_status(
        scene.read_pod("upf-0")
    )
    assert agent.metric("deviceid_inject_bridge_errors_total", '{kind="patch"}') == 0


def test_the_option_without_the_policys_consent_still_adds_device_info(scene: Scene, start_bridge):
    """--legacy-networks-status while the binding that forbids it is in place: the API server
    refuses the copy, network-status still gets device-info, the refusal is named and retried."""
    agent = start_bridge(extra=("--legacy-networks-status",))
    attach(scene, "upf-0", VFS[7])
    wait_for(lambda: device_info_of(scene, "upf-0"), why="device-info\n" + agent.log())
    assert NETWORKS_STATUS not in scene.read_pod("upf-0")["metadata"]["annotations"]
    wait_for(lambda: "deviceid-inject-bridge-no-networks-status still in place" in agent.log(), why=agent.log())
    assert agent.metric("deviceid_inject_bridge_errors_total", '{kind="patch"}') >= 1
