"""The bridge's loops against a stand-in for the lightkube client (the one seam): the paths the
real API server will not show on demand: a 410 mid-watch, a failing server, a 409 on every try,
a wedged call, a Pod whose every patch fails. test_bridge.py runs the same loops against the real
API server.

Most tests run the watch to the end of its script in the test's thread, then the worker until
the queue is empty (`run`); the liveness tests run both loops in their threads, as the agent does.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from lightkube.core.exceptions import ApiError
from lightkube.models import meta_v1
from lightkube.resources.core_v1 import Pod
from lightkube.types import on_error_raise

from deviceid_inject.annotations import NETWORK_STATUS
from deviceid_inject.bridge import agent, records
from deviceid_inject.bridge.agent import Bridge, Settings
from deviceid_inject.bridge.metrics import PREFIX, Metrics
from deviceid_inject.log import Log
from deviceid_inject.state import Record, Store
from testbed.bridge import record as bridge_record
from testbed.helpers import loopback_server, wait_for

NODE = "node-a"
UID = "uid-1"
VF = {"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:3b:02.3"}}
STATUS = json.dumps([{"name": "ran/n6", "interface": "net1", "mac": "02:00:00:00:00:01"}])
DEEP = '[{"interface":"net1","x":' + "[" * 3000 + "]" * 3000 + "}]"  # the 6 KB value


def pod(version: str, uid: str = UID, node: str = NODE, status: str | None = STATUS, name: str = "upf-0") -> Pod:
    annotations = {NETWORK_STATUS: status} if status is not None else {}
    return Pod.from_dict(
        {
            "metadata": {
                "name": name,
                "namespace": "ran",
                "uid": uid,
                "resourceVersion": version,
                "annotations": annotations,
            },
            "spec": {"nodeName": node, "containers": [{"name": "app"}]},
        }
    )


def api_error(code: int, message: str | None = None) -> ApiError:
    """An API error as lightkube raises it for a watch's ERROR event: its decoded Status, no response."""
    status = {"kind": "Status", "code": code, "message": message or f"HTTP {code}", "status": "Failure"}
    return ApiError(status=meta_v1.Status.from_dict(status))


def watch_answer(code: int) -> httpx2.HTTPStatusError:
    """An error status as the answer to the watch request itself: lightkube raises httpx2's error."""
    request = httpx2.Request("GET", "https://127.0.0.1/api/v1/pods?watch=true")
    return httpx2.HTTPStatusError(f"{code}", request=request, response=httpx2.Response(code, request=request))


class Listing(list):
    resourceVersion = "10"


class FakeClient:
    """Answers like lightkube's Client from scripts: `watches` is one list of events (or an
    exception) per watch call; `patch_errors` are raised by the first patches; `fail(name)` may
    name an exception for every patch of one Pod. Once the script is over, `stop` is set."""

    def __init__(
        self,
        pods: list[Pod],
        watches: list[Any],
        patch_errors: list[int] = (),
        fresh: Pod | None = None,
        fail: Callable[[str], Exception | None] = lambda name: None,
        lists: list[Any] = (),
    ) -> None:
        self.pods = pods
        self.fresh = fresh
        self.watches = list(watches)
        self.patch_errors = list(patch_errors)
        self.fail = fail
        self.list_errors = list(lists)
        self.lists = 0
        self.watched_from: list[str] = []
        self.patches: list[dict[str, Any]] = []
        self.patched: list[str] = []  # the Pod's name, per patch that succeeded
        self.attempts: list[str] = []  # the Pod's name, per patch tried
        self.stop = threading.Event()

    def list(self, *args: Any, **kwargs: Any) -> Listing:
        self.lists += 1
        if self.list_errors:
            raise self.list_errors.pop(0)
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
        self.attempts.append(name)
        if self.patch_errors:
            raise api_error(self.patch_errors.pop(0))
        failure = self.fail(name)
        if failure is not None:
            raise failure
        self.patches.append(body)
        self.patched.append(name)


