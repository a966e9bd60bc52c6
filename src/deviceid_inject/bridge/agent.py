"""The bridge's loops: list and watch this node's Pods, and patch network-status where a record of
ours has device-info that Multus left out.

Two threads, as in a controller (kubernetes/sample-controller: an informer and a worker):

- The watch thread lists the node's Pods (field selector spec.nodeName), then watches from the
  list's resourceVersion; a 410 Gone relists, a refusal of our credentials (401, 403) marks the
  agent unready and relists once the API server takes them again, any other failure waits with
  capped exponential backoff and resumes from the last resourceVersion seen. It only keeps the
  newest object of each Pod and queues the Pod's UID: nothing a Pod holds can stop it.
- The worker takes UIDs from the work queue (workqueue.py) and looks at the newest object of
  each. Whatever goes wrong with one Pod (an API error, data we did not foresee) is logged with
  the Pod's name, counted, and the Pod is queued again after its own exponential backoff; every
  other Pod is served meanwhile. Every `resync` seconds it queues again each Pod with a record
  (a record can land after the event that needed it).

Both beat health.py's heart on progress, so /healthz tells a dead or wedged loop from a quiet
node. A patch goes to the pods/status subresource, as Multus's own write does, as a JSON merge
patch that names the resourceVersion it was computed from: a concurrent writer makes it fail
with 409, and it is recomputed from a fresh read, so no other writer's change is lost.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx2
from lightkube import Client, KubeConfig
from lightkube.config.client_adapter import verify_cluster
from lightkube.config.kubeconfig import SingleConfig
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Pod
from lightkube.types import PatchType, on_error_raise

from ..annotations import NETWORK_STATUS, NETWORKS_STATUS
from ..log import Log
from .changes import Refused, changes
from .health import PATCH, Health
from .metrics import Metrics
from .records import RecordIndex
from .settings import Settings
from .workqueue import WorkQueue

FIELD_MANAGER = "deviceid-inject-bridge"
WATCH_SECONDS = 240  # the server closes each watch after this; the next one resumes from its version
WATCH_READ_TIMEOUT = WATCH_SECONDS + 30  # a watch silent for longer is a connection that died
PATCH_ATTEMPTS = 5
LOOPS = ("watch", "worker")
IDLE_BEAT = 1.0  # the worker beats at least this often (and 4 times per stale_after) while it waits


@dataclass
class Streak:
    """A Pod whose network-status lost our device-info after we added it: how often in a row,
    when we last patched it, and when the next patch may go."""

    losses: int
    patched: float
    next_patch: float


@dataclass
class PodKey:
    namespace: str
    name: str
    uid: str

    @classmethod
    def of(cls, pod: Pod) -> PodKey:
        return cls(pod.metadata.namespace, pod.metadata.name, pod.metadata.uid)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name} (uid {self.uid})"


class _LegacyRefused(Exception):
    """The API server refused the networks-status copy (the admission policy's binding that
    forbids it is still in place); network-status, where it changed, was written. Already
    counted and logged: the Pod is only tried again later."""


@dataclass
class Bridge:
    settings: Settings
    client: Client
    metrics: Metrics
    log: Log
    health: Health = field(init=False)
    index: RecordIndex = field(init=False)
    queue: WorkQueue = field(init=False)
    pods: dict[str, Pod] = field(default_factory=dict)  # by UID: the newest object seen of each Pod here
    # When the watch first showed each queued Pod, for the latency histogram.
    _since: dict[str, float] = field(default_factory=dict)
    # Per Pod, the (resourceVersion, its records) last found to need nothing, or left alone: looked
    # at again only when one of them changed, so a resync costs nothing and a refusal is logged once.
    _settled: dict[str, tuple[str, tuple[tuple[str, str, int], ...]]] = field(default_factory=dict)
    # Whether an event arrived since the index was last read: the plugin writes a record before
    # Multus writes network-status, so an index read after that event's arrival has the record.
    _index_stale: bool = True
    # Pod UIDs with records here but no Pod on the node: since when (the clock's), and those reported.
    _orphaned: dict[str, float] = field(default_factory=dict)
    _reported_stale: set[str] = field(default_factory=set)
    # Pods fighting another writer over our device-info (the brake), by UID; the worker's alone.
    _streaks: dict[str, Streak] = field(default_factory=dict)
    # `pods`, `_since` and `_index_stale` are written by the watch thread and read by the worker.
    lock: threading.Lock = field(default_factory=threading.Lock)
    clock: Callable[[], float] = time.monotonic  # of liveness and the Pods' retries (tests pass their own)

    def __post_init__(self) -> None:
        self.health = Health(LOOPS, self.settings.stale_after, self.clock)
        self.index = RecordIndex(self.settings.data_dir)
        self.queue = WorkQueue(self.settings.retry_initial, self.settings.retry_max, self.clock)

    @property
    def synced(self) -> threading.Event:
        return self.health.synced

    # --- the watch -------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """The worker in a thread of its own, the watch in this one; returns only when `stop` is set."""
        threading.Thread(target=self.work, args=(stop,), name="bridge-worker", daemon=True).start()
        self.watch(stop)

    def watch(self, stop: threading.Event) -> None:
        """List, watch, relist on 410, back off on failures, until `stop` is set."""
        failures = 0
        version: str | None = None
        while not stop.is_set():
            self.health.beat("watch")
            try:
                if version is None:
                    version = self._list()
                for kind, pod in self._watch(version):
                    failures = 0
                    self.health.beat("watch")
                    self.health.accepted()
                    version = pod.metadata.resourceVersion or version
                    self._event(kind, pod)
                    if stop.is_set():
                        return
            except (httpx2.HTTPError, OSError) as err:  # lightkube's ApiError is an httpx2.HTTPStatusError
                answer = _api_answer(err)
                status = answer[0] if answer else None
                if status == 410:  # as an ERROR event, or as the answer to the watch request
                    self.log.info("watch: resourceVersion too old (410 Gone); listing again")
                    self.metrics.relists.inc()
                    version = None
                    continue
                if status in (401, 403):  # ready again only after a list with credentials it takes
                    self.health.refused(_describe(err))
                    version = None
                failures += 1
                self._back_off(stop, failures, _describe(err))
            except Exception as err:  # an object or an answer we did not foresee: never the loop's end
                failures += 1
                version = None
                self._back_off(stop, failures, f"unexpected {type(err).__name__}: {err}; listing again")

    def _list(self) -> str:
        listing = self.client.list(Pod, namespace="*", fields={"spec.nodeName": self.settings.node})
        pods = list(listing)
        self.health.accepted()
        now = time.monotonic()
        with self.lock:
            gone = set(self.pods)  # deleted while the watch was away: the worker lets them go
            self.pods = {pod.metadata.uid: pod for pod in pods}
            gone -= set(self.pods)
            self._since = {uid: self._since.get(uid, now) for uid in self.pods}
            self._index_stale = True
            self.metrics.pods.set(len(self.pods))
        self.log.info(f"listed {len(pods)} pods on node {self.settings.node}")
        for uid in [*gone, *(pod.metadata.uid for pod in pods)]:
            self.queue.add(uid)
        self.health.synced.set()
        return listing.resourceVersion

    def _event(self, kind: str, pod: Pod) -> None:
        uid = pod.metadata.uid
        if kind in ("ADDED", "MODIFIED"):
            with self.lock:
                self.pods[uid] = pod
                self._since.setdefault(uid, time.monotonic())
                self._index_stale = True
                count = len(self.pods)
            self.queue.add(uid)
        elif kind == "DELETED":
            with self.lock:
                self.pods.pop(uid, None)
                self._since.pop(uid, None)
                count = len(self.pods)
            self.queue.add(uid)  # the worker finds no Pod and forgets what it kept of it
        else:
            return
        self.metrics.pods.set(count)

    def _watch(self, version: str):
        return self.client.watch(
            Pod,
            namespace="*",
            fields={"spec.nodeName": self.settings.node},
            resource_version=version,
            server_timeout=WATCH_SECONDS,
            on_error=on_error_raise,  # lightkube would retry by itself; we relist or back off instead
        )

    def _back_off(self, stop: threading.Event, failures: int, why: str) -> None:
        self.metrics.errors.labels(kind="api").inc()
        delay = min(self.settings.backoff_max, self.settings.backoff_initial * 2 ** (failures - 1))
        delay *= random.uniform(0.5, 1.0)
        self.log.warning(f"API server: {why}; retrying in {delay:.1f} s (failure {failures})")
        stop.wait(delay)

    # --- the worker ------------------------------------------------------------------------------------

    def work(self, stop: threading.Event) -> None:
        """Take Pods from the queue until `stop` is set; resync every `resync` seconds."""
        next_resync = time.monotonic()  # the first once synced: every record read at the start, not at an event
        while not stop.is_set():
            self.health.beat("worker")
            now = time.monotonic()
            if now >= next_resync and self.health.synced.is_set():
                next_resync = now + self.settings.resync
                self.resync()
            self.step(timeout=min(IDLE_BEAT, self.settings.stale_after / 4, max(0.0, next_resync - now)))

    def step(self, timeout: float) -> str | None:
        """Look at the next queued Pod, waiting at most `timeout` for one; its UID, or None."""
        uid = self.queue.get(timeout)
        if uid is None:
            return None
        with self.lock:
            pod = self.pods.get(uid)
            seen = self._since.pop(uid, None)
        if pod is None:  # deleted
            self.queue.forget(uid)
            self._settled.pop(uid, None)
            self._streaks.pop(uid, None)
            self.index.forget_pod(uid)
            return uid
        try:
            self.reconcile(pod, seen=time.monotonic() if seen is None else seen)
        except Exception as err:  # one Pod's trouble is that Pod's: it waits, the others do not
            key = PodKey.of(pod)
            if not isinstance(err, (ApiError, _LegacyRefused)):
                self.metrics.errors.labels(kind="pod").inc()
            delay = self.queue.add_rate_limited(uid)
            self.metrics.retries.inc()
            self.log.error(f"{key}: {_describe(err)}; trying this Pod again in {delay:.1f} s")
        else:
            self.queue.forget(uid)
        return uid

    def resync(self) -> None:
        """Queue again every known Pod with a record (with --legacy-networks-status, every Pod with
        network-status): records that landed after the Pod's last event."""
        if not self.health.synced.is_set():
            return
        self._refresh()
        with_records = self.index.pod_uids()
        with self.lock:
            due = [
                uid
                for uid, pod in self.pods.items()
                if uid in with_records or (self.settings.legacy_networks_status and NETWORK_STATUS in _annotations(pod))
            ]
            orphans = with_records - set(self.pods)
        for uid in due:
            self.queue.add(uid)
        self._report_stale(orphans)

    def _report_stale(self, orphans: set[str]) -> None:
        """Count the records whose Pod has not been on this node for `stale_records_after`, and log
        them once each (in one line per resync that finds new ones). Run by the resync, so its cost
        (the records of Pods gone) is paid every `resync` seconds, never per event."""
        now = self.clock()
        self._orphaned = {uid: self._orphaned.get(uid, now) for uid in orphans}
        stale = {uid for uid, since in self._orphaned.items() if now - since >= self.settings.stale_records_after}
        self.metrics.stale_records.set(sum(self.index.count(uid) for uid in stale))
        new = sorted(stale - self._reported_stale)
        self._reported_stale = stale
        if not new:
            return
        examples = []
        for uid in new[:3]:
            record = self.index.for_pod(uid, keep=False)[0].record
            examples.append(f"{record.pod_namespace}/{record.pod_name} (uid {uid}, {record.container_id})")
        more = f" and {len(new) - 3} more" if len(new) > 3 else ""
        self.log.warning(
            f"records: {len(new)} more Pods have records here but have not been on this node for "
            f"{self.settings.stale_records_after:g} s: {', '.join(examples)}{more}; {len(stale)} such Pods in all. "
            "Kept: the plugin's DEL or GC removes records (a lost DEL leaves them)"
        )

    def _refresh(self, only_if_stale: bool = False) -> None:
        """Read the records again (with `only_if_stale`, only if an event arrived since the last read)."""
        with self.lock:
            if only_if_stale and not self._index_stale:
                return
            self._index_stale = False
        for problem in self.index.refresh():
            self.metrics.errors.labels(kind="record").inc()
            self.log.warning(f"records: {problem}")

    # --- one Pod ---------------------------------------------------------------------------------------

    def reconcile(self, pod: Pod, seen: float) -> bool:
        """Patch `pod`'s annotations if a record of ours has device-info its network-status lacks
        (or, with --legacy-networks-status, networks-status differs); True if patched. API errors
        other than 404 and 409 are raised, for the caller's retry."""
        if pod.spec is None or pod.spec.nodeName != self.settings.node:
            return False  # the field selector should make this impossible; never touch another node's
        if NETWORK_STATUS not in _annotations(pod):
            return False
        self._refresh(only_if_stale=True)
        key = PodKey.of(pod)
        for _ in range(PATCH_ATTEMPTS):
            known = self.index.for_pod(key.uid)
            settled = (
                pod.metadata.resourceVersion or "",
                tuple((k.record.container_id, k.record.ifname, k.written_ns) for k in known),
            )
            if self._settled.get(key.uid) == settled:
                return False
            try:
                wanted = changes(_annotations(pod), known, self.settings.legacy_networks_status)
            except Refused as err:
                self._settled[key.uid] = settled
                self.metrics.skipped.labels(reason=err.reason).inc()
                self.log.warning(f"{key}: left alone: {err}")
                return False
            if not wanted:
                self._settled[key.uid] = settled
                return False
            if NETWORK_STATUS in wanted and self._braked(key):
                return False
            try:
                written = self._patch_all(key, pod, wanted)
            except ApiError as err:
                if err.status.code == 409:  # another writer since our read: recompute from a fresh one
                    self.metrics.conflicts.inc()
                    pod = self._get(key)
                    if pod is None:
                        return False
                    continue
                if err.status.code == 404:
                    self.log.info(f"{key.namespace}/{key.name} is gone; nothing to patch")
                    return False
                self.metrics.errors.labels(kind="patch").inc()
                if _credentials_refused(err):
                    self.health.refused(_describe(err), PATCH)
                raise
            if NETWORK_STATUS in written:
                self._count_loss(key)
            if written:
                self.health.accepted(PATCH)
                self.metrics.patches.inc()
                self.metrics.latency.observe(time.monotonic() - seen)
                done = ["added device-info"] if NETWORK_STATUS in written else []
                done += [f"copied network-status to {NETWORKS_STATUS}"] if NETWORKS_STATUS in written else []
                self.log.info(f"{key}: {' and '.join(done)}")
            if written != wanted:
                raise _LegacyRefused(f"{NETWORKS_STATUS} not written")
            return True
        self.metrics.errors.labels(kind="conflict-retries").inc()
        self.log.warning(f"{key}: still conflicting after {PATCH_ATTEMPTS} attempts")
        return False

    def _braked(self, key: PodKey) -> bool:
        """Whether the Pod must wait before we add device-info again; if so it is queued for then."""
        streak = self._streaks.get(key.uid)
        if streak is None:
            return False
        wait = streak.next_patch - self.clock()
        if wait <= 0:
            return False
        self.metrics.braked.inc()
        self.queue.add_after(key.uid, wait)
        return True

    def _count_loss(self, key: PodKey) -> None:
        """We just added device-info. If we had added it shortly before, someone took it out
        again: the next time waits longer (a fight with another writer must not load the API
        server for ever). Logged once per streak."""
        now = self.clock()
        streak = self._streaks.get(key.uid)
        if streak is None or now - streak.patched > self.settings.brake_streak:
            self._streaks[key.uid] = Streak(0, now, now)  # the first patch, or one after a calm
            return
        since = now - streak.patched
        streak.losses += 1
        streak.patched = now
        delay = min(self.settings.brake_max, self.settings.brake_initial * 2 ** (streak.losses - 1))
        streak.next_patch = now + delay
        self.metrics.lost.inc()
        if streak.losses == 1:
            self.log.warning(
                f"{key}: network-status lost our device-info again {since:.1f} s after we added it; "
                f"another writer may be rewriting it: until it keeps device-info for {self.settings.brake_streak:g} s, "
                f"each new patch waits longer ({self.settings.brake_initial:g} s, doubling, at most "
                f"{self.settings.brake_max:g} s)"
            )

    def _patch_all(self, key: PodKey, pod: Pod, wanted: dict[str, str]) -> dict[str, str]:
        """One patch of every annotation in `wanted`; returns those written. Where the API server
        refuses the networks-status copy (403), network-status alone is written."""
        try:
            self._patch(key, pod, wanted)
            return wanted
        except ApiError as err:
            if err.status.code != 403 or NETWORKS_STATUS not in wanted:
                raise
            self.metrics.errors.labels(kind="patch").inc()
            self.log.error(
                f"{key}: the API server refuses {NETWORKS_STATUS} ({err.status.message}); is the admission "
                "policy binding deviceid-inject-bridge-no-networks-status still in place?"
            )
        alone = {k: v for k, v in wanted.items() if k != NETWORKS_STATUS}
        if alone:
            self._patch(key, pod, alone)
        return alone

    def _get(self, key: PodKey) -> Pod | None:
        """The Pod as it is now, or None when it is gone or is another Pod under the same name."""
        try:
            pod = self.client.get(Pod, key.name, namespace=key.namespace)
        except ApiError as err:
            if err.status.code == 404:
                return None
            raise
        return pod if pod.metadata.uid == key.uid else None

    def _patch(self, key: PodKey, pod: Pod, wanted: dict[str, str]) -> None:
        body = {"metadata": {"resourceVersion": pod.metadata.resourceVersion, "annotations": wanted}}
        patched = self.client.patch(
            Pod.Status, key.name, body, namespace=key.namespace, patch_type=PatchType.MERGE
        )  # as FIELD_MANAGER: the client names it on every write
        with self.lock:  # the newest we know now, unless the watch brought a newer one meanwhile
            if patched is not None and self.pods.get(key.uid) is pod:
                self.pods[key.uid] = patched


