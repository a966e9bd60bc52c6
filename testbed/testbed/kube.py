"""A real Kubernetes API for the tests: Debian's etcd and kube-apiserver (built by
scripts/install-tools.sh) on loopback, with RBAC on, and a small HTTPS client for it.

No kubelet and no controller-manager: a Pod created with spec.nodeName set stays Pending,
which is all Multus and the bridge need. Everything lives in one scratch folder; `stop`
ends both processes (their whole process groups) and the folder goes with the session.
Clients authenticate with static tokens (--token-auth-file) or with service-account
tokens that the API server itself issues (TokenRequest), so RBAC and admission policies
are judged exactly as in a cluster.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deviceid_inject.annotations import NETWORK_STATUS, NETWORKS
from testbed import tools
from testbed.harness import Service
from testbed.helpers import TESTDATA, wait_for

APISERVER = tools.kube("kube-apiserver", tools.APISERVER_VERSION)
ETCD = tools.ETCD
ADMIN_TOKEN = "deviceid-inject-test-admin"  # a static token of the loopback test bed
NAD_CRD = TESTDATA / "k8s" / "nad-crd.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing_tools() -> list[str]:
    return tools.missing(APISERVER, ETCD)


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


@dataclass
class Api:
    """One identity's view of the API server: plain HTTPS with a bearer token."""

    url: str
    ca_file: str
    token: str
    _ssl: ssl.SSLContext = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._ssl = ssl.create_default_context(cafile=self.ca_file)

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json", timeout: float = 30
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            raise ApiError(err.code, parsed) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:  # /readyz and friends answer in plain text
            return raw.decode(errors="replace")

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def merge_patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body, "application/merge-patch+json")

    def status_code(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> int:
        """The HTTP status of one request (200 when it succeeded), for tests of refusals."""
        try:
            self.request(method, path, body, content_type)
        except ApiError as err:
            return err.status
        return 200

    def kubeconfig(self, path: Path, user: str = "test") -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": self.url, "certificate-authority": self.ca_file}}],
            "users": [{"name": user, "user": {"token": self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
            "current-context": "test",
        }
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)
        return path


class ApiServer:
    """etcd and kube-apiserver in `workdir`, listening on 127.0.0.1 only (testbed.harness runs them)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.etcd: Service | None = None
        self.apiserver: Service | None = None
        self.port = 0
        self.etcd_port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> str:
        # With no --tls-cert-file the API server makes a self-signed certificate in --cert-dir.
        return str(self.workdir / "certs" / "apiserver.crt")

    def api(self, token: str = ADMIN_TOKEN) -> Api:
        return Api(self.url, self.ca_file, token)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._keys()
        (self.workdir / "tokens.csv").write_text(f'{ADMIN_TOKEN},admin,admin-uid,"system:masters"\n')
        self._start_etcd()
        self.start_apiserver()

    def _keys(self) -> None:
        key = self.workdir / "sa.key"
        if not key.exists():
            subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
            subprocess.run(
                ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(self.workdir / "sa.pub")],
                check=True,
                capture_output=True,
            )

    def _start_etcd(self) -> None:
        self.etcd_port, peer = free_port(), free_port()
        client = f"http://127.0.0.1:{self.etcd_port}"
        argv = [
            str(ETCD),
            "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"default=http://127.0.0.1:{peer}",
            "--log-level", "warn",
        ]  # fmt: skip
        self.etcd = Service("etcd", argv, self.workdir / "etcd.log").start()
        self.etcd.wait_until(lambda: _http_ok(f"{client}/health"), 60, "healthy", interval=0.2)

    def start_apiserver(self) -> None:
        """Start (or start again, on the same port and etcd) the API server and wait until ready."""
        self.port = self.port or free_port()
        argv = [
            str(APISERVER),
            "--etcd-servers", f"http://127.0.0.1:{self.etcd_port}",
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            # 1.37 refuses a loopback address for the kubernetes Service's endpoints; no Pod here needs them.
            "--endpoint-reconciler-type", "none",
            "--secure-port", str(self.port),
            "--cert-dir", str(self.workdir / "certs"),
            "--token-auth-file", str(self.workdir / "tokens.csv"),
            "--authorization-mode", "RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", str(self.workdir / "sa.pub"),
            "--service-account-signing-key-file", str(self.workdir / "sa.key"),
            "--service-cluster-ip-range", "10.96.0.0/16",
            # No controller-manager makes service-account token secrets; tokens come from TokenRequest.
            "--disable-admission-plugins", "ServiceAccount",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
        ]  # fmt: skip
        if tools.MUTATING_POLICY_BETA:  # 1.35: docs/network-status-routes.md's way to turn the beta on
            argv += ["--feature-gates", "MutatingAdmissionPolicy=true",
                     "--runtime-config", f"{tools.MUTATING_POLICY_API}=true"]  # fmt: skip
        self.apiserver = Service("kube-apiserver", argv, self.workdir / "kube-apiserver.log").start()
        self.apiserver.wait_until(self._ready, 120, "ready", interval=0.2)

    def _ready(self) -> bool:
        return os.path.exists(self.ca_file) and api_ready(self.api())

    def stop_apiserver(self) -> None:
        if self.apiserver is not None:
            self.apiserver.stop()
        self.apiserver = None

    def stop(self) -> None:
        self.stop_apiserver()
        if self.etcd is not None:
            self.etcd.stop()
        self.etcd = None

    # --- what the tests set up through the API -------------------------------------------------------

    def install_nad_crd(self) -> None:
        api = self.api()
        api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json.loads(NAD_CRD.read_text()))
        path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/network-attachment-definitions.k8s.cni.cncf.io"

        def served() -> bool:
            conditions = (api.get(path).get("status") or {}).get("conditions") or []
            if not any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                return False
            try:  # the discovery of a new group takes a moment more to reach every handler
                api.get("/apis/k8s.cni.cncf.io/v1/network-attachment-definitions")
            except ApiError:
                return False
            return True

        wait_for(served, 30, "the NetworkAttachmentDefinition CRD to be established and served", 0.2)


def api_ready(api: Api) -> bool:
    """Whether the API server behind `api` answers its /readyz with ok (not yet: False)."""
    try:
        return api.request("GET", "/readyz", timeout=5) == "ok"
    except (ApiError, OSError, ValueError):
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


# --- objects -----------------------------------------------------------------------------------------


def namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def nad(name: str, config: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"config": json.dumps(config)},
    }


def pod(name: str, node: str, networks: Any, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A Pod bound to `node`; `networks` is the k8s.v1.cni.cncf.io/networks value (text, or a list
    that becomes the JSON form)."""
    selection = networks if isinstance(networks, str) else json.dumps(networks)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": {NETWORKS: selection, **(annotations or {})}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }


def network_status(pod_object: dict[str, Any]) -> list[dict[str, Any]] | None:
    raw = pod_object["metadata"].get("annotations", {}).get(NETWORK_STATUS)
    return None if raw is None else json.loads(raw)


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# --- applying manifests, and identities the API server issues ----------------------------------------

_PLURALS = {
    "Namespace": "namespaces",
    "Node": "nodes",
    "Pod": "pods",
    "ServiceAccount": "serviceaccounts",
    "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings",
    "ValidatingAdmissionPolicy": "validatingadmissionpolicies",
    "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings",
    "MutatingAdmissionPolicy": "mutatingadmissionpolicies",
    "MutatingAdmissionPolicyBinding": "mutatingadmissionpolicybindings",
}
_NAMESPACED = {"Pod", "ServiceAccount"}


def collection(obj: dict[str, Any]) -> str:
    """Where objects of `obj`'s kind live, at the API version the object names."""
    version = obj["apiVersion"]
    path = f"/api/{version}" if "/" not in version else f"/apis/{version}"
    if obj["kind"] in _NAMESPACED:
        path += f"/namespaces/{obj['metadata'].get('namespace', 'default')}"
    return f"{path}/{_PLURALS[obj['kind']]}"


def apply(api: Api, objects: list[dict[str, Any]]) -> None:
    """Create each object, or replace it where it exists (a session may apply twice)."""
    for obj in objects:
        path = collection(obj)
        try:
            api.post(path, obj)
        except ApiError as err:
            if err.status != 409:
                raise
            current = api.get(f"{path}/{obj['metadata']['name']}")
            api.put(f"{path}/{obj['metadata']['name']}", {**obj, "metadata": {**obj["metadata"], **_version(current)}})


def _version(obj: dict[str, Any]) -> dict[str, str]:
    return {"resourceVersion": obj["metadata"]["resourceVersion"]}


def node(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}}}