def record(uid: str = UID, name: str = "upf-0", container_id: str = "sandbox1") -> Record:
    """A record of the Pod `name` on network n6, as ADD leaves it without a Multus path."""
    return bridge_record(
        container_id,
        network="n6",
        device_info_file=None,
        created_file=False,
        pod_name=name,
        pod_uid=uid,
        device_info=VF,
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    Store(str(tmp_path)).save(record())
    return tmp_path


def make_bridge(client: FakeClient, data_dir: Path, **settings: Any) -> tuple[Bridge, io.StringIO]:
    stream = io.StringIO()
    options = {"resync": 3600, "backoff_initial": 0.001, "backoff_max": 0.002, **settings}
    clock = options.pop("clock", time.monotonic)
    bridge = Bridge(
        Settings(node=NODE, data_dir=str(data_dir), **options), client, Metrics(), Log("debug", stream), clock=clock
    )
    return bridge, stream


def drain(bridge: Bridge) -> None:
    """The worker's part: every Pod queued and due now, until none is."""
    while bridge.step(timeout=0) is not None:
        pass


def run(client: FakeClient, data_dir: Path, **settings: Any) -> tuple[Bridge, str]:
    bridge, stream = make_bridge(client, data_dir, **settings)
    bridge.watch(client.stop)  # to the end of the client's script
    drain(bridge)
    return bridge, stream.getvalue()


def value(bridge: Bridge, name: str, **labels: str) -> float:
    """A sample as /metrics shows it (the registry's public reading); 0 before its first count."""
    return bridge.metrics.registry.get_sample_value(f"{PREFIX}_{name}", labels) or 0.0


def errors(bridge: Bridge, kind: str) -> float:
    return value(bridge, "errors_total", kind=kind)


def test_a_410_mid_watch_lists_again_and_resumes_from_the_new_list(data_dir: Path):
    client = FakeClient([pod("10", status=None)], [[("MODIFIED", pod("11", status=None))], api_error(410), []])
    bridge, log = run(client, data_dir)
    assert client.lists == 2
    assert client.watched_from == ["10", "11", "10", "10"]  # resumed from 11, then relisted at 10
    assert value(bridge, "relists_total") == 1
    assert "410 Gone" in log


def test_an_unreachable_server_is_retried_with_backoff_from_the_last_version(data_dir: Path):
    failure = httpx2.ConnectError("connection refused")
    client = FakeClient([pod("10", status=None)], [failure, failure, api_error(500), [("MODIFIED", pod("12"))]])
    bridge, log = run(client, data_dir)
    assert client.lists == 1
    assert client.watched_from[:4] == ["10", "10", "10", "10"]
    assert errors(bridge, "api") == 3
    assert log.count("retrying in") == 3
    assert client.patches and client.patches[0]["metadata"]["resourceVersion"] == "12"


class Outage(FakeClient):
    """An API server away until `back` (on the clock `waits` advance): every watch fails to
    connect until then; the first one after it sees the Pod's event and ends the script."""

    def __init__(self, back: float, **kwargs: Any) -> None:
        super().__init__([pod("10", status=None)], [], **kwargs)
        self.back = back
        self.now = 0.0
        self.returned_at: float | None = None

    def watch(self, *args: Any, resource_version: str, **kwargs: Any):
        if self.now < self.back:
            raise httpx2.ConnectError("connection refused")
        self.returned_at = self.now
        self.stop.set()
        return iter([("MODIFIED", pod("11"))])


class Waits(threading.Event):
    """The stop event of the watch loop, whose waits advance `client.now` instead of sleeping."""

    def __init__(self, client: Outage) -> None:
        super().__init__()
        self.client = client

    def wait(self, timeout: float | None = None) -> bool:
        self.client.now += timeout or 0.0
        return self.is_set()


@pytest.mark.parametrize("outage", [20.0, 70.0, 300.0, 3600.0])
def test_the_watch_is_back_within_10_s_of_the_api_servers_return(data_dir: Path, outage: float):
    """Issue 23, point 6: with the backoff capped at 30 s a 70 s outage took 21.3 s to recover.
    With the default settings, over many draws of the jitter, never more than 10 s."""
    defaults = Settings(node=NODE, data_dir=str(data_dir))
    for _ in range(50):
        client = Outage(outage)
        client.stop = Waits(client)
        backoff = {"backoff_initial": defaults.backoff_initial, "backoff_max": defaults.backoff_max}
        bridge, _ = make_bridge(client, data_dir, **backoff)
        bridge.watch(client.stop)
        assert client.returned_at is not None and client.returned_at - outage <= 10.0
    drain(bridge)
    assert client.patched == ["upf-0"]


def test_a_conflict_is_recomputed_from_a_fresh_read(data_dir: Path):
    client = FakeClient([pod("10")], [[]], patch_errors=[409], fresh=pod("13"))
    bridge, _ = run(client, data_dir)
    assert value(bridge, "conflicts_total") == 1
    (patch,) = client.patches
    assert patch["metadata"]["resourceVersion"] == "13"  # the fresh read's, not the stale one
    assert json.loads(patch["metadata"]["annotations"][NETWORK_STATUS])[0]["device-info"] == VF


def test_endless_conflicts_give_up_after_a_bounded_number_of_tries(data_dir: Path):
    client = FakeClient([pod("10")], [[]], patch_errors=[409] * 50)
    bridge, log = run(client, data_dir)
    assert client.patches == []
    assert value(bridge, "conflicts_total") == agent.PATCH_ATTEMPTS
    assert "still conflicting" in log


def test_a_pod_of_another_node_in_the_stream_is_never_patched(data_dir: Path):
    client = FakeClient([], [[("ADDED", pod("11", node="node-b"))]])
    run(client, data_dir)
    assert client.attempts == []


def test_a_watch_whose_connection_goes_silent_ends_with_a_read_timeout(tmp_path: Path, monkeypatch):
    """lightkube sends watches with no read timeout; the agent's transport gives them one. With the
    real client against a server that answers a watch with silence, the watch ends with a read timeout
    (it would block for ever without it, or if lightkube stopped sending through the transport)."""
    monkeypatch.setattr(agent, "WATCH_READ_TIMEOUT", 0.5)
    silent = QuietApiServer(watch_seconds=30)
    try:
        kubeconfig = silent.kubeconfig(tmp_path / "kubeconfig")
        config = agent.kubeconfig(Settings(node=NODE, data_dir=str(tmp_path), kubeconfig=str(kubeconfig)))
        client = agent.client_for(config, agent.WatchTransport(config))
        ended: list[BaseException] = []

        def watch() -> None:
            try:
                for _ in client.watch(Pod, namespace="*", resource_version="10", on_error=on_error_raise):
                    pass
            except BaseException as exc:
                ended.append(exc)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        watcher.join(10)  # without the read timeout it would still be waiting
        assert ended and isinstance(ended[0], httpx2.ReadTimeout), ended or "the watch still blocks after 10 s"
        assert silent.watches == 1
    finally:
        silent.close()


def test_a_410_answering_the_watch_request_itself_lists_again(data_dir: Path):
    client = FakeClient([pod("10", status=None)], [watch_answer(410), []])
    bridge, _ = run(client, data_dir)
    assert client.lists == 2
    assert value(bridge, "relists_total") == 1
    assert errors(bridge, "api") == 0


def test_a_pod_gone_before_the_patch_is_let_go_without_an_error(data_dir: Path):
    client = FakeClient([pod("10")], [[]], patch_errors=[404])
    bridge, log = run(client, data_dir)
    assert client.patches == []
    assert value(bridge, "patches_total") == 0
    assert errors(bridge, "patch") == 0
    assert "ran/upf-0 is gone; nothing to patch" in log


def test_the_worker_looks_at_the_newest_object_of_a_pod(data_dir: Path):
    """Three events of one Pod before the worker gets to it: one patch, from the last version."""
    events = [("MODIFIED", pod("11", status=None)), ("MODIFIED", pod("12")), ("MODIFIED", pod("13"))]
    client = FakeClient([pod("10", status=None)], [events])
    run(client, data_dir)
    (patch,) = client.patches
    assert patch["metadata"]["resourceVersion"] == "13"


def counting_refreshes(bridge: Bridge) -> list[int]:
    reads: list[int] = []
    real = bridge.index.refresh
    bridge.index.refresh = lambda: reads.append(1) or real()
    return reads


def test_the_records_are_read_once_for_a_burst_of_pods_and_once_per_resync(tmp_path: Path):
    pods = [pod("10", uid=f"uid-{i}", name=f"upf-{i}") for i in range(20)]
    for i in range(20):
        Store(str(tmp_path)).save(record(f"uid-{i}", f"upf-{i}", f"sandbox{i}"))
    client = FakeClient(pods, [[]])
    bridge, _ = make_bridge(client, tmp_path)
    reads = counting_refreshes(bridge)
    bridge.watch(client.stop)
    drain(bridge)
    assert len(client.patched) == 20
    assert len(reads) == 1
    bridge.resync()
    drain(bridge)
    assert len(reads) == 2


def test_a_record_written_just_before_its_event_is_found(tmp_path: Path):
    """The plugin writes the record, then Multus writes network-status: the records are read
    again for the event that follows, even right after they were read for another Pod."""
    client = FakeClient([pod("10")], [[]])
    bridge, _ = make_bridge(client, tmp_path)
    bridge.watch(client.stop)
    drain(bridge)  # the records read: none yet
    assert client.attempts == []
    Store(str(tmp_path)).save(record())
    bridge._event("MODIFIED", pod("11"))  # what the watch does with Multus's write
    drain(bridge)
    assert client.patched == ["upf-0"]


def test_a_pod_that_needs_nothing_is_looked_at_again_only_when_it_or_its_records_change(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    done = json.dumps([{"name": "ran/n6", "interface": "net1", "device-info": VF}])
    client = FakeClient([pod("10", status=done)], [[]])
    bridge, _ = make_bridge(client, data_dir)
    looks: list[str] = []
    real = agent.changes
    monkeypatch.setattr(agent, "changes", lambda annotations, *args: looks.append("x") or real(annotations, *args))
    bridge.watch(client.stop)
    drain(bridge)
    bridge.resync()
    drain(bridge)
    assert len(looks) == 1  # the resync found it settled
    bridge._event("MODIFIED", pod("11", status=done))
    drain(bridge)
    assert len(looks) == 2  # a new version of the Pod
    path = Path(Store(str(data_dir)).path("sandbox1", "net1"))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1))
    bridge.resync()
    drain(bridge)
    assert len(looks) == 3  # its record changed
    assert client.attempts == []


