"""The selection route applied at admission, on the real node of testbed.node: deploy/selection-route
applied with `kubectl apply -k` through a user's overlay (deploy/, the Component, the opted-in
networks), Multus in thick mode from its own manifest (v4.3.0 and v4.0.2), the bridge off the node.

Pods are created with kubectl in the text form, as their owners wrote them; the field's NAD has the
SR-IOV stand-in without the deviceID capability (docs/network-status-routes.md: this route's condition). What the
workload sees is read in its first line: its init container runs `deviceid-inject wait-device-info
--timeout 0`, which reads the downward API's annotations file once and fails when device-info is not
there (the kubelet then starts it again). Every version of that file is also read from inside the
node as the kubelet writes it.

The kubelet writes the downward API file before it makes the sandbox, so before Multus writes
network-status at all, and rewrites it some hundreds of milliseconds after; the first container
starts about as soon. Whether the first read sees network-status is that race, the same on every
route; what this route changes is that the first network-status anyone sees, in the API or in the
file, already has our device-info.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deviceid_inject import wait as waiting
from deviceid_inject.annotations import NETWORK_STATUS
from testbed.admission import overlay, remove, selection_of, wait_rewrites
from testbed.bridge import device_info
from testbed.cluster import Cluster, deploy_kustomization, entry, ready
from testbed.harness import Service
from testbed.helpers import PLACEHOLDER, TESTDATA, VFS
from testbed.kube import Seen, Watch
from testbed.node import Node

pytestmark = [pytest.mark.node]

# The text forms the owners write, one Pod each, and the element the policy makes of each (with no
# interface Multus names the first one net1).
SHAPES = {
    "{network}@net1": {"interface": "net1"},
    "{ns}/{network}@net1": {"namespace": "{ns}", "interface": "net1"},
    " {ns} / {network} ": {"namespace": "{ns}"},
}


VERSIONS_SCRIPT = TESTDATA / "node" / "downward_api_versions.py"


def network(index: int) -> str:
    return f"n6-adm-{index}"


@pytest.fixture
def route_on(multus_node: Cluster, node_ns: str, tmp_path: Path) -> Iterator[Cluster]:
    """The overlay applied with the test's networks opted in, the policy taking effect, the bridge off;
    afterwards the bridge back and the policy's objects deleted."""
    cluster = multus_node
    networks = [f"{node_ns}/{network(i)}" for i in range(len(SHAPES))]
    folder = tmp_path / "overlay"
    cluster.ok("apply", "-k", str(overlay(folder, networks, deploy_kustomization(folder, cluster.image))))
    try:
        wait_rewrites(cluster.node.api(), node_ns, network(0))
        with cluster.bridge_off():
            yield cluster
    finally:
        remove(cluster.node.api())


def first(watch: Watch, name: str, network_name: str) -> Seen | None:
    """The first event of Pod `name` in which Multus's entry for `network_name` is there."""
    with watch.changed:
        return next(
            (s for s in watch.seen if s.object["metadata"]["name"] == name and entry(s.object, network_name)), None
        )


def without_device_info(watch: Watch, name: str, network_name: str) -> list[Seen]:
    """The events of Pod `name` that show Multus's entry without device-info: the window, as seen."""
    with watch.changed:
        return [
            s
            for s in watch.seen
            if s.object["metadata"]["name"] == name
            and (found := entry(s.object, network_name)) is not None
            and "device-info" not in found
        ]


