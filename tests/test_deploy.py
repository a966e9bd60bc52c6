"""The cluster install manifests parse, and say what matters: image, hostPath, chain order."""

from __future__ import annotations

import json

import yaml
from helpers import REPO

from deviceid_inject import cli

DEPLOY = REPO / "deploy"


def load(name: str):
    return yaml.safe_load((DEPLOY / name).read_text())


def test_daemonset_installs_the_binary_into_the_hosts_cni_bin_atomically():
    ds = load("daemonset.yaml")
    assert ds["kind"] == "DaemonSet"
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cni-bin"]["hostPath"] == {"path": "/opt/cni/bin", "type": "DirectoryOrCreate"}
    (init,) = pod["initContainers"]
    assert init["image"].endswith(":0.1.0")
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    script = init["command"][-1]
    assert f"{mounts['cni-bin']}/.deviceid-inject.new" in script
    assert f"mv -f {mounts['cni-bin']}/.deviceid-inject.new {mounts['cni-bin']}/deviceid-inject" in script
    assert {"operator": "Exists"} in pod["tolerations"]


def test_image_ships_the_binary_where_the_daemonset_copies_it_from():
    containerfile = (DEPLOY / "Containerfile").read_text()
    ds_script = load("daemonset.yaml")["spec"]["template"]["spec"]["initContainers"][0]["command"][-1]
    assert "COPY dist/deviceid-inject /usr/local/bin/deviceid-inject" in containerfile
    assert "cp /usr/local/bin/deviceid-inject " in ds_script


def test_nad_puts_deviceid_inject_after_akshci_iov_at_0_3_0():
    nad = load("nad-n6-dpdk.yaml")
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


def test_daemonset_runs_the_bridge_for_its_node_with_the_bridges_account():
    ds = load("daemonset.yaml")
    pod = ds["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "deviceid-inject-bridge"
    assert pod["automountServiceAccountToken"] is True  # the projected token names the node
    (bridge,) = pod["containers"]
    assert bridge["command"][:2] == ["/usr/local/bin/deviceid-inject", "bridge"]
    env = {e["name"]: e for e in bridge["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    mounts = {m["name"]: m for m in bridge["volumeMounts"]}
    assert mounts["records"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["records"]["hostPath"]["path"] == mounts["records"]["mountPath"] == "/var/lib/cni/deviceid-inject"
    # The launcher refuses a world-writable cache root; an emptyDir is one, a folder in it is not.
    cache = env["DEVICEID_INJECT_CACHE"]["value"]
    assert cache.startswith(mounts["unpack"]["mountPath"] + "/")
    assert bridge["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert bridge["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "--listen=0.0.0.0:9909" in bridge["command"]


def test_the_bridges_rbac_is_the_least_it_needs():
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "bridge-rbac.yaml").read_text())}
    rules = {(tuple(r["resources"]), tuple(r["verbs"])) for r in docs["ClusterRole"]["rules"]}
    assert rules == {(("pods",), ("get", "list", "watch")), (("pods/status",), ("patch",))}
    (subject,) = docs["ClusterRoleBinding"]["subjects"]
    assert (subject["name"], subject["namespace"]) == (docs["ServiceAccount"]["metadata"]["name"], "kube-system")