# --- a node with thousands of stale records (issue 23, point 1) -----------------------------------------

FS_CALLS = ("lstat", "stat", "listdir", "scandir", "open")


def filesystem_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every lstat, stat, listdir, scandir and open of this process from now on, by name: the
    work a refresh of the records does, counted at the os module every reader goes through."""
    calls: list[str] = []
    for name in FS_CALLS:
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    return calls


def stale(data_dir: Path, count: int) -> None:
    """`count` records of Pods that are not on the node any more (DELs that never came)."""
    store = Store(str(data_dir))
    for i in range(count):
        store.save(record(f"gone-{i}", f"gone-{i}", f"stale{i:05d}"))


def work_per_event(tmp_path: Path, stale_records: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Filesystem calls for each of 5 Pods' events (its record written just before, as the
    plugin does before Multus writes network-status), on a node with `stale_records` more."""
    data_dir = tmp_path / f"stale-{stale_records}"
    stale(data_dir, stale_records)
    client = FakeClient([], [[]])
    bridge, _ = make_bridge(client, data_dir)
    bridge.watch(client.stop)
    drain(bridge)
    bridge.resync()  # as the worker does once synced: every record read, once
    store = Store(str(data_dir))
    costs = []
    with monkeypatch.context() as patched:
        for i in range(5):
            store.save(record(f"uid-{i}", f"upf-{i}", f"sandbox{i}"))
            calls = filesystem_calls(patched)
            bridge._event("ADDED", pod("20", uid=f"uid-{i}", name=f"upf-{i}"))
            drain(bridge)
            costs.append(len(calls))
            patched.undo()
    assert client.patched == [f"upf-{i}" for i in range(5)]
    return costs