def _api_answer(err: Exception) -> tuple[int, str | None] | None:
    """The HTTP status and message an error carries, if it carries one. ApiError first: it is an
    httpx2.HTTPStatusError too, but a watch's ERROR event has only its decoded Status, no response."""
    if isinstance(err, ApiError):
        return err.status.code, err.status.message
    if isinstance(err, httpx2.HTTPStatusError):  # the watch request's own answer
        return err.response.status_code, err.response.reason_phrase
    return None


def _credentials_refused(err: ApiError) -> bool:
    """A 401, or a 403 from authorization (RBAC), not from our admission policy: the policy
    refuses one change of one Pod (its message names the ValidatingAdmissionPolicy), which says
    nothing of the agent's readiness."""
    if err.status.code == 401:
        return True
    return err.status.code == 403 and "ValidatingAdmissionPolicy" not in (err.status.message or "")


def _describe(err: Exception) -> str:
    """One wording per cause, however lightkube delivered the API's answer."""
    answer = _api_answer(err)
    if answer is None:
        return f"{type(err).__name__}: {err}"
    return f"API error {answer[0]}: {answer[1]}"


def _annotations(pod: Pod) -> dict[str, str]:
    return pod.metadata.annotations or {}


def connect(settings: Settings, metrics: Metrics, log: Log) -> Bridge:
    """The bridge with its client, whose watch requests beat the watch loop's heart."""
    config = kubeconfig(settings)
    transport = WatchTransport(config)
    bridge = Bridge(settings, client_for(config, transport), metrics, log)
    transport.on_watch = lambda: bridge.health.beat("watch")
    return bridge


