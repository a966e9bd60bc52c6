"""deploy/ as kustomize (the real kubectl's) builds it: what a user applies, before any node runs it.
tests/system/test_node.py applies it to a real node; these say what must hold of the manifests
themselves."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from deviceid_inject import cli
from deviceid_inject.config import DEFAULT_DATA_DIR, DEFAULT_DEVICE_INFO_ROOT
from testbed.helpers import REPO, kustomize

DEPLOY = REPO / "deploy"
PUBLISHED = "ghcr.io/deviceid-inject/deviceid-inject:0.1.0"


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (ds,) = [o for o in objects if o["kind"] == "DaemonSet"]
    return ds["spec"]["template"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return spec["initContainers"] + spec["containers"]


def test_the_base_holds_the_bridges_account_policy_and_the_daemonset_with_the_published_image():
    objects = kustomize(DEPLOY)
    named = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    bridge, legacy_off = "deviceid-inject-bridge", "deviceid-inject-bridge-no-networks-status"
    assert named == sorted(
        [("ServiceAccount", bridge), ("ClusterRole", bridge), ("ClusterRoleBinding", bridge),
         ("ValidatingAdmissionPolicy", bridge), ("ValidatingAdmissionPolicyBinding", bridge),
         ("ValidatingAdmissionPolicy", legacy_off), ("ValidatingAdmissionPolicyBinding", legacy_off),
         ("DaemonSet", "deviceid-inject")]
    )  # fmt: skip
    assert {c["image"] for c in containers(pod_spec(objects))} == {PUBLISHED}


def test_an_overlay_of_one_line_points_every_container_at_another_image(tmp_path: Path):
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = os.path.relpath(DEPLOY, overlay)  # kustomize takes a base by relative path only
    images = "[{name: ghcr.io/deviceid-inject/deviceid-inject, newName: registry.example.com/dit, newTag: v9}]"
    (overlay / "kustomization.yaml").write_text(f"resources: [{base}]\nimages: {images}\n")
    objects = kustomize(overlay)
    assert {c["image"] for c in containers(pod_spec(objects))} == {"registry.example.com/dit:v9"}


def test_the_init_container_installs_with_the_binary_itself_into_the_nodes_cni_folder_and_cache():
    spec = pod_spec(kustomize(DEPLOY))
    (init,) = spec["initContainers"]
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    assert init["command"] == [cli.IMAGE_BINARY, "install", mounts["cni-bin"]]
    volumes = {v["name"]: v["hostPath"] for v in spec["volumes"]}
    assert volumes["cni-bin"] == {"path": "/opt/cni/bin", "type": "DirectoryOrCreate"}
    # The installing run unpacks into the node's cache, where the plugin's launcher looks by default.
    default_cache = re.search(r'#define DEFAULT_CACHE "([^"]+)"', (REPO / "packaging/launcher.c").read_text())
    assert default_cache is not None
    assert mounts["launcher-cache"] == volumes["launcher-cache"]["path"] == default_cache.group(1)


def test_no_container_is_privileged_or_writes_its_root_and_only_the_cni_server_keeps_sys_admin():
    spec = pod_spec(kustomize(DEPLOY))
    assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in containers(spec):
        context = container["securityContext"]
        if container["name"] == "cni-server":  # setns into the client's and the Pod's netns, mount sysfs
            assert context == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                               "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]},
                               "appArmorProfile": {"type": "Unconfined"}}  # fmt: skip
        else:
            assert context == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                               "capabilities": {"drop": ["ALL"]}}  # fmt: skip


def named_container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in containers(spec) if c["name"] == name]
    return found


def test_the_cni_server_has_at_their_host_paths_exactly_the_folders_a_call_names():
    spec = pod_spec(kustomize(DEPLOY))
    server = named_container(spec, "cni-server")
    assert server["command"][:2] == [cli.IMAGE_BINARY, "cni-server"]
    assert f"--socket={cli.SERVER_SOCKET}" in server["command"]
    volumes = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in server["volumeMounts"]}
    assert not any(m.get("readOnly") for m in server["volumeMounts"])
    # Each at its host path (/var/run is the host's link to /run): the same folder for server and client.
    for path, host in mounts.items():
        assert host == path.replace("/var/run/", "/run/", 1), path
    socket_folder = os.path.dirname(cli.SERVER_SOCKET)
    assert set(mounts) == {socket_folder, "/run/k8s.cni.cncf.io", "/var/run/k8s.cni.cncf.io",
                           DEFAULT_DATA_DIR, "/var/log/deviceid-inject"}  # fmt: skip
    assert DEFAULT_DEVICE_INFO_ROOT.startswith("/var/run/k8s.cni.cncf.io/")
    assert "cpu" not in server["resources"].get("limits", {})  # a throttled server brings the wait back
    for kind in ("livenessProbe", "readinessProbe"):
        assert server[kind]["exec"]["command"] == [cli.IMAGE_BINARY, "probe", f"unix:{cli.SERVER_SOCKET}"]


def test_the_bridge_runs_for_its_node_reading_the_records_read_only():
    spec = pod_spec(kustomize(DEPLOY))
    assert spec["serviceAccountName"] == "deviceid-inject-bridge"
    assert spec["automountServiceAccountToken"] is True  # the projected token names the node
    bridge = named_container(spec, "bridge")
    assert bridge["command"][:2] == [cli.IMAGE_BINARY, "bridge"]
    env = {e["name"]: e for e in bridge["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    mounts = {m["name"]: m for m in bridge["volumeMounts"]}
    assert set(mounts) == {"records"}
    assert mounts["records"]["readOnly"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["records"]["hostPath"]["path"] == mounts["records"]["mountPath"] == "/var/lib/cni/deviceid-inject"
    assert "--listen=127.0.0.1:9909" in bridge["command"]  # not on the Pod network
    for kind, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert bridge[kind]["exec"]["command"] == [cli.IMAGE_BINARY, "probe", f"http://127.0.0.1:9909{path}"]


def test_the_containerfile_builds_the_image_make_image_builds():
    containerfile = (DEPLOY / "Containerfile").read_text()
    assert f"COPY dist/deviceid-inject /image{cli.IMAGE_BINARY}" in containerfile
    assert "COPY packaging/image-libs.txt" in containerfile  # the same library list, checked by make image
    assert f'ENTRYPOINT ["{cli.IMAGE_BINARY}"]' in containerfile


def test_the_bridges_rbac_is_the_least_it_needs():
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "bridge-rbac.yaml").read_text())}
    rules = {(tuple(r["resources"]), tuple(r["verbs"])) for r in docs["ClusterRole"]["rules"]}
    assert rules == {(("pods",), ("get", "list", "watch")), (("pods/status",), ("patch",))}
    (subject,) = docs["ClusterRoleBinding"]["subjects"]
    assert (subject["name"], subject["namespace"]) == (docs["ServiceAccount"]["metadata"]["name"], "kube-system")


def test_nad_puts_deviceid_inject_after_akshci_iov_at_0_3_0():
    nad = yaml.safe_load((DEPLOY / "nad-n6-dpdk.yaml").read_text())
    assert nad["kind"] == "NetworkAttachmentDefinition"
    conf = json.loads(nad["spec"]["config"])
    assert conf["cniVersion"] == "0.3.0"
    assert [p["type"] for p in conf["plugins"]] == ["akshci-iov", "deviceid-inject"]
    assert conf["plugins"][0]["dpdk"] is True
    assert conf["plugins"][1]["capabilities"] == {"deviceID": True, "CNIDeviceInfoFile": True}
    entry, where = cli.plugin_entry(nad)
    assert where == "$.spec.config.plugins[1]"
    assert cli.config.schema_errors(entry) == []


def test_example_conflist_is_valid_and_ordered():
    conflist = json.loads((DEPLOY / "10-n6-dpdk.conflist").read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["sriov", "deviceid-inject"]
    entry, _ = cli.plugin_entry(conflist)
    assert cli.config.schema_errors(entry) == []


def test_the_selection_route_comes_only_with_the_overlay_its_kustomization_shows(tmp_path: Path):
    """deploy/selection-route is a Component: deploy/ alone has no MutatingAdmissionPolicy (so it applies
    where admissionregistration.k8s.io/v1 has none, as on 1.35); the overlay its comment shows, with
    the remote references made local, adds the policy and its binding, its list set to the networks
    the comment names."""
    assert not [o for o in kustomize(DEPLOY) if o["kind"].startswith("MutatingAdmissionPolicy")]
    text = (DEPLOY / "selection-route" / "kustomization.yaml").read_text()
    shown = text.split("The overlay also names the networks:\n#\n", 1)[1].split("\n#\n", 1)[0]
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    remote = "github.com/deviceid-inject/deviceid-inject/deploy"
    local = os.path.relpath(DEPLOY, overlay)
    kustomization = "\n".join(line.removeprefix("#   ") for line in shown.splitlines()).replace(remote, local)
    (overlay / "kustomization.yaml").write_text(re.sub(r"\?ref=[^\]]+", "", kustomization))
    objects = kustomize(overlay)
    added = ["MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"]
    assert sorted(o["kind"] for o in objects) == sorted([o["kind"] for o in kustomize(DEPLOY)] + added)
    (policy,) = [o for o in objects if o["kind"] == "MutatingAdmissionPolicy"]
    (binding,) = [o for o in objects if o["kind"] == "MutatingAdmissionPolicyBinding"]
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert "paramKind" not in policy["spec"] and "paramRef" not in binding["spec"]
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert variables["optedIn"] == "['upf/n6-dpdk', 'ran/n6-sriov']"
    (shipped,) = [o for o in kustomize(DEPLOY / "selection-route") if o["kind"] == "MutatingAdmissionPolicy"]
    assert shipped["spec"]["variables"][0] == {"name": "optedIn", "expression": "[]"}  # what the patch tests