def test_an_event_costs_the_same_with_10_or_2000_stale_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Issue 23, point 1: every event read the whole data dir (10,000 stale records: 0.4 to 1 s
    per Pod event). Now an event reads what changed: the same filesystem calls per event
    whatever else the data dir holds (benchmarks/bridge_bench.py --stale measures the time)."""
    few = work_per_event(tmp_path, 10, monkeypatch)
    many = work_per_event(tmp_path, 2000, monkeypatch)
    assert many == few
    assert max(many) <= 10  # the new record's stat and read, not the folder's


def test_the_index_keeps_up_without_inotify_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Where inotify cannot be had, every refresh lists everything, as before: slower, still right."""

    def no_inotify() -> None:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(records, "Inotify", no_inotify)
    client = FakeClient([], [[]])
    bridge, log = make_bridge(client, tmp_path)
    bridge.watch(client.stop)
    drain(bridge)
    bridge.resync()
    Store(str(tmp_path)).save(record())
    bridge._event("ADDED", pod("20"))
    drain(bridge)
    assert client.patched == ["upf-0"]
    assert "no inotify (Function not implemented): every refresh lists every record" in log.getvalue()
    assert bridge.index.full_listings == 2


def test_records_of_pods_long_gone_are_counted_and_logged_once(tmp_path: Path):
    """Stale records are reported (a gauge, one log line naming them), not deleted: the plugin's
    DEL and GC own them."""
    now = [1000.0]
    stale(tmp_path, 5)
    Store(str(tmp_path)).save(record())  # a Pod that is here: never stale
    client = FakeClient([pod("10", status=None)], [[]])
    bridge, log = make_bridge(client, tmp_path, clock=lambda: now[0], stale_records_after=600)
    bridge.watch(client.stop)
    drain(bridge)
    bridge.resync()
    assert value(bridge, "stale_records") == 0  # gone since the first look: not for long yet
    now[0] += 601
    bridge.resync()
    bridge.resync()
    assert value(bridge, "stale_records") == 5
    lines = [line for line in log.getvalue().splitlines() if "have not been on this node" in line]
    assert len(lines) == 1
    assert "5 more Pods" in lines[0] and "ran/gone-0 (uid gone-0, stale00000)" in lines[0] and "and 2 more" in lines[0]
    assert len(os.listdir(tmp_path)) == 6  # every record's folder: nothing removed
    for i in range(5):
        Store(str(tmp_path)).forget(f"stale{i:05d}", "net1")  # the plugin's GC
    bridge.resync()
    assert value(bridge, "stale_records") == 0


# --- a fight with another writer (issue 23, point 3) ---------------------------------------------------


def fight(bridge: Bridge, now: list[float], seconds: float, version: list[int]) -> None:
    """Another writer that puts network-status back without device-info every 0.1 s (on the
    clock the bridge and its queue read), the bridge's worker running after each write."""
    until = now[0] + seconds
    while now[0] < until:
        version[0] += 1
        bridge._event("MODIFIED", pod(str(version[0])))
        drain(bridge)
        now[0] += 0.1


def test_a_pod_fought_over_is_patched_less_and_less_often_and_other_pods_are_not_slowed(tmp_path: Path):
    """Issue 23, point 3: a writer that took our device-info out 1,702 times in 16 s got 524
    patches back, with no limit. Now that Pod's patches wait 1 s, 2 s, ... at most 60 s while the
    fight lasts (counted, logged once), a Pod that keeps device-info for 120 s starts afresh, and
    another Pod of the node is patched at its first event meanwhile."""
    now = [1000.0]
    Store(str(tmp_path)).save(record())
    Store(str(tmp_path)).save(record("uid-control", "control", "sandbox-control"))
    client = FakeClient([pod("10")], [[]])
    bridge, log = make_bridge(client, tmp_path, clock=lambda: now[0])
    bridge.watch(client.stop)
    drain(bridge)
    assert client.patched == ["upf-0"]
    version = [10]
    fight(bridge, now, 60, version)
    first_minute = client.patched.count("upf-0") - 1
    assert 5 <= first_minute <= 8  # 1, 2, 4, 8, 16, 32 s apart (was: 600, one per write)
    fight(bridge, now, 120, version)
    assert client.patched.count("upf-0") - 1 - first_minute <= 3  # 60 s apart at most, then
    bridge._event("ADDED", pod("500", uid="uid-control", name="control"))
    drain(bridge)
    assert client.patched[-1] == "control"  # at its first event, fight or not
    assert value(bridge, "device_info_lost_total") == client.patched.count("upf-0") - 1
    assert value(bridge, "braked_total") > 1000
    assert log.getvalue().count("lost our device-info again") == 1  # once per streak
    # The other writer gives up; 120 s later a loss (Multus's next sandbox, say) is served at once.
    now[0] += 200
    patched = client.patched.count("upf-0")
    fight(bridge, now, 0.1, version)
    assert client.patched.count("upf-0") == patched + 1
    assert log.getvalue().count("lost our device-info again") == 1