def service_account_token(api: Api, namespace: str, account: str, bound_pod: dict[str, Any] | None = None) -> str:
    """A token for the service account from TokenRequest, bound to `bound_pod` when given (as the
    kubelet's projected token is): then the API server names the Pod's node in it."""
    spec: dict[str, Any] = {"expirationSeconds": 3600}
    if bound_pod is not None:
        meta = bound_pod["metadata"]
        spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
    answer = api.post(f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token", body)
    return answer["status"]["token"]


# --- watching ----------------------------------------------------------------------------------------


@dataclass
class Seen:
    """One watch event, and when (time.monotonic()) it arrived."""

    at: float
    type: str
    object: dict[str, Any]


class Watch:
    """One raw HTTPS watch of a collection (e.g. a namespace's Pods), opened before anything it should
    see happens; every event is kept with its arrival time, so a test can read the whole history
    (Multus's write, then ours) rather than the last state."""

    def __init__(self, api: Api, collection: str, field_selector: str = "") -> None:
        self.api, self.collection, self.field_selector = api, collection, field_selector
        self.seen: list[Seen] = []
        self.error: str | None = None
        self.changed = threading.Condition()
        self._conn: http.client.HTTPSConnection | None = None
        self._thread: threading.Thread | None = None
        self._closing = False

    def start(self) -> Watch:
        version = self.api.get(self.collection)["metadata"]["resourceVersion"]
        url = urllib.parse.urlsplit(self.api.url)
        context = ssl.create_default_context(cafile=self.api.ca_file)
        self._conn = http.client.HTTPSConnection(url.hostname, url.port, context=context, timeout=None)
        query = {"watch": "1", "resourceVersion": version, "timeoutSeconds": "3600"}
        if self.field_selector:
            query["fieldSelector"] = self.field_selector
        self._conn.request(
            "GET",
            f"{self.collection}?{urllib.parse.urlencode(query)}",
            headers={"Authorization": f"Bearer {self.api.token}", "Accept": "application/json"},
        )
        response = self._conn.getresponse()
        if response.status != 200:
            raise ApiError(response.status, response.read()[:500].decode(errors="replace"))
        self._thread = threading.Thread(target=self._read, args=(response,), daemon=True)
        self._thread.start()
        return self

    def _read(self, response: http.client.HTTPResponse) -> None:
        try:
            for line in response:
                event = json.loads(line)
                with self.changed:
                    self.seen.append(Seen(time.monotonic(), event.get("type", ""), event.get("object", {})))
                    self.changed.notify_all()
        except Exception as err:  # a closed socket at stop() is expected; anything else is reported
            if not self._closing:
                self.error = f"{type(err).__name__}: {err}"
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, match: Callable[[Seen], bool], timeout: float, why: str = "") -> Seen:
        """The first event (from the start of the watch) that `match`es; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for seen in self.seen:
                    if match(seen):
                        return seen
                left = deadline - time.monotonic()
                assert left > 0 and self.error is None, f"watch: no event {why} in {timeout:g} s ({self.error})"
                self.changed.wait(min(left, 1.0))

    def stop(self) -> None:
        self._closing = True
        if self._conn is not None and self._conn.sock is not None:
            with contextlib.suppress(OSError):
                self._conn.sock.shutdown(socket.SHUT_RDWR)
            self._conn.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
