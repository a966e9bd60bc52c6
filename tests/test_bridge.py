"""The network-status bridge on the test bed: real Multus v4.0.2 writes network-status without
device-info, the agent (python -m deviceid_inject, and the binary) adds ours, with the least
privilege deploy/ gives it, proven refusal by refusal against the real API server.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pytest
from bridge import USERNAME, VFS, BridgeProcess, agent_api, device_info, install, wait_for_policy
from helpers import NET1_DEVICE_INFO, Impl, wait_for
from kube import Api, ApiError, ApiServer, jwt_claims, network_status, service_account_token
from multus import NODE, Sandbox, Scene, host_device

from deviceid_inject.bridge.reconcile import NETWORK_STATUS
from deviceid_inject.state import Record, Store

pytestmark = [pytest.mark.netns, pytest.mark.multus]

OTHER_NODE = "node-b"
MERGE = "application/merge-patch+json"


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
    kubeconfig = agent_identity.kubeconfig(tmp_path / "bridge.kubeconfig", user="bridge")
    started: list[BridgeProcess] = []

    def start(**options: Any) -> BridgeProcess:
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
    scene.add("v4.0.2", box)
    return box


def entry_of(scene: Scene, name: str) -> dict[str, Any]:
    return scene.entry(scene.read_pod(name), f"n6-{name}")


def device_info_of(scene: Scene, name: str) -> dict[str, Any] | None:
    return entry_of(scene, name).get("device-info")


# --- the main flow ----------------------------------------------------------------------------------


def test_device_info_appears_after_multus_writes_and_nothing_else_changes(scene: Scene, start_bridge):
    agent = start_bridge()
    box = scene.sandbox("upf-0", "n6-upf-0", other="kept")
    scene.create_nad(host_device(box.peer), name="n6-upf-0")
    written = scene.add("v4.0.2", box)
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
    agent = start_bridge()
    wait_for(lambda: device_info_of(scene, "early"), why="catch-up after start\n" + agent.log())
    assert device_info_of(scene, "early") == device_info(VFS[0])
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
    assert scene.multus("v4.0.2", "DEL", box).code == 0
    scene.api.delete(f"/apis/k8s.cni.cncf.io/v1/namespaces/{scene.ns}/network-attachment-definitions/n6-upf-0")
    second = Sandbox(box.pod, f"sandbox{uuid.uuid4().hex[:12]}", scene.make_netns(), *scene.make_veth())
    scene.create_nad(host_device(second.peer), name="n6-upf-0", device_id=VFS[3])
    scene.add("v4.0.2", second)  # the bridge may already have re-applied when this returns
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
    agent = start_bridge()
    box = scene.sandbox("upf-0", "n6-upf-0")
    scene.create_nad(host_device(box.peer), name="n6-upf-0", device_id=VFS[6])
    stop = threading.Event()
    written: list[str] = []

    def other_writer() -> None:
        while not stop.is_set() and len(written) < 400:
            key = f"example.com/writer-{len(written)}"
            scene.api.merge_patch(
                f"/api/v1/namespaces/{scene.ns}/pods/upf-0", {"metadata": {"annotations": {key: "v"}}}
            )
            written.append(key)

    writer = threading.Thread(target=other_writer)
    writer.start()
    try:
        scene.add("v4.0.2", box)
        wait_for(lambda: device_info_of(scene, "upf-0"), why="device-info under concurrent writes")
    finally:
        stop.set()
        writer.join()
    final = scene.read_pod("upf-0")
    assert scene.entry(final, "n6-upf-0")["device-info"] == device_info(VFS[6])
    assert set(written) <= set(final["metadata"]["annotations"])
    assert len(written) > 10, "the other writer hardly ran: the test proved nothing"
    assert agent.metric("deviceid_inject_bridge_errors_total", '{kind="patch"}') == 0


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
    Store(str(scene.data_dir)).save(
        Record(
            container_id="sandboxforeign",
            ifname="net1",
            network="n6-x",
            pci_address=VFS[10],
            strategy="netdev sysfs",
            device_info_file=None,
            created_file=False,
            pod_namespace=scene.ns,
            pod_name="foreign",
            pod_uid=foreign.uid,
            device_info=device_info(VFS[10]),
        )
    )
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