# --- one Pod's trouble is that Pod's (issue 15, defects 1 and 2) ---------------------------------------


def two_pods(data_dir: Path, bad_status: str = STATUS) -> list[Pod]:
    """The bad Pod first, so that on the list it is the first one looked at; both have a record."""
    Store(str(data_dir)).save(record("uid-good", "good-0", "sandbox2"))
    return [pod("10", uid=UID, status=bad_status), pod("10", uid="uid-good", name="good-0")]


def test_a_pod_nested_3000_levels_deep_costs_only_that_pod(data_dir: Path):
    """The issue's reproduction: on the list the deep value raised RecursionError, which killed
    the loop for every Pod of the node. Now it is left alone, once, and named."""
    client = FakeClient(two_pods(data_dir, DEEP), [[("MODIFIED", pod("11", uid=UID, status=DEEP))]])
    bridge, log = run(client, data_dir)
    assert client.patched == ["good-0"]
    assert value(bridge, "skipped_total", reason="unparsable") == 1  # the newest version, once
    assert log.count("ran/upf-0 (uid uid-1): left alone: network-status is not one we understand") == 1
    assert bridge.synced.is_set() and bridge.health.ready()[0]


def test_odd_files_in_the_data_dir_cost_only_themselves(data_dir: Path):
    """A directory, a FIFO and a symlink where records should be: each is reported once and
    skipped, and the Pods' real records still count."""
    for name, make in (("dir", os.mkdir), ("fifo", os.mkfifo), ("link", lambda p: os.symlink("/etc/hostname", p))):
        (data_dir / name).mkdir()
        make(str(data_dir / name / "net1.json"))
    client = FakeClient(two_pods(data_dir), [[]])
    bridge, log = run(client, data_dir)
    assert sorted(client.patched) == ["good-0", "upf-0"]
    assert errors(bridge, "record") == 3
    for name in ("dir", "fifo", "link"):
        assert log.count(f"{data_dir}/{name}/net1.json:") == 1, log


def test_a_pod_whose_patch_keeps_failing_is_retried_with_its_own_growing_backoff(data_dir: Path):
    """A controller's work queue: the failing Pod comes back after 1, 2, 4 s (a clock of the
    test's), is named in each log line and counted; the other Pod is patched at once."""
    now = [0.0]
    failures = {"upf-0": RuntimeError("something no one foresaw")}
    client = FakeClient(two_pods(data_dir), [[]], fail=failures.get)
    bridge, stream = make_bridge(client, data_dir, retry_initial=1.0, retry_max=300.0, clock=lambda: now[0])
    bridge.watch(client.stop)
    drain(bridge)
    assert client.patched == ["good-0"]
    for delay in (1.0, 2.0, 4.0):
        assert bridge.step(timeout=0) is None  # not yet due
        now[0] += delay
        assert bridge.step(timeout=0) == UID
    log = stream.getvalue()
    assert client.attempts.count("upf-0") == 4
    assert [line.split("again in ")[1] for line in log.splitlines() if "again in" in line] == [
        "1.0 s",
        "2.0 s",
        "4.0 s",
        "8.0 s",
    ]
    assert "ran/upf-0 (uid uid-1): RuntimeError: something no one foresaw; trying this Pod again in 1.0 s" in log
    assert errors(bridge, "pod") == 4
    assert value(bridge, "retries_total") == 4
    del failures["upf-0"]  # whatever it was is over: the next try succeeds and the backoff is forgotten
    now[0] += 8.0
    assert bridge.step(timeout=0) == UID
    assert client.patched == ["good-0", "upf-0"]
    assert bridge.queue.failures(UID) == 0


def test_an_api_error_on_one_pods_patch_is_retried_for_that_pod_only(data_dir: Path):
    now = [0.0]  # the queue's clock: the retry is due when the test says so, never during the drain
    client = FakeClient(two_pods(data_dir), [[]], fail=lambda name: api_error(500) if name == "upf-0" else None)
    bridge, log = run(client, data_dir, retry_initial=1.0, clock=lambda: now[0])
    assert client.patched == ["good-0"]
    assert errors(bridge, "patch") == 1
    assert errors(bridge, "pod") == 0
    assert "ran/upf-0 (uid uid-1): API error 500: HTTP 500; trying this Pod again in 1.0 s" in log
    assert bridge.step(timeout=0) is None  # not before its backoff
    now[0] += 1.0
    assert bridge.step(timeout=0) == UID  # back after it
    assert client.attempts.count("upf-0") == 2


def test_a_pod_deleted_while_it_waits_for_its_retry_is_let_go(data_dir: Path):
    now = [0.0]
    client = FakeClient(two_pods(data_dir), [[]], fail=lambda name: RuntimeError(name) if name == "upf-0" else None)
    bridge, _ = make_bridge(client, data_dir, retry_initial=1.0, clock=lambda: now[0])
    bridge.watch(client.stop)
    drain(bridge)  # upf-0 failed once and waits 1 s
    bridge._event("DELETED", pod("11", uid=UID))  # what the watch does with the event
    now[0] += 1.0
    assert bridge.step(timeout=0) == UID  # its retry comes up and finds no Pod
    assert client.attempts.count("upf-0") == 1
    assert bridge.queue.failures(UID) == 0
    assert len(bridge.queue) == 0