def kubeconfig(settings: Settings) -> SingleConfig:
    """The kubeconfig given, else the Pod's service account (whose token file the kubelet rotates:
    lightkube reads it again on a 401)."""
    if settings.kubeconfig:
        return KubeConfig.from_file(settings.kubeconfig).get()
    return KubeConfig.from_service_account().get()


def client_for(config: SingleConfig, transport: WatchTransport) -> Client:
    return Client(config=config, field_manager=FIELD_MANAGER, timeout=httpx2.Timeout(15.0), transport=transport)


class WatchTransport(httpx2.BaseTransport):
    """Every request lightkube sends, through the client's public `transport` parameter.

    A watch gets a read timeout: lightkube sends watches with none, so a connection that died
    silently (no FIN, no RST) would block the watch loop for ever. And each watch request is
    progress of the watch loop: lightkube's watch sends the next request by itself each time the
    server ends one (every WATCH_SECONDS on a quiet node), without coming back to our loop. Both
    proven with the real client (test_bridge_agent.py: a server gone silent, a quiet node).

    It connects as lightkube would, with the TLS context lightkube's own verify_cluster makes from
    the kubeconfig, and straight to the API server: a client given a transport takes no proxy from
    the environment.
    """

    def __init__(self, config: SingleConfig) -> None:
        self.on_watch: Callable[[], None] = lambda: None
        self._inner = httpx2.HTTPTransport(verify=verify_cluster(config.cluster, config.user, config.abs_file))

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.params.get("watch") == "true":
            self.on_watch()
            request.extensions["timeout"] = {**request.extensions.get("timeout", {}), "read": WATCH_READ_TIMEOUT}
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()