def init_ended(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The first run's end of the Pod's init container (its state, or its last state once restarted)."""
    statuses = pod.get("status", {}).get("initContainerStatuses") or []
    if not statuses:
        return None
    status = statuses[0]
    return status.get("lastState", {}).get("terminated") or status["state"].get("terminated")


@dataclass
class DownwardApiFiles:
    """Every version of every Pod's downward API annotations file on the node, as the kubelet writes
    it (testdata/node/downward_api_versions.py, run inside the node, where the kubelet's tmpfs is, on
    the harness: one JSON line each in its log)."""

    node: Node
    service: Service | None = None

    def start(self) -> DownwardApiFiles:
        argv = self.node.enter([sys.executable, str(VERSIONS_SCRIPT)])
        self.service = Service("downward-api-versions", argv, self.node.logs / "downward-api-versions.log").start()
        return self

    def versions(self) -> list[tuple[float, str, str]]:
        """(wall time, Pod UID, text) of each version seen so far."""
        lines = self.service.log().split("\n")[:-1] if self.service else []  # the last: unfinished or empty
        found = [json.loads(line) for line in lines if line.startswith("{")]  # not the harness's own lines
        return [(each["at"], each["pod"], each["text"]) for each in found]

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()

    def statuses(self, uid: str) -> list[tuple[float, list[dict[str, Any]]]]:
        """Each version of the Pod's file that holds network-status: when, and what it says."""
        found = []
        for at, pod, text in self.versions():
            raw = waiting.annotations(text).get(NETWORK_STATUS) if pod == uid else None
            if raw is not None:
                found.append((at, json.loads(raw)))
        return found


def test_a_text_form_pod_has_device_info_in_network_status_before_its_first_container_starts(
    route_on: Cluster, node_ns: str
):
    """Three Pods, one a text form each, and a control on a network not opted in. Shown for each: the
    selection stored in the JSON form with the placeholder; Multus's first write of its entry already
    carries our device-info (no watch event ever shows the entry without it: the window is zero);
    every version of its downward API file that holds network-status holds device-info; its init
    container, reading that file once a run, ends with the device-info. A first read that found
    nothing therefore read a file the kubelet had not yet rewritten with network-status at all.
    Printed: when device-info became visible against containerd's RunPodSandbox returning (after
    Multus's ADD returned) and against the kubelet's rewrite of the file, and each first read."""
    cluster, ns = route_on, node_ns
    clock = time.time() - time.monotonic()  # watch events carry monotonic times; the rest wall times
    files = DownwardApiFiles(cluster.node).start()
    watch = Watch(cluster.node.api(), f"/api/v1/namespaces/{ns}/pods").start()
    names = [f"upf-adm-{i}" for i in range(len(SHAPES))]
    try:
        for i, (name, shape) in enumerate(zip(names, SHAPES, strict=False)):
            cluster.field_nad(ns, network(i), cluster.veth(), vf=VFS[i], sriov_device_id=False)
            cluster.apply(cluster.workload(ns, name, shape.format(ns=ns, network=network(i)), wait_timeout=0))
        cluster.field_nad(ns, "n6-plain", cluster.veth(), vf=VFS[3], sriov_device_id=False)
        cluster.apply(cluster.workload(ns, "upf-plain", "n6-plain@net1", wait_timeout=0))
        pods = {name: cluster.wait_ready(ns, name, timeout=180) for name in names}
        control = cluster.node.wait(lambda: init_ended(cluster.pod(ns, "upf-plain")), 180, "the control's first read")
        plain = cluster.pod(ns, "upf-plain")
        cluster.node.wait(
            lambda: files.statuses(plain["metadata"]["uid"]), 60, "the control's file with network-status"
        )
    finally:
        watch.stop()
        files.stop()
    returned = cluster.node.sandboxes_returned()
    report = []
    for i, name in enumerate(names):
        pod, network_name, wanted = pods[name], f"{ns}/{network(i)}", device_info(VFS[i])
        shape = list(SHAPES)[i]
        expected = {
            "name": network(i),
            **{k: v.format(ns=ns) for k, v in SHAPES[shape].items()},
            "deviceID": PLACEHOLDER,
        }
        assert json.loads(selection_of(pod) or "null") == [expected]
        written = first(watch, name, network_name)
        assert written is not None and entry(written.object, network_name)["device-info"] == wanted
        assert without_device_info(watch, name, network_name) == []
        versions = files.statuses(pod["metadata"]["uid"])
        assert versions, f"{name}: the kubelet never wrote network-status into its downward API file"
        assert all(entry({"metadata": {"annotations": {NETWORK_STATUS: json.dumps(status)}}}, network_name)
                   .get("device-info") == wanted for _, status in versions)  # fmt: skip
        (init,) = pod["status"]["initContainerStatuses"]
        assert init["state"]["terminated"]["exitCode"] == 0, init
        assert json.loads(cluster.logs(ns, name, "wait-device-info").strip().splitlines()[-1]) == wanted
        visible = written.at + clock
        ahead = returned[pod["metadata"]["uid"]] - visible
        # The window, measured: device-info was in the API before the runtime had the sandbox back.
        assert ahead > 0, f"{name}: device-info visible {-1000 * ahead:.0f} ms after RunPodSandbox returned"
        report.append(
            f"{name} ({shape!r}): device-info visible {1000 * ahead:.0f} ms before "
            f"RunPodSandbox returned, in its downward API file {1000 * (versions[0][0] - visible):.0f} ms after; "
            f"first read {'passed' if init['restartCount'] == 0 else 'found no network-status in the file yet'}"
        )
    # The control: left as written; Multus wrote no device-info, the file never had it, the read failed.
    assert selection_of(plain) == "n6-plain@net1" and not ready(plain)
    assert "device-info" not in (entry(plain, f"{ns}/n6-plain") or {"device-info": "no entry"})
    control_versions = files.statuses(plain["metadata"]["uid"])
    assert all("device-info" not in e for _, status in control_versions for e in status)
    assert control["exitCode"] == 1
    print(f"\nMultus {cluster.multus}, bridge off:\n" + "\n".join(report))