# --- liveness and readiness (issue 15, defect 3) -------------------------------------------------------


class BlockingClient(FakeClient):
    """The watch (or every patch) blocks until `release` is set: a wedged call."""

    def __init__(self, *args: Any, block: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.block = block
        self.release = threading.Event()

    def watch(self, *args: Any, resource_version: str, **kwargs: Any):
        if self.block == "watch":
            self.release.wait(30)
            return iter(())
        self.watched_from.append(resource_version)
        time.sleep(0.05)  # a quiet node: the server ends each watch with nothing in it
        return iter(())

    def patch(self, *args: Any, **kwargs: Any) -> None:
        if self.block == "patch":
            self.release.wait(30)
        super().patch(*args, **kwargs)


def running(client: BlockingClient, data_dir: Path, stale_after: float) -> tuple[Bridge, threading.Event]:
    bridge, _ = make_bridge(client, data_dir, stale_after=stale_after)
    stop = threading.Event()
    threading.Thread(target=bridge.run, args=(stop,), daemon=True).start()
    assert bridge.synced.wait(10)
    return bridge, stop


def alive_within(bridge: Bridge, seconds: float) -> list[bool]:
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(bridge.health.alive()[0])
        time.sleep(0.02)
    return samples


class QuietApiServer:
    """An API server of a node where nothing happens, on loopback plain HTTP, at the one seam the
    real client has: it answers the list of Pods with none, and each watch with nothing, ended
    after `watch_seconds` as the real one ends a watch after its timeoutSeconds."""

    def __init__(self, watch_seconds: float) -> None:
        self.watches = 0
        self.watch_seconds = watch_seconds
        self.server = loopback_server(self._answer)

    def _answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if "watch=true" in path:
            self.watches += 1
            time.sleep(self.watch_seconds)
            return 200, b""
        return 200, json.dumps(
            {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "10"}, "items": []}
        ).encode()

    def kubeconfig(self, path: Path) -> Path:
        server = f"http://127.0.0.1:{self.server.server_address[1]}"
        path.write_text(
            json.dumps(
                {
                    "clusters": [{"name": "c", "cluster": {"server": server}}],
                    "users": [{"name": "u", "user": {"token": "t"}}],
                    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "x",
                }
            )
        )
        return path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_quiet_node_stays_alive_with_the_real_client(tmp_path: Path):
    """lightkube's watch sends the next request by itself whenever the server ends one, never
    coming back to our loop: on a quiet node the watch loop's progress is those requests. Over four
    times `stale_after` of watches that end with nothing in them, the agent stays alive."""
    quiet = QuietApiServer(watch_seconds=0.1)
    stream = io.StringIO()
    settings = Settings(
        node=NODE, data_dir=str(tmp_path), kubeconfig=str(quiet.kubeconfig(tmp_path / "kubeconfig")), stale_after=0.5
    )
    bridge = agent.connect(settings, Metrics(), Log("debug", stream))
    stop = threading.Event()
    threading.Thread(target=bridge.run, args=(stop,), daemon=True).start()
    try:
        assert bridge.synced.wait(10), stream.getvalue()
        assert all(alive_within(bridge, 2.0)), bridge.health.alive()
        assert quiet.watches > 10
        assert "API server:" not in stream.getvalue()  # no error: the loop only ever sat in one watch() call
    finally:
        stop.set()
        quiet.close()


@pytest.mark.parametrize("wedged", ["watch", "patch"])
def test_a_wedged_loop_is_not_alive(data_dir: Path, wedged: str):
    """The watch blocked in one call (the resync and the worker still fine), or the worker blocked
    in a patch (the watch still fine): /healthz's answer turns to not alive and names that loop."""
    client = BlockingClient([pod("10")], [], block=wedged)
    bridge, stop = running(client, data_dir, stale_after=0.5)
    try:
        samples = alive_within(bridge, 2.0)
        assert samples[0] and not samples[-1], samples
        ok, why = bridge.health.alive()
        assert not ok
        assert ("watch (" in why) == (wedged == "watch") and ("worker (" in why) == (wedged == "patch"), why
    finally:
        stop.set()
        client.release.set()


@pytest.mark.parametrize("refused", [api_error(401), watch_answer(401)], ids=["status", "watch-answer"])
def test_refused_credentials_make_the_agent_unready_until_they_are_taken_again(data_dir: Path, refused: Exception):
    """401 on the watch, for ever as far as the agent knows: not ready, and the reason says so, in
    the same words however the client reported it. The next list the API server answers makes it
    ready again."""
    client = FakeClient([pod("10", status=None)], [refused, refused])
    bridge, _ = make_bridge(client, data_dir)
    answers: list[tuple[bool, str]] = []
    real_list = client.list

    def listing(*args: Any, **kwargs: Any) -> Listing:
        answers.append(bridge.health.ready())
        return real_list(*args, **kwargs)

    client.list = listing
    bridge.watch(client.stop)
    assert answers[0] == (False, "not synced with the API server yet")
    assert answers[1][0] is False and "refuses our credentials: API error 401: " in answers[1][1]
    assert client.lists == 3  # each refusal: list again once the server answers
    assert bridge.health.ready() == (True, "ok")


