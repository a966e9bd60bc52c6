"""The bridge's loop: list and watch this node's Pods, and patch network-status where a record of
ours has device-info that Multus left out.

One thread lists the node's Pods (field selector spec.nodeName), then watches from the list's
resourceVersion; a 410 Gone relists, any other failure waits with capped exponential backoff and
resumes from the last resourceVersion seen. Every ADDED or MODIFIED event is reconciled. A second
thread looks at every known Pod with a record again every `resync` seconds, from the objects the
watch delivered (a record can land after the event that needed it), and beats the heart /healthz
reads: the watch itself may rightly block for minutes on a quiet node.

A patch goes to the pods/status subresource, as Multus's own write does, as a JSON merge patch
that names the resourceVersion it was computed from: a concurrent writer makes it fail with 409,
and it is recomputed from a fresh read, so no other writer's change is lost.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import httpx
from lightkube import Client, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Pod
from lightkube.types import PatchType, on_error_raise

from ..log import Log
from .metrics import Metrics
from .reconcile import NETWORK_STATUS, RecordIndex, with_device_info

FIELD_MANAGER = "deviceid-inject-bridge"
WATCH_SECONDS = 240  # the server closes each watch after this; the next one resumes from its version
PATCH_ATTEMPTS = 5


@dataclass
class Settings:
    node: str
    data_dir: str
    kubeconfig: str | None = None
    resync: float = 30.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0


@dataclass
class PodKey:
    namespace: str
    name: str
    uid: str

    @classmethod
    def of(cls, pod: Pod) -> PodKey:
        return cls(pod.metadata.namespace, pod.metadata.name, pod.metadata.uid)


@dataclass
class Bridge:
    settings: Settings
    client: Client
    metrics: Metrics
    log: Log
    index: RecordIndex = field(init=False)
    pods: dict[str, Pod] = field(default_factory=dict)  # by UID: the newest object seen of each Pod here
    synced: threading.Event = field(default_factory=threading.Event)
    # The watch thread and the resync thread both change `pods` and patch: one at a time.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.index = RecordIndex(self.settings.data_dir)

    # --- the loop --------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """List, watch, relist on 410, back off on failures; returns only when `stop` is set. A second
        thread resyncs every `resync` seconds, as the watch blocks for as long as nothing happens."""
        threading.Thread(target=self._resync_loop, args=(stop,), name="bridge-resync", daemon=True).start()
        failures = 0
        version: str | None = None
        while not stop.is_set():
            try:
                if version is None:
                    version = self._list()
                for kind, pod in self._watch(version):
                    failures = 0
                    self.metrics.heartbeat()
                    version = pod.metadata.resourceVersion or version
                    with self.lock:
                        self._event(kind, pod)
                    if stop.is_set():
                        return
            except (httpx.HTTPError, OSError) as err:  # lightkube's ApiError is an httpx.HTTPStatusError
                if _status(err) == 410:  # as an ERROR event, or as the answer to the watch request
                    self.log.info("watch: resourceVersion too old (410 Gone); listing again")
                    self.metrics.relists.inc()
                    version = None
                    continue
                failures += 1
                self._back_off(stop, failures, _describe(err))

    def _list(self) -> str:
        listing = self.client.list(Pod, namespace="*", fields={"spec.nodeName": self.settings.node})
        pods = list(listing)
        with self.lock:
            self.pods = {pod.metadata.uid: pod for pod in pods}
            self.metrics.pods.set(len(self.pods))
            self.log.info(f"listed {len(pods)} pods on node {self.settings.node}")
            self.index.refresh()
            for pod in pods:
                self.reconcile(pod, seen=time.monotonic(), refresh=False)
        self.synced.set()
        return listing.resourceVersion

    def _event(self, kind: str, pod: Pod) -> None:
        if kind in ("ADDED", "MODIFIED"):
            self.pods[pod.metadata.uid] = pod
            self.reconcile(pod, seen=time.monotonic())
        elif kind == "DELETED":
            self.pods.pop(pod.metadata.uid, None)
        self.metrics.pods.set(len(self.pods))

    def _resync_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.resync):
            try:
                with self.lock:
                    if self.synced.is_set():
                        self.resync()
            except (httpx.HTTPError, OSError) as err:
                self.metrics.errors.labels(kind="api").inc()
                self.log.warning(f"resync: {type(err).__name__}: {err}")
            self.metrics.heartbeat()  # alive: the watch may rightly be silent for minutes

    def resync(self) -> None:
        """Look at every known Pod with a record again: records that landed after the Pod's last event."""
        self.index.refresh()
        with_records = self.index.pod_uids()
        for uid, pod in list(self.pods.items()):
            if uid in with_records:
                self.reconcile(pod, seen=time.monotonic(), refresh=False)

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
        delay *= random.uniform(0.8, 1.2)
        self.log.warning(f"API server: {why}; retrying in {delay:.1f} s (failure {failures})")
        stop.wait(delay)

    # --- one Pod ---------------------------------------------------------------------------------------

    def reconcile(self, pod: Pod, seen: float, refresh: bool = True) -> bool:
        """Patch `pod`'s network-status if a record of ours has device-info it lacks; True if patched."""
        if pod.spec is None or pod.spec.nodeName != self.settings.node:
            return False  # the field selector should make this impossible; never touch another node's
        if refresh:
            self.index.refresh()
        key = PodKey.of(pod)
        for _ in range(PATCH_ATTEMPTS):
            known = self.index.for_pod(key.uid)
            value = with_device_info(_annotation(pod), known)
            if value is None:
                return False
            try:
                patched = self._patch(key, pod.metadata.resourceVersion, value)
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
                self.log.error(f"patching {key.namespace}/{key.name}: {err.status.code} {err.status.message}")
                return False
            if patched is not None:
                self.pods[key.uid] = patched
            self.metrics.patches.inc()
            self.metrics.latency.observe(time.monotonic() - seen)
            self.log.info(f"added device-info to {key.namespace}/{key.name} (uid {key.uid})")
            return True
        self.metrics.errors.labels(kind="conflict-retries").inc()
        self.log.warning(f"{key.namespace}/{key.name}: still conflicting after {PATCH_ATTEMPTS} attempts")
        return False

    def _get(self, key: PodKey) -> Pod | None:
        """The Pod as it is now, or None when it is gone or is another Pod under the same name."""
        try:
            pod = self.client.get(Pod, key.name, namespace=key.namespace)
        except ApiError as err:
            if err.status.code == 404:
                self.pods.pop(key.uid, None)
                return None
            raise
        if pod.metadata.uid != key.uid:
            self.pods.pop(key.uid, None)
            return None
        self.pods[key.uid] = pod
        return pod

    def _patch(self, key: PodKey, version: str | None, value: str) -> Pod | None:
        body = {"metadata": {"resourceVersion": version, "annotations": {NETWORK_STATUS: value}}}
        return self.client.patch(
            Pod.Status, key.name, body, namespace=key.namespace, patch_type=PatchType.MERGE, field_manager=FIELD_MANAGER
        )


