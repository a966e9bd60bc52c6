"""The bridge's loop against a stand-in for the lightkube client (the one seam): the paths the
real API server will not show on demand: a 410 mid-watch, a failing server, a 409 on every try.
test_bridge.py runs the same loop against the real API server.
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Pod

from deviceid_inject.bridge import agent
from deviceid_inject.bridge.agent import Bridge, Settings
from deviceid_inject.bridge.metrics import Metrics
from deviceid_inject.bridge.reconcile import NETWORK_STATUS
from deviceid_inject.log import Log
from deviceid_inject.state import Record, Store

NODE = "node-a"
UID = "uid-1"
VF = {"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:3b:02.3"}}
STATUS = json.dumps([{"name": "ran/n6", "interface": "net1", "mac": "02:00:00:00:00:01"}])


def pod(version: str, uid: str = UID, node: str = NODE, status: str | None = STATUS) -> Pod:
    annotations = {NETWORK_STATUS: status} if status is not None else {}
    return Pod.from_dict(
        {
            "metadata": {
                "name": "upf-0",
                "namespace": "ran",
                "uid": uid,
                "resourceVersion": version,
                "annotations": annotations,
            },
            "spec": {"nodeName": node, "containers": [{"name": "app"}]},
        }
    )


def api_error(code: int) -> ApiError:
    return ApiError(status={"kind": "Status", "code": code, "message": f"HTTP {code}", "status": "Failure"})


class Listing(list):
    resourceVersion = "10"


class FakeClient:
    """Answers like lightkube's Client from scripts: `watches` is one list of events (or an
    exception) per watch call; `patch_errors` are raised by the first patches."""

    def __init__(
        self, pods: list[Pod], watches: list[Any], patch_errors: list[int] = (), fresh: Pod | None = None
    ) -> None:
        self.pods = pods
        self.fresh = fresh
        self.watches = list(watches)
        self.patch_errors = list(patch_errors)
        self.lists = 0
        self.watched_from: list[str] = []
        self.patches: list[dict[str, Any]] = []
        self.stop = threading.Event()

    def list(self, *args: Any, **kwargs: Any) -> Listing:
        self.lists += 1
        return Listing(self.pods)

    def watch(self, *args: Any, resource_version: str, **kwargs: Any):
        self.watched_from.append(resource_version)
        if not self.watches:
            self.stop.set()
            return iter(())
        script = self.watches.pop(0)
        if isinstance(script, Exception):
            raise script
        return iter(script)

    def get(self, res: Any, name: str, namespace: str) -> Pod:
        return self.fresh or self.pods[-1]

    def patch(self, res: Any, name: str, body: dict[str, Any], **kwargs: Any) -> None:
        if self.patch_errors:
            raise api_error(self.patch_errors.pop(0))
        self.patches.append(body)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    Store(str(tmp_path)).save(
        Record("sandbox1", "net1", "n6", "0000:3b:02.3", "netdev sysfs", None, False, "ran", "upf-0", UID, VF)
    )
    return tmp_path


def run(client: FakeClient, data_dir: Path) -> tuple[Bridge, str]:
    stream = io.StringIO()
    settings = Settings(node=NODE, data_dir=str(data_dir), resync=3600, backoff_initial=0.001, backoff_max=0.002)
    bridge = Bridge(settings, client, Metrics(), Log("debug", stream=stream))
    worker = threading.Thread(target=bridge.run, args=(client.stop,), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), stream.getvalue()
    return bridge, stream.getvalue()


def value(metric: Any) -> float:
    return metric._value.get()


def test_a_410_mid_watch_lists_again_and_resumes_from_the_new_list(data_dir: Path):
    client = FakeClient([pod("10", status=None)], [[("MODIFIED", pod("11", status=None))], api_error(410), []])
    bridge, log = run(client, data_dir)
    assert client.lists == 2
    assert client.watched_from == ["10", "11", "10", "10"]  # resumed from 11, then relisted at 10
    assert value(bridge.metrics.relists) == 1
    assert "410 Gone" in log


def test_an_unreachable_server_is_retried_with_backoff_from_the_last_version(data_dir: Path):
    import httpx

    failure = httpx.ConnectError("connection refused")
    client = FakeClient([pod("10", status=None)], [failure, failure, api_error(500), [("MODIFIED", pod("12"))]])
    bridge, log = run(client, data_dir)
    assert client.lists == 1
    assert client.watched_from[:4] == ["10", "10", "10", "10"]
    assert bridge.metrics.errors.labels(kind="api")._value.get() == 3
    assert log.count("retrying in") == 3
    assert client.patches and client.patches[0]["metadata"]["resourceVersion"] == "12"


def test_a_conflict_is_recomputed_from_a_fresh_read(data_dir: Path):
    client = FakeClient([pod("10")], [[]], patch_errors=[409], fresh=pod("13"))
    bridge, _ = run(client, data_dir)
    assert value(bridge.metrics.conflicts) == 1
    (patch,) = client.patches
    assert patch["metadata"]["resourceVersion"] == "13"  # the fresh read's, not the stale one
    assert json.loads(patch["metadata"]["annotations"][NETWORK_STATUS])[0]["device-info"] == VF


def test_endless_conflicts_give_up_after_a_bounded_number_of_tries(data_dir: Path):
    client = FakeClient([pod("10")], [[]], patch_errors=[409] * 50)
    bridge, log = run(client, data_dir)
    assert client.patches == []
    assert value(bridge.metrics.conflicts) == agent.PATCH_ATTEMPTS
    assert "still conflicting" in log


def test_a_pod_of_another_node_in_the_stream_is_never_patched(data_dir: Path):
    client = FakeClient([], [[("ADDED", pod("11", node="node-b"))]])
    run(client, data_dir)
    assert client.patches == []


def test_the_watch_has_a_read_timeout(tmp_path: Path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    client = agent.client_for(Settings(node=NODE, data_dir=str(tmp_path), kubeconfig=str(kubeconfig)))
    assert client._client._watch_timeout.read == agent.WATCH_SECONDS + 30


def test_a_record_that_lands_while_the_watch_is_quiet_is_found_by_the_resync(tmp_path: Path):
    """The watch blocks while nothing happens on the node; the resync thread still finds a record
    written after the Pod's last event, and keeps /healthz's heartbeat going."""
    release = threading.Event()

    class QuietClient(FakeClient):
        def watch(self, *args: Any, resource_version: str, **kwargs: Any):
            self.watched_from.append(resource_version)
            release.wait(20)
            return iter(())

    client = QuietClient([pod("10")], [])
    settings = Settings(node=NODE, data_dir=str(tmp_path), resync=0.05)
    bridge = Bridge(settings, client, Metrics(), Log("debug", stream=io.StringIO()))
    worker = threading.Thread(target=bridge.run, args=(client.stop,), daemon=True)
    worker.start()
    try:
        assert bridge.synced.wait(10)
        assert client.patches == []  # no record yet
        Store(str(tmp_path)).save(
            Record("sandbox1", "net1", "n6", "0000:3b:02.3", "netdev sysfs", None, False, "ran", "upf-0", UID, VF)
        )
        deadline = time.monotonic() + 10
        while not client.patches and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(client.patches) == 1
        assert bridge.metrics.alive(stale_after=1.0)
    finally:
        client.stop.set()
        release.set()
        worker.join(10)


def test_a_410_answering_the_watch_request_itself_lists_again(data_dir: Path):
    import httpx

    request = httpx.Request("GET", "https://127.0.0.1/api/v1/pods?watch=1")
    gone = httpx.HTTPStatusError("410 Gone", request=request, response=httpx.Response(410, request=request))
    client = FakeClient([pod("10", status=None)], [gone, []])
    bridge, _ = run(client, data_dir)
    assert client.lists == 2
    assert value(bridge.metrics.relists) == 1
    assert bridge.metrics.errors.labels(kind="api")._value.get() == 0


def test_a_pod_gone_before_the_patch_is_let_go_without_an_error(data_dir: Path):
    client = FakeClient([pod("10")], [[]], patch_errors=[404])
    bridge, log = run(client, data_dir)
    assert client.patches == []
    assert value(bridge.metrics.patches) == 0
    assert bridge.metrics.errors.labels(kind="patch")._value.get() == 0
    assert "ran/upf-0 is gone; nothing to patch" in log