RBAC_403 = 'pods "upf-0" is forbidden: User "system:serviceaccount:kube-system:deviceid-inject-bridge" cannot patch'
POLICY_403 = "pods \"upf-0\" is forbidden: ValidatingAdmissionPolicy 'deviceid-inject-bridge' with binding ..."


def test_refused_patches_make_the_agent_unready_until_a_patch_goes_through(data_dir: Path):
    """Issue 23, point 4: with the RBAC binding removed every patch got 403 while /readyz said
    200 (the open watch still delivered). Now unready from the first refused patch, through the
    watch's events, until the next patch that goes through."""
    now = [0.0]
    refusing = [True]
    client = FakeClient([pod("10")], [[]], fail=lambda name: api_error(403, RBAC_403) if refusing[0] else None)
    bridge, _ = make_bridge(client, data_dir, clock=lambda: now[0])
    bridge.watch(client.stop)
    drain(bridge)
    ok, why = bridge.health.ready()
    assert not ok and why == f"the API server refuses our patches: API error 403: {RBAC_403}"
    bridge._event("MODIFIED", pod("11", uid="another", status=None))  # the watch still delivers
    assert bridge.health.ready()[0] is False
    refusing[0] = False  # the binding is back
    now[0] += bridge.queue.maximum  # the Pod's retry is due: one patch attempt
    drain(bridge)
    assert client.patched == ["upf-0"]
    assert bridge.health.ready() == (True, "ok")


def test_a_patch_our_admission_policy_refuses_leaves_the_agent_ready(data_dir: Path):
    """The policy refuses one change of one Pod; that is the Pod's trouble, not the agent's."""
    client = FakeClient([pod("10")], [[]], fail=lambda name: api_error(403, POLICY_403))
    bridge, _ = make_bridge(client, data_dir)
    bridge.watch(client.stop)
    drain(bridge)
    assert client.attempts == ["upf-0"] and client.patched == []
    assert bridge.health.ready() == (True, "ok")


def test_credentials_refused_on_the_list_keep_the_agent_unready(data_dir: Path):
    client = FakeClient([pod("10", status=None)], [], lists=[api_error(403)] * 1000)
    bridge, _ = make_bridge(client, data_dir)
    stop = threading.Event()
    thread = threading.Thread(target=bridge.watch, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: client.lists >= 3, 10, "three refused lists", 0.01)
        ok, why = bridge.health.ready()
        assert not ok and "refuses our credentials: API error 403" in why
    finally:
        stop.set()
        thread.join(5)


def test_a_record_that_lands_while_the_watch_is_quiet_is_found_by_the_resync(tmp_path: Path):
    """The watch blocks while nothing happens on the node; the worker's resync still finds a
    record written after the Pod's last event."""
    client = BlockingClient([pod("10")], [], block="nothing")
    bridge, _ = make_bridge(client, tmp_path, resync=0.05)
    stop = threading.Event()
    threading.Thread(target=bridge.run, args=(stop,), daemon=True).start()
    try:
        assert bridge.synced.wait(10)
        time.sleep(0.2)
        assert client.patches == []  # no record yet
        Store(str(tmp_path)).save(record())
        wait_for(lambda: client.patches, 10, "the resync's patch", 0.02)
        assert len(client.patches) == 1
    finally:
        stop.set()


# --- the fuzz property (issue 15): whatever another writer left ----------------------------------------

SPACE = st.sampled_from(["", " ", "  ", "\n", "\n    ", "\n\t", "\r\n  ", "\t"])
NUMBERS = st.sampled_from(["0", "-0", "1e400", "-1E-400", "0.1000000000000000001", "1E2", "2e+5", "3.0"]) | st.integers(
    min_value=-(10**30), max_value=10**30
).map(str)
STRINGS = st.builds(json.dumps, st.text(max_size=12), ensure_ascii=st.booleans())
KEYS = (
    st.sampled_from(['"name"', '"mac"', '"ips"', '"dns"', '"x"'])
    | st.sampled_from(['"interface"', '"device-info"', '"interf\\u0061ce"', '"device-inf\\u006f"', '"Device-Info"'])
    | STRINGS
)
SCALARS = NUMBERS | STRINGS | st.sampled_from(["true", "false", "null", '"net1"', '"ran/n6"', '"ran/other"'])


def joined(items: list[str], spaces: list[str]) -> str:
    return ",".join(f"{spaces[i % len(spaces)]}{item}{spaces[(i + 1) % len(spaces)]}" for i, item in enumerate(items))


