"""deploy/selection-route (the selection route applied at admission) as the tests put it on an API
server, and Multus's own parser of a network selection to hold it against.

- `overlay` writes the kustomization a user writes to opt in: the Component, the opted-in networks set
  by the patch its kustomization.yaml shows, and (for a node) the base and the image; `policy_objects`
  builds it with the real kubectl's kustomize.
- `wait_rewrites` waits until the API server applies the policy as just written: the policy and its
  binding reach the admission plugin through informers, a moment later. It probes with dry-run
  creates, which run admission in full and store nothing.
- `MultusParsers`: testdata/multus/parse-selection.go as scripts/install-tools.sh built it inside each
  Multus v4 version (k8sclient.GetPodNetwork), one long-running process each.
- `SelectionDefaulter`: a mutating admission webhook on loopback that gives Pods a text selection
  when they have none, as a platform's defaulting webhook would: webhooks run after the policies.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import ssl
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from deviceid_inject.annotations import NETWORKS
from testbed import tools
from testbed.helpers import PLACEHOLDER, REPO, kustomize, loopback_server, wait_for
from testbed.kube import Api, ApiError

DEPLOY = REPO / "deploy"
SELECTION_ROUTE = DEPLOY / "selection-route"
NAME = "deviceid-inject-selection-route"  # the policy and its binding
DISABLED_LABEL = "deviceid-inject/selection-route"  # =disabled: the binding leaves the namespace alone
POLICY_PATH = f"/apis/{tools.MUTATING_POLICY_API}/mutatingadmissionpolicies/{NAME}"
BINDING_PATH = f"/apis/{tools.MUTATING_POLICY_API}/mutatingadmissionpolicybindings/{NAME}"


def opted_in(networks: Sequence[str]) -> str:
    """The policy's optedIn variable naming `networks` (namespace/name each): a CEL list of strings."""
    return "[" + ", ".join(f"'{network}'" for network in networks) + "]"


def overlay(folder: Path, networks: Sequence[str] | None, base: dict[str, Any] | None = None) -> Path:
    """A user's overlay that opts in: the Component and its networks (None: the Component as shipped);
    with `base` (testbed.cluster's deploy_kustomization for `folder`), also deploy/ itself as the
    node has it, else the Component alone."""
    folder.mkdir(parents=True, exist_ok=True)
    kustomization: dict[str, Any] = {"components": [os.path.relpath(SELECTION_ROUTE, folder)]}
    kustomization.update(base or {})
    patches = list(kustomization.get("patches", []))
    if networks is not None:
        patch = [
            {"op": "test", "path": "/spec/variables/0/name", "value": "optedIn"},
            {"op": "replace", "path": "/spec/variables/0/expression", "value": opted_in(networks)},
        ]
        patches.append({"target": {"kind": "MutatingAdmissionPolicy", "name": NAME}, "patch": json.dumps(patch)})
    if tools.MUTATING_POLICY_BETA:  # 1.35: docs/network-status-routes.md's two patches
        for kind in ("MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"):
            to_beta = [{"op": "replace", "path": "/apiVersion", "value": tools.MUTATING_POLICY_API}]
            target = {"group": "admissionregistration.k8s.io", "version": "v1", "kind": kind}
            patches.append({"target": target, "patch": json.dumps(to_beta)})
    if patches:
        kustomization["patches"] = patches
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return folder


def policy_objects(folder: Path, networks: Sequence[str] | None) -> list[dict[str, Any]]:
    """The policy and its binding opting `networks` in, as kustomize builds the overlay."""
    return kustomize(overlay(folder, networks))


def remove(api: Api) -> None:
    for path in (BINDING_PATH, POLICY_PATH):
        try:
            api.delete(path)
        except ApiError as err:
            if err.status != 404:
                raise


def pod_body(name: str, selection: str | None, **metadata: Any) -> dict[str, Any]:
    annotations = dict(metadata.pop("annotations", {}))
    if selection is not None:
        annotations[NETWORKS] = selection
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations, **metadata},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }


def dry_run(api: Api, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """The Pod as the API server would store it (every admission plugin run), without storing it."""
    return api.post(f"/api/v1/namespaces/{namespace}/pods?dryRun=All", body)


def selection_of(pod: dict[str, Any]) -> str | None:
    return pod["metadata"].get("annotations", {}).get(NETWORKS)


def wait_rewrites(api: Api, namespace: str, selection: str) -> dict[str, Any]:
    """Wait until a Pod in `namespace` naming `selection` is rewritten; the rewritten Pod. A refusal
    counts as not yet (on a node, a namespace has no default service account for a moment), and the
    last one is named if it never is."""
    refused: list[ApiError] = []

    def rewritten() -> dict[str, Any] | None:
        try:
            pod = dry_run(api, namespace, pod_body("policy-probe", selection))
        except ApiError as err:
            refused[:] = [err]
            return None
        refused.clear()
        return pod if selection_of(pod) != selection else None

    try:
        return wait_for(rewritten, 30, f"{selection!r} in {namespace} rewritten", interval=0.2)
    except AssertionError as err:
        raise AssertionError(f"{err} (last refusal: {refused[0] if refused else 'none'})") from None


def refusal(api: Api, namespace: str, body: dict[str, Any]) -> ApiError | None:
    """The API server's refusal of a dry-run create of `body`, or None when it admits it."""
    try:
        dry_run(api, namespace, body)
    except ApiError as err:
        return err
    return None


@dataclass(frozen=True)
class Parsed:
    """What one Multus version made of a selection: its elements (Multus's JSON tags), or its error."""

    ok: bool
    networks: tuple[dict[str, Any], ...] = ()
    error: str = ""


@dataclass
class MultusParsers:
    """Multus's parser of every v4 version, each a process reading one query a line."""

    versions: tuple[str, ...] = tools.MULTUS_V4_VERSIONS
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self) -> MultusParsers:
        missing = tools.missing(*(tools.multus_selection_parser(v) for v in self.versions))
        if missing:
            pytest.fail(f"Multus's selection parser is not built ({', '.join(missing)}): run make setup")
        for version in self.versions:
            self.procs[version] = subprocess.Popen(
                [str(tools.multus_selection_parser(version))],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                bufsize=1,
            )
        return self

    def parse(self, namespace: str, selection: str) -> dict[str, Parsed]:
        """Each version's GetPodNetwork of a Pod in `namespace` whose selection is `selection`."""
        query = json.dumps({"namespace": namespace, "networks": selection}) + "\n"
        found = {}
        for version, proc in self.procs.items():
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(query)
            proc.stdin.flush()
            answer = json.loads(proc.stdout.readline())
            found[version] = Parsed(answer["ok"], tuple(answer.get("networks") or ()), answer.get("error", ""))
        return found

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self.procs.clear()


def read_alike(parsed: dict[str, Parsed]) -> bool:
    """Every Multus version parses the selection, to the same elements, none with an empty name (which
    Multus takes, and fails on at ADD)."""
    answers = {json.dumps([p.ok, p.error, p.networks], sort_keys=True) for p in parsed.values()}
    first = next(iter(parsed.values()))
    return len(answers) == 1 and first.ok and bool(first.networks) and all(e["name"] for e in first.networks)


def without_device_id(networks: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [{k: v for k, v in element.items() if k != "deviceID"} for element in networks]


def same_networks_violations(
    parsers: MultusParsers, namespace: str, original: str, rewritten: str, opted: set[str]
) -> list[str]:
    """Why `rewritten` does not mean to every Multus v4 what `original` means, with the placeholder
    exactly on the elements that name an opted-in network ([] when it does)."""
    problems = []
    before, after = parsers.parse(namespace, original), parsers.parse(namespace, rewritten)
    for version in parsers.versions:
        old, new = before[version], after[version]
        if not (old.ok and new.ok):
            problems.append(f"Multus {version}: original {old.error or 'ok'}, rewritten {new.error or 'ok'}")
            continue
        if without_device_id(new.networks) != list(old.networks):
            problems.append(f"Multus {version}: {old.networks} became {new.networks}")
        wanted = [PLACEHOLDER if f"{e['namespace']}/{e['name']}" in opted else None for e in old.networks]
        if [e.get("deviceID") for e in new.networks] != wanted:
            problems.append(f"Multus {version}: deviceIDs {[e.get('deviceID') for e in new.networks]}, not {wanted}")
    return problems


@dataclass
class SelectionDefaulter:
    """A mutating webhook (HTTPS on 127.0.0.1, its own self-signed certificate) that sets `selection`
    on Pods of `namespace` labelled default-selection and without a selection of their own."""

    work: Path
    namespace: str
    selection: str
    name: str = "test-default-selection.deviceid-inject.test"
    server: http.server.ThreadingHTTPServer | None = None

    def start(self, api: Api) -> SelectionDefaulter:
        self.work.mkdir(parents=True, exist_ok=True)
        key, cert = self.work / "webhook.key", self.work / "webhook.crt"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )  # fmt: skip
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server = loopback_server(self._review, context)
        api.post("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", self.configuration(cert))
        return self

    def _review(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        """Set the selection where the Pod has none: a JSON patch adding the annotation (or the map)."""
        review = json.loads(body)
        request = review["request"]
        annotations = request["object"]["metadata"].get("annotations")
        response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
        if annotations is None or NETWORKS not in annotations:
            key = NETWORKS.replace("~", "~0").replace("/", "~1")
            patch = (
                [{"op": "add", "path": f"/metadata/annotations/{key}", "value": self.selection}]
                if annotations is not None
                else [{"op": "add", "path": "/metadata/annotations", "value": {NETWORKS: self.selection}}]
            )
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        return 200, json.dumps({**review, "response": response}).encode()

    def configuration(self, cert: Path) -> dict[str, Any]:
        assert self.server is not None
        url = f"https://127.0.0.1:{self.server.server_address[1]}/mutate"
        webhook = {
            "name": self.name,
            "clientConfig": {"url": url, "caBundle": base64.b64encode(cert.read_bytes()).decode()},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": self.namespace}},
            "objectSelector": {"matchExpressions": [{"key": "default-selection", "operator": "Exists"}]},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "failurePolicy": "Fail",
            "timeoutSeconds": 5,
        }
        meta = {"name": self.name}
        return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                "metadata": meta, "webhooks": [webhook]}  # fmt: skip

    def stop(self, api: Api) -> None:
        try:
            api.delete(f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{self.name}")
        except ApiError as err:
            if err.status != 404:
                raise
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