def _status(err: Exception) -> int | None:
    """The HTTP status an error carries, if it carries one."""
    if isinstance(err, ApiError):
        return err.status.code
    if isinstance(err, httpx.HTTPStatusError):
        return err.response.status_code
    return None


def _describe(err: Exception) -> str:
    if isinstance(err, ApiError):
        return f"API error {err.status.code}: {err.status.message}"
    return f"{type(err).__name__}: {err}"


def _annotation(pod: Pod) -> str | None:
    annotations = pod.metadata.annotations or {}
    return annotations.get(NETWORK_STATUS)


def client_for(settings: Settings) -> Client:
    """A client from the kubeconfig given, else the Pod's service account (whose token file the
    kubelet rotates: lightkube reads it again on a 401)."""
    config = KubeConfig.from_file(settings.kubeconfig) if settings.kubeconfig else KubeConfig.from_service_account()
    client = Client(config=config, field_manager=FIELD_MANAGER, timeout=httpx.Timeout(15.0))
    # lightkube 0.22 (the last for Python 3.9) sends watches with no read timeout: a connection that
    # dies silently (no FIN, no RST) would block the loop forever. The server ends every watch after
    # WATCH_SECONDS, so a read that waits much longer than that is a dead connection.
    client._client._watch_timeout = httpx.Timeout(15.0, read=WATCH_SECONDS + 30)
    return client