def containers(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    array = st.builds(
        lambda xs, sp: "[" + joined(xs, sp) + "]", st.lists(children, max_size=4), st.lists(SPACE, min_size=1)
    )
    members = st.lists(st.tuples(KEYS, SPACE, SPACE, children).map(lambda m: f"{m[0]}{m[1]}:{m[2]}{m[3]}"), max_size=4)
    obj = st.builds(lambda ms, sp: "{" + joined(ms, sp) + "}", members, st.lists(SPACE, min_size=1))
    return array | obj


VALUES = st.recursive(SCALARS, containers, max_leaves=12)
MEMBER = st.tuples(KEYS, SPACE, SPACE, VALUES).map(lambda m: f"{m[0]}{m[1]}:{m[2]}{m[3]}")
OURS = st.tuples(st.sampled_from(['"interface"', '"interf\\u0061ce"']), SPACE, SPACE, st.just('"net1"')).map(
    lambda m: f"{m[0]}{m[1]}:{m[2]}{m[3]}"
)


def entry(members: st.SearchStrategy[list[str]]) -> st.SearchStrategy[str]:
    return st.builds(lambda ms, spaces: "{" + joined(ms, spaces) + "}", members, st.lists(SPACE, min_size=1))


ENTRY = entry(st.lists(MEMBER, max_size=4))
OUR_ENTRY = entry(
    st.builds(lambda a, o, b: [*a, o, *b], st.lists(MEMBER, max_size=3), OURS, st.lists(MEMBER, max_size=2))
)
STATUSES = st.builds(
    lambda others, ours, at, spaces: "[" + joined([*others[:at], *ours, *others[at:]], spaces) + "]",
    st.lists(ENTRY | VALUES, max_size=3),
    st.lists(OUR_ENTRY, max_size=2),
    st.integers(0, 3),
    st.lists(SPACE, min_size=1),
)


def mutated(data: st.DataObject, text: str) -> str:
    """One character inserted, removed or replaced: what a writer's bug or an attacker leaves."""
    at = data.draw(st.integers(0, len(text)))
    how = data.draw(st.sampled_from(["insert", "remove", "replace"]))
    char = data.draw(st.sampled_from(list('[]{},:"\\ 0e-.x\x00\n')))
    if how == "insert":
        return text[:at] + char + text[at:]
    return text[:at] + ("" if how == "remove" else char) + text[at + 1 :]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class Pairs(list):
    """A JSON object as the (key, value) pairs in its text, duplicates included."""


def pairs(text: str) -> Any:
    """The value as Go would read it, every duplicate key and every digit of every number kept."""
    return json.loads(text, object_pairs_hook=Pairs, parse_float=Decimal, parse_constant=_no_constant)


def ours_to_fill(text: str) -> int | None:
    """The index of the one entry the bridge should give device-info, from a plain reading of the
    rules (docs/bridge.md); None where it should leave the Pod alone."""
    try:
        value = pairs(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, list):
        return None

    def last(entry: list[tuple[str, Any]], key: str) -> Any:
        return next((v for k, v in reversed(entry) if k == key), None)

    def device_info(entry: list[tuple[str, Any]]) -> bool:  # Go keeps the last under any ASCII case; null is none
        kept = [v for k, v in entry if k.isascii() and k.lower() == "device-info"]
        return bool(kept) and isinstance(kept[-1], Pairs)

    claiming = [i for i, e in enumerate(value) if isinstance(e, Pairs) and last(e, "interface") == "net1"]
    if any(device_info(value[i]) for i in claiming):
        return None
    if len(claiming) > 1:
        claiming = [
            i
            for i in claiming
            if isinstance(last(value[i], "name"), str) and last(value[i], "name").rpartition("/")[2] == "n6"
        ]
    return claiming[0] if len(claiming) == 1 else None


@pytest.fixture(scope="module")
def fuzz_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz-state")
    Store(str(path)).save(record())
    Store(str(path)).save(record("uid-good", "good-0", "sandbox2"))
    return path


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), raw=STATUSES, mutate=st.sampled_from([False, False, True]))
@example(data=None, raw=DEEP, mutate=False)
@example(data=None, raw='[{"interface": "net1", "n": 1e400, "m": 1E2}]', mutate=False)
def test_whatever_another_writer_left_the_bridge_adds_exactly_our_member_or_leaves_the_pod_alone(
    fuzz_data_dir: Path, data: st.DataObject | None, raw: str, mutate: bool
):
    if mutate and data is not None:
        raw = mutated(data, raw)
    client = FakeClient([pod("10", status=raw), pod("10", uid="uid-good", name="good-0")], [[]])
    bridge, log = run(client, fuzz_data_dir)
    assert client.patched.count("good-0") == 1, log  # every other Pod of the node is served
    assert errors(bridge, "pod") == 0, log  # nothing we did not foresee
    bad = [body for name, body in zip(client.patched, client.patches, strict=False) if name == "upf-0"]
    expected = ours_to_fill(raw)
    event("left alone" if expected is None else "device-info added")
    if expected is None:
        assert bad == [], "the Pod should have been left alone"
        return
    (body,) = bad
    new = body["metadata"]["annotations"][NETWORK_STATUS]
    start = next((i for i, (a, b) in enumerate(zip(raw, new, strict=False)) if a != b), len(raw))
    inserted = new[start : start + len(new) - len(raw)]
    assert new[:start] + new[start + len(inserted) :] == raw  # every other byte where it was
    assert json.loads('{"_": 0' + inserted + "}", parse_constant=_no_constant) == {"_": 0, "device-info": VF}
    before, after = pairs(raw), pairs(new)  # to exactly one entry, as its last member
    assert after[expected][:-1] == before[expected] and after[expected][-1][0] == "device-info"
    assert [e for i, e in enumerate(after) if i != expected] == [e for i, e in enumerate(before) if i != expected]
